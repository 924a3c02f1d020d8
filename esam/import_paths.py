"""Import paths in a config: `package.module:attribute` names a callable of the user's own.

`train.model: "my_project.nets:build"` and `data.name: "my_project.data:load"` name builders that
esam does not register: the module is imported (the working directory first on `sys.path`, as
`python -m` would have it, so a project's package is found from the directory the command runs
in) and the attribute after the colon (dots walk into it: `nets:Factory.build`) is the builder.
Every failure is one ConfigError naming the field, the path and what went wrong.
"""
from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from esam.errors import ConfigError, first_line

_NAME = r"[A-Za-z_]\w*"
IMPORT_PATH = re.compile(rf"{_NAME}(?:\.{_NAME})*:{_NAME}(?:\.{_NAME})*")
EXAMPLE = "my_project.nets:build"  # shown in messages: the form an import path takes


def is_import_path(name: object) -> bool:
    """True for `package.module:attribute` (syntax only: nothing is imported)."""
    return isinstance(name, str) and IMPORT_PATH.fullmatch(name) is not None


def _working_directory_importable() -> None:
    # The `esam` script's sys.path starts with its own bin/ folder, not the directory it runs in.
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)


def load(path: str, where: str) -> Callable:
    """The callable `path` names; ConfigError (`where`: the config field) when it does not import or is no callable."""
    module_name, _, attribute = path.partition(":")
    _working_directory_importable()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        missing = err.name or module_name
        hint = (f"run from the directory that holds {missing.split('.')[0]}, or install it"
                if module_name == missing or module_name.startswith(missing + ".") else "a module it imports is not installed")
        raise ConfigError(f"{where} {path!r}: no module named {missing!r} ({hint})") from None
    except Exception as err:  # noqa: BLE001 - the user's module failed while importing: say how, in one line
        raise ConfigError(f"{where} {path!r}: importing {module_name} failed: {described(err)}") from None
    found: object = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ConfigError(f"{where} {path!r}: {module_name} has no attribute {attribute!r}")
        found = getattr(found, part)
    if not callable(found):
        raise ConfigError(f"{where} {path!r}: {attribute} is a {type(found).__name__}, not a callable")
    return found


def module_file(module: str) -> Path | None:
    """Where the top-level package (or module) of an imported `module` lives; None when it has no file."""
    top = sys.modules.get(module.split(".")[0])
    if top is None:
        return None
    location = getattr(top, "__file__", None)
    if location is None:  # a folder without __init__.py (a namespace package): its folder
        folders = list(getattr(top, "__path__", []))
        return Path(folders[0]).resolve() if folders else None
    location = Path(location).resolve()
    return location.parent if location.name == "__init__.py" else location


def path_of(fn: Callable) -> str:
    """`module:qualname` of a callable (a partial's function), made import-path shaped.

    A lambda or a nested function has no import path: its name keeps the same shape
    (`__main__:make.lambda`), so that every config that records it still loads."""
    fn = getattr(fn, "func", fn)  # functools.partial
    module = getattr(fn, "__module__", None) or "__main__"
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    name = ".".join(p for p in (re.sub(r"\W", "", part) for part in name.split(".")) if p and p != "locals")
    name = name if re.fullmatch(rf"{_NAME}(?:\.{_NAME})*", name or "") else "builder"
    return f"{module}:{name}"


def described(err: BaseException) -> str:
    """`ValueError: its first line` (the type alone for an empty message): what a user's code raised, in one line."""
    return f"{type(err).__name__}: {first_line(err)}" if str(err).strip() else type(err).__name__
