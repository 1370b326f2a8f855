"""Shared pytest fixtures. Keep this file additive: other test modules add fixtures here too."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
TINY_CLASSES = ("background", "chimpanzee", "gibbon", "titi_monkey")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained CNN10 (4 classes, 8 kHz, 3 s clips) with fixed weights: deterministic scores."""
    import torch

    from primate_monitor.checkpoint import ModelInfo, save_checkpoint
    from primate_monitor.frontend import FrontEndConfig
    from primate_monitor.models import create_model

    torch.manual_seed(1234)
    model = create_model("cnn10", len(TINY_CLASSES))
    info = ModelInfo(model="cnn10", classes=TINY_CLASSES, reject_class="background", activation="sigmoid",
                     frontend=FrontEndConfig(sample_rate=8000), clip_seconds=3.0)
    path = tmp_path_factory.mktemp("tiny_model") / "tiny_cnn10.safetensors"
    save_checkpoint(path, model.state_dict(), info)
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    """The tiny checkpoint loaded on the CPU."""
    from primate_monitor.checkpoint import load_checkpoint

    return load_checkpoint(tiny_checkpoint, "cpu")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a test module: faster on a shared 2-core box, and in-process
    scans then compute the same scores as CLI subprocesses run with OMP_NUM_THREADS=1."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
