"""PANNs MobileNetV1: depthwise-separable convs with average pooling for the strides."""

from __future__ import annotations

import torch
from torch import nn

from .base import AudioClassifier, MelBatchNorm, PannsHead, init_panns

# (in, out, pool) for the depthwise-separable layers after the first conv (1 -> 32, pool 2)
DW_LAYERS = (
    (32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2),
    (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1),
    (512, 1024, 2), (1024, 1024, 1),
)


def _pool(stride: int) -> nn.Module:
    return nn.AvgPool2d(stride) if stride > 1 else nn.Identity()


def conv_bn(in_ch: int, out_ch: int, pool: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), _pool(pool),
        nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
    )


def conv_dw(in_ch: int, out_ch: int, pool: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, in_ch, 3, padding=1, groups=in_ch, bias=False), _pool(pool),
        nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True),
        nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
    )


class MobileNetV1(AudioClassifier):
    """4,261,253 parameters for 5 classes."""

    time_stride = 32  # five poolings by 2
    fast_path = True
    embedding_dim = 1024

    def __init__(self, num_classes: int, n_mels: int = 64) -> None:
        super().__init__()
        self.bn0 = MelBatchNorm(n_mels)
        self.features = nn.Sequential(conv_bn(1, 32, 2), *(conv_dw(i, o, p) for i, o, p in DW_LAYERS))
        self.head = PannsHead(1024, 1024, num_classes)
        init_panns(self)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def classify(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(x)


def mobilenetv1(num_classes: int) -> MobileNetV1:
    return MobileNetV1(num_classes)
