"""Clip-level scores for evaluation and validation: the max over a clip's 3 s windows."""

from __future__ import annotations

import numpy as np
import torch

from .clipaudio import PAPER_PADDING, eval_windows
from .devices import autocast
from .frontend import LogMel
from .models import AudioClassifier


def activate(logits: torch.Tensor, activation: str) -> torch.Tensor:
    """Scores in [0, 1] from logits: per-class sigmoid (MixUp + BCE training) or softmax."""
    return torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, dim=-1)


@torch.no_grad()
def score_windows(network: AudioClassifier, frontend: LogMel, windows: torch.Tensor, activation: str) -> torch.Tensor:
    """(batch, samples) waveforms on the model's device -> (batch, classes) scores, float32."""
    device = windows.device
    with autocast(device):
        logits, _ = network(frontend(windows))
    return activate(logits.float(), activation)


@torch.no_grad()
def score_clips(
    network: AudioClassifier,
    frontend: LogMel,
    audios: list[np.ndarray],
    clip_samples: int,
    hop_samples: int,
    activation: str,
    batch_size: int = 64,
    padding: str = PAPER_PADDING,
) -> np.ndarray:
    """(clips, classes) scores. A clip longer than the window is scored every ``hop`` and
    its score for each class is the maximum over its windows; a shorter one is padded by
    ``pad_eval(padding)``, the deterministic form of the rule training used."""
    device = next(network.parameters()).device
    was_training = network.training
    network.eval()
    pending: list[np.ndarray] = []
    owners: list[int] = []
    results: list[np.ndarray] = []

    def flush() -> None:
        batch = torch.from_numpy(np.stack(pending).astype(np.float32)).to(device)
        results.append(score_windows(network, frontend, batch, activation).cpu().numpy())
        pending.clear()

    # windows are built clip by clip so memory stays at one batch, not the whole split
    for i, audio in enumerate(audios):
        for window in eval_windows(audio, clip_samples, hop_samples, padding):
            pending.append(window)
            owners.append(i)
            if len(pending) == batch_size:
                flush()
    if pending:
        flush()
    scores = np.concatenate(results)
    out = np.full((len(audios), scores.shape[1]), -np.inf, dtype=np.float32)
    np.maximum.at(out, np.asarray(owners), scores)
    network.train(was_training)
    return out
