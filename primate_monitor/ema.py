"""Exponential moving average of the weights (Pellegrini 2021: decay 0.995 from iteration 15,000)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps ``shadow = decay * shadow + (1 - decay) * weights`` after each step ≥ ``start``.

    Before ``start`` the shadow simply copies the weights, so the average starts from the
    trained model rather than from the random initialisation. Buffers (BatchNorm running
    statistics) are always copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float, start: int) -> None:
        self.decay = decay
        self.start = start
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Call after optimizer step number ``step`` (1-based)."""
        decay = self.decay if step >= self.start else 0.0
        for shadow, param in zip(self.model.parameters(), model.parameters()):
            shadow.mul_(decay).add_(param.detach(), alpha=1.0 - decay)
        for shadow, buf in zip(self.model.buffers(), model.buffers()):
            shadow.copy_(buf)
