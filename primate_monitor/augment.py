"""Training-time augmentation on log-mels: MixUp and SpecAugment, on the model's device."""

from __future__ import annotations

import torch


def mixup(x: torch.Tensor, targets: torch.Tensor, alpha: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each example with a partner from a random permutation of the batch.

    λ ~ Beta(α, α) is drawn per pair; inputs and one-hot targets mix with the same λ,
    giving soft targets for a BCE loss. x: (batch, 1, frames, mels); targets: (batch, classes).
    """
    batch = x.shape[0]
    beta = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha)))
    # draw on the CPU generator so runs are reproducible on any device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        lam = beta.sample((batch,))
    perm = torch.randperm(batch, generator=generator)
    # non_blocking: a blocking copy to a GPU waits for all queued work, which would stall every step
    lam, perm = lam.to(x.device, non_blocking=True), perm.to(x.device, non_blocking=True)
    lam_x = lam.view(batch, 1, 1, 1)
    mixed_x = lam_x * x + (1 - lam_x) * x.index_select(0, perm)
    mixed_t = lam[:, None] * targets + (1 - lam[:, None]) * targets.index_select(0, perm)
    return mixed_x, mixed_t


def _stripe_mask(n_items: int, length: int, max_stripes: int, max_width: int, generator: torch.Generator) -> torch.Tensor:
    """(n_items, length) bool mask: for each item 0..max_stripes stripes of width 0..max_width."""
    mask = torch.zeros(n_items, length, dtype=torch.bool)
    if max_width == 0 or max_stripes == 0:
        return mask
    counts = torch.randint(0, max_stripes + 1, (n_items,), generator=generator)
    for i in range(n_items):
        for _ in range(int(counts[i])):
            width = int(torch.randint(0, min(max_width, length) + 1, (1,), generator=generator))
            start = int(torch.randint(0, length - width + 1, (1,), generator=generator))
            mask[i, start : start + width] = True
    return mask


def specaugment(
    x: torch.Tensor,
    generator: torch.Generator,
    time_stripes: int = 2,
    time_width: int = 16,
    freq_stripes: int = 2,
    freq_width: int = 8,
    per_example: bool = False,
) -> torch.Tensor:
    """Zero 0–``time_stripes`` time stripes of ≤ ``time_width`` frames and 0–``freq_stripes``
    frequency stripes of ≤ ``freq_width`` bins. The paper uses the same stripes for the
    whole mini-batch; ``per_example`` draws them for each example. x: (batch, 1, frames, mels).
    Masked cells are set to 0 (after bn0 this is the mean; on raw log-mels 0 dB).
    """
    batch, _, frames, mels = x.shape
    n = batch if per_example else 1
    t_mask = _stripe_mask(n, frames, time_stripes, time_width, generator).to(x.device, non_blocking=True)
    f_mask = _stripe_mask(n, mels, freq_stripes, freq_width, generator).to(x.device, non_blocking=True)
    mask = t_mask[:, None, :, None] | f_mask[:, None, None, :]  # (n, 1, frames, mels)
    return x.masked_fill(mask, 0.0)
