"""Wide ResNet WRN-28-10 (Zagoruyko & Komodakis 2016), pre-activation, as used by SAM and ESAM.

Depth 28 = 6n + 4 with n = 4 blocks per group; widths 16 * 10 = 160, 320, 640 over three groups
(32, 16, 8 px). Block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3; where the shape changes, the
shortcut is a 1x1 conv of the pre-activated input, as in the authors' code. A final BN-ReLU,
global average pooling and a linear layer. 36,479,194 parameters for 10 classes.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from esam.models.init import kaiming_conv_init
from esam.models.registry import register_model


class PreActBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.dropout = dropout
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = F.relu(self.bn2(y))
        if self.dropout > 0:
            y = F.dropout(y, self.dropout, self.training)
        y = self.conv2(y)
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    def __init__(self, depth: int = 28, width: int = 10, num_classes: int = 10, in_channels: int = 3,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16 * width, 32 * width, 64 * width]
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        c_in = 16
        for group, c_out in enumerate(widths):
            for i in range(n):
                blocks.append(PreActBlock(c_in, c_out, stride=2 if group > 0 and i == 0 else 1, dropout=dropout))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(c_in, num_classes)
        kaiming_conv_init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.head(self.blocks(self.stem(x))))


@register_model("wrn28_10")
def wrn28_10(num_classes: int, in_channels: int = 3) -> nn.Module:
    return WideResNet(28, 10, num_classes, in_channels)
