"""End to end through the command line: train, resume, evaluate, info, and the user errors.

Iterations, batches (4, not 8: one batch-8 cnn10 step takes ~2.5 s on two shared cores)
and, where the model is not the point, clip lengths are tiny so the file runs in ~30 s.
"""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner, Result

from primate_monitor.cli import main

ROOT = Path(__file__).parent.parent
CLIPS = Path(__file__).parent / "fixtures" / "clips"
CONFIG = ROOT / "configs" / "cnn10_8k.yaml"
CLASSES = ["background", "chimpanzee", "gibbon", "titi_monkey"]
# for runs that test data handling rather than the model: as cheap as the CLI allows
CHEAP = ["--set", "batch_size=2", "--set", "clip_seconds=1", "--set", "eval_every=1"]


def cli(*args) -> Result:
    result = CliRunner().invoke(main, ["-q", *map(str, args)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback is a bug, not a user error: show it
    return result


def train_args(data, out, *extra, iterations=6, cache=None):
    cache_args = ["--set", f"cache_dir={cache}"] if cache is not None else []
    return ["train", data, "--config", CONFIG, "--set", f"iterations={iterations}", *cache_args, *extra, "-o", out]


def read_log(run: Path) -> list[dict]:
    with open(run / "train_log.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def run(workdir) -> Path:
    out = workdir / "run"
    result = cli(*train_args(CLIPS, out, "--set", "eval_every=3", "--set", "batch_size=4", cache=workdir / "cache"))
    assert result.exit_code == 0, result.output
    assert "best devel UAR" in result.output
    return out


@pytest.fixture()
def data_copy(tmp_path) -> Path:
    dst = tmp_path / "clips"
    shutil.copytree(CLIPS, dst)
    return dst


def assert_user_error(result, *needles):
    assert result.exit_code == 2, result.output
    assert "error:" in result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert str(needle) in result.output, (needle, result.output)


# ---- train, evaluate, info -------------------------------------------------------------
def test_train_writes_checkpoint_and_log(run):
    names = {p.name for p in run.iterdir()}
    assert {"best.safetensors", "best.json", "resume.safetensors", "train_log.csv"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    log = read_log(run)
    assert [r["step"] for r in log] == ["3", "6"]
    for row in log:
        assert 0 <= float(row["uar_raw"]) <= 1 and np.isfinite(float(row["loss"]))
    meta = json.loads((run / "best.json").read_text())
    assert meta["classes"] == CLASSES and meta["model"] == "cnn10" and meta["sample_rate"] == 8000
    assert meta["activation"] == "sigmoid" and meta["metrics"]["step"] in (3, 6)
    assert meta["config"]["iterations"] == 6 and meta["config"]["batch_size"] == 4


def test_train_calibrates_best_for_int8_and_auto_follows_its_check(run, tmp_path):
    """The run ends with best.int8.safetensors: made for best's weights, with the agreement check
    that --precision auto reads; a scan with the default precision records what ran."""
    from safetensors import safe_open

    from primate_monitor.checkpoint import load_checkpoint
    from primate_monitor.int8_check import check_passed
    from primate_monitor.quantize import weights_digest

    with safe_open(str(run / "best.int8.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["primate_monitor_int8"])
    assert meta["for_weights"] == weights_digest(load_checkpoint(run / "best.safetensors", "cpu").network)
    check = meta["agreement"]
    assert check["windows"] >= 1 and 0 <= check["decisions_equal"] <= 1 and check["p99_abs_diff"] <= check["max_abs_diff"]
    recording = Path(__file__).parent / "fixtures" / "recording"
    result = cli("scan", recording, "--model", run / "best.safetensors", "-o", tmp_path / "scan")
    assert result.exit_code == 0, result.output
    ran = json.loads((tmp_path / "scan" / "run.json").read_text())["parameters"].get("precision", "fp32")
    assert ran == ("int8" if check_passed(check) else "fp32")


def test_int8_calibration_can_be_turned_off(tmp_path):
    result = cli(*train_args(CLIPS, tmp_path / "bad", *CHEAP, "--set", "int8_calibration_seconds=-5", iterations=1))
    assert_user_error(result, "int8_calibration_seconds")
    out = tmp_path / "run"
    result = cli(*train_args(CLIPS, out, *CHEAP, "--set", "int8_calibration_seconds=0", iterations=1,
                             cache=tmp_path / "cache"))
    assert result.exit_code == 0, result.output
    assert (out / "best.safetensors").is_file() and not (out / "best.int8.safetensors").exists()


def test_info_prints_metadata(run):
    result = cli("info", run / "best.safetensors")
    assert result.exit_code == 0, result.output
    meta = json.loads(result.stdout)
    assert meta["classes"] == CLASSES and meta["format"] == "primate-monitor-checkpoint"


def test_evaluate_devel(run, workdir):
    out = workdir / "ev"
    result = cli("evaluate", run / "best.safetensors", CLIPS, "--split", "devel", "-o", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["uar"] <= 1 and 0 <= metrics["map"] <= 1
    assert metrics["n_clips"] == 8 and metrics["split"] == "devel"
    assert set(metrics["per_class"]) == set(CLASSES)
    for c in CLASSES:
        pc = metrics["per_class"][c]
        assert set(pc) >= {"recall", "precision", "ap", "support"}
        assert pc["support"] == 2
    devel = pd.read_csv(CLIPS / "lab" / "devel.csv")
    pred = pd.read_csv(out / "predictions.csv")
    assert list(pred.columns) == ["filename", "label", "predicted"] + [f"score_{c}" for c in CLASSES]
    assert list(pred["filename"]) == list(devel["filename"]) and list(pred["label"]) == list(devel["label"])
    assert set(pred["predicted"]) <= set(CLASSES)
    scores = pred[[f"score_{c}" for c in CLASSES]].to_numpy()
    assert np.all((scores >= 0) & (scores <= 1))
    assert list(pred["predicted"]) == [CLASSES[k] for k in scores.argmax(axis=1)]
    cm = pd.read_csv(out / "confusion_matrix.csv", index_col=0)
    assert list(cm.index) == CLASSES and list(cm.columns) == CLASSES and cm.to_numpy().sum() == 8
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_unlabelled_test_split(run, workdir):
    out = workdir / "ev_test"
    result = cli("evaluate", run / "best.safetensors", CLIPS, "--split", "test", "-o", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["predictions.csv"]
    pred = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert list(pred["filename"]) == ["test_0001.wav", "test_0002.wav"] and set(pred["label"]) == {"?"}


def test_evaluate_rejects_a_foreign_checkpoint(tmp_path):
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(np.random.default_rng(0).bytes(1000))
    result = cli("evaluate", fake, CLIPS, "-o", tmp_path / "ev")
    assert_user_error(result, fake)
    result = cli("info", fake)
    assert_user_error(result, fake)


def test_resume_continues_and_refuses_another_config(run, workdir):
    cache = workdir / "cache"
    base = ["--set", "eval_every=3", "--set", "batch_size=4"]
    result = cli(*train_args(CLIPS, run, *base, "--set", "lr=0.01", "--resume", iterations=9, cache=cache))
    assert_user_error(result, run / "resume.safetensors", "lr")
    assert [r["step"] for r in read_log(run)] == ["3", "6"]  # nothing was trained
    # run options (device, workers, logging, cache) are not the recipe: they may change on resume
    result = cli(*train_args(CLIPS, run, *base, "--resume", "--device", "cpu", "--set", "log_every=2",
                             iterations=9, cache=cache))
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in read_log(run)] == ["3", "6", "9"]


def test_resume_without_state(tmp_path):
    result = cli(*train_args(CLIPS, tmp_path / "fresh", *CHEAP, "--resume", iterations=1, cache=tmp_path / "cache"))
    assert_user_error(result, "resume.safetensors")


# ---- data errors -----------------------------------------------------------------------
def test_devel_label_not_in_training(data_copy, tmp_path):
    devel = data_copy / "lab" / "devel.csv"
    devel.write_text(devel.read_text().replace("devel_0008.wav,titi_monkey", "devel_0008.wav,howler_monkey"))
    result = cli(*train_args(data_copy, tmp_path / "run", *CHEAP, iterations=1))
    assert_user_error(result, data_copy / "wav" / "devel_0008.wav", "howler_monkey")


def test_missing_lab_folder(data_copy, tmp_path):
    shutil.rmtree(data_copy / "lab")
    result = cli(*train_args(data_copy, tmp_path / "run", *CHEAP, iterations=1))
    assert_user_error(result, data_copy, "lab/")


def test_empty_train_csv(data_copy, tmp_path):
    train_csv = data_copy / "lab" / "train.csv"
    train_csv.write_text("")
    result = cli(*train_args(data_copy, tmp_path / "run", *CHEAP, iterations=1))
    assert_user_error(result, train_csv)
    train_csv.write_text("filename,label\n")  # a header and no clip
    result = cli(*train_args(data_copy, tmp_path / "run", *CHEAP, iterations=1))
    assert_user_error(result, train_csv, "'train'", "empty")


def test_missing_data_folder(tmp_path):
    result = cli(*train_args(tmp_path / "nowhere", tmp_path / "run", *CHEAP, iterations=1))
    assert_user_error(result, tmp_path / "nowhere")


def test_unreadable_clip_fails_then_skips(data_copy, tmp_path):
    bad = data_copy / "wav" / "train_0002.wav"
    bad.write_bytes(np.random.default_rng(1).bytes(5000))
    result = cli(*train_args(data_copy, tmp_path / "run", *CHEAP, iterations=1))
    assert_user_error(result, bad, "--skip-bad")
    out = tmp_path / "run2"
    result = cli(*train_args(data_copy, out, *CHEAP, "--skip-bad", iterations=1))
    assert result.exit_code == 0, result.output
    skipped = pd.read_csv(out / "skipped_clips.csv")
    assert list(skipped["path"]) == [str(bad)] and list(skipped["label"]) == ["background"]
    assert (out / "best.safetensors").is_file()


def test_folder_per_class_layout(tmp_path):
    labels = pd.concat([pd.read_csv(CLIPS / "lab" / f"{s}.csv") for s in ("train", "devel")])
    root = tmp_path / "folders"
    for name, label in zip(labels["filename"], labels["label"]):
        (root / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(CLIPS / "wav" / name, root / label / name)
    out = tmp_path / "run"
    result = cli(*train_args(root, out, "--set", "batch_size=4", "--set", "eval_every=2", iterations=2))
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in read_log(out)] == ["2"]
    meta = json.loads((out / "best.json").read_text())
    assert meta["classes"] == CLASSES
    summary = meta["data_summary"]
    assert sum(summary["train"].values()) + sum(summary["devel"].values()) == 20
    assert 0 < sum(summary["devel"].values()) < 20  # a held-out share of recordings


def test_raven_layout_trains_with_background_from_unannotated_stretches(tmp_path):
    """Raven tables over long recordings: selections become clips, gaps the reject class."""
    rec_dir = Path(__file__).parent / "fixtures" / "recording"
    data = tmp_path / "raven"
    data.mkdir()
    for name in ("siteA_20240312_053000", "siteB_20240312_060000"):
        shutil.copy(rec_dir / "20240312_053000.wav", data / f"{name}.wav")
        shutil.copy(rec_dir / "20240312_053000.truth.selections.txt", data / f"{name}.Table.1.selections.txt")
    from primate_monitor.config import load_config
    from primate_monitor.data import check_classes, load_splits

    config = load_config(CONFIG, ["raven_background=true", "raven_background_per_file=2"])
    splits = load_splits(data, config)
    assert sorted(splits) == ["devel", "train"]
    assert {c.path.name for c in splits["train"]}.isdisjoint({c.path.name for c in splits["devel"]})
    assert check_classes(splits, config) == ["background", "chimpanzee", "gibbon"]
    selections = [c for c in splits["train"] if c.label != "background"]
    assert sorted((c.label, c.start_s, c.end_s) for c in selections) == [
        ("chimpanzee", pytest.approx(14.5 - (3 - 2.122) / 2), pytest.approx(16.622 + (3 - 2.122) / 2)),
        ("gibbon", 3.0, 8.0),
    ]
    for clip in (c for c in splits["train"] if c.label == "background"):  # never overlaps a call
        assert clip.end_s <= 3.0 or 8.0 <= clip.start_s <= 14.5 - 3 or clip.start_s >= 16.622
    result = cli(*train_args(data, tmp_path / "run", *CHEAP, "--set", "raven_background=true", iterations=2))
    assert result.exit_code == 0, result.output


def test_raven_layout_needs_the_label_column(tmp_path):
    rec_dir = Path(__file__).parent / "fixtures" / "recording"
    data = tmp_path / "raven"
    data.mkdir()
    shutil.copy(rec_dir / "20240312_053000.wav", data / "a.wav")
    table = data / "a.Table.1.selections.txt"
    shutil.copy(rec_dir / "20240312_053000.truth.selections.txt", table)
    result = cli(*train_args(data, tmp_path / "run", *CHEAP, "--set", "raven_label_column=Class", iterations=1))
    assert_user_error(result, table, "'Class'")
