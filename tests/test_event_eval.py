"""Event-level matching: the documented rule and one-to-one matching."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from primate_monitor.cli import main
from primate_monitor.event_eval import evaluate_events, is_match, match_events


def frame(rows):
    return pd.DataFrame(rows, columns=["begin_s", "end_s", "species"])


@pytest.mark.parametrize("det, truth, expected", [
    ((3.0, 8.0), (3.0, 8.0), True),  # identical
    ((1.0, 6.0), (3.0, 5.0), True),  # holds the centre, 3 s longer than the call
    ((0.0, 20.0), (3.0, 5.0), False),  # holds the centre but runs far past it, IoU 0.1
    ((4.5, 9.0), (3.0, 5.0), False),  # overlaps, misses the centre, IoU 0.083
    ((5.0, 8.0), (3.0, 5.0), False),  # touches only
    ((2.0, 4.5), (4.0, 8.0), False),  # IoU 0.5/6 and misses the centre
    ((3.5, 9.0), (4.0, 8.0), True),  # IoU 4/5.5
])
def test_matching_rule(det, truth, expected):
    assert is_match(det, truth) is expected


def test_each_truth_matched_once_and_species_must_agree():
    dets = frame([(3, 8, "gibbon"), (4, 9, "gibbon"), (3, 8, "chimpanzee")])
    truth = frame([(3, 8, "gibbon")])
    assert match_events(dets, truth) == [(0, 0)]  # the best IoU wins; the duplicate is a false positive


def test_precision_recall_per_class(tmp_path: Path):
    table = tmp_path / "rec1.truth.selections.txt"
    table.write_text("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tSpecies\n"
                     "1\tSpectrogram 1\t1\t3.0\t8.0\tgibbon\n2\tSpectrogram 1\t1\t20.0\t22.0\tchimpanzee\n")
    dets = frame([(2.0, 9.0, "gibbon"), (40.0, 43.0, "gibbon")])
    dets["recording"] = "rec1.wav"
    result = evaluate_events(dets, [table])
    gibbon, chimp = result["per_class"]["gibbon"], result["per_class"]["chimpanzee"]
    assert (gibbon["precision"], gibbon["recall"], gibbon["true_positives"]) == (0.5, 1.0, 1)
    assert chimp["recall"] == 0.0 and chimp["f1"] == 0.0 and chimp["detections"] == 0


def test_unmatched_truth_table_is_an_error(tmp_path: Path):
    table = tmp_path / "other.truth.selections.txt"
    table.write_text("Selection\tBegin Time (s)\tEnd Time (s)\tSpecies\n1\t1\t2\tgibbon\n")
    dets = frame([(1.0, 2.0, "gibbon")])
    dets["recording"] = "rec1.wav"
    with pytest.raises(ValueError, match="other.truth"):
        evaluate_events(dets, [table])


def test_scan_plots_and_evaluate_events_cli(tiny_checkpoint, tmp_path: Path):
    """scan --plots draws a PNG per recording; evaluate-events prints a per-class table."""
    rec = Path(__file__).parent / "fixtures" / "recording"
    out = tmp_path / "scan"
    runner = CliRunner()
    result = runner.invoke(main, ["-q", "scan", str(rec / "20240312_053000.wav"), "-o", str(out), "--model",
                                  str(tiny_checkpoint), "--threshold", "0.0", "--plots"])
    assert result.exit_code == 0, result.output
    png = out / "plots" / "20240312_053000.wav.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "plots" / "diel_activity.png").is_file()  # the AudioMoth name gives a UTC start
    metrics = tmp_path / "events.json"
    result = runner.invoke(main, ["evaluate-events", str(out), str(rec), "-o", str(metrics)])
    assert result.exit_code == 0, result.output
    assert "gibbon" in result.output and "chimpanzee" in result.output
    import json

    per_class = json.loads(metrics.read_text())["per_class"]
    assert per_class["gibbon"]["truth"] == 1 and per_class["chimpanzee"]["truth"] == 1
    result = runner.invoke(main, ["plot", str(out), str(rec / "20240312_053000.wav"), "--truth",
                                  str(rec / "20240312_053000.truth.selections.txt"), "-o", str(tmp_path / "p.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p.png").stat().st_size > 10_000


# ---- the field cases: quiet recordings, background-only truth, false detections per hour ----------
HEADER = "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tSpecies\n"


def recordings_index(durations: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame({"recording": list(durations), "duration_s": list(durations.values())})


def test_quiet_recording_with_truth_counts_its_missed_calls(tmp_path: Path):
    (tmp_path / "quiet.truth.selections.txt").write_text(HEADER + "1\tSpectrogram 1\t1\t3.0\t8.0\tgibbon\n")
    (tmp_path / "busy.truth.selections.txt").write_text(HEADER + "1\tSpectrogram 1\t1\t3.0\t8.0\tgibbon\n")
    dets = frame([(3.0, 8.0, "gibbon")])
    dets["recording"] = "busy.wav"  # nothing was detected in quiet.wav
    tables = sorted(tmp_path.glob("*.txt"))
    with pytest.raises(ValueError, match="quiet.truth"):  # without the scan's list it cannot be matched
        evaluate_events(dets, tables)
    result = evaluate_events(dets, tables, recordings=recordings_index({"busy.wav": 1800.0, "quiet.wav": 1800.0}))
    gibbon = result["per_class"]["gibbon"]
    assert (gibbon["truth"], gibbon["true_positives"], gibbon["recall"], gibbon["precision"]) == (2, 1, 0.5, 1.0)
    assert result["recordings"] == ["busy.wav", "quiet.wav"] and result["audio_hours"] == 1.0
    assert gibbon["false_per_hour"] == 0.0


def test_background_only_truth_makes_every_detection_false(tmp_path: Path):
    (tmp_path / "forest.truth.selections.txt").write_text(HEADER)  # header only: no calls at all
    dets = frame([(1.0, 4.0, "gibbon"), (10.0, 13.0, "gibbon"), (20.0, 23.0, "titi_monkey")])
    dets["recording"] = "forest.wav"
    result = evaluate_events(dets, [tmp_path / "forest.truth.selections.txt"],
                             recordings=recordings_index({"forest.wav": 900.0, "other.wav": 900.0}))
    assert result["audio_hours"] == 0.25  # only recordings with truth count towards the hours
    gibbon, titi = result["per_class"]["gibbon"], result["per_class"]["titi_monkey"]
    assert gibbon["precision"] == 0.0 and np.isnan(gibbon["recall"]) and gibbon["truth"] == 0
    assert gibbon["false_per_hour"] == 8.0 and titi["false_per_hour"] == 4.0


def test_two_tables_for_one_recording_or_an_ambiguous_stem_are_errors(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        (tmp_path / folder / "rec.truth.selections.txt").write_text(HEADER)
    dets = frame([(1.0, 4.0, "gibbon")])
    dets["recording"] = "rec.wav"
    with pytest.raises(ValueError, match="two truth tables for recording rec.wav"):
        evaluate_events(dets, sorted(tmp_path.rglob("*.txt")))
    dets = frame([(1.0, 4.0, "gibbon"), (1.0, 4.0, "gibbon")])
    dets["recording"] = ["x/rec.wav", "y/rec.flac"]
    with pytest.raises(ValueError, match="ambiguous"):
        evaluate_events(dets, [tmp_path / "a" / "rec.truth.selections.txt"])
