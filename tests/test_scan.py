"""The scan pipeline end to end: CLI scan/detect/export, outputs, resume, bad files, library API."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import soxr
from click.testing import CliRunner

from primate_monitor.cli import EXIT_SOME_FAILED, EXIT_USAGE, main
from primate_monitor.events import EventOptions
from primate_monitor.scan_run import STATE_DIR, scan
from primate_monitor.scan_state import ScanState
from primate_monitor.scanner import ScanConfig, scan_recording
from primate_monitor.writers import EVENT_COLUMNS, RAVEN_HEADER, read_parquet

FIXTURES = Path(__file__).parent / "fixtures"
RECORDING = FIXTURES / "recording" / "20240312_053000.wav"  # 20 s, 8 kHz, no comment: start from the name
CLIP6 = FIXTURES / "clips" / "wav" / "devel_0007.wav"  # 6 s, 8 kHz
RAVEN_HEADER_LINE = ("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)"
                     "\tSpecies\tScore\tBegin Path\tFile Offset (s)")
SPECIES = ("chimpanzee", "gibbon", "titi_monkey")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def read_rec() -> tuple[np.ndarray, int]:
    return sf.read(RECORDING, dtype="float32")


def invoke(*args: str):
    """Run the CLI in-process; restore the root logger's handlers, which the CLI replaces with one on
    the runner's (then closed) stderr."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def make_folder(root: Path) -> Path:
    """A folder of recordings in every layout the scan must handle."""
    audio, sr = read_rec()
    root.mkdir(parents=True)
    shutil.copy(RECORDING, root / "20240312_053000.wav")  # 8 kHz mono, AudioMoth name
    long = np.concatenate([audio, audio[: 10 * sr]])  # 30 s
    x48 = soxr.resample(long, sr, 48000)
    sf.write(root / "20240312_060000.wav", np.stack([x48, 0.5 * x48], axis=1), 48000, subtype="PCM_16")  # 48k stereo
    (root / "sub").mkdir()
    sf.write(root / "sub" / "20240313_053000.flac", audio[::-1].copy(), sr, format="FLAC", subtype="PCM_16")
    sf.write(root / "forest.wav", soxr.resample(audio[5 * sr : 15 * sr], sr, 16000), 16000, subtype="PCM_16")  # no start
    shutil.copy(CLIP6, root / "CLIP.WAV")  # upper-case extension
    return root


EXPECTED_RECORDINGS = ["20240312_053000.wav", "20240312_060000.wav", "CLIP.WAV", "forest.wav", "sub/20240313_053000.flac"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("scan") / "recordings")


@pytest.fixture(scope="module")
def scan_all(folder, tiny_checkpoint, tmp_path_factory):
    """Scan at threshold 0 with window scores: every recording has events."""
    out = tmp_path_factory.mktemp("scan_all") / "out"
    result = invoke("-q", "scan", folder, "-o", out, "--model", tiny_checkpoint, "--threshold", "0.0",
                    "--save-window-scores")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def mixed_threshold(scan_all) -> float:
    """A threshold between the two lowest per-recording maxima: one recording without detections."""
    windows = pd.read_parquet(scan_all / "windows.parquet")
    best = windows.groupby("recording")[[f"score_{s}" for s in SPECIES]].max().max(axis=1).sort_values()
    assert best.iloc[0] < best.iloc[1], "two recordings with the same top score; pick other audio"
    return float((best.iloc[0] + best.iloc[1]) / 2)


@pytest.fixture(scope="module")
def scan_mixed(folder, tiny_checkpoint, mixed_threshold, tmp_path_factory):
    out = tmp_path_factory.mktemp("scan_mixed") / "out"
    result = invoke("-q", "scan", folder, "-o", out, "--model", tiny_checkpoint, "--threshold", f"{mixed_threshold!r}")
    assert result.exit_code == 0, result.output
    return out


def sorted_events(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["recording", "begin_s", "species"], kind="mergesort", ignore_index=True)


def raven_tables(out: Path) -> dict[str, bytes]:
    raven = out / "raven"
    return {p.relative_to(raven).as_posix(): p.read_bytes() for p in sorted(raven.rglob("*.selections.txt"))}


# --- outputs of a plain scan ------------------------------------------------------------------


def test_scan_finds_every_layout(scan_all):
    recs = pd.read_csv(scan_all / "recordings.csv", keep_default_na=False)
    assert sorted(recs["recording"]) == EXPECTED_RECORDINGS
    assert (recs["status"] == "ok").all()
    by_name = recs.set_index("recording")
    assert by_name.loc["20240312_060000.wav", "sample_rate"] == 48000
    assert by_name.loc["20240312_060000.wav", "channels"] == 2
    assert by_name.loc["20240312_060000.wav", "duration_s"] == pytest.approx(30.0, abs=1e-3)
    assert by_name.loc["sub/20240313_053000.flac", "format"].startswith("FLAC")
    assert by_name.loc["forest.wav", "n_windows"] == 8  # 10 s at hop 1 s: starts 0..7
    failures = pd.read_csv(scan_all / "failures.csv")
    assert len(failures) == 0


def test_parquet_schema_and_metadata(scan_all, tiny_model):
    table = pq.read_table(scan_all / "detections.parquet")
    assert table.column_names == list(EVENT_COLUMNS)
    utc = pa.timestamp("us", tz="UTC")
    expected = {"recording": pa.string(), "recording_path": pa.string(), "recording_start": utc, "begin_s": pa.float64(),
                "end_s": pa.float64(), "begin_time": utc, "end_time": utc, "species": pa.string(),
                "peak_score": pa.float64(), "mean_score": pa.float64(), "n_windows": pa.int64(),
                "low_freq_hz": pa.float64(), "high_freq_hz": pa.float64(), "model": pa.string()}
    assert {f.name: f.type for f in table.schema} == expected
    meta = json.loads(table.schema.metadata[b"primate_monitor"])
    assert meta["threshold"] == 0.0 and meta["hop_seconds"] == 1.0 and meta["mode"] == "auto"
    assert meta["model"] == tiny_model.name and meta["save_window_scores"] is True
    assert meta["classes"] == list(tiny_model.info.classes) and meta["reject_class"] == "background"
    assert meta["inputs"] and all(Path(p).is_absolute() for p in meta["inputs"])
    events = table.to_pandas()
    assert set(events["recording"]) == set(EXPECTED_RECORDINGS)  # threshold 0: every recording has events
    assert set(events["species"]) == set(SPECIES)  # never the reject class
    assert not events.duplicated(["recording", "species", "begin_s"]).any()


def test_begin_time_from_recording_start(scan_all):
    events = read_parquet(scan_all / "detections.parquet")
    known = events[events["recording"] == "20240312_053000.wav"]
    assert len(known) > 0
    start = pd.Timestamp(datetime(2024, 3, 12, 5, 30, tzinfo=timezone.utc))
    assert (known["recording_start"] == start).all()
    expected = start + pd.to_timedelta(known["begin_s"], unit="s")
    assert (known["begin_time"] == expected).all()
    assert (known["end_time"] == start + pd.to_timedelta(known["end_s"], unit="s")).all()
    unknown = events[events["recording"] == "forest.wav"]
    assert len(unknown) > 0
    assert unknown["recording_start"].isna().all() and unknown["begin_time"].isna().all() \
        and unknown["end_time"].isna().all()


def test_raven_tables_match_parquet(scan_mixed, folder, mixed_threshold):
    events = read_parquet(scan_mixed / "detections.parquet")
    tables = raven_tables(scan_mixed)
    assert sorted(tables) == sorted(f"{r}.selections.txt" for r in EXPECTED_RECORDINGS)  # mirrors sub/
    header_only = 0
    for rec in EXPECTED_RECORDINGS:
        lines = tables[f"{rec}.selections.txt"].decode().split("\n")
        assert lines[0] == RAVEN_HEADER_LINE and "\t".join(RAVEN_HEADER) == RAVEN_HEADER_LINE
        assert lines[-1] == ""  # ends with a newline
        rows = [line.split("\t") for line in lines[1:-1]]
        ours = events[events["recording"] == rec].sort_values(["begin_s", "species"], kind="mergesort")
        assert len(rows) == len(ours), rec
        header_only += not rows
        for i, (row, ev) in enumerate(zip(rows, ours.itertuples())):
            assert row[0] == str(i + 1) and row[1] == "Spectrogram 1" and row[2] == "1"
            assert float(row[3]) == pytest.approx(ev.begin_s, abs=1e-6)
            assert float(row[4]) == pytest.approx(ev.end_s, abs=1e-6)
            assert row[7] == ev.species
            assert float(row[8]) == pytest.approx(ev.peak_score, abs=5e-5)
            assert ev.peak_score >= mixed_threshold
            path = Path(row[9])
            assert path.is_absolute() and path.is_file() and path == (folder / rec).resolve()
            assert float(row[10]) == pytest.approx(ev.begin_s, abs=1e-6)
    assert header_only == 1  # the threshold was chosen to leave exactly one recording without detections
    assert len(events) > 0


# --- detect and export ---------------------------------------------------------------------


def test_detect_same_threshold_reproduces_scan(scan_all, tmp_path):
    result = invoke("detect", scan_all, "--threshold", "0.0", "-o", tmp_path / "d")
    assert result.exit_code == 0, result.output
    again = read_parquet(tmp_path / "d" / "detections.parquet")
    original = read_parquet(scan_all / "detections.parquet")
    pd.testing.assert_frame_equal(sorted_events(again), sorted_events(original))
    assert raven_tables(tmp_path / "d") == raven_tables(scan_all)


def test_detect_matches_a_scan_at_that_threshold(scan_all, scan_mixed, mixed_threshold, tmp_path):
    """Re-thresholding saved window scores gives what a fresh scan at that threshold gives."""
    result = invoke("detect", scan_all, "--threshold", f"{mixed_threshold!r}", "-o", tmp_path / "d")
    assert result.exit_code == 0, result.output
    redone = read_parquet(tmp_path / "d" / "detections.parquet")
    direct = read_parquet(scan_mixed / "detections.parquet")
    pd.testing.assert_frame_equal(sorted_events(redone), sorted_events(direct))
    assert raven_tables(tmp_path / "d") == raven_tables(scan_mixed)
    meta = redone.attrs["primate_monitor"]
    assert meta["threshold"] == mixed_threshold and meta["redetected_from"] == str(scan_all)


def test_detect_higher_threshold_fewer_windows(scan_all, mixed_threshold, tmp_path):
    low = read_parquet(scan_all / "detections.parquet")
    result = invoke("detect", scan_all, "--threshold", f"{mixed_threshold!r}", "-o", tmp_path / "d")
    assert result.exit_code == 0, result.output
    high = read_parquet(tmp_path / "d" / "detections.parquet")
    assert 0 < len(high)
    # at threshold 0 overlapping windows merge into one event per species; a higher threshold can
    # split one into several, so compare detected windows, which can only drop
    assert high["n_windows"].sum() < low["n_windows"].sum()
    assert (high["peak_score"] >= mixed_threshold).all()


def test_export_min_score_one_keeps_nothing_even_saturated(scan_mixed, tmp_path):
    """--min-score 1 means "none", as a threshold of 1 does everywhere (events.passing): a
    saturated peak score of 1.0 is not kept."""
    from primate_monitor.redetect import export as run_export
    from primate_monitor.writers import write_parquet

    events = read_parquet(scan_mixed / "detections.parquet")
    events.loc[events.index[0], "peak_score"] = 1.0
    saturated = tmp_path / "detections.parquet"
    write_parquet(events, saturated, events.attrs.get("primate_monitor"))
    run_export(saturated, "csv", tmp_path / "none", min_score=1.0)
    assert len(pd.read_csv(tmp_path / "none" / "events.csv")) == 0
    run_export(saturated, "csv", tmp_path / "all", min_score=0.0)
    assert len(pd.read_csv(tmp_path / "all" / "events.csv")) == len(events)


def test_detect_without_window_scores_fails(scan_mixed, tmp_path):
    result = invoke("detect", scan_mixed, "--threshold", "0.5", "-o", tmp_path / "d")
    assert result.exit_code == EXIT_USAGE
    assert "save-window-scores" in result.output


@pytest.mark.parametrize("fmt", ["csv", "audacity", "raven"])
def test_export_formats_and_min_score(scan_mixed, tmp_path, fmt):
    events = read_parquet(scan_mixed / "detections.parquet")
    min_score = float(events["peak_score"].median())
    kept = sorted_events(events[events["peak_score"] >= min_score].reset_index(drop=True))
    assert 0 < len(kept) < len(events)
    dest = tmp_path / fmt
    result = invoke("export", scan_mixed / "detections.parquet", "--format", fmt, "--min-score", f"{min_score!r}",
                    "-o", dest)
    assert result.exit_code == 0, result.output
    if fmt == "csv":
        table = pd.read_csv(dest / "events.csv")
        assert list(table.columns) == list(EVENT_COLUMNS)
        assert len(table) == len(kept) and (table["peak_score"] >= min_score).all()
        return
    suffix = ".labels.txt" if fmt == "audacity" else ".selections.txt"
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob(f"*{suffix}"))
    assert files == sorted(f"{r}{suffix}" for r in EXPECTED_RECORDINGS)  # one per scanned recording
    total = 0
    for rec in EXPECTED_RECORDINGS:
        lines = (dest / f"{rec}{suffix}").read_text().splitlines()
        if fmt == "raven":
            assert lines[0] == RAVEN_HEADER_LINE
            lines = lines[1:]
            scores = [float(line.split("\t")[8]) for line in lines]
        else:
            scores = [float(line.split("\t")[2].rsplit("(", 1)[1].rstrip(")")) for line in lines]
        assert len(lines) == int((kept["recording"] == rec).sum())
        assert all(s >= round(min_score, 4) - 0.01 for s in scores)  # printed rounded (.4f / .2f)
        total += len(lines)
    assert total == len(kept)


# --- bad files -----------------------------------------------------------------------------


def make_bad_folder(root: Path) -> Path:
    audio, sr = read_rec()
    root.mkdir(parents=True)
    shutil.copy(RECORDING, root / "20240312_053000.wav")
    shutil.copy(CLIP6, root / "clip.wav")
    (root / "empty.wav").write_bytes(b"")
    full = root / "truncated.wav"
    sf.write(full, audio[: 10 * sr], sr, subtype="PCM_16")
    data = full.read_bytes()
    full.write_bytes(data[: len(data) // 2])  # header still promises 10 s
    (root / "noise.wav").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (root / "notes.flac").write_text("field notes: nothing here is audio\n" * 20)
    bad = audio[: 6 * sr].copy()
    bad[100:200] = np.nan
    bad[8000:8010] = np.inf
    bad[16000:16010] = -np.inf
    sf.write(root / "nan.wav", bad, sr, subtype="FLOAT")
    return root


def test_a_wav_holding_more_than_its_header_declares_is_partial_not_silently_cut(tiny_checkpoint, tmp_path):
    """A WAV over 4 GiB cannot declare its size, and libsndfile reads only what the header says.
    Stand-in: 10 s declared, then 2 MiB more audio bytes after the data chunk. The scan reads the
    10 s, lists the file as partial ("oversize", exit 3) and says what to do. A few KB after the
    audio (a metadata chunk) is normal and stays "ok"."""
    audio, sr = read_rec()
    root = tmp_path / "rec"
    root.mkdir()
    big, small = root / "big.wav", root / "small.wav"
    for path, extra in ((big, 2 * 2**20 + 2), (small, 4096)):
        sf.write(path, audio[: 10 * sr], sr, subtype="PCM_16")
        with open(path, "ab") as f:
            f.write(np.random.default_rng(1).integers(-3000, 3000, extra // 2, dtype=np.int16).tobytes())
    out = tmp_path / "out"
    result = invoke("-q", "scan", root, "-o", out, "--model", tiny_checkpoint)
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    failures = pd.read_csv(out / "failures.csv", keep_default_na=False).set_index("recording")
    assert dict(failures["kind"]) == {"big.wav": "oversize"}
    assert "2 MiB more than its WAV header declares" in failures.loc["big.wav", "message"]
    assert "RF64" in failures.loc["big.wav", "message"]
    recs = pd.read_csv(out / "recordings.csv", keep_default_na=False).set_index("recording")
    assert recs.loc["big.wav", "status"] == "partial" and recs.loc["small.wav", "status"] == "ok"
    assert float(recs.loc["big.wav", "duration_s"]) == pytest.approx(10.0)
    assert recs.loc["big.wav", "note"].startswith("oversize WAV") and recs.loc["small.wav", "note"] == ""


def test_cut_ogg_and_mp3_files_are_partial_not_ok(tiny_checkpoint, tmp_path):
    """Ogg and MP3 files cut short by a dying recorder were listed as "ok", their lost audio
    unmentioned. Both are now "partial" ("truncated", exit 3) with the audio that is there
    scanned; the whole files stay "ok"."""
    formats = [("ogg", "OGG", "VORBIS")] + ([("mp3", "MP3", "MPEG_LAYER_III")] if "MP3" in sf.available_formats() else [])
    audio, sr = read_rec()
    root = tmp_path / "rec"
    root.mkdir()
    for ext, fmt, subtype in formats:
        whole = root / f"whole.{ext}"
        sf.write(whole, audio, sr, format=fmt, subtype=subtype)
        (root / f"cut.{ext}").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    out = tmp_path / "out"
    result = invoke("-q", "scan", root, "-o", out, "--model", tiny_checkpoint)
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    recs = pd.read_csv(out / "recordings.csv", keep_default_na=False).set_index("recording")
    failures = pd.read_csv(out / "failures.csv", keep_default_na=False).set_index("recording")
    for ext, _, _ in formats:
        assert recs.loc[f"whole.{ext}", "status"] == "ok"
        assert recs.loc[f"cut.{ext}", "status"] == "partial", recs.loc[f"cut.{ext}"].to_dict()
        assert failures.loc[f"cut.{ext}", "kind"] == "truncated"
        assert 4.0 < float(recs.loc[f"cut.{ext}", "duration_s"]) < 16.0  # about half of the 20 s, scanned
        assert str(recs.loc[f"cut.{ext}", "truncated"]) == "True" and "truncated" in recs.loc[f"cut.{ext}", "note"]
    assert set(failures.index) == {f"cut.{ext}" for ext, _, _ in formats}


def test_a_flac_damaged_at_its_start_is_partial_and_the_scan_goes_on(tiny_checkpoint, tmp_path):
    """A FLAC that loses sync inside the first read (cut short by a dying recorder) once stopped
    the whole scan with "need at least one array to concatenate" (exit 2). It is now a partial
    recording holding the seconds that decode, and the other files are scanned."""
    source = Path(__file__).parent.parent / "sample_data" / "recordings" / "20240312_053000.flac"
    root = tmp_path / "rec"
    root.mkdir()
    (root / "cut.flac").write_bytes(source.read_bytes()[:300_000])
    (root / "whole.flac").write_bytes(source.read_bytes())
    out = tmp_path / "out"
    result = invoke("-q", "scan", root, "-o", out, "--model", tiny_checkpoint)
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    recs = pd.read_csv(out / "recordings.csv", keep_default_na=False).set_index("recording")
    assert recs.loc["whole.flac", "status"] == "ok"
    assert recs.loc["cut.flac", "status"] == "partial" and recs.loc["cut.flac", "error_kind"] == "corrupt"
    assert 5.0 < float(recs.loc["cut.flac", "duration_s"]) < 20.0


def test_bad_files_are_reported_not_fatal(tiny_checkpoint, tmp_path):
    root = make_bad_folder(tmp_path / "bad")
    out = tmp_path / "out"
    result = invoke("-q", "scan", root, "-o", out, "--model", tiny_checkpoint, "--threshold", "0.0",
                    "--save-window-scores")
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    assert "failures.csv" in result.output
    failures = pd.read_csv(out / "failures.csv", keep_default_na=False).set_index("recording")
    # one rule (README, exit code 3): a file read only partly, a truncated one too, is listed as partial
    assert dict(failures["kind"]) == {"empty.wav": "empty", "noise.wav": "not_audio", "notes.flac": "not_audio",
                                      "truncated.wav": "truncated"}
    assert dict(failures["status"]) == {"empty.wav": "failed", "noise.wav": "failed", "notes.flac": "failed",
                                        "truncated.wav": "partial"}
    assert "truncated.wav" in failures.loc["truncated.wav", "message"]
    assert all(Path(p).is_absolute() for p in failures["path"])
    recs = pd.read_csv(out / "recordings.csv", keep_default_na=False).set_index("recording")
    assert len(recs) == 7
    trunc = recs.loc["truncated.wav"]
    assert trunc["status"] == "partial" and str(trunc["truncated"]) == "True" and "truncated" in trunc["note"]
    assert 0 < float(trunc["duration_s"]) < 10.0
    assert recs.loc["nan.wav", "status"] == "ok"
    windows = pd.read_parquet(out / "windows.parquet")
    score_cols = [c for c in windows.columns if c.startswith("score_")]
    assert np.isfinite(windows[score_cols].to_numpy()).all()
    assert (windows["recording"] == "nan.wav").sum() == 4  # 6 s at hop 1 s: starts 0..3
    good = ["20240312_053000.wav", "clip.wav", "nan.wav", "truncated.wav"]
    assert sorted(raven_tables(out)) == sorted(f"{r}.selections.txt" for r in good)
    events = read_parquet(out / "detections.parquet")
    assert set(events["recording"]) == set(good)
    run = json.loads((out / "run.json").read_text())
    assert run["totals"]["failed"] == 4 and run["totals"]["truncated"] == 1 and run["totals"]["files"] == 7


def test_unknown_extension_given_explicitly_is_unsupported(tiny_checkpoint, tmp_path):
    (tmp_path / "in").mkdir()
    good = tmp_path / "in" / "clip.wav"
    shutil.copy(CLIP6, good)
    odd = tmp_path / "in" / "notes.xyz"
    odd.write_text("not audio at all\n" * 10)
    # discovery skips it inside a folder ...
    result = invoke("-q", "scan", tmp_path / "in", "-o", tmp_path / "out1", "--model", tiny_checkpoint)
    assert result.exit_code == 0, result.output
    assert list(pd.read_csv(tmp_path / "out1" / "recordings.csv")["recording"]) == ["clip.wav"]
    # ... but named as an argument it is attempted and fails visibly
    result = invoke("-q", "scan", good, odd, "-o", tmp_path / "out2", "--model", tiny_checkpoint)
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    failures = pd.read_csv(tmp_path / "out2" / "failures.csv")
    assert list(failures["recording"]) == ["notes.xyz"] and list(failures["kind"]) == ["unsupported"]


# --- resume --------------------------------------------------------------------------------


def cli_command(*args) -> list[str]:
    return [sys.executable, "-m", "primate_monitor", *map(str, args)]


def cli_env() -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_resume_after_kill_equals_uninterrupted_run(tiny_checkpoint, tmp_path):
    audio, sr = read_rec()
    root = tmp_path / "long"
    root.mkdir()
    # a short first file, then two long ones: the kill lands while the second is being scanned
    sf.write(root / "a_20240312_050000.wav", audio, sr, subtype="PCM_16")
    sf.write(root / "b_20240312_060000.wav", np.concatenate([audio, audio[::-1], audio]), sr, subtype="PCM_16")
    sf.write(root / "c.wav", np.concatenate([audio[::-1], audio, audio[::-1]]), sr, subtype="PCM_16")
    args = ("scan", root, "--model", tiny_checkpoint, "--threshold", "0.0")

    reference = tmp_path / "reference"
    result = invoke("-q", *args, "-o", reference)
    assert result.exit_code == 0, result.output

    out = tmp_path / "resumed"
    state = out / STATE_DIR
    with open(tmp_path / "first.log", "wb") as log:
        proc = subprocess.Popen(cli_command(*args, "-o", out), stdout=log, stderr=subprocess.STDOUT, env=cli_env())
        deadline = time.monotonic() + 120
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if state.is_dir() and ScanState(out).keys():  # a recording's record has landed
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.005)
        finally:
            if proc.poll() is None and time.monotonic() >= deadline:
                proc.kill()
            proc.wait()
    committed = ScanState(out).keys()
    killed = proc.returncode == -signal.SIGKILL
    assert killed or proc.returncode == 0, (tmp_path / "first.log").read_text()
    if killed:  # the usual case: interrupted after 1 (maybe 2) of 3 recordings
        assert 1 <= len(committed) <= 2
        assert not (out / "detections.parquet").exists()
    # else the first run finished before the kill: the rerun below still takes the resume path (3 done)

    second = subprocess.run(cli_command(*args, "-o", out), capture_output=True, text=True, env=cli_env(), timeout=120)
    assert second.returncode == 0, second.stderr
    assert f"{len(committed)} done earlier" in second.stdout
    run = json.loads((out / "run.json").read_text())
    assert run["totals"]["resumed_recordings"] == len(committed)

    ours, theirs = read_parquet(out / "detections.parquet"), read_parquet(reference / "detections.parquet")
    assert not ours.duplicated(["recording", "species", "begin_s"]).any()
    assert len(ours) > 0 and set(ours["recording"]) == {"a_20240312_050000.wav", "b_20240312_060000.wav", "c.wav"}
    pd.testing.assert_frame_equal(sorted_events(ours), sorted_events(theirs))
    assert ours.attrs == theirs.attrs  # same run parameters in the metadata
    assert raven_tables(out) == raven_tables(reference)
    assert len(raven_tables(out)) == 3
    assert (out / "recordings.csv").read_bytes() == (reference / "recordings.csv").read_bytes()

    # other parameters into the same OUT: refused, then --overwrite starts again
    changed = invoke("-q", "scan", root, "--model", tiny_checkpoint, "--threshold", "0.9", "-o", out)
    assert changed.exit_code == EXIT_USAGE
    assert "different parameters" in changed.output and "threshold" in changed.output
    fresh = invoke("-q", "scan", root, "--model", tiny_checkpoint, "--threshold", "0.9", "-o", out, "--overwrite")
    assert fresh.exit_code == 0, fresh.output
    assert "done earlier" not in fresh.output
    assert read_parquet(out / "detections.parquet").attrs["primate_monitor"]["threshold"] == 0.9


def test_resume_with_the_same_weights_at_another_path(tiny_checkpoint, tmp_path):
    """A scan resumes when its model's weights are found at another path (the bundled model after
    a reinstall into another environment, a moved run folder): the model is named by its weights'
    digest. Other weights are still refused, and so is nothing else that changed."""
    root = tmp_path / "in"
    root.mkdir()
    shutil.copy(RECORDING, root / "a_20240312_050000.wav")
    out = tmp_path / "out"
    assert invoke("-q", "scan", root, "--model", tiny_checkpoint, "-o", out).exit_code == 0
    moved = tmp_path / "moved" / "model.safetensors"
    moved.parent.mkdir()
    shutil.copy(tiny_checkpoint, moved)
    shutil.copy(Path(tiny_checkpoint).with_suffix(".json"), moved.with_suffix(".json"))
    # a scan started before this change also recorded the model's path among its parameters
    params = out / STATE_DIR / "params.json"
    meta = json.loads(params.read_text())
    meta["params"]["model_path"] = str(Path(tiny_checkpoint).resolve())
    params.write_text(json.dumps(meta))
    again = invoke("-q", "scan", root, "--model", moved, "-o", out)
    assert again.exit_code == 0, again.output
    assert "1 done earlier" in again.output
    assert json.loads(params.read_text())["model"]["path"] == str(moved.resolve())  # where it now lies

    other = tmp_path / "other" / "model.safetensors"
    other.parent.mkdir()
    from safetensors.torch import load_file

    from primate_monitor.checkpoint import ModelInfo, read_metadata, save_checkpoint

    tensors = load_file(str(tiny_checkpoint))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1.0  # other weights, same architecture and classes
    save_checkpoint(other, tensors, ModelInfo.from_dict(read_metadata(tiny_checkpoint), str(tiny_checkpoint)))
    refused = invoke("-q", "scan", root, "--model", other, "-o", out)
    assert refused.exit_code == EXIT_USAGE and "different parameters" in refused.output and "model" in refused.output


# --- library API and console --------------------------------------------------------------


def test_scan_recording_library(tiny_checkpoint, scan_all):
    config = ScanConfig(hop_seconds=1.0, events=EventOptions(threshold=0.0), mode="fast")
    events = scan_recording(RECORDING, tiny_checkpoint, config)
    assert list(events.columns) == list(EVENT_COLUMNS)
    assert set(events["species"]) == set(SPECIES)
    assert (events["recording"] == RECORDING.name).all()
    assert (events["recording_path"] == str(RECORDING.resolve())).all()
    # the same events as the CLI scan of a copy of this file (apart from the path)
    cli = read_parquet(scan_all / "detections.parquet")
    cli = cli[cli["recording"] == RECORDING.name].drop(columns="recording_path").reset_index(drop=True)
    pd.testing.assert_frame_equal(events.drop(columns="recording_path"), cli)


def test_scan_library_summary(tiny_checkpoint, tmp_path):
    (tmp_path / "in").mkdir()
    shutil.copy(CLIP6, tmp_path / "in" / "a.wav")
    shutil.copy(CLIP6, tmp_path / "in" / "b.wav")
    (tmp_path / "in" / "broken.wav").write_bytes(b"")
    config = ScanConfig(events=EventOptions(threshold=0.0), mode="exact")
    summary = scan([tmp_path / "in"], tmp_path / "out", config, model=tiny_checkpoint, progress=False)
    assert (summary.files, summary.scanned, summary.failed) == (3, 2, 1)
    assert summary.events == len(read_parquet(tmp_path / "out" / "detections.parquet")) == 6  # 3 species x 2 files
    assert summary.audio_hours == pytest.approx(12 / 3600)
    assert summary.skipped_done == 0


def test_quiet_prints_summary_without_progress_bar(tiny_checkpoint, tmp_path):
    (tmp_path / "in").mkdir()
    shutil.copy(CLIP6, tmp_path / "in" / "a.wav")
    loud = invoke("scan", tmp_path / "in", "-o", tmp_path / "loud", "--model", tiny_checkpoint)
    quiet = invoke("-q", "scan", tmp_path / "in", "-o", tmp_path / "quiet", "--model", tiny_checkpoint)
    assert loud.exit_code == quiet.exit_code == 0
    assert "h audio" in loud.stderr  # the bar is there when not quiet, so its absence below means something
    assert quiet.stderr == ""
    assert quiet.stdout.startswith("scanned 1/1 recordings")
