"""Checkpoints: safetensors weights + JSON metadata, loaded without ever unpickling."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from primate_monitor import checkpoint as ckpt_module
from primate_monitor.checkpoint import CheckpointError, ModelInfo, load_checkpoint, read_metadata, save_checkpoint
from primate_monitor.frontend import FrontEndConfig
from primate_monitor.models import create_model

CLASSES = ("background", "chimpanzee", "gibbon")
REQUIRED = {"model", "classes", "reject_class", "activation", "sample_rate", "frontend", "clip_seconds",
            "config", "metrics", "version"}


def _info() -> ModelInfo:
    return ModelInfo(
        model="cnn6", classes=CLASSES, reject_class="background", activation="sigmoid",
        frontend=FrontEndConfig(sample_rate=8000), clip_seconds=3.0,
        config={"model": "cnn6", "lr": 0.001}, metrics={"uar": 0.5, "step": 3}, data_summary={"train": {"gibbon": 2}},
    )


@pytest.fixture(scope="module")
def trained() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("cnn6", len(CLASSES))
    model.train()
    with torch.no_grad():  # non-default BN running statistics, so buffers are checked too
        model(torch.randn(4, 1, 75, 64) * 5 + 3)
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, trained) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    assert save_checkpoint(path, trained.state_dict(), _info()) == path
    return path


def test_round_trip_gives_identical_outputs(saved, trained):
    loaded = load_checkpoint(saved)
    assert not loaded.network.training
    x = torch.randn(2, 1, 75, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, ea = trained(x)
        b, eb = loaded.network(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(ea, eb, rtol=0, atol=0)
    for k, v in trained.state_dict().items():
        assert torch.equal(v, loaded.network.state_dict()[k]), k
    assert loaded.info == _info()
    assert loaded.info.sample_rate == 8000
    assert loaded.name.startswith("cnn6@") and len(loaded.name) == len("cnn6@") + 12


def test_file_is_plain_safetensors_with_metadata(saved, trained):
    with safe_open(str(saved), framework="pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
    assert keys == set(trained.state_dict())
    doc = json.loads(meta["primate_monitor"])
    assert REQUIRED <= set(doc)
    assert doc["model"] == "cnn6" and doc["classes"] == list(CLASSES)
    assert doc["reject_class"] == "background" and doc["activation"] == "sigmoid"
    assert doc["sample_rate"] == 8000 and doc["frontend"]["sample_rate"] == 8000
    assert doc["frontend"]["hop_samples"] == 320 and doc["frontend"]["n_mels"] == 64
    assert doc["clip_seconds"] == 3.0 and doc["config"]["lr"] == 0.001 and doc["metrics"]["uar"] == 0.5
    assert isinstance(doc["version"], str) and doc["version"]
    assert read_metadata(saved) == doc
    # the human-readable sidecar holds the same document
    assert json.loads(saved.with_suffix(".json").read_text()) == doc


def test_loading_never_unpickles(saved, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("unpickling is not allowed")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = load_checkpoint(saved)
    assert loaded.info.classes == CLASSES


def test_fp16_save(tmp_path, trained):
    path = save_checkpoint(tmp_path / "half.safetensors", trained.state_dict(), _info(), dtype=torch.float16)
    with safe_open(str(path), framework="pt") as f:
        assert f.get_tensor("head.fc1.weight").dtype == torch.float16
        assert f.get_tensor("bn0.bn.num_batches_tracked").dtype == torch.int64
    loaded = load_checkpoint(path)
    assert loaded.network.head.fc1.weight.dtype == torch.float32
    x = torch.randn(1, 1, 75, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.network(x)[0], trained(x)[0], rtol=0.05, atol=0.05)


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    p = tmp_path / "random.safetensors"
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    files["random"] = p
    p = tmp_path / "small_header.safetensors"
    p.write_bytes((20).to_bytes(8, "little") + b"\xff" * 40)
    files["small_header"] = p
    p = tmp_path / "model.json"
    p.write_text(json.dumps(_info().to_dict()))
    files["json"] = p
    p = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(p))
    files["no_metadata"] = p
    p = tmp_path / "other_meta.safetensors"
    save_file({"w": torch.zeros(3)}, str(p), metadata={"framework": "pt"})
    files["other_metadata"] = p
    p = tmp_path / "wrong_format.safetensors"
    save_file({"w": torch.zeros(3)}, str(p), metadata={"primate_monitor": json.dumps({"format": "something-else"})})
    files["wrong_format"] = p
    p = tmp_path / "empty.safetensors"
    p.write_bytes(b"")
    files["empty"] = p
    files["missing"] = tmp_path / "missing.safetensors"
    files["folder"] = tmp_path
    return files


@pytest.mark.parametrize("kind", ["random", "small_header", "json", "no_metadata", "other_metadata",
                                  "wrong_format", "empty", "missing", "folder"])
def test_non_checkpoint_raises_checkpoint_error_naming_the_file(tmp_path, kind):
    path = _bad_files(tmp_path)[kind]
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)


def test_weights_that_do_not_match_the_metadata(tmp_path, trained):
    info = _info()
    path = save_checkpoint(tmp_path / "m.safetensors", trained.state_dict(), ModelInfo(**{**info.__dict__, "model": "cnn10"}))
    with pytest.raises(CheckpointError, match="do not match") as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)


def test_atomic_write_leaves_no_temp_file(tmp_path, trained):
    folder = tmp_path / "out"
    save_checkpoint(folder / "a.safetensors", trained.state_dict(), _info())
    save_checkpoint(folder / "a.safetensors", trained.state_dict(), _info())  # overwrite
    assert sorted(p.name for p in folder.iterdir()) == ["a.json", "a.safetensors"]


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path, trained, monkeypatch):
    path = save_checkpoint(tmp_path / "a.safetensors", trained.state_dict(), _info())
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_module, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, trained.state_dict(), _info())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.safetensors"]
