"""PANNs CNN6 and CNN10 (Kong et al. 2020), as used by Pellegrini (2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import AudioClassifier, MelBatchNorm, PannsHead, init_panns

CHANNELS = (64, 128, 256, 512)


class ConvBlock(nn.Module):
    """``convs`` × (conv k×k no bias, BN, ReLU), then 2×2 average pooling."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, convs: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(convs):
            layers += [
                nn.Conv2d(in_ch if i == 0 else out_ch, out_ch, kernel, padding=kernel // 2, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True),
            ]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.layers(x), kernel_size=2)


class PannsCNN(AudioClassifier):
    """Four conv blocks (64-128-256-512), each followed by dropout 0.2, then the PANNs head."""

    time_stride = 16  # four 2×2 poolings
    fast_path = True
    embedding_dim = 512

    def __init__(self, num_classes: int, kernel: int, convs: int, n_mels: int = 64) -> None:
        super().__init__()
        self.bn0 = MelBatchNorm(n_mels)
        chans = (1,) + CHANNELS
        self.blocks = nn.ModuleList(ConvBlock(chans[i], chans[i + 1], kernel, convs) for i in range(4))
        self.head = PannsHead(CHANNELS[-1], 512, num_classes)
        init_panns(self)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = F.dropout(block(x), p=0.2, training=self.training)
        return x

    def classify(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(x)


def cnn10(num_classes: int) -> PannsCNN:
    """CNN10: two 3×3 convs per block (4,951,493 parameters for 5 classes)."""
    return PannsCNN(num_classes, kernel=3, convs=2)


def cnn6(num_classes: int) -> PannsCNN:
    """CNN6: one 5×5 conv per block (4,569,669 parameters for 5 classes)."""
    return PannsCNN(num_classes, kernel=5, convs=1)
