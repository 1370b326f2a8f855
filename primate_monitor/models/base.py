"""Pieces every network shares: the per-mel-bin input BatchNorm, PANNs initialisation
and the PANNs pooling head (mean over frequency, then max + mean over time)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def init_panns(module: nn.Module) -> None:
    """PANNs initialisation: Xavier-uniform conv/linear weights, zero biases, BN (1, 0)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class MelBatchNorm(nn.Module):
    """``bn0``: BatchNorm over the mel bins, one mean/variance per bin."""

    def __init__(self, n_mels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(n_mels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (batch, 1, frames, mels) -> (batch, mels, frames, 1) so that the mel bins are channels
        return self.bn(x.transpose(1, 3)).transpose(1, 3)


class AudioClassifier(nn.Module):
    """Base for all networks: ``forward(logmel) -> (logits, embedding)``.

    Split into ``trunk`` (a convolutional feature map) and ``classify`` so that the
    scanner can run the trunk once over a long stretch and pool per window.
    ``time_stride`` is how many input frames one trunk column covers; ``fast_path`` says
    whether the head pools over frequency first (then per-window pooling is possible).
    """

    time_stride: int = 1
    fast_path: bool = False
    embedding_dim: int = 0

    bn0: MelBatchNorm

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (batch, 1, frames, mels) -> (batch, channels, frames', mels')."""
        raise NotImplementedError

    def classify(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, channels, frames', mels') -> (logits, embedding)."""
        raise NotImplementedError

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Log-mel (batch, 1, frames, mels) -> feature map (batch, channels, frames', mels')."""
        return self.body(self.bn0(x))

    def forward(
        self, x: torch.Tensor, augment: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``augment`` (SpecAugment, MixUp) acts after ``bn0``, where PANNs applies it."""
        z = self.bn0(x)
        if augment is not None:
            z = augment(z)
        return self.classify(self.body(z))


class PannsHead(nn.Module):
    """Mean over frequency, max + mean over time, dropout 0.5, FC + ReLU, FC."""

    def __init__(self, in_channels: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels, hidden)
        self.fc_out = nn.Linear(hidden, num_classes)

    def pool_time(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, channels, frames') -> (batch, channels)."""
        return x.amax(dim=2) + x.mean(dim=2)

    def from_pooled(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.dropout(x, p=0.5, training=self.training)
        embedding = F.relu(self.fc1(x))
        logits = self.fc_out(F.dropout(embedding, p=0.5, training=self.training))
        return logits, embedding

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (batch, channels, frames', mels') -> (batch, channels, frames')
        return self.from_pooled(self.pool_time(x.mean(dim=3)))
