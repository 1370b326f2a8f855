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
        """Call after optimizer step number ``step`` (1-based).

        One fused ``torch._foreach_*`` call per operation over all tensors instead of a
        Python loop of two kernels per parameter: on a GPU the loop's ~60 small launches
        per step cost more than the arithmetic (issue 11). Same arithmetic, same result."""
        decay = self.decay if step >= self.start else 0.0
        shadow = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_mul_(shadow, decay)
        torch._foreach_add_(shadow, params, alpha=1.0 - decay)
        torch._foreach_copy_(list(self.model.buffers()), list(model.buffers()))
