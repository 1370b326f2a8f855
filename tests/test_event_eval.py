"""Event-level matching: the documented rule and one-to-one matching."""

from pathlib import Path

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
