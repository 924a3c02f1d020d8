"""Model registry: a dict of builders plus `register_model`, as in pycls.

Every builder takes `(num_classes, in_channels)` and returns an `nn.Module` that maps
`[B, in_channels, H, W]` float images to `[B, num_classes]` logits.

    model = build_model("resnet18", num_classes=10)

Builders are registered by importing their module at the bottom of this file; a new family is
one new file plus one import line.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from esam.errors import ConfigError
from esam.registry import Registry

ModelBuilder = Callable[[int, int], nn.Module]

MODELS = Registry("model")


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: `@register_model("resnet18")` adds the builder to `MODELS` under `name`."""
    return MODELS.decorator(name)


def build_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """The registered model `name` with `num_classes` outputs for `in_channels`-channel images.

    An unknown name raises `ConfigError` listing the valid ones.
    """
    builder = MODELS.lookup(name)
    if num_classes <= 0 or in_channels <= 0:
        raise ConfigError(f"model {name}: num_classes and in_channels must be positive, "
                          f"got {num_classes} and {in_channels}")
    return builder(num_classes, in_channels)


# Importing the families registers them.
from esam.models import imagenet, pyramidnet, resnet, small, wide_resnet  # noqa: F401
