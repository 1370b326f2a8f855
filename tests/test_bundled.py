"""The bundled demo model: present, small, self-describing, and it finds a real call."""

from pathlib import Path

import pytest
from safetensors import safe_open

from primate_monitor import ScanConfig, scan_recording
from primate_monitor.bundled import default_model_path
from primate_monitor.checkpoint import read_metadata

RECORDING = Path(__file__).parent / "fixtures" / "recording" / "20240312_053000.wav"
DEMO_CLASSES = ["background", "chimpanzee", "gibbon", "howler_monkey", "titi_monkey"]


def test_bundled_model_is_shipped_small_and_fp16():
    path = default_model_path()
    assert path.stat().st_size <= 12 * 1024 * 1024
    meta = read_metadata(path)
    assert meta["model"] == "cnn10" and meta["classes"] == DEMO_CLASSES
    assert meta["reject_class"] == "background" and meta["sample_rate"] == 8000
    with safe_open(str(path), "pt") as f:
        assert str(f.get_tensor("head.fc1.weight").dtype) == "torch.float16"


@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_bundled_model_finds_the_gibbon_call_in_a_real_recording(mode):
    """The fixture recording holds a held-out gibbon great call at 3-8 s (12 dB SNR)."""
    events = scan_recording(RECORDING, None, ScanConfig(mode=mode))
    gibbon = events[events["species"] == "gibbon"]
    assert len(gibbon) >= 1
    assert ((gibbon["begin_s"] < 8.0) & (gibbon["end_s"] > 3.0)).any()
    assert events["model"].str.startswith("cnn10@").all()


def test_evaluate_defaults_to_the_bundled_model(tmp_path):
    from click.testing import CliRunner

    from primate_monitor.cli import main

    clips = Path(__file__).parent / "fixtures" / "clips"
    result = CliRunner().invoke(main, ["-q", "evaluate", str(clips), "--split", "test", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    import pandas as pd

    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert [c for c in predictions.columns if c.startswith("score_")] == [f"score_{c}" for c in DEMO_CLASSES]


def test_bundled_model_finds_the_sample_calls_with_precision_and_recall_of_at_least_0_8():
    """The README's first command (scan defaults) on sample_data/recordings, scored event by event
    against the truth tables: every species needs precision and recall >= 0.8 (issue 4's bar)."""
    import pandas as pd

    from primate_monitor.event_eval import evaluate_events

    from primate_monitor.audio import find_audio_files

    folder = Path(__file__).parents[1] / "sample_data" / "recordings"
    recordings = [path for _, path in find_audio_files([folder])]
    events = pd.concat([scan_recording(p) for p in recordings], ignore_index=True)
    report = evaluate_events(events, sorted(folder.glob("*.truth.selections.txt")))
    assert sorted(report["recordings"]) == sorted(p.name for p in recordings)
    per_class = report["per_class"]
    assert set(per_class) == set(DEMO_CLASSES[1:])
    below = {s: (round(v["precision"], 3), round(v["recall"], 3)) for s, v in per_class.items()
             if not (v["precision"] >= 0.8 and v["recall"] >= 0.8)}
    assert not below, f"species below 0.8 precision or recall: {below}"
