"""Thresholds from verdicts: the fit, the precision rule, too few verdicts, the thresholds file,
and thresholds carried by a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from primate_monitor.calibrate import (CalibrationOptions, calibrate_species, calibrate_to_files, fit_curve,
                                       precision_above, precision_upper_bound, set_thresholds)
from primate_monitor.checkpoint import CheckpointError, ModelInfo, load_checkpoint, read_metadata
from primate_monitor.cli import main
from primate_monitor.events import EventOptions, load_thresholds_file


def verdicts(scores, correct, weight=1.0, species="gibbon") -> pd.DataFrame:
    return pd.DataFrame({"species": species, "score": np.asarray(scores, float), "correct": np.asarray(correct, bool),
                         "weight": weight})


def synthetic(n: int, a: float, b: float, seed: int = 0) -> pd.DataFrame:
    """Scores uniform on (0.05, 1); correct with P = sigmoid(a + b logit(score))."""
    rng = np.random.default_rng(seed)
    s = rng.uniform(0.05, 0.999, n)
    p = 1 / (1 + np.exp(-(a + b * np.log(s / (1 - s)))))
    return verdicts(s, rng.random(n) < p)


def test_fit_recovers_the_curve_and_the_threshold():
    a, b = -2.0, 1.5
    data = synthetic(4000, a, b)
    intercept, slope = fit_curve(data["score"].to_numpy(), data["correct"].to_numpy())
    assert intercept == pytest.approx(a, abs=0.25) and slope == pytest.approx(b, abs=0.2)
    # the true threshold: the lowest t with E[p(s) | s >= t] >= 0.9 for s uniform on (0.05, 0.999),
    # by numerical integration of the true curve (independent of the code under test)
    grid = np.linspace(0.05, 0.999, 20001)
    p = 1 / (1 + np.exp(-(a + b * np.log(grid / (1 - grid)))))
    tail_mean = np.cumsum(p[::-1])[::-1] / np.arange(len(grid), 0, -1)
    true_t = grid[np.argmax(tail_mean >= 0.9)]
    record = calibrate_species("gibbon", data, CalibrationOptions(bootstrap=0))
    assert record["threshold"] == pytest.approx(true_t, abs=0.03)
    assert record["precision_fitted"] >= 0.9 and record["precision_empirical"] == pytest.approx(0.9, abs=0.04)


def test_precision_above_weights_by_hand():
    # scores 0.2 (weight 3, wrong), 0.5 (weight 1, right), 0.9 (weight 2, right)
    t, prec = precision_above(np.array([0.5, 0.9, 0.2]), np.array([1.0, 1.0, 0.0]), np.array([1.0, 2.0, 3.0]))
    assert list(t) == [0.2, 0.5, 0.9]
    assert prec == pytest.approx([3 / 6, 1.0, 1.0])


def test_too_few_verdicts_say_how_many_more():
    record = calibrate_species("titi_monkey", verdicts([0.6, 0.7, 0.8, 0.9, 0.95, 0.99], [0, 1, 1, 1, 1, 1]),
                               CalibrationOptions())
    assert record["threshold"] is None
    assert "6 verdict(s) (5 correct, 1 wrong)" in record["reason"]
    assert "4 more verdict(s)" in record["reason"] and "2 more wrong" in record["reason"]


# ---- a species no verdict found correct: switched off --------------------------------------
def test_upper_bound_is_the_exact_binomial_one():
    for n in (1, 3, 10, 29, 100):
        p = precision_upper_bound(n)
        assert (1 - p) ** n == pytest.approx(0.05)  # seeing no correct verdict in n has probability 5 %
    assert precision_upper_bound(100) == pytest.approx(3 / 100, rel=0.02)  # the rule of three


def test_a_species_with_only_wrong_verdicts_is_switched_off():
    record = calibrate_species("titi_monkey", verdicts([0.55, 0.8, 0.97], [0, 0, 0]), CalibrationOptions())
    assert record["threshold"] == 1.0 and record["switched_off"] is True
    assert record["precision_upper_95"] == pytest.approx(1 - 0.05 ** (1 / 3), abs=1e-4)
    assert "none of 3 verdicts is correct" in record["reason"] and "switched off" in record["reason"]
    # two wrong verdicts are below --min-each: the old message, no threshold
    two = calibrate_species("titi_monkey", verdicts([0.55, 0.97], [0, 0]), CalibrationOptions())
    assert two["threshold"] is None and "more correct" in two["reason"] and "switched_off" not in two
    # --no-switch-off keeps the old rule
    kept = calibrate_species("titi_monkey", verdicts([0.55, 0.8, 0.97], [0, 0, 0]), CalibrationOptions(switch_off=False))
    assert kept["threshold"] is None and "3 more correct" in kept["reason"]


def test_one_correct_verdict_keeps_a_species_on():
    # a reviewer saw it detected: never switched off, however many wrong verdicts there are
    record = calibrate_species("gibbon", verdicts(np.linspace(0.5, 0.99, 40), [1] + [0] * 39), CalibrationOptions())
    assert record["threshold"] is None and "switched_off" not in record and "2 more correct" in record["reason"]


def test_switch_off_needs_the_bound_below_the_target():
    # target 0.2: 5 wrong verdicts leave a bound of 0.45, so precision 0.2 is not ruled out; 15 leave 0.18
    five = calibrate_species("gibbon", verdicts(np.linspace(0.5, 0.99, 5), [0] * 5), CalibrationOptions(precision=0.2))
    assert five["threshold"] is None
    fifteen = calibrate_species("gibbon", verdicts(np.linspace(0.5, 0.99, 15), [0] * 15),
                                CalibrationOptions(precision=0.2))
    assert fifteen["threshold"] == 1.0 and fifteen["switched_off"]


def test_switch_off_needs_the_highest_scoring_detections_reviewed(tmp_path):
    """Wrong verdicts on low scores alone say nothing about what a higher threshold keeps: a
    species is switched off only when its highest-scoring detections in the review are wrong too."""
    from primate_monitor.calibrate import verdicts_from_tables

    table = tmp_path / "rec.review.selections.txt"
    scores = [0.52, 0.55, 0.6, 0.7, 0.85, 0.97]

    def fill(verdicts):
        rows = [f"{i}\t{i * 5}\t{i * 5 + 3}\tgibbon\t{sc}\t1\t{v}" for i, (sc, v) in enumerate(zip(scores, verdicts), 1)]
        table.write_text("Selection\tBegin Time (s)\tEnd Time (s)\tSpecies\tScore\tSample Weight\tVerdict\n"
                         + "\n".join(rows) + "\n")
        return calibrate_species("gibbon", verdicts_from_tables([table]), CalibrationOptions())

    low_only = fill(["no", "no", "no", "", "", ""])  # the table's first rows, as a hurried reviewer leaves it
    assert low_only["threshold"] is None and "switched_off" not in low_only
    assert "3 highest-scoring detections" in low_only["reason"]
    top_only = fill(["", "", "", "no", "no", "no"])
    assert top_only["threshold"] == 1.0 and top_only["switched_off"] and top_only["highest_reviewed"] == 3
    assert "at any threshold that keeps 3 or more" in top_only["reason"]


def test_a_fitted_threshold_stays_below_one_and_reports_saturated_scores():
    # the correct detections all score a saturated 1.0: the fit may land on 1.0, which means "off";
    # the threshold must stay just below, so that those detections are still reported
    data = verdicts(np.r_[np.linspace(0.3, 0.99, 10), [0.999] * 10, [1.0] * 10], [0] * 20 + [1] * 10)
    record = calibrate_species("gibbon", data, CalibrationOptions(bootstrap=20))
    assert record["threshold"] is not None and record["threshold"] < 1.0 and "switched_off" not in record
    from primate_monitor.events import passing

    assert passing(np.array([1.0], dtype=np.float32), record["threshold"]).all()


def test_switched_off_species_is_written_and_never_detected(tmp_path):
    data = pd.concat([synthetic(300, -1.0, 2.0).assign(species="gibbon"),
                      verdicts([0.6, 0.9, 0.99, 0.7], [0, 0, 0, 0], species="chimpanzee")], ignore_index=True)
    out = tmp_path / "thresholds.yaml"
    calibrate_to_files(data, out, CalibrationOptions(bootstrap=0))
    assert load_thresholds_file(out)["chimpanzee"] == 1.0
    assert "1 switches a species off" in out.read_text()
    from primate_monitor.events import detect_events

    # even a saturated score (float16 rounds 0.9999 up to 1.0) is not a detection at threshold 1
    scores = np.array([[0.0, 1.0, 0.0], [0.0, 0.9999, 0.0]], dtype=np.float16)
    options = EventOptions(class_thresholds=load_thresholds_file(out))
    events = detect_events(np.array([0.0, 1.0]), 3.0, 4.0, scores, ("background", "chimpanzee", "gibbon"),
                           "background", options)
    assert events.empty


def test_calibrate_and_detect_switch_off_an_absent_species_on_real_audio(tmp_path):
    """The sample recordings scanned by the bundled model, judged against truth tables from which
    every howler monkey row is removed: a site where howlers do not occur. Every howler detection
    is then wrong, calibrate switches howler off, and detect drops it and keeps the rest."""
    recordings = Path(__file__).parent.parent / "sample_data" / "recordings"
    scan = tmp_path / "scan"
    runner = CliRunner()
    result = runner.invoke(main, ["-q", "scan", str(recordings), "-o", str(scan), "--save-window-scores"])
    assert result.exit_code == 0, result.output
    before = pd.read_parquet(scan / "detections.parquet")
    assert (before["species"] == "howler_monkey").sum() >= 3
    truth = tmp_path / "truth"
    truth.mkdir()
    for table in recordings.glob("*.truth.selections.txt"):
        lines = table.read_text().splitlines()
        (truth / table.name).write_text("\n".join([lines[0]] + [x for x in lines[1:] if "howler_monkey" not in x]) + "\n")
    thresholds = tmp_path / "thresholds.yaml"
    result = runner.invoke(main, ["calibrate", "--scan", str(scan), "--truth", str(truth), "-o", str(thresholds),
                                  "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    assert "howler_monkey: none of" in result.output and "switched off" in result.output
    doc = yaml.safe_load(thresholds.read_text())
    assert doc["thresholds"]["howler_monkey"] == 1.0 and doc["fitted"]["howler_monkey"]["switched_off"] is True
    redone = tmp_path / "redone"
    result = runner.invoke(main, ["-q", "detect", str(scan), "--thresholds-file", str(thresholds), "-o", str(redone)])
    assert result.exit_code == 0, result.output
    after = pd.read_parquet(redone / "detections.parquet")
    assert "howler_monkey" not in set(after["species"])
    others = before[before["species"] != "howler_monkey"]
    unchanged = [sp for sp in set(others["species"]) if sp not in doc["thresholds"]]
    assert unchanged  # species with only correct verdicts got no threshold and keep every detection
    for sp in unchanged:
        assert (after["species"] == sp).sum() == (others["species"] == sp).sum()


def test_scores_unrelated_to_correctness_give_no_threshold():
    s = np.linspace(0.5, 0.99, 30)
    record = calibrate_species("gibbon", verdicts(s, s < 0.75), CalibrationOptions(bootstrap=0))  # high scores wrong
    assert record["threshold"] is None and "not reachable" in record["reason"]


def test_bootstrap_interval_holds_the_threshold_and_is_seeded():
    data = synthetic(200, -1.0, 2.0, seed=3)
    one = calibrate_species("gibbon", data, CalibrationOptions(bootstrap=100, seed=1))
    two = calibrate_species("gibbon", data, CalibrationOptions(bootstrap=100, seed=1))
    assert one == two
    lo, hi = one["interval"]
    assert lo <= one["threshold"] <= hi and hi - lo < 0.5


def test_thresholds_file_and_plots(tmp_path):
    data = pd.concat([synthetic(300, -1.0, 2.0).assign(species="gibbon"),
                      verdicts([0.6, 0.9], [1, 0], species="chimpanzee")], ignore_index=True)
    out = tmp_path / "cal" / "thresholds.yaml"
    fitted = calibrate_to_files(data, out, CalibrationOptions(bootstrap=20))
    doc = yaml.safe_load(out.read_text())
    assert list(doc["thresholds"]) == ["gibbon"] and doc["thresholds"]["gibbon"] == fitted["gibbon"]["threshold"]
    assert doc["fitted"]["chimpanzee"]["threshold"] is None and doc["fitted"]["gibbon"]["n"] == 300
    assert (tmp_path / "cal" / "calibration" / "gibbon.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "cal" / "calibration" / "chimpanzee.png").is_file()
    assert load_thresholds_file(out) == doc["thresholds"]


def test_load_thresholds_file_formats_and_errors(tmp_path):
    flat = tmp_path / "flat.yaml"
    flat.write_text("gibbon: 0.7\nchimpanzee: 1\n")
    assert load_thresholds_file(flat) == {"gibbon": 0.7, "chimpanzee": 1.0}
    bad = tmp_path / "bad.yaml"
    bad.write_text("thresholds:\n  gibbon: 1.5\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*gibbon.*\[0, 1\]"):
        load_thresholds_file(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("thresholds: {}\nfitted: {}\n")
    assert load_thresholds_file(empty) == {}


def test_cli_threshold_precedence(tmp_path):
    from primate_monitor.cli import _event_options

    path = tmp_path / "t.yaml"
    path.write_text("thresholds:\n  gibbon: 0.8\n  chimpanzee: 0.6\n")
    opts = _event_options(("0.3", "chimpanzee=0.9"), None, 1, 0.0, path)
    assert opts.threshold_for("gibbon") == 0.8  # from the file
    assert opts.threshold_for("chimpanzee") == 0.9  # the command line's species wins
    assert opts.threshold_for("titi_monkey") == 0.3  # the bare threshold for the rest


# ---- thresholds in a checkpoint --------------------------------------------------------------
def test_set_thresholds_round_trip_and_old_checkpoints(tiny_checkpoint, tmp_path):
    assert "thresholds" not in read_metadata(tiny_checkpoint)  # an older checkpoint: no field
    assert load_checkpoint(tiny_checkpoint).info.thresholds == {}
    new = tmp_path / "calibrated.safetensors"
    set_thresholds(tiny_checkpoint, {"gibbon": 0.8}, new)
    assert read_metadata(new)["thresholds"] == {"gibbon": 0.8}
    assert json.loads(new.with_suffix(".json").read_text())["thresholds"] == {"gibbon": 0.8}
    model = load_checkpoint(new)
    assert model.info.thresholds == {"gibbon": 0.8}
    import torch

    x = torch.randn(1, 1, 301, 64)
    original = load_checkpoint(tiny_checkpoint)
    assert torch.equal(model.network(x)[0], original.network(x)[0])  # the same weights
    with pytest.raises(ValueError, match="not species"):
        set_thresholds(tiny_checkpoint, {"gorilla": 0.8}, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="copy"):
        set_thresholds(new, {"gibbon": 0.8}, new)
    meta = read_metadata(new) | {"thresholds": {"background": 0.3}}
    with pytest.raises(CheckpointError, match="background"):
        ModelInfo.from_dict(meta, "m.safetensors")


def test_scan_uses_model_thresholds_unless_overridden(tiny_checkpoint, tmp_path):
    from primate_monitor.scanner import ScanConfig, with_model_thresholds

    new = tmp_path / "calibrated.safetensors"
    set_thresholds(tiny_checkpoint, {"gibbon": 0.8, "chimpanzee": 0.7}, new)
    model = load_checkpoint(new)
    config = with_model_thresholds(ScanConfig(events=EventOptions(class_thresholds={"chimpanzee": 0.2})), model)
    assert dict(config.events.class_thresholds) == {"gibbon": 0.8, "chimpanzee": 0.2}
    bare = ScanConfig(events=EventOptions(threshold=0.4), model_thresholds=False)
    assert with_model_thresholds(bare, model) == bare
    plain = ScanConfig()
    assert with_model_thresholds(plain, load_checkpoint(tiny_checkpoint)) == plain


def test_calibrate_cli_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["calibrate", "-o", str(tmp_path / "t.yaml")])
    assert result.exit_code == 2 and "review tables" in result.output
    table = tmp_path / "plain.selections.txt"
    table.write_text("Selection\tBegin Time (s)\tEnd Time (s)\tSpecies\n1\t1\t2\tgibbon\n")
    result = runner.invoke(main, ["calibrate", str(table), "-o", str(tmp_path / "t.yaml")])
    assert result.exit_code == 2 and "Verdict" in result.output and "plain.selections.txt" in result.output
