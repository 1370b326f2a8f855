"""WideResNet-28-2 (Zagoruyko & Komodakis 2016) with the paper's head: global max and
mean pooling summed over time and frequency, then two FC layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import AudioClassifier, MelBatchNorm, init_panns

DEPTH = 28
WIDEN = 2
WIDTHS = (16 * WIDEN, 32 * WIDEN, 64 * WIDEN)  # 32, 64, 128 channels


class PreActBlock(nn.Module):
    """Pre-activation wide block: BN-ReLU-conv3×3-BN-ReLU-conv3×3 plus a shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(AudioClassifier):
    """About 1.5 M parameters for 5 classes. Its head pools over time and frequency jointly,
    so it has no per-window fast path in the scanner."""

    time_stride = 4
    fast_path = False
    embedding_dim = WIDTHS[-1]

    def __init__(self, num_classes: int, n_mels: int = 64) -> None:
        super().__init__()
        n = (DEPTH - 4) // 6  # blocks per group
        self.bn0 = MelBatchNorm(n_mels)
        self.conv = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        in_ch = 16
        for width, stride in zip(WIDTHS, (1, 2, 2)):
            for i in range(n):
                blocks.append(PreActBlock(in_ch, width, stride if i == 0 else 1))
                in_ch = width
        self.blocks = nn.Sequential(*blocks)
        self.bn_out = nn.BatchNorm2d(in_ch)
        self.fc1 = nn.Linear(in_ch, in_ch)
        self.fc_out = nn.Linear(in_ch, num_classes)
        init_panns(self)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn_out(self.blocks(self.conv(x))))

    def classify(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = x.amax(dim=(2, 3)) + x.mean(dim=(2, 3))
        embedding = F.relu(self.fc1(F.dropout(pooled, p=0.5, training=self.training)))
        return self.fc_out(F.dropout(embedding, p=0.5, training=self.training)), embedding


def wrn28_2(num_classes: int) -> WideResNet:
    return WideResNet(num_classes)
