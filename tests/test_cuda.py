"""The GPU path (issue 11): scanning and a short training run on CUDA, against the CPU.

Skipped without a CUDA GPU; ``benchmarks/gpu_check.sh`` runs them (``pytest -m cuda``)
whenever a GPU is lent. On CUDA the trunk runs under bf16 autocast (8 bits of mantissa),
so scores are compared with a stated tolerance rather than exactly:

- per window and class, |CUDA - CPU| <= 0.05 (max) and <= 0.01 (mean);
- the thresholded decision (score >= 0.5 for each non-background class) is the same
  for >= 98 % of windows.
The front end (STFT, mel, log) stays float32 on both devices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch")]

ROOT = Path(__file__).parent.parent
RECORDINGS = sorted((ROOT / "sample_data" / "recordings").glob("*.[wf][al][va]*"))  # 3.7 min of real audio
MAX_ABS = 0.05
MEAN_ABS = 0.01
DECISIONS_EQUAL = 0.98


def decisions(model, scores: np.ndarray) -> np.ndarray:
    reject = model.info.classes.index(model.info.reject_class)
    species = [k for k in range(len(model.info.classes)) if k != reject]
    return scores[:, species] >= 0.5


@pytest.fixture(scope="module")
def models():
    """The bundled demo model (trained, so scores move and decisions mean something) on both devices."""
    from primate_monitor.bundled import default_model_path
    from primate_monitor.checkpoint import load_checkpoint

    path = default_model_path()
    return load_checkpoint(path, "cpu"), load_checkpoint(path, "cuda")


@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_scan_on_cuda_matches_the_cpu(models, mode):
    from primate_monitor.scanner import ScanConfig, score_recording

    cpu, gpu = models
    assert len(RECORDINGS) == 3
    config = ScanConfig(hop_seconds=1.0, mode=mode, precision="fp32")  # the CPU reference in float32, not int8
    diffs, equal = [], []
    for path in RECORDINGS:
        a = score_recording(path, cpu, config)
        b = score_recording(path, gpu, config)
        np.testing.assert_array_equal(a.starts_s, b.starts_s)
        assert b.scores.dtype == np.float32 and np.isfinite(b.scores).all()
        diffs.append(np.abs(a.scores - b.scores).ravel())
        equal.append((decisions(cpu, a.scores) == decisions(cpu, b.scores)).all(axis=1))
    diff, same = np.concatenate(diffs), np.concatenate(equal)
    print(f"\n{mode}: {len(same)} windows, max |cuda - cpu| {diff.max():.4f}, mean {diff.mean():.5f}, "
          f"decisions equal {same.mean():.2%}")
    assert diff.max() <= MAX_ABS, f"max |cuda - cpu| = {diff.max():.4f}"
    assert diff.mean() <= MEAN_ABS, f"mean |cuda - cpu| = {diff.mean():.5f}"
    assert same.mean() >= DECISIONS_EQUAL, f"decisions equal for only {same.mean():.2%} of windows"


def test_several_recordings_batched_on_cuda_match_one_at_a_time(models):
    """score_recordings (decoder threads, spans of several files in one trunk call) against
    score_recording file by file, both on CUDA: only the grouping differs, so bf16 rounding alone."""
    from primate_monitor.scanner import ScanConfig, score_recording, score_recordings

    _, gpu = models
    config = ScanConfig(hop_seconds=1.0, mode="fast", precision="fp32")
    batched = dict(score_recordings(RECORDINGS, gpu, config, workers=3))
    for path in RECORDINGS:
        alone = score_recording(path, gpu, config)
        np.testing.assert_array_equal(batched[path].starts_s, alone.starts_s)
        assert np.abs(batched[path].scores - alone.scores).max() <= MAX_ABS


def test_twenty_training_iterations_on_cuda(tmp_path):
    """The full recipe step (front end, SpecAugment, MixUp, bf16 forward/backward, AMSGrad, EMA) on the GPU."""
    from primate_monitor.config import load_config
    from primate_monitor.train import Trainer

    config = load_config(ROOT / "configs" / "cnn10_16k.yaml",
                         ["device=cuda", "iterations=20", "eval_every=20", "ema_start=0", f"cache_dir={tmp_path / 'cache'}"])
    trainer = Trainer(ROOT / "sample_data" / "clips", tmp_path / "run", config)
    assert trainer.device.type == "cuda"
    losses = [float(trainer.train_step()) for _ in range(config.iterations)]
    print(f"\nlosses: first {losses[0]:.4f}, last {losses[-1]:.4f}")
    assert np.isfinite(losses).all()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert all(p.is_cuda for p in trainer.ema.model.parameters())
    results = trainer.validate()  # devel scoring on the GPU, raw and EMA weights
    assert 0.0 <= results["ema"]["uar"] <= 1.0


def test_training_steps_never_wait_for_the_gpu(tmp_path):
    """No recipe step makes the host wait for the GPU (a blocking copy, a device value read on
    the host): the host must cut the next batch while the GPU computes this one. CUDA's sync
    debug mode turns any such wait into an error."""
    from primate_monitor.config import load_config
    from primate_monitor.train import Trainer

    config = load_config(ROOT / "configs" / "cnn10_16k.yaml",
                         ["device=cuda", "iterations=5", "ema_start=0", f"cache_dir={tmp_path / 'cache'}"])
    trainer = Trainer(ROOT / "sample_data" / "clips", tmp_path / "run", config)
    trainer.train_step()  # the first step allocates the optimiser state and picks cuDNN plans
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = [trainer.train_step() for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(loss) for loss in losses)


def test_scan_command_on_cuda_batches_recordings_and_matches_the_cpu(tmp_path, monkeypatch):
    """``scan`` with the model on the GPU runs the batched executor, and its window scores match
    a CPU fp32 scan's within the tolerance of the scorer tests above."""
    import pandas as pd

    from primate_monitor import scan_batched
    from primate_monitor.scan_run import scan
    from primate_monitor.scanner import ScanConfig

    made, real_init = [], scan_batched.BatchedExecutor.__init__
    monkeypatch.setattr(scan_batched.BatchedExecutor, "__init__",
                        lambda self, *a, **k: (made.append(a), real_init(self, *a, **k))[1])
    config = ScanConfig(hop_seconds=1.0, mode="fast", precision="fp32")
    scan(RECORDINGS, tmp_path / "gpu", config, None, "cuda", workers=3, save_window_scores=True, progress=False)
    assert len(made) == 1
    scan(RECORDINGS, tmp_path / "cpu", config, None, "cpu", save_window_scores=True, progress=False)
    assert len(made) == 1  # the CPU scan is serial
    gpu, cpu = (pd.read_parquet(tmp_path / d / "windows.parquet") for d in ("gpu", "cpu"))
    columns = [c for c in cpu.columns if c.startswith("score_")]
    assert len(gpu) == len(cpu) > 0
    assert np.abs(gpu[columns].to_numpy() - cpu[columns].to_numpy()).max() <= MAX_ABS
