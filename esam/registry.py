"""Registries: a dict of name -> builder plus one register function, shared by models, datasets and optimizers.

The registry is the authority on valid names: configs are checked against it, so a builder added
with `register_model` / `register_dataset` / `register_optimizer` is usable from YAML and the CLI.
Models and datasets also take an import path (`my_project.nets:build`, esam.import_paths): a
registered name wins, and the path is imported only when the builder is looked up.
"""
from __future__ import annotations

from typing import Callable, TypeVar

from esam import import_paths
from esam.errors import ConfigError
from esam.suggestions import did_you_mean

T = TypeVar("T")


class Registry(dict):
    """name -> builder; an unknown name is a ConfigError that lists the valid ones."""

    def __init__(self, kind: str, import_paths: bool = False):
        super().__init__()
        self.kind = kind  # "model", "dataset", "optimizer": used in messages
        self.import_paths = import_paths  # names may also be `package.module:attribute`

    def add(self, name: str, builder: T) -> T:
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self[name] = builder
        return builder

    def provide(self, name: str, builder: T) -> T:
        """Add or replace: a builder handed to each run (esam.search.run, a trial) is registered again by it."""
        self[name] = builder
        return builder

    def decorator(self, name: str) -> Callable[[T], T]:
        """`@registry.decorator("name")` adds the decorated builder under `name`."""
        return lambda builder: self.add(name, builder)

    def check(self, name: object, where: str = "") -> None:
        """Raise a one-line ConfigError unless `name` is registered; `where` names the config field."""
        if not isinstance(name, str) or name not in self and not (self.import_paths and import_paths.is_import_path(name)):
            shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:57] + "..."
            prefix = f"{where}: " if where else ""
            paths = f", or an import path such as {import_paths.EXAMPLE}" if self.import_paths else ""
            raise ConfigError(f"{prefix}unknown {self.kind} {shown} (valid: {', '.join(sorted(self))}{paths})"
                              + did_you_mean(name, self, quote=True))

    def lookup(self, name: str, where: str = "") -> object:
        """The builder registered as `name`, else the callable its import path names (imported now)."""
        self.check(name, where)
        if name in self:
            return self[name]
        return import_paths.load(name, where or self.kind)
