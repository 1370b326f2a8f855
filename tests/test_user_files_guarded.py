"""Faults a hostile-input hunt found (2026-11-28, session 8) in commands other than scan, each
once silently wrong or destructive: files the tool did not write, and damaged user tables."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from primate_monitor.calibrate import set_thresholds
from primate_monitor.checkpoint import read_metadata


# ---- set-thresholds: the JSON sidecar ----------------------------------------------------------
def test_set_thresholds_never_writes_its_sidecar_over_another_file(tiny_checkpoint, tmp_path):
    """``-o best.calibrated`` once replaced best.json, the original's sidecar, and ``-o w.json``
    wrote the weights and then the JSON over them: both exit 0. The name must now end in
    .safetensors, and an existing sidecar is replaced only with overwrite."""
    source = tmp_path / "best.safetensors"
    shutil.copy(tiny_checkpoint, source)
    shutil.copy(tiny_checkpoint.with_suffix(".json"), source.with_suffix(".json"))
    original_sidecar = source.with_suffix(".json").read_text()
    with pytest.raises(ValueError, match=r"must end in \.safetensors"):
        set_thresholds(source, {"gibbon": 0.7}, tmp_path / "best.calibrated")
    with pytest.raises(ValueError, match=r"must end in \.safetensors"):
        set_thresholds(source, {"gibbon": 0.7}, tmp_path / "w.json")
    assert source.with_suffix(".json").read_text() == original_sidecar
    assert not (tmp_path / "w.json").exists() and not (tmp_path / "best.calibrated").exists()

    mine = tmp_path / "new.json"
    mine.write_text("my notes\n")
    with pytest.raises(ValueError, match="new.json"):
        set_thresholds(source, {"gibbon": 0.7}, tmp_path / "new.safetensors")
    assert mine.read_text() == "my notes\n" and not (tmp_path / "new.safetensors").exists()
    set_thresholds(source, {"gibbon": 0.7}, tmp_path / "new.safetensors", overwrite=True)
    assert read_metadata(tmp_path / "new.safetensors")["thresholds"] == {"gibbon": 0.7}


# ---- train --add-reviewed: rows that cannot be right ------------------------------------------
RECORDING = Path(__file__).parent / "fixtures" / "recording" / "20240312_053000.wav"  # 20 s
KNOWN = {"gibbon", "chimpanzee", "background"}
HEADER = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
          "Species", "Score", "Begin Path", "Sample Weight", "Verdict"]


def _review_table(folder: Path, species: str, begin: str, end: str, verdict: str) -> Path:
    rows = [["1", "Spectrogram 1", "1", "2.0", "5.0", "0", "4000", "gibbon", "0.9", str(RECORDING), "1", "no"],
            ["2", "Spectrogram 1", "1", begin, end, "0", "4000", species, "0.8", str(RECORDING), "1", verdict]]
    path = folder / "rec.review.selections.txt"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(r) for r in [HEADER, *rows]) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("species, begin, end, verdict, message", [
    ("Gibbon", "6.0", "9.0", "yes", r"'Gibbon' clip, which is not one of the training classes"),  # once a new class
    ("gibbon", "-50", "-45", "no", r"not a stretch of a recording"),  # once silently 0-3 s
    ("gibbon", "inf", "inf", "no", r"not a stretch of a recording"),  # once an OverflowError traceback
    ("gibbon", "9.0", "6.0", "no", r"not a stretch of a recording"),
    ("gibbon", "40.0", "43.0", "no", r"begins at 40 s, after the end of .*20240312_053000\.wav \(20\.000 s\)"),
])
def test_reviewed_rows_that_cannot_be_right_are_errors_naming_the_table(tmp_path, species, begin, end, verdict,
                                                                       message):
    from primate_monitor.config import TrainConfig
    from primate_monitor.data import DataError, reviewed_clips

    table = _review_table(tmp_path / "review", species, begin, end, verdict)
    with pytest.raises(DataError, match=message) as caught:
        reviewed_clips([table.parent], KNOWN, TrainConfig())
    assert "rec.review.selections.txt" in str(caught.value)


def test_reviewed_rows_that_are_right_still_make_clips(tmp_path):
    from primate_monitor.config import TrainConfig
    from primate_monitor.data import reviewed_clips

    table = _review_table(tmp_path / "review", "chimpanzee", "6.0", "9.0", "yes")
    clips = reviewed_clips([table.parent], KNOWN, TrainConfig())
    assert [(c.label, c.start_s) for c in clips] == [("background", 2.0), ("chimpanzee", 6.0)]


# ---- truth tables --------------------------------------------------------------------------------
TRUTH_HEADER = "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tSpecies"


@pytest.mark.parametrize("row, message", [
    ("2\tSpectrogram 1\t1\t9.0\t4.0\t0\t4000\tgibbon", r"an end before its begin on line\(s\) 3"),  # once F1 0
    ("2\tSpectrogram 1\t1\t-3.0\t4.0\t0\t4000\tgibbon", r"a time before 0 s on line\(s\) 3"),
    ("2\tSpectrogram 1\t1\t1.0\tinf\t0\t4000\tgibbon", r"not a finite number on line\(s\) 3"),
    ("2\tSpectrogram 1\t1\t1.0\t4.0\t0\t4000\t", r"empty 'Species' on line\(s\) 3"),  # once a species ""
])
def test_truth_rows_that_cannot_be_right_are_errors(tmp_path, row, message):
    from primate_monitor.event_eval import read_truth

    path = tmp_path / "rec.truth.selections.txt"
    path.write_text(f"{TRUTH_HEADER}\n1\tSpectrogram 1\t1\t10.0\t12.0\t0\t4000\tgibbon\n{row}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message) as caught:
        read_truth(path)
    assert str(path) in str(caught.value)


def test_a_truth_species_the_model_lacks_is_named_in_a_warning(tmp_path, caplog):
    import pandas as pd

    from primate_monitor.event_eval import evaluate_events

    path = tmp_path / "rec.truth.selections.txt"
    path.write_text(f"{TRUTH_HEADER}\n1\tSpectrogram 1\t1\t1.0\t4.0\t0\t4000\tGibbon\n", encoding="utf-8")
    dets = pd.DataFrame({"recording": ["rec.wav"], "begin_s": [1.0], "end_s": [4.0], "species": ["gibbon"],
                         "score": [0.9]})
    with caplog.at_level("WARNING"):
        result = evaluate_events(dets, [path], classes=["background", "gibbon"])
    assert result["per_class"]["Gibbon"]["recall"] == 0.0  # it still counts as missed, as before
    assert any("'Gibbon'" in r.message and str(path) in r.message for r in caplog.records)


# ---- one-file outputs: a wrong -o fails first, naming it ------------------------------------------
def test_a_folder_or_a_missing_folder_as_a_one_file_output_is_a_clear_error(tmp_path):
    from click.testing import CliRunner

    from primate_monitor.cli import main

    table = _review_table(tmp_path / "review", "gibbon", "6.0", "9.0", "no")
    (tmp_path / "here").mkdir()
    cases = [(["calibrate", str(table), "-o", str(tmp_path / "here")], "is a folder"),
             (["calibrate", str(table), "-o", str(tmp_path / "nowhere" / "t.yaml")], "does not exist")]
    for args, message in cases:
        result = CliRunner().invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 2 and message in result.output, result.output
        assert ".tmp" not in result.output
    assert not (tmp_path / "calibration").exists() and not any((tmp_path / "here").iterdir())


# ---- a checkpoint cut short ----------------------------------------------------------------------
def test_a_checkpoint_cut_short_is_named_truncated_before_its_weights_are_needed(tiny_checkpoint, tmp_path):
    """``info`` on a copy cut short printed the whole metadata (exit 0); the damage showed only at
    load. The header states where every tensor ends, so a short file is now caught at once."""
    from primate_monitor.checkpoint import CheckpointError

    cut = tmp_path / "cut.safetensors"
    data = tiny_checkpoint.read_bytes()
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated, 1000 bytes"):
        read_metadata(cut)
    assert read_metadata(tiny_checkpoint)["classes"]  # a whole one still reads


# ---- YAML written by hand: a key given twice -------------------------------------------------------
def test_a_key_given_twice_in_a_config_or_thresholds_file_is_an_error(tmp_path):
    """PyYAML keeps the last of two equal keys without a word: ``gibbon: 0.7`` then ``gibbon: 0.2``
    silently scanned gibbon at 0.2."""
    from primate_monitor.config import ConfigError, load_config
    from primate_monitor.events import load_thresholds_file

    thresholds = tmp_path / "thresholds.yaml"
    thresholds.write_text("thresholds:\n  gibbon: 0.7\n  chimpanzee: 0.6\n  gibbon: 0.2\n")
    with pytest.raises(ValueError, match=r"(?s)thresholds\.yaml.*'gibbon' is given twice.*line 4"):
        load_thresholds_file(thresholds)
    config = tmp_path / "run.yaml"
    config.write_text("iterations: 100\nlr: 0.001\nlr: 0.1\n")
    with pytest.raises(ConfigError, match=r"(?s)run\.yaml.*'lr' is given twice"):
        load_config(config)
    thresholds.write_text("thresholds:\n  gibbon: 0.7\n  chimpanzee: 0.6\n")  # distinct keys still read
    assert load_thresholds_file(thresholds) == {"gibbon": 0.7, "chimpanzee": 0.6}


# ---- review tables name recordings in printable form -----------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=40).filter(lambda b: not set(b) & {0, ord("/"), ord("\\")}))
def test_from_printable_gives_back_any_file_name_without_a_backslash(raw):
    """Except C1 control characters (U+0080-U+009F, valid UTF-8 but never in a recorder's names):
    printable writes them as \x80 too, the same as the invalid byte 0x80."""
    import os

    from primate_monitor.fsutil import from_printable, printable

    name = os.fsdecode(raw)
    if any("\x80" <= ch <= "\x9f" for ch in name):
        return
    assert from_printable(printable(name)) == name


def test_reviewed_rows_find_recordings_whose_names_hold_a_tab_or_non_utf8_bytes(tmp_path):
    """``review`` writes Begin Path in printable form (``Estaci\\xf3n``), and ``train
    --add-reviewed`` then said "recording ... not found" for a file that exists."""
    import os

    from primate_monitor.config import TrainConfig
    from primate_monitor.data import reviewed_clips
    from primate_monitor.fsutil import printable

    folder = tmp_path / "rec"
    folder.mkdir()
    real = os.fsdecode(os.fsencode(str(folder)) + b"/Estaci\xf3n\there.wav")
    shutil.copy(RECORDING, real)
    table = _review_table(tmp_path / "review", "chimpanzee", "6.0", "9.0", "yes")
    text = table.read_text(encoding="utf-8").replace(str(RECORDING), printable(real))
    assert "\\xf3" in text and "\\t" in text
    table.write_text(text, encoding="utf-8")
    clips = reviewed_clips([table.parent], KNOWN, TrainConfig())
    assert {str(c.path) for c in clips} == {real}
