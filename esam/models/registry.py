"""The model registry: name -> builder (MODELS), `register_model`, and `build_model`, which also takes import paths.

Model families import `register_model` from here; esam/models/__init__.py imports the families.
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
