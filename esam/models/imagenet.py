"""ImageNet ResNet-50 and ResNet-101: torchvision's models, randomly initialised.

25,557,032 and 44,549,160 parameters at 1000 classes. For other than 3 input channels the stem
convolution is replaced by one of the same shape with `in_channels` inputs.
"""
from __future__ import annotations

from collections.abc import Callable

import torchvision
from torch import nn

from esam.models.registry import register_model


def _torchvision_resnet(factory: Callable[..., nn.Module], num_classes: int, in_channels: int) -> nn.Module:
    model = factory(weights=None, num_classes=num_classes)
    if in_channels != 3:
        old = model.conv1
        model.conv1 = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


@register_model("resnet50")
def resnet50(num_classes: int, in_channels: int = 3) -> nn.Module:
    return _torchvision_resnet(torchvision.models.resnet50, num_classes, in_channels)


@register_model("resnet101")
def resnet101(num_classes: int, in_channels: int = 3) -> nn.Module:
    return _torchvision_resnet(torchvision.models.resnet101, num_classes, in_channels)
