"""Regression tests for the training side of issue 9 (hardening against bad input and faults).

Each test builds its data in tmp_path: tiny noise WAVs where the audio does not matter
(the training runs here test folder handling, not learning), and models that train for
one or two steps of batch 2 on 1 s clips.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner, Result

from primate_monitor.cli import main
from primate_monitor.config import ConfigError, TrainConfig, load_config, valid_keys
from primate_monitor.data import DataError, load_splits

ROOT = Path(__file__).parent.parent
CONFIG = ROOT / "configs" / "cnn10_8k.yaml"
SR = 8000
CHEAP = ["--set", "batch_size=2", "--set", "clip_seconds=1", "--set", "eval_every=1"]


# ---- helpers ------------------------------------------------------------------------------
def cli(*args) -> Result:
    result = CliRunner().invoke(main, ["-q", *map(str, args)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback is a bug, not a user error
    return result


def assert_user_error(result: Result, *needles) -> None:
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "Traceback" not in result.output, result.output
    for needle in needles:
        assert str(needle) in result.output, (needle, result.output)


def write_wav(path: Path, seconds: float = 1.0, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed).normal(0, 0.1, int(seconds * SR)).astype(np.float32)
    sf.write(path, noise, SR)
    return path


def compare_data(root: Path, classes=("background", "gibbon"), per_class: int = 2) -> Path:
    """A ComParE-layout data set: wav/ plus lab/train.csv and lab/devel.csv."""
    seed = 0
    for split, n in (("train", per_class), ("devel", 1)):
        rows = []
        for label in classes:
            for i in range(n):
                seed += 1
                name = f"{split}_{label}_{i}.wav"
                write_wav(root / "wav" / name, seed=seed)
                rows.append((name, label))
        write_labels(root / "lab" / f"{split}.csv", rows)
    return root


def write_labels(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "label"])
        writer.writerows(rows)
    return path


def train_args(data: Path, out: Path, *extra, iterations: int = 1) -> list:
    return ["train", data, "--config", CONFIG, *CHEAP, "--set", f"iterations={iterations}", *extra, "-o", out]


def log_steps(run: Path) -> list[str]:
    with open(run / "train_log.csv") as f:
        return [row["step"] for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(data, run): a two-step run, to be copied by the tests that alter it."""
    base = tmp_path_factory.mktemp("trained")
    data = compare_data(base / "data")
    run = base / "run"
    result = cli(*train_args(data, run, iterations=2))
    assert result.exit_code == 0, result.output
    assert log_steps(run) == ["1", "2"]
    return data, run


@pytest.fixture()
def run_copy(trained, tmp_path) -> tuple[Path, Path]:
    data, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return data, copy


# ---- item 2: an existing run is neither replaced nor appended to ------------------------------
def test_train_refuses_a_folder_holding_a_run(run_copy):
    data, run = run_copy
    best = (run / "best.safetensors").read_bytes()
    log = (run / "train_log.csv").read_bytes()
    result = cli(*train_args(data, run))
    assert_user_error(result, run, "--resume", "--overwrite", "another -o")
    assert (run / "best.safetensors").read_bytes() == best
    assert (run / "train_log.csv").read_bytes() == log


def test_overwrite_replaces_only_what_train_wrote(run_copy):
    data, run = run_copy
    (run / "notes.txt").write_text("mine")
    (run / "skipped_clips.csv").write_text("path,label,reason\nold.wav,gibbon,stale\n")
    result = cli(*train_args(data, run, "--overwrite", iterations=1))
    assert result.exit_code == 0, result.output
    assert log_steps(run) == ["1"]  # the new run's rows only, none of the old run's
    assert (run / "notes.txt").read_text() == "mine"
    assert not (run / "skipped_clips.csv").exists()  # the new run skipped nothing
    assert (run / "best.safetensors").is_file() and (run / "resume.safetensors").is_file()


def test_resume_and_overwrite_exclude_each_other(run_copy):
    data, run = run_copy
    assert_user_error(cli(*train_args(data, run, "--overwrite", "--resume", iterations=3)), "--resume", "--overwrite")
    assert log_steps(run) == ["1", "2"]


def test_resume_does_not_repeat_a_logged_step(run_copy):
    """Killed after the log row of step 3 but before its resume state: step 3 is trained
    again on --resume, and the log must hold it once."""
    data, run = run_copy
    with open(run / "train_log.csv", "a") as f:
        f.write("3,0.5,0.5,0.5,0.5,0.5,1.0\n")
    result = cli(*train_args(data, run, "--resume", iterations=3))
    assert result.exit_code == 0, result.output
    assert log_steps(run) == ["1", "2", "3"]


# ---- item 9: class labels that would break tables later -----------------------------------------
BAD_LABELS = ["", "gib\tbon", "gib\nbon", "gib\rbon", "gib\x07bon", "gib\u2028bon"]


@pytest.mark.parametrize("label", BAD_LABELS)
def test_compare_csv_refuses_bad_labels(tmp_path, label):
    data = compare_data(tmp_path / "data")
    train_csv = data / "lab" / "train.csv"
    write_labels(train_csv, [("train_background_0.wav", "background"), ("train_gibbon_0.wav", label)])
    with pytest.raises(DataError) as err:
        load_splits(data, TrainConfig())
    message = str(err.value)
    assert str(train_csv) in message and "row 2" in message and "train_gibbon_0.wav" in message
    assert repr(label) in message or "empty" in message


def test_cli_names_the_row_of_a_bad_label(tmp_path):
    data = compare_data(tmp_path / "data")
    devel_csv = data / "lab" / "devel.csv"
    write_labels(devel_csv, [("devel_background_0.wav", "background"), ("devel_gibbon_0.wav", "gib\tbon")])
    result = cli(*train_args(data, tmp_path / "run"))
    assert_user_error(result, devel_csv, "row 2", repr("gib\tbon"), "tab")
    assert not (tmp_path / "run" / "best.safetensors").exists()


def test_class_folder_with_a_control_character_is_refused(tmp_path):
    data = tmp_path / "folders"
    write_wav(data / "background" / "a.wav")
    write_wav(data / "gib\x1bbon" / "b.wav", seed=1)
    with pytest.raises(DataError, match="class folder") as err:
        load_splits(data, TrainConfig())
    assert str(data / "gib\\x1bbon") in str(err.value) and "U+001B" in str(err.value)


def raven_table(path: Path, rows) -> Path:
    lines = ["Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tSpecies"]
    lines += [f"{i}\tSpectrogram 1\t1\t{b:.3f}\t{e:.3f}\t100\t4000\t{label}" for i, (b, e, label) in enumerate(rows, 1)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_raven_label_with_a_control_character_is_refused(tmp_path):
    data = tmp_path / "raven"
    write_wav(data / "rec1.wav", seconds=6)
    table = raven_table(data / "rec1.Table.1.selections.txt", [(0.5, 1.5, "gibbon"), (3.0, 4.0, "chimp\x1b")])
    with pytest.raises(DataError) as err:
        load_splits(data, TrainConfig(clip_seconds=1.0))
    assert str(table) in str(err.value) and "line 3" in str(err.value) and repr("chimp\x1b") in str(err.value)


# ---- item 22: label rows that point outside DATA --------------------------------------------------
@pytest.mark.parametrize("name", ["../../outside.wav", "wav/../../outside.wav", "ABSOLUTE"])
def test_label_row_outside_data_is_refused(tmp_path, name):
    data = compare_data(tmp_path / "data")
    outside = write_wav(tmp_path / "outside.wav")
    if name == "ABSOLUTE":
        name = str(outside)
    train_csv = write_labels(data / "lab" / "train.csv", [("train_background_0.wav", "background"), (name, "gibbon")])
    with pytest.raises(DataError) as err:
        load_splits(data, TrainConfig())
    assert str(train_csv) in str(err.value) and "row 2" in str(err.value) and name in str(err.value)
    result = cli(*train_args(data, tmp_path / "run"))
    assert_user_error(result, train_csv, "row 2")


def test_label_rows_inside_data_still_work(tmp_path):
    data = compare_data(tmp_path / "data")
    (data / "wav" / "sub").mkdir()
    write_labels(data / "lab" / "train.csv", [("train_background_0.wav", "background"),
                                              ("sub/../train_gibbon_0.wav", "gibbon"), ("wav/train_gibbon_1.wav", "gibbon")])
    splits = load_splits(data, TrainConfig())
    assert [c.path.resolve() for c in splits["train"]] == [
        (data / "wav" / n).resolve() for n in ("train_background_0.wav", "train_gibbon_0.wav", "train_gibbon_1.wav")]


# ---- item 18: a stratified devel hold-out, and a warning when a class has no devel clip --------------
def test_folder_hold_out_gives_every_class_a_devel_clip(tmp_path, caplog):
    data = tmp_path / "folders"
    counts = {"background": 10, "chimpanzee": 2, "gibbon": 3, "howler": 2, "lonely": 1}
    for label, n in counts.items():
        for i in range(n):
            write_wav(data / label / f"{label}_{i}.wav", seconds=0.1, seed=i)
    for seed in range(12):  # the hold-out is seeded: every seed must satisfy the rule
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            splits = load_splits(data, TrainConfig(seed=seed))
        devel = [c.label for c in splits["devel"]]
        train = [c.label for c in splits["train"]]
        for label, n in counts.items():
            if n >= 2:
                assert devel.count(label) == max(1, round(0.2 * n)), (seed, label, devel)
                assert train.count(label) == n - devel.count(label)
        assert "lonely" not in devel and train.count("lonely") == 1
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("'lonely'" in w and "devel" in w for w in warnings), warnings
        assert not any("'gibbon'" in w for w in warnings)


def test_raven_hold_out_is_stratified_by_recording(tmp_path):
    """Two recordings per species: a plain 20 % of four recordings is one recording, which
    leaves one species out of devel; stratified, each species gets one."""
    data = tmp_path / "raven"
    for i, label in enumerate(["gibbon", "gibbon", "chimpanzee", "chimpanzee"]):
        write_wav(data / f"rec{i}.wav", seconds=4, seed=i)
        raven_table(data / f"rec{i}.Table.1.selections.txt", [(0.5, 1.5, label), (2.0, 3.0, label)])
    for seed in range(4):
        splits = load_splits(data, TrainConfig(clip_seconds=1.0, seed=seed))
        for label in ("gibbon", "chimpanzee"):
            devel_recs = {c.path for c in splits["devel"] if c.label == label}
            train_recs = {c.path for c in splits["train"] if c.label == label}
            assert len(devel_recs) == 1 and len(train_recs) == 1 and not devel_recs & train_recs


def test_evaluate_warns_when_a_class_has_no_devel_clip(tiny_model, tmp_path, caplog):
    from primate_monitor.evaluate import evaluate

    data = compare_data(tmp_path / "data", classes=("background", "chimpanzee", "gibbon", "titi_monkey"), per_class=1)
    write_labels(data / "lab" / "devel.csv", [("devel_background_0.wav", "background"), ("devel_chimpanzee_0.wav", "chimpanzee"),
                                              ("devel_titi_monkey_0.wav", "titi_monkey")])
    with caplog.at_level(logging.WARNING):
        metrics = evaluate(tiny_model, data, "devel", tmp_path / "ev")
    assert metrics["classes_without_support"] == ["gibbon"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("gibbon" in w and "3 of 4" in w for w in warnings), warnings


# ---- item 20: the decoded-audio cache holds no pickle ------------------------------------------------
class _Exploit:
    """Unpickling this creates ``marker``: proof that a cache file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_tampered_cache_is_never_unpickled(run_copy, tmp_path):
    data, run = run_copy
    cache = run / "cache"
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Exploit(marker))
    entries = [p for p in cache.rglob("*") if p.is_file()]
    assert entries, "the first run wrote no cache"
    for p in entries:  # whatever format the cache has, every entry is now a malicious pickle
        p.write_bytes(payload)
    old_layout = cache / "joblib" / "primate_monitor" / "clipaudio" / "_decode" / ("0" * 32)
    old_layout.mkdir(parents=True)
    (old_layout / "output.pkl").write_bytes(payload)
    result = cli(*train_args(data, run, "--resume", iterations=3))
    assert result.exit_code == 0, result.output
    assert not marker.exists()
    for p in entries:  # the entries were decoded again, as plain arrays
        assert np.load(p, allow_pickle=False).dtype == np.float32


def test_cache_is_keyed_by_the_file(tmp_path):
    from primate_monitor.clipaudio import decode_clips
    from primate_monitor.data import Clip

    wav = write_wav(tmp_path / "a.wav", seed=1)
    clips = [Clip(wav, "x")]
    cache = tmp_path / "cache"
    _, first, _ = decode_clips(clips, SR, cache)
    entries = sorted(p for p in cache.rglob("*") if p.is_file())
    assert len(entries) == 1
    np.testing.assert_array_equal(np.load(entries[0], allow_pickle=False), first[0])
    _, again, _ = decode_clips(clips, SR, cache)
    np.testing.assert_array_equal(again[0], first[0])
    write_wav(wav, seconds=0.5, seed=2)  # the file changes: its old entry must not be used
    _, changed, _ = decode_clips(clips, SR, cache)
    assert len(changed[0]) == SR // 2
    np.testing.assert_allclose(changed[0], sf.read(wav, dtype="float32")[0], atol=1e-6)


def test_joblib_is_not_a_dependency():
    assert "joblib" not in (ROOT / "pyproject.toml").read_text()
    for module in (ROOT / "primate_monitor").rglob("*.py"):
        assert "import joblib" not in module.read_text(), module


# ---- clear messages -----------------------------------------------------------------------------------
def test_skip_bad_names_the_class_left_without_clips(tmp_path):
    data = compare_data(tmp_path / "data", classes=("background", "gibbon", "titi_monkey"))
    broken = [data / "wav" / f"train_titi_monkey_{i}.wav" for i in range(2)]
    for p in broken:
        p.write_bytes(np.random.default_rng(3).bytes(3000))
    result = cli(*train_args(data, tmp_path / "run", "--skip-bad"))
    assert_user_error(result, "'titi_monkey'", broken[0])
    assert "index" not in result.output


def test_ctrl_c_tells_how_to_resume(trained, tmp_path, monkeypatch):
    from primate_monitor import train as train_module

    data, _ = trained
    real_step = train_module.Trainer.train_step

    def step_then_interrupt(self):
        if self.step == 2:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(train_module.Trainer, "train_step", step_then_interrupt)
    run = tmp_path / "run"
    result = cli(*train_args(data, run, iterations=4))
    assert result.exit_code == 130, result.output
    assert "interrupted; rerun with --resume to continue from the last saved step" in result.output
    assert "Aborted" not in result.output
    monkeypatch.setattr(train_module.Trainer, "train_step", real_step)
    result = cli(*train_args(data, run, "--resume", iterations=3))
    assert result.exit_code == 0, result.output
    assert log_steps(run) == ["1", "2", "3"]


def test_config_keys_prints_type_default_and_meaning():
    result = cli("config-keys")
    assert result.exit_code == 0, result.output
    rows = [re.split(r"\s{2,}", line.strip(), maxsplit=3) for line in result.output.splitlines() if line.strip()]
    by_key = {row[0]: row for row in rows}
    assert list(by_key) == valid_keys()
    for field in dataclasses.fields(TrainConfig):
        key, kind, default, meaning = by_key[field.name]
        assert kind == str(field.type)
        assert load_config(None, [f"{key}={default}"]) == TrainConfig()  # the default shown is the default
        assert len(meaning.split()) >= 3, (key, meaning)


@pytest.mark.parametrize("override", ["eval_hop_seconds=.inf", "clip_seconds=.inf", "lr=.nan", "eval_hop_seconds=1e-9"])
def test_non_finite_or_sub_sample_config_values_are_refused(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config(CONFIG, [override])


# ---- item 12: evaluate --hop ---------------------------------------------------------------------------
@pytest.mark.parametrize("hop", ["0", "-1", "inf", "nan", "1e-9"])
def test_evaluate_refuses_a_bad_hop(tiny_checkpoint, tmp_path, hop):
    data = compare_data(tmp_path / "data", classes=("background", "chimpanzee"), per_class=1)
    write_wav(data / "wav" / "devel_background_0.wav", seconds=5)  # long: the hop is used
    result = cli("evaluate", tiny_checkpoint, data, "--hop", hop, "-o", tmp_path / "ev", "--device", "cpu")
    assert_user_error(result, "--hop")
    assert not (tmp_path / "ev" / "predictions.csv").exists()


# ---- item 10: -o that is a file, or under a file -------------------------------------------------------
@pytest.mark.parametrize("where", ["afile", "afile/sub"])
def test_train_and_evaluate_refuse_an_unusable_output(tmp_path, tiny_checkpoint, where):
    data = compare_data(tmp_path / "data", classes=("background", "chimpanzee"), per_class=1)
    (tmp_path / "afile").write_text("not a folder")
    out = tmp_path / where
    assert_user_error(cli(*train_args(data, out)), out)
    assert_user_error(cli("evaluate", tiny_checkpoint, data, "-o", out, "--device", "cpu"), out)
    assert (tmp_path / "afile").read_text() == "not a folder"
