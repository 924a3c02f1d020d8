"""PyramidNet-110, alpha 270 (Han et al., "Deep Pyramidal Residual Networks", CVPR 2017).

The ESAM paper (following SAM) trains PyramidNet-110 with widening factor alpha = 270. This is
the basic-block (two 3x3 convs) CIFAR version: depth 110 = 6n + 2 with n = 18 blocks per group,
54 blocks in three groups (32, 16, 8 px). The width grows linearly by alpha / 54 = 5 channels
per block, from 16 to 286. Block: BN-conv3x3-BN-ReLU-conv3x3-BN (no ReLU after the addition);
shortcut: 2x2 average pooling where the block downsamples, then zero-padded channels (no
projection parameters). Stem: conv3x3 + BN; head: BN-ReLU, global average pooling, linear.

28,485,477 parameters for 10 classes: the same count as imgclsmob's `pyramidnet110_a270_cifar10`
(2.51% error); Han et al.'s Table 4 lists this network as 28.3M. (The bottleneck PyramidNet-164
with alpha 270, another common choice, has 27.2M.)
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from esam.models.init import kaiming_conv_init
from esam.models.registry import register_model


class PyramidBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.stride = stride
        self.extra_channels = c_out - c_in

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv1(self.bn1(x))
        y = self.conv2(F.relu(self.bn2(y)))
        y = self.bn3(y)
        shortcut = F.avg_pool2d(x, 2, ceil_mode=True) if self.stride != 1 else x
        if self.extra_channels:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra_channels))  # zero channels at the end
        return y + shortcut


class PyramidNet(nn.Module):
    def __init__(self, depth: int = 110, alpha: float = 270, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"PyramidNet (basic blocks) depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        step = alpha / (3 * n)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        blocks: list[nn.Module] = []
        width, c_in = 16.0, 16
        for group in range(3):
            for i in range(n):
                width += step
                c_out = round(width)
                blocks.append(PyramidBlock(c_in, c_out, stride=2 if group > 0 and i == 0 else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(c_in, num_classes)
        kaiming_conv_init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.head(self.blocks(self.stem(x))))


@register_model("pyramidnet110")
def pyramidnet110(num_classes: int, in_channels: int = 3) -> nn.Module:
    return PyramidNet(110, 270, num_classes, in_channels)
