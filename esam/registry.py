"""Registries: a dict of name -> builder plus one register function, shared by models, datasets and optimizers.

The registry is the authority on valid names: configs are checked against it, so a builder added
with `register_model` / `register_dataset` / `register_optimizer` is usable from YAML and the CLI.
"""
from __future__ import annotations

from typing import Callable, TypeVar

from esam.errors import ConfigError
from esam.suggestions import did_you_mean

T = TypeVar("T")


class Registry(dict):
    """name -> builder; an unknown name is a ConfigError that lists the valid ones."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind  # "model", "dataset", "optimizer": used in messages

    def add(self, name: str, builder: T) -> T:
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self[name] = builder
        return builder

    def decorator(self, name: str) -> Callable[[T], T]:
        """`@registry.decorator("name")` adds the decorated builder under `name`."""
        return lambda builder: self.add(name, builder)

    def check(self, name: object, where: str = "") -> None:
        """Raise a one-line ConfigError unless `name` is registered; `where` names the config field."""
        if not isinstance(name, str) or name not in self:
            shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:57] + "..."
            prefix = f"{where}: " if where else ""
            raise ConfigError(f"{prefix}unknown {self.kind} {shown} (valid: {', '.join(sorted(self))})"
                              + did_you_mean(name, self, quote=True))

    def lookup(self, name: str, where: str = "") -> object:
        self.check(name, where)
        return self[name]
