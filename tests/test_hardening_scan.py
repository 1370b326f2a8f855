"""Issue 9, scan side: bad input and faults give a clear message or the right result, and
nothing the tool did not write is ever lost. Each test builds its files in tmp_path from the
real 20 s fixture recording, and each would fail on the code before the fix it names."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from click.testing import CliRunner

from primate_monitor.cli import EXIT_SOME_FAILED, EXIT_USAGE, main
from primate_monitor.event_eval import evaluate_events
from primate_monitor.fsutil import printable, safe_relative
from primate_monitor.scan_run import scan
from primate_monitor.scan_state import ScanState
from primate_monitor.scanner import ScanConfig
from primate_monitor.timestamps import start_from_filename
from primate_monitor.writers import read_parquet

FIXTURES = Path(__file__).parent / "fixtures"
RECORDING = FIXTURES / "recording" / "20240312_053000.wav"  # 20 s, 8 kHz


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def invoke(*args):
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        return CliRunner().invoke(main, [a if isinstance(a, bytes) else str(a) for a in args], catch_exceptions=False)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def audio(seconds: float = 6.0, offset: float = 0.0) -> tuple[np.ndarray, int]:
    x, sr = sf.read(RECORDING, dtype="float32")
    start = int(offset * sr)
    return x[start : start + int(seconds * sr)], sr


def write_wav(path: Path, seconds: float = 6.0, offset: float = 0.0) -> Path:
    x, sr = audio(seconds, offset)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(os.fsencode(path), x, sr, format="WAV", subtype="PCM_16")  # bytes: names that are not UTF-8 too
    return path


def scan_args(ckpt: Path, *extra) -> list:
    return ["-q", "scan", *extra, "--model", ckpt, "--threshold", "0.0"]


# --- data loss -------------------------------------------------------------------------------


def test_overwrite_never_deletes_files_the_scan_did_not_write(tiny_checkpoint, tmp_path):
    """Item 1: a raven/ folder the user made is refused, with or without --overwrite, and kept."""
    rec = write_wav(tmp_path / "in" / "a.wav")
    out = tmp_path / "proj"
    (out / "raven").mkdir(parents=True)
    (out / "raven" / "manual.selections.txt").write_text("x\n")
    for extra in ((), ("--overwrite",)):
        result = invoke(*scan_args(tiny_checkpoint, rec, "-o", out, *extra))
        assert result.exit_code == EXIT_USAGE, result.output
        assert "manual.selections.txt" in result.output and "never deletes" in result.output
    assert (out / "raven" / "manual.selections.txt").read_text() == "x\n"


def test_overwrite_of_own_scan_keeps_foreign_files(tiny_checkpoint, tmp_path):
    """--overwrite of a scan deletes that scan's files only: a user's file inside raven/ and
    plots/ survives, and the scan's stale table of a recording no longer scanned is gone."""
    folder = tmp_path / "in"
    write_wav(folder / "a.wav")
    old = write_wav(folder / "old.wav", offset=5)
    out = tmp_path / "out"
    assert invoke(*scan_args(tiny_checkpoint, folder, "-o", out, "--plots")).exit_code == 0
    (out / "raven" / "mine.selections.txt").write_text("keep\n")
    (out / "plots" / "notes.txt").write_text("keep\n")
    old.unlink()
    result = invoke("-q", "scan", folder, "--model", tiny_checkpoint, "--threshold", "0.5", "-o", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert (out / "raven" / "mine.selections.txt").read_text() == "keep\n"
    assert (out / "plots" / "notes.txt").read_text() == "keep\n"
    assert not (out / "raven" / "old.wav.selections.txt").exists()
    assert not (out / "plots" / "a.wav.png").exists()  # the earlier scan's plot went with it
    assert set(read_parquet(out / "detections.parquet")["recording"]) <= {"a.wav"}


@pytest.mark.parametrize("fmt, name", [("raven", "a.wav.selections.txt"), ("csv", "events.csv")])
def test_export_refuses_to_replace_files_it_did_not_write(tiny_checkpoint, tmp_path, fmt, name):
    """export into a folder holding a reviewed Raven table or the user's own events.csv stops
    before writing anything and names the file; --overwrite replaces it."""
    out = tmp_path / "out"
    assert invoke(*scan_args(tiny_checkpoint, write_wav(tmp_path / "in" / "a.wav"), "-o", out)).exit_code == 0
    dest = tmp_path / "mine"
    dest.mkdir()
    mine = "Selection\tBegin Time (s)\tEnd Time (s)\tVerdict\n1\t1\t9\tyes\n"
    (dest / name).write_text(mine)
    result = invoke("export", out / "detections.parquet", "--format", fmt, "-o", dest)
    assert result.exit_code == EXIT_USAGE, result.output
    assert name in result.output and "--overwrite" in result.output
    assert (dest / name).read_text() == mine
    assert [p.name for p in dest.iterdir()] == [name]  # nothing else written either
    result = invoke("export", out / "detections.parquet", "--format", fmt, "-o", dest, "--overwrite")
    assert result.exit_code == 0, result.output
    assert "Verdict" not in (dest / name).read_text()


def test_changed_file_is_scanned_again(tiny_checkpoint, tmp_path):
    """Item 3: a file scanned while still being copied (6 s of 20) is scanned again once complete."""
    folder = tmp_path / "in"
    rec = write_wav(folder / "grow.wav", seconds=6)
    write_wav(folder / "other.wav", seconds=4, offset=3)
    out = tmp_path / "out"
    assert invoke(*scan_args(tiny_checkpoint, folder, "-o", out)).exit_code == 0
    write_wav(rec, seconds=20)  # the copy finished
    result = invoke(*scan_args(tiny_checkpoint, folder, "-o", out))
    assert result.exit_code == 0 and "1 done earlier" in result.output, result.output
    recs = pd.read_csv(out / "recordings.csv").set_index("recording")
    assert recs.loc["grow.wav", "duration_s"] == pytest.approx(20.0)
    fresh = tmp_path / "fresh"
    assert invoke(*scan_args(tiny_checkpoint, folder, "-o", fresh)).exit_code == 0
    pd.testing.assert_frame_equal(read_parquet(out / "detections.parquet"), read_parquet(fresh / "detections.parquet"))
    assert (out / "raven" / "grow.wav.selections.txt").read_text() == (fresh / "raven" / "grow.wav.selections.txt").read_text()


def test_unreadable_subfolder_is_a_failure(tiny_checkpoint, tmp_path, monkeypatch):
    """Item 4: a folder that cannot be listed is named in failures.csv and the run exits 3.
    (Tests run as root, which ignores permissions, so listing is made to fail as it would.)"""
    folder = tmp_path / "in"
    write_wav(folder / "a.wav")
    write_wav(folder / "locked" / "b.wav")
    real = os.scandir

    def scandir(path="."):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out = tmp_path / "out"
    result = invoke(*scan_args(tiny_checkpoint, folder, "-o", out))
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    failures = pd.read_csv(out / "failures.csv", keep_default_na=False)
    row = failures[failures["kind"] == "unreadable_folder"].iloc[0]
    assert row["path"].endswith("locked") and "Permission denied" in row["message"]
    assert json.loads((out / "run.json").read_text())["totals"]["unreadable_folders"] == 1


def test_deleted_recording_loses_its_raven_table(tiny_checkpoint, tmp_path):
    """Item 16: a recording gone between runs leaves no table behind."""
    folder = tmp_path / "in"
    write_wav(folder / "a.wav")
    gone = write_wav(folder / "b.wav", offset=4)
    out = tmp_path / "out"
    assert invoke(*scan_args(tiny_checkpoint, folder, "-o", out)).exit_code == 0
    assert (out / "raven" / "b.wav.selections.txt").exists()
    gone.unlink()
    assert invoke(*scan_args(tiny_checkpoint, folder, "-o", out)).exit_code == 0
    assert sorted(p.name for p in (out / "raven").iterdir()) == ["a.wav.selections.txt"]
    assert list(pd.read_csv(out / "recordings.csv")["recording"]) == ["a.wav"]


# --- hangs and crashes -----------------------------------------------------------------------


@pytest.mark.parametrize("hop", ["0.00001", "0", "-1", "inf", "nan"])
def test_bad_hop_refused_before_anything_is_written(tiny_checkpoint, tmp_path, hop):
    """Items 5 and 11: a hop under one sample (which looped forever) or not finite is refused
    before the scan state exists, so a correct rerun into the folder works."""
    rec = write_wav(tmp_path / "a.wav")
    out = tmp_path / "out"
    result = invoke(*scan_args(tiny_checkpoint, rec, "-o", out, "--hop", hop))
    assert result.exit_code == EXIT_USAGE and "hop" in result.output
    assert not (out / ".scan-state").exists()
    assert invoke(*scan_args(tiny_checkpoint, rec, "-o", out)).exit_code == 0


def test_symlinks_dangling_outside_and_given_directly(tiny_checkpoint, tmp_path):
    """Item 6: links never abort a scan; a dangling one is a named failure."""
    elsewhere = write_wav(tmp_path / "elsewhere" / "real.wav")
    folder = tmp_path / "in"
    write_wav(folder / "a.wav")
    (folder / "outside.wav").symlink_to(elsewhere)
    (folder / "dangling.wav").symlink_to(tmp_path / "nothing.wav")
    out = tmp_path / "out"
    result = invoke(*scan_args(tiny_checkpoint, folder, "-o", out))
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    failures = pd.read_csv(out / "failures.csv").set_index("recording")
    assert list(failures.index) == ["dangling.wav"] and "broken symlink" in failures.loc["dangling.wav", "message"]
    recs = pd.read_csv(out / "recordings.csv").set_index("recording")
    assert recs.loc["outside.wav", "status"] == "ok"
    direct = invoke(*scan_args(tiny_checkpoint, folder / "outside.wav", "-o", tmp_path / "direct"))
    assert direct.exit_code == 0, direct.output


def test_odd_file_names_are_scanned_and_escaped(tiny_checkpoint, tmp_path):
    """Items 7, 8 and 13: a tab, a newline, invalid UTF-8 and "$" in names neither abort the
    scan nor break a table or a plot; the names are shown with backslash escapes."""
    folder = tmp_path / "in"
    names = ["tab\tname.wav", "new\nline.wav", os.fsdecode(b"bad\xffbyte.wav"), "cost$5$.wav"]
    for i, name in enumerate(names):
        write_wav(folder / name, offset=i)
    out = tmp_path / "out"
    result = invoke(*scan_args(tiny_checkpoint, folder, "-o", out, "--plots"))
    assert result.exit_code == 0, result.output
    shown = ["bad\\xffbyte.wav", "cost$5$.wav", "new\\nline.wav", "tab\\tname.wav"]
    assert list(pd.read_csv(out / "recordings.csv")["recording"]) == shown
    events = read_parquet(out / "detections.parquet")
    assert set(events["recording"]) == set(shown)
    for name in shown:
        table = (out / "raven" / f"{name}.selections.txt").read_text().splitlines()
        assert len(table) - 1 == (events["recording"] == name).sum()
        assert (out / "plots" / f"{name}.png").stat().st_size > 0
    again = invoke(*scan_args(tiny_checkpoint, folder, "-o", out))  # resumes; no file is scanned twice
    assert "4 done earlier" in again.output


@pytest.mark.parametrize("kind", ["file", "under_file"])
def test_unusable_output_folder(tiny_checkpoint, tmp_path, kind):
    """Item 10: -o that is a file, or that cannot be created, is a one-line error naming it."""
    rec = write_wav(tmp_path / "a.wav")
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    out = blocker if kind == "file" else blocker / "sub"
    result = invoke(*scan_args(tiny_checkpoint, rec, "-o", out))
    assert result.exit_code == EXIT_USAGE and str(blocker) in result.output
    assert "Traceback" not in result.output and blocker.read_text() == "not a folder"


def test_failed_write_is_a_clear_error(tiny_checkpoint, tmp_path, monkeypatch):
    """Item 10: a write that fails (disk full) names the file; rerunning after it resumes."""
    rec = write_wav(tmp_path / "a.wav")
    out = tmp_path / "out"
    real = pq.write_table

    def full_disk(table, where, *a, **k):
        if "detections" in str(where):
            raise OSError(28, "No space left on device", str(where))
        return real(table, where, *a, **k)

    monkeypatch.setattr(pq, "write_table", full_disk)
    result = invoke(*scan_args(tiny_checkpoint, rec, "-o", out))
    assert result.exit_code == EXIT_USAGE and "No space left on device" in result.output
    assert "detections.parquet" in result.output
    monkeypatch.setattr(pq, "write_table", real)
    again = invoke(*scan_args(tiny_checkpoint, rec, "-o", out))
    assert again.exit_code == 0 and "1 done earlier" in again.output


def test_plot_of_non_audio_and_unscanned_files(tiny_checkpoint, tmp_path):
    """Item 12 and the plot message: a file the scan never saw is an error, not "0 detections";
    a scanned file given by another path is found by its name."""
    folder = tmp_path / "in"
    write_wav(folder / "a.wav")
    out = tmp_path / "out"
    assert invoke(*scan_args(tiny_checkpoint, folder, "-o", out)).exit_code == 0
    junk = tmp_path / "junk.wav"
    junk.write_text("not audio")
    bad = invoke("plot", out, junk, "-o", tmp_path / "p.png")
    assert bad.exit_code == EXIT_USAGE and "not among" in bad.output
    copy = write_wav(tmp_path / "copies" / "a.wav")
    good = invoke("plot", out, copy, "-o", tmp_path / "p.png")
    assert good.exit_code == 0 and (tmp_path / "p.png").stat().st_size > 0
    # the image is in the format its name asks for, not PNG bytes under any name
    magic = {"jpg": b"\xff\xd8\xff", "pdf": b"%PDF", "svg": b"<?xml"}
    for suffix, head in magic.items():
        result = invoke("plot", out, copy, "-o", tmp_path / f"p.{suffix}")
        assert result.exit_code == 0, result.output
        assert (tmp_path / f"p.{suffix}").read_bytes().startswith(head)
    wrong = invoke("plot", out, copy, "-o", tmp_path / "p.gif")
    assert wrong.exit_code == EXIT_USAGE and "p.gif" in wrong.output and ".png" in wrong.output
    assert not (tmp_path / "p.gif").exists()


def test_year_9999_name_has_no_start_time(tiny_checkpoint, tmp_path):
    """Item 14: 99991231_235959.wav would end in year 10000; its start is unknown instead."""
    assert start_from_filename("99991231_235959.wav") is None
    rec = write_wav(tmp_path / "99991231_235959.wav")
    out = tmp_path / "out"
    assert invoke(*scan_args(tiny_checkpoint, rec, "-o", out)).exit_code == 0
    assert invoke("export", out / "detections.parquet", "--format", "csv", "-o", tmp_path / "e").exit_code == 0


# --- wrong output ----------------------------------------------------------------------------


def test_detect_in_place_keeps_every_file_in_agreement(tiny_checkpoint, tmp_path):
    """Item 15: after detect rewrites a folder, run.json, recordings.csv, the Parquet and the
    Raven tables describe the new threshold, and the old scan command is refused."""
    folder = tmp_path / "in"
    write_wav(folder / "a.wav", seconds=20)
    out = tmp_path / "out"
    assert invoke(*scan_args(tiny_checkpoint, folder, "-o", out, "--save-window-scores")).exit_code == 0
    windows = pd.read_parquet(out / "windows.parquet")
    threshold = float(np.quantile(windows.filter(like="score_").drop(columns="score_background").to_numpy(), 0.8))
    result = invoke("detect", out, "--threshold", f"{threshold:.4f}")
    assert result.exit_code == 0, result.output
    events = read_parquet(out / "detections.parquet")
    run = json.loads((out / "run.json").read_text())
    assert run["parameters"]["threshold"] == pytest.approx(threshold, abs=1e-4)
    assert events.attrs["primate_monitor"]["threshold"] == pytest.approx(threshold, abs=1e-4)
    assert (events["peak_score"] >= threshold - 1e-4).all()
    assert pd.read_csv(out / "recordings.csv").loc[0, "n_events"] == len(events) == run["totals"]["events"]
    table = (out / "raven" / "a.wav.selections.txt").read_text().splitlines()
    assert len(table) - 1 == len(events)
    rerun = invoke(*scan_args(tiny_checkpoint, folder, "-o", out, "--save-window-scores"))
    assert rerun.exit_code == EXIT_USAGE and "threshold" in rerun.output
    assert len(read_parquet(out / "detections.parquet")) == len(events)  # nothing was put back


def _folder_bytes(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_detect_in_place_with_a_damaged_windows_part_changes_nothing(tiny_checkpoint, tmp_path):
    """A windows part that cannot be read stops detect before any file is rewritten (params,
    Raven tables, events parts), the error names that part, and its advice works: with the
    part deleted, the old scan command is accepted (same parameters) and rescores it."""
    folder = tmp_path / "in"
    write_wav(folder / "a.wav", seconds=10)
    write_wav(folder / "b.wav", seconds=10, offset=8)
    out = tmp_path / "out"
    args = scan_args(tiny_checkpoint, folder, "-o", out, "--save-window-scores")
    assert invoke(*args).exit_code == 0
    state = ScanState(out)
    damaged = state.part(state.plan()[0][-1], "windows")  # the last: the others were rewritten first
    damaged.write_bytes(damaged.read_bytes()[:200])
    before = _folder_bytes(out)
    result = invoke("detect", out, "--threshold", "0.7")
    assert result.exit_code == EXIT_USAGE, result.output
    assert damaged.name in result.output and "b.wav" in result.output
    assert _folder_bytes(out) == before
    damaged.unlink()
    rerun = invoke(*args)
    assert rerun.exit_code == 0, rerun.output  # not refused as "different parameters"
    assert invoke("detect", out, "--threshold", "0.7").exit_code == 0


def test_detect_into_new_folder_is_a_complete_scan_folder(tiny_checkpoint, tmp_path):
    folder = tmp_path / "in"
    write_wav(folder / "a.wav", seconds=20)
    out, dest = tmp_path / "out", tmp_path / "dest"
    assert invoke(*scan_args(tiny_checkpoint, folder, "-o", out, "--save-window-scores")).exit_code == 0
    assert invoke("detect", out, "--threshold", "0.6", "-o", dest).exit_code == 0
    assert {p.name for p in dest.iterdir()} >= {"detections.parquet", "recordings.csv", "failures.csv", "run.json", "raven"}
    assert json.loads((dest / "run.json").read_text())["parameters"]["threshold"] == 0.6
    assert json.loads((out / "run.json").read_text())["parameters"]["threshold"] == 0.0  # the source is untouched
    missing = invoke("detect", tmp_path / "nope", "--threshold", "0.6")
    assert missing.exit_code == EXIT_USAGE and "no such scan folder" in missing.output


def test_evaluate_events_no_tables_and_macro_over_all_species(tmp_path):
    """Item 17: no truth tables is an error (exit 2); a species detected but absent from the
    truth counts in the macro average with precision 0."""
    scan_dir = tmp_path / "scan"
    scan_dir.mkdir()
    empty = invoke("evaluate-events", scan_dir, scan_dir)
    assert empty.exit_code == EXIT_USAGE and "no truth tables" in empty.output
    dets = pd.DataFrame({"recording": ["r.wav", "r.wav"], "begin_s": [0.0, 10.0], "end_s": [3.0, 13.0],
                         "species": ["gibbon", "chimpanzee"]})
    truth = tmp_path / "r.truth.selections.txt"
    truth.write_text("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tSpecies\n"
                     "1\tSpectrogram 1\t1\t0.0\t3.0\t0\t4000\tgibbon\n")
    result = evaluate_events(dets, [truth])
    assert result["per_class"]["chimpanzee"]["precision"] == 0.0
    assert result["macro"]["precision"] == pytest.approx(0.5)  # (1.0 + 0.0) / 2


def test_export_names_stay_under_out(tmp_path):
    """Item 21: a recording value with ../ or an absolute path is written under -o."""
    from primate_monitor.writers import write_parquet

    rows = []
    for name in ("../../escape.wav", "/tmp/abs.wav"):
        rows.append({"recording": name, "recording_path": name, "recording_start": pd.NaT, "begin_s": 0.0,
                     "end_s": 3.0, "begin_time": pd.NaT, "end_time": pd.NaT, "species": "gibbon", "peak_score": 0.9,
                     "mean_score": 0.9, "n_windows": 1, "low_freq_hz": 10.0, "high_freq_hz": 4000.0, "model": "m"})
    src = tmp_path / "src" / "detections.parquet"
    src.parent.mkdir()
    write_parquet(pd.DataFrame(rows), src, {})
    dest = tmp_path / "a" / "b" / "dest"
    result = invoke("export", src, "--format", "raven", "-o", dest)
    assert result.exit_code == 0, result.output
    written = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert written == ["__/__/escape.wav.selections.txt", "tmp/abs.wav.selections.txt"]
    assert not (tmp_path / "escape.wav.selections.txt").exists() and not Path("/tmp/abs.wav.selections.txt").exists()
    assert safe_relative("a/./../b") == "a/__/b" and printable("a\tb") == "a\\tb"


@pytest.mark.parametrize("damage", ["semicolons", "empty"])
def test_damaged_recordings_csv_is_a_clear_error(tiny_checkpoint, tmp_path, damage):
    """recordings.csv saved with ';' (a spreadsheet's doing) or emptied: summarize and
    evaluate-events exit 2 naming the file (and the missing columns), and rerunning the scan
    rebuilds it from the scan state as it was."""
    out = tmp_path / "out"
    args = scan_args(tiny_checkpoint, write_wav(tmp_path / "in" / "20240312_053000.wav"), "-o", out)
    assert invoke(*args).exit_code == 0
    index = out / "recordings.csv"
    good = index.read_bytes()
    index.write_text(good.decode().replace(",", ";") if damage == "semicolons" else "")
    truth = tmp_path / "20240312_053000.truth.selections.txt"
    truth.write_text("Selection\tBegin Time (s)\tEnd Time (s)\tSpecies\n1\t0\t3\tgibbon\n")
    for command in (["summarize", out, "-o", tmp_path / "sum"], ["evaluate-events", out, truth]):
        result = invoke(*command)
        assert result.exit_code == EXIT_USAGE, result.output
        assert str(index) in result.output and "rerun the scan" in result.output
        if damage == "semicolons":
            assert "'status'" in result.output
    assert invoke(*args).exit_code == 0
    assert index.read_bytes() == good
    assert invoke("summarize", out, "-o", tmp_path / "sum").exit_code == 0


# --- messages --------------------------------------------------------------------------------


def test_messages(tiny_checkpoint, tmp_path):
    rec = write_wav(tmp_path / "a.wav")
    out = tmp_path / "out"
    classes = invoke(*scan_args(tiny_checkpoint, rec, "-o", out, "--classes", ","))
    assert classes.exit_code == EXIT_USAGE and "at least one species" in classes.output
    workers = invoke(*scan_args(tiny_checkpoint, rec, "-o", out, "--workers", "-1"))
    assert workers.exit_code == EXIT_USAGE and "--workers" in workers.output
    quiet = invoke("scan", rec, "-o", out, "--model", tiny_checkpoint, "-q")  # -q after the subcommand
    assert quiet.exit_code == 0, quiet.output
    assert "h audio" not in quiet.output  # no progress bar
    unknown = invoke("export", out / "detections.parquet", "--format", "csv", "--classes", "gorilla", "-o", tmp_path / "e")
    assert unknown.exit_code == EXIT_USAGE and "gorilla" in unknown.output and "chimpanzee" in unknown.output
    assert ScanState(out).exists()


def test_library_scan_refuses_tiny_hop():
    with pytest.raises(ValueError, match="hop"):
        ScanConfig(hop_seconds=1e-5)
    with pytest.raises(ValueError, match="hop"):
        ScanConfig(hop_seconds=float("inf"))


def test_state_without_commits_accepts_new_parameters(tiny_checkpoint, tmp_path, monkeypatch):
    """A scan stopped before any recording committed (e.g. a crash on the first file) does not
    lock its folder to its parameters."""
    rec = write_wav(tmp_path / "a.wav")
    out = tmp_path / "out"
    from primate_monitor import scan_run

    def boom(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(scan_run.ScanRun, "scan_one", boom)
    with pytest.raises(KeyboardInterrupt):
        scan([rec], out, ScanConfig(), tiny_checkpoint, progress=False)
    monkeypatch.undo()
    summary = scan([rec], out, ScanConfig(hop_seconds=2.0), tiny_checkpoint, progress=False)
    assert summary.scanned == 1


# --- property: the scan's invariants over random folders, interruptions and changes ----------

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

KINDS = ("good", "short", "not_audio", "empty", "truncated", "link", "dangling")
ODD = ("", "\t", "$", "\n", " é")


def _make(folder: Path, i: int, kind: str, odd: str, seconds: float) -> None:
    name = folder / f"f{i}{odd}.wav"
    if kind in ("good", "short"):
        write_wav(name, seconds=seconds if kind == "good" else 1.5, offset=i % 10)
    elif kind == "not_audio":
        name.write_bytes(np.random.default_rng(i).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    elif kind == "empty":
        name.write_bytes(b"")
    elif kind == "truncated":
        write_wav(name, seconds=seconds, offset=1)
        data = name.read_bytes()
        name.write_bytes(data[: len(data) * 2 // 3])
    elif kind == "link":
        target = write_wav(folder.parent / "elsewhere" / f"t{i}.wav", seconds=seconds, offset=2)
        name.symlink_to(target)
    else:
        name.symlink_to(folder.parent / "nowhere.wav")


def _outputs(out: Path) -> tuple:
    events = read_parquet(out / "detections.parquet").sort_values(["recording", "begin_s", "species"], ignore_index=True)
    events.attrs = {}
    tables = {p.relative_to(out).as_posix(): p.read_text() for p in sorted((out / "raven").rglob("*.txt"))}
    return events, tables, (out / "recordings.csv").read_text(), (out / "failures.csv").read_text()


files_strategy = st.lists(st.tuples(st.sampled_from(KINDS), st.sampled_from(ODD), st.sampled_from([3.0, 4.5])),
                          min_size=1, max_size=5)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=files_strategy, stop_after=st.integers(0, 4), change=st.sampled_from(["none", "grow", "remove", "rename"]))
def test_scan_invariants_over_random_folders(tiny_checkpoint, tmp_path_factory, files, stop_after, change):
    """Every audio file ends in recordings.csv or failures.csv; no row twice; Raven rows equal
    Parquet rows; a scan interrupted after ``stop_after`` recordings, then changed (a file grows,
    goes or is renamed) and rerun, equals a clean scan of the final folder."""
    from primate_monitor import scan_run

    root = tmp_path_factory.mktemp("prop")
    folder = root / "in"
    folder.mkdir()
    for i, (kind, odd, seconds) in enumerate(files):
        _make(folder, i, kind, odd, seconds)
    out = root / "out"
    config = ScanConfig(hop_seconds=1.5)
    real_scan_one = scan_run.ScanRun.scan_one
    calls = {"n": 0}

    def interrupted(self, *a, **k):
        if calls["n"] >= stop_after:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real_scan_one(self, *a, **k)

    scan_run.ScanRun.scan_one = interrupted
    try:
        scan([folder], out, config, tiny_checkpoint, progress=False)
    except KeyboardInterrupt:
        pass
    finally:
        scan_run.ScanRun.scan_one = real_scan_one
    good = sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink() and p.stat().st_size > 10000)
    if change == "grow" and good:
        write_wav(good[0], seconds=7.0, offset=3)
    elif change == "remove" and good:
        good[0].unlink()
    elif change == "rename" and good:
        good[0].rename(good[0].with_name("renamed_" + good[0].name))
    if not any(folder.iterdir()):
        return
    scan([folder], out, config, tiny_checkpoint, progress=False)
    fresh = root / "fresh"
    scan([folder], fresh, config, tiny_checkpoint, progress=False)

    recordings = pd.read_csv(out / "recordings.csv", keep_default_na=False)
    failures = pd.read_csv(out / "failures.csv", keep_default_na=False)
    on_disk = sorted(printable(p.name) for p in folder.iterdir())
    assert sorted(recordings["recording"]) == on_disk
    assert set(recordings.loc[recordings["status"] != "ok", "recording"]) == set(failures["recording"])
    assert not recordings["recording"].duplicated().any() and not failures["recording"].duplicated().any()
    events, tables, *_ = _outputs(out)
    scanned = recordings.loc[recordings["status"] != "failed", "recording"]
    assert sorted(tables) == sorted(f"raven/{r}.selections.txt" for r in scanned)
    for rel in scanned:
        assert len(tables[f"raven/{rel}.selections.txt"].splitlines()) - 1 == (events["recording"] == rel).sum()
    ours, theirs = _outputs(out), _outputs(fresh)
    pd.testing.assert_frame_equal(ours[0], theirs[0])
    assert ours[1:] == theirs[1:]
