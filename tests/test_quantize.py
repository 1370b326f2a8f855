"""int8 scanning (issue 11): calibration beside the checkpoint, agreement with fp32 on
real recordings, clear errors, and determinism across processes' rebuilds."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from primate_monitor.cli import main
from primate_monitor.scanner import ScanConfig

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data" / "recordings"
RECORDING = Path(__file__).parent / "fixtures" / "recording" / "20240312_053000.wav"


def _run(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def tiny_copy(tmp_path_factory, tiny_checkpoint) -> Path:
    """The tiny checkpoint in a folder of its own, calibrated on real recordings."""
    folder = tmp_path_factory.mktemp("int8")
    ckpt = folder / "tiny.safetensors"
    shutil.copy(tiny_checkpoint, ckpt)
    shutil.copy(tiny_checkpoint.with_suffix(".json"), folder / "tiny.json")
    # a recording and the sample recordings: over 100 windows, enough for --precision auto to trust the check
    result = _run(["quantize", str(ckpt), "--calibrate", str(RECORDING), "--calibrate", str(SAMPLE)])
    assert result.exit_code == 0, result.output
    assert (folder / "tiny.int8.safetensors").is_file()
    return ckpt


def test_bundled_int8_scan_agrees_with_fp32_on_the_sample_recordings(tmp_path):
    """The shipped calibration: the same events (times and species) as fp32 on the three real
    sample recordings, and every window score within 0.05 (measured: max 0.019)."""
    for precision in ("fp32", "int8"):
        result = _run(["-q", "scan", str(SAMPLE), "-o", str(tmp_path / precision), "--precision", precision,
                       "--save-window-scores"])
        assert result.exit_code == 0, result.output
    a, b = (pd.read_parquet(tmp_path / p / "windows.parquet") for p in ("fp32", "int8"))
    assert len(a) == len(b) > 100
    cols = [c for c in a.columns if c.startswith("score_")]
    diff = np.abs(a[cols].to_numpy() - b[cols].to_numpy())
    assert diff.max() < 0.05
    assert diff.max() > 0  # it really ran in int8, not fp32 again
    key = ["recording", "species", "begin_s", "end_s"]
    ea, eb = (pd.read_parquet(tmp_path / p / "detections.parquet")[key] for p in ("fp32", "int8"))
    pd.testing.assert_frame_equal(ea.reset_index(drop=True), eb.reset_index(drop=True))
    import json

    assert json.loads((tmp_path / "int8" / "run.json").read_text())["parameters"]["precision"] == "int8"
    assert "precision" not in json.loads((tmp_path / "fp32" / "run.json").read_text())["parameters"]


def test_int8_is_deterministic_and_equal_in_fast_and_split_scans(tiny_copy, tmp_path):
    """Rebuilt from the calibration file, the int8 network gives bit-equal scores; a scan cut in
    pieces equals the unsplit one (each piece rebuilds nothing new: same numbers)."""
    from primate_monitor import quantize
    from primate_monitor.checkpoint import load_checkpoint
    from primate_monitor.scanner import prepare_model, score_recording

    config = ScanConfig(precision="int8")
    model = prepare_model(tiny_copy, config)
    first = score_recording(RECORDING, model, config).scores
    quantize._CACHE.clear()
    again = score_recording(RECORDING, load_checkpoint(tiny_copy), config).scores
    np.testing.assert_array_equal(first, again)
    fp32 = score_recording(RECORDING, load_checkpoint(tiny_copy), ScanConfig(precision="fp32")).scores
    assert np.abs(first - fp32).max() > 0
    with pytest.raises(ValueError, match="prepared for --precision int8"):  # never int8 under an fp32 label
        score_recording(RECORDING, model, ScanConfig(precision="fp32"))

    whole, split = tmp_path / "whole", tmp_path / "split"
    long = tmp_path / "rec" / "long.wav"
    long.parent.mkdir()
    import soundfile as sf

    audio, sr = sf.read(RECORDING, dtype="float32")
    sf.write(long, np.concatenate([audio] * 4), sr)
    base = ["-q", "scan", str(long.parent), "--model", str(tiny_copy), "--precision", "int8", "--save-window-scores"]
    assert _run([*base, "-o", str(whole)]).exit_code == 0
    assert _run([*base, "-o", str(split), "--piece-hours", str(30 / 3600)]).exit_code == 0
    pd.testing.assert_frame_equal(pd.read_parquet(whole / "windows.parquet"), pd.read_parquet(split / "windows.parquet"))


def test_missing_or_foreign_calibration_is_a_clear_error(tiny_copy, tmp_path, tiny_checkpoint):
    bare = tmp_path / "bare.safetensors"
    shutil.copy(tiny_checkpoint, bare)
    shutil.copy(tiny_checkpoint.with_suffix(".json"), tmp_path / "bare.json")
    result = _run(["-q", "scan", str(RECORDING), "-o", str(tmp_path / "o1"), "--model", str(bare), "--precision", "int8"])
    assert result.exit_code == 2
    assert "bare.int8.safetensors" in result.output and "primate-monitor quantize" in result.output
    assert not (tmp_path / "o1").exists() or not any((tmp_path / "o1").iterdir())

    # another model's calibration under this checkpoint's name is refused, not used
    from primate_monitor.bundled import default_model_path
    from primate_monitor.quantize import calibration_path

    other = tmp_path / "other.safetensors"
    shutil.copy(default_model_path(), other)
    shutil.copy(default_model_path().with_suffix(".json"), tmp_path / "other.json")
    shutil.copy(calibration_path(tiny_copy), calibration_path(other))
    result = _run(["-q", "scan", str(RECORDING), "-o", str(tmp_path / "o2"), "--model", str(other), "--precision", "int8"])
    assert result.exit_code == 2 and "other weights" in result.output

    # a damaged calibration file
    calibration_path(bare).write_bytes(b"not a safetensors file")
    result = _run(["-q", "scan", str(RECORDING), "-o", str(tmp_path / "o3"), "--model", str(bare), "--precision", "int8"])
    assert result.exit_code == 2 and "not a readable int8 calibration" in result.output


def test_quantize_refuses_bad_input(tiny_copy, tmp_path):
    result = _run(["quantize", str(tiny_copy), "--calibrate", str(tmp_path / "nothing.wav")])
    assert result.exit_code == 2 and "nothing.wav" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _run(["quantize", str(tiny_copy), "--calibrate", str(empty)])
    assert result.exit_code == 2 and "no audio files" in result.output
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF0000WAVEjunk")
    result = _run(["quantize", str(tiny_copy), "--calibrate", str(broken), "-o", str(tmp_path / "c.int8.safetensors")])
    assert result.exit_code == 2 and "broken.wav" in result.output
    assert not (tmp_path / "c.int8.safetensors").exists()
    mine = tmp_path / "notes.txt"  # a file the tool did not write is never replaced
    mine.write_text("field notes")
    result = _run(["quantize", str(tiny_copy), "--calibrate", str(RECORDING), "-o", str(mine)])
    assert result.exit_code == 2 and "not an int8 calibration" in result.output
    assert mine.read_text() == "field notes"


def test_set_thresholds_copy_keeps_the_calibration(tiny_copy, tmp_path):
    """Same weights, new metadata: the copy is int8-scannable with the same scores."""
    from primate_monitor.checkpoint import load_checkpoint
    from primate_monitor.scanner import prepare_model, score_recording

    table = tmp_path / "t.yaml"
    table.write_text("gibbon: 0.7\n")
    dest = tmp_path / "with_thresholds.safetensors"
    assert _run(["set-thresholds", str(tiny_copy), str(table), "-o", str(dest)]).exit_code == 0
    assert (tmp_path / "with_thresholds.int8.safetensors").is_file()
    config = ScanConfig(precision="int8")
    a = score_recording(RECORDING, prepare_model(load_checkpoint(tiny_copy), config), config).scores
    b = score_recording(RECORDING, prepare_model(load_checkpoint(dest), config), config).scores
    np.testing.assert_array_equal(a, b)


def test_precision_changes_the_scan_parameters(tiny_copy, tmp_path):
    """An int8 rerun into an fp32 scan's folder is a different scan, refused unless --overwrite."""
    base = ["-q", "scan", str(RECORDING), "--model", str(tiny_copy), "-o", str(tmp_path / "o")]
    assert _run([*base, "--precision", "fp32"]).exit_code == 0
    result = _run([*base, "--precision", "int8"])
    assert result.exit_code == 2 and "precision" in result.output
    with pytest.raises(ValueError, match="precision"):
        ScanConfig(precision="int4")


def test_quantize_skips_a_broken_file_among_good_ones(tiny_copy, tmp_path, caplog):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF0000WAVEjunk")
    out = tmp_path / "c.int8.safetensors"
    result = _run(["quantize", str(tiny_copy), "--calibrate", str(broken), "--calibrate", str(RECORDING),
                   "--seconds-per-file", "5", "-o", str(out)])
    assert result.exit_code == 0, result.output
    from safetensors import safe_open
    import json

    with safe_open(str(out), "pt") as f:
        meta = json.loads(f.metadata()["primate_monitor_int8"])
    assert meta["files"] == [RECORDING.name] and "broken.wav" in meta["skipped"][0]


def test_bundled_int8_exact_mode_agrees_with_fp32():
    """Exact mode (each window through the whole network) runs the int8 body too."""
    from primate_monitor.bundled import default_model_path
    from primate_monitor.scanner import prepare_model, score_recording

    config = ScanConfig(mode="exact", hop_seconds=3.0, precision="int8")
    fp32 = ScanConfig(mode="exact", hop_seconds=3.0, precision="fp32")
    a = score_recording(RECORDING, prepare_model(default_model_path(), fp32), fp32).scores
    b = score_recording(RECORDING, prepare_model(default_model_path(), config), config).scores
    assert a.shape == b.shape and 0 < np.abs(a - b).max() < 0.05


def test_panns_int8_rebuilt_without_fx_equals_the_fx_graph(tiny_copy):
    """The calibration stores CNN10's converted int8 layers; the eager rebuild used at scan time
    gives exactly the output of FX's converted graph (built here from the same observers)."""
    import json
    import warnings

    import torch
    from safetensors import safe_open
    from torch.ao.quantization.quantize_fx import convert_fx

    from primate_monitor import quantize
    from primate_monitor.checkpoint import load_checkpoint
    from primate_monitor.quantize_panns import Int8PannsBody

    model = load_checkpoint(tiny_copy)
    with safe_open(str(quantize.calibration_path(tiny_copy)), "pt") as f:
        meta = json.loads(f.metadata()[quantize.METADATA_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["eager"]["blocks"] and len(meta["eager"]["blocks"]) == 4
    prepared = quantize._prepared(model)
    prepared.load_state_dict({k: v for k, v in tensors.items() if quantize.OBSERVER in k}, strict=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fx_body = convert_fx(prepared)
    x = torch.randn(3, 1, 333, 64, generator=torch.Generator().manual_seed(5)) * 4 - 2
    with torch.no_grad():
        assert torch.equal(fx_body(x), Int8PannsBody(tensors, meta["eager"])(x))
    quantize._CACHE.clear()
    net = quantize.int8_network(model)
    assert isinstance(net.body, Int8PannsBody) and len(net.network.blocks) == 0  # no fp32 conv weights kept


def test_int8_scan_does_not_import_fx_tracing(tmp_path, tiny_copy):
    """The point of the eager rebuild: a PANNs int8 scan never imports torch._dynamo (the FX
    tracing stack costs ~115 MB resident), checked in a fresh interpreter."""
    import subprocess
    import sys

    code = ("import sys; from primate_monitor.scanner import ScanConfig, prepare_model, score_recording; "
            f"c = ScanConfig(precision='int8'); m = prepare_model({str(tiny_copy)!r}, c); "
            f"score_recording({str(RECORDING)!r}, m, c); print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[-1] == "False"


def _with_metadata(src: Path, dest: Path, change) -> None:
    """Copy a calibration file with its JSON metadata passed through ``change``."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as f:
        meta = json.loads(f.metadata()["primate_monitor_int8"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(dest), metadata={"primate_monitor_int8": json.dumps(change(meta))})


def test_auto_precision_runs_int8_only_where_the_calibration_passed_its_check(tiny_copy, tiny_checkpoint, tmp_path):
    """The default, --precision auto: int8 for a checkpoint whose calibration agreed with fp32
    (run.json says int8, scores equal an explicit int8 scan); fp32 with no calibration, with one
    from before the agreement check, with one whose check failed, and on foreign weights."""
    import json

    from primate_monitor.checkpoint import load_checkpoint
    from primate_monitor.int8_check import AUTO_MIN_DECISIONS, AUTO_MIN_WINDOWS, auto_precision
    from primate_monitor.quantize import calibration_path

    def params(out):
        return json.loads((out / "run.json").read_text())["parameters"]

    result = _run(["-q", "scan", str(RECORDING), "--model", str(tiny_copy), "-o", str(tmp_path / "auto")])
    assert result.exit_code == 0, result.output
    assert params(tmp_path / "auto")["precision"] == "int8"
    assert _run(["-q", "scan", str(RECORDING), "--model", str(tiny_copy), "-o", str(tmp_path / "int8"),
                 "--precision", "int8"]).exit_code == 0
    a = pd.read_parquet(tmp_path / "auto" / "detections.parquet")
    b = pd.read_parquet(tmp_path / "int8" / "detections.parquet")
    pd.testing.assert_frame_equal(a, b)

    assert _run(["-q", "scan", str(RECORDING), "--model", str(tiny_checkpoint), "-o", str(tmp_path / "bare")]).exit_code == 0
    assert "precision" not in params(tmp_path / "bare")  # no calibration: fp32

    folder = tmp_path / "variants"
    folder.mkdir()
    cases = {"old": lambda m: {k: v for k, v in m.items() if k != "agreement"},
             "few": lambda m: m | {"agreement": m["agreement"] | {"windows": AUTO_MIN_WINDOWS - 1}},
             "failed": lambda m: m | {"agreement": m["agreement"] | {"decisions_equal": AUTO_MIN_DECISIONS - 0.01}},
             "foreign": lambda m: m | {"for_weights": "0" * 64}}
    for name, change in cases.items():
        ckpt = folder / f"{name}.safetensors"
        shutil.copy(tiny_copy, ckpt)
        shutil.copy(tiny_copy.with_suffix(".json"), folder / f"{name}.json")
        _with_metadata(calibration_path(tiny_copy), calibration_path(ckpt), change)
        chosen, why = auto_precision(load_checkpoint(ckpt))
        assert chosen == "fp32", (name, why)
        result = _run(["-q", "scan", str(RECORDING), "--model", str(ckpt), "-o", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        assert "precision" not in params(tmp_path / name), name
    assert "again" in auto_precision(load_checkpoint(folder / "old.safetensors"))[1]

    damaged = folder / "damaged.safetensors"  # a calibration file cut short: fp32, a warning, no failure
    shutil.copy(tiny_copy, damaged)
    shutil.copy(tiny_copy.with_suffix(".json"), folder / "damaged.json")
    calibration_path(damaged).write_bytes(calibration_path(tiny_copy).read_bytes()[:1000])
    result = _run(["scan", str(RECORDING), "--model", str(damaged), "-o", str(tmp_path / "damaged")])
    assert result.exit_code == 0, result.output
    assert "precision" not in params(tmp_path / "damaged")
    assert "WARNING" in result.output and "not a readable int8 calibration" in result.output


def test_agreement_check_sees_a_network_that_decides_otherwise(tiny_checkpoint):
    """The calibration's agreement measure: a network against itself agrees fully; one whose
    output bias is pushed up (every class above 0.5) does not."""
    import copy

    import torch

    from primate_monitor.checkpoint import load_checkpoint
    from primate_monitor.frontend import LogMel
    from primate_monitor.int8_check import agreement
    from primate_monitor.quantize import _window_frames
    from primate_monitor.audio import load_audio

    model = load_checkpoint(tiny_checkpoint, "cpu")
    audio = torch.from_numpy(load_audio(RECORDING, model.info.sample_rate, end_s=12.0))
    mel = LogMel(model.info.frontend)(audio[None])
    n = _window_frames(model)
    windows = [mel[..., f:f + n, :] for f in range(0, mel.shape[-2] - n + 1, n)]
    same = agreement(model, model.network.eval(), windows)
    assert same["windows"] == len(windows) >= 3 and same["decisions_equal"] == 1.0 and same["max_abs_diff"] == 0.0
    shifted = copy.deepcopy(model.network).eval()
    with torch.no_grad():
        shifted.head.fc_out.bias += 50.0
    other = agreement(model, shifted, windows)
    assert other["decisions_equal"] < 1.0 and other["max_abs_diff"] > 0.1
