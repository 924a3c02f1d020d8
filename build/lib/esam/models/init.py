"""Weight initialization shared by the CIFAR networks."""
from __future__ import annotations

from torch import nn


def kaiming_conv_init(model: nn.Module) -> None:
    """He-normal (fan_out) conv weights, as in the ResNet/WRN/PyramidNet papers; other layers keep PyTorch's."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
