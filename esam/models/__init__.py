"""Model registry: a dict of builders plus `register_model`, as in pycls.

Every builder takes `(num_classes, in_channels)` and returns an `nn.Module` that maps
`[B, in_channels, H, W]` float images to `[B, num_classes]` logits.

    model = build_model("resnet18", num_classes=10)

Your own model, by import path (`train.model: "my_project.nets:build"`, esam.import_paths): the
callable is called as `build(num_classes, in_channels)`, both positional ints taken from the data
(in_channels is the size of the inputs' second dimension: an image's channels, a feature vector's
length), and must return an `nn.Module` mapping a batch of the data's inputs to `[B, num_classes]`
logits. Anything else it returns is one ConfigError naming the path.

Builders are registered by importing their module at the bottom of this file; a new family is
one new file plus one import line.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from esam.errors import ConfigError
from esam.registry import Registry

ModelBuilder = Callable[[int, int], nn.Module]

MODELS = Registry("model", import_paths=True)


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: `@register_model("resnet18")` adds the builder to `MODELS` under `name`."""
    return MODELS.decorator(name)


def build_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """The registered model `name` (or the one its import path builds) with `num_classes` outputs
    for `in_channels`-channel inputs.

    An unknown name raises `ConfigError` listing the valid ones; so does a path that does not import
    and a builder that returns no `nn.Module`.
    """
    builder = MODELS.lookup(name, "model")
    if num_classes <= 0 or in_channels <= 0:
        raise ConfigError(f"model {name}: num_classes and in_channels must be positive, "
                          f"got {num_classes} and {in_channels}")
    model = builder(num_classes, in_channels)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


# Importing the families registers them.
from esam.models import imagenet, pyramidnet, resnet, small, wide_resnet  # noqa: F401
