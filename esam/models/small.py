"""`small_cnn`: a tiny CNN with BatchNorm for the digits dataset and CPU tests.

Three 3x3 conv-BN-ReLU layers (16, 32, 64 channels, one 2x2 max-pool) and global average
pooling, about 24k parameters. The adaptive pooling makes it work on any image size: 1x8x8
digits and 3x32x32 CIFAR alike. An epoch of digits (1437 images, batch 128) takes about 0.2 s on
one CPU core, and SGD (lr 0.05, momentum 0.9, no augmentation) passes 95% test accuracy within
five epochs.

`cifar_cnn`: the CPU-sized CIFAR network. Three conv-BN-ReLU stages (32, 64, 128 channels), each
followed by a 2x2 max-pool, then global average pooling: about 94k parameters, four times
small_cnn's, at about the same multiply-adds on 32x32 images (10M), because it pools before it
widens. It has the capacity to memorize noisy CIFAR labels in a CPU budget, which small_cnn on
10k images does not (experiments/RESULTS.md, section 12).
"""
from __future__ import annotations

from torch import Tensor, nn

from esam.models.registry import register_model


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn(in_channels, width),
            *_conv_bn(width, 2 * width),
            nn.MaxPool2d(2),
            *_conv_bn(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


@register_model("small_cnn")
def small_cnn(num_classes: int, in_channels: int = 3) -> nn.Module:
    return SmallCNN(num_classes, in_channels)


class CifarCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        stages = []
        for c_in, c_out in ((in_channels, width), (width, 2 * width), (2 * width, 4 * width)):
            stages += [*_conv_bn(c_in, c_out), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*stages, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


@register_model("cifar_cnn")
def cifar_cnn(num_classes: int, in_channels: int = 3) -> nn.Module:
    return CifarCNN(num_classes, in_channels)
