"""PANNs ResNet22: a conv block, a ResNet-18-style body [2, 2, 2, 2], and a 2048-channel block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import AudioClassifier, MelBatchNorm, PannsHead, init_panns
from .cnn import ConvBlock


class BasicBlock(nn.Module):
    """PANNs residual block: 2×2 average pooling (not a strided conv) when downsampling."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.AvgPool2d(stride) if stride > 1 else nn.Identity(),
                nn.Conv2d(in_ch, out_ch, 1, bias=False),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.avg_pool2d(x, 2) if self.stride == 2 else x
        out = F.relu(self.bn1(self.conv1(out)))
        out = F.dropout(out, p=0.1, training=self.training)
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet22(AudioClassifier):
    """62,605,509 parameters for 5 classes."""

    time_stride = 32  # conv block pool, three strided stages, one more pool
    fast_path = True
    embedding_dim = 2048

    def __init__(self, num_classes: int, n_mels: int = 64) -> None:
        super().__init__()
        self.bn0 = MelBatchNorm(n_mels)
        self.conv_block1 = ConvBlock(1, 64, kernel=3, convs=2)
        stages: list[nn.Module] = []
        in_ch = 64
        for out_ch, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages += [BasicBlock(in_ch, out_ch, stride), BasicBlock(out_ch, out_ch, 1)]
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        # the last block keeps its resolution: conv ×2 with no pooling
        self.conv_block_after = ConvBlock(512, 2048, kernel=3, convs=2).layers
        self.head = PannsHead(2048, 2048, num_classes)
        init_panns(self)
        for m in self.modules():  # PANNs zero-inits the last BN of each residual branch
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        x = F.dropout(self.conv_block1(x), p=0.2, training=self.training)
        x = F.dropout(F.avg_pool2d(self.stages(x), 2), p=0.2, training=self.training)
        return F.dropout(self.conv_block_after(x), p=0.2, training=self.training)

    def classify(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(x)


def resnet22(num_classes: int) -> ResNet22:
    return ResNet22(num_classes)
