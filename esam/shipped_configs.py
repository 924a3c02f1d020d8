"""The search configs shipped with esam (the repository's tune_configs/), found by name from any directory.

A wheel installs tune_configs/ as the package data `esam.tune_configs` (pyproject.toml's package-dir);
an editable install or a checkout reads the repository's own folder, since setuptools' editable
finder does not serve a mapped folder without an __init__.py. One set of files, no copies.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from esam.errors import ConfigError
from esam.suggestions import did_you_mean

SUFFIX = ".yaml"


def shipped_files() -> list[Path]:
    """Every shipped config file, sorted: the installed package data, else the checkout's tune_configs/."""
    try:
        # a folder without __init__.py is a namespace package: files() answers a MultiplexedPath,
        # whose str() is no path, but whose entries are plain paths
        packaged = [Path(str(p)) for p in resources.files("esam.tune_configs").iterdir() if p.name.endswith(SUFFIX)]
    except (ModuleNotFoundError, TypeError, OSError):
        packaged = []
    return sorted(packaged or (Path(__file__).resolve().parent.parent / "tune_configs").glob(f"*{SUFFIX}"))


def shipped_dir() -> Path:
    """The folder the shipped configs are read from (shown by `esam configs`)."""
    files = shipped_files()
    return files[0].parent if files else Path(__file__).resolve().parent.parent / "tune_configs"


def shipped_configs() -> dict[str, Path]:
    """name (the file's stem) -> path, sorted by name."""
    return {p.stem: p for p in shipped_files()}


def shipped_config(name: str) -> Path:
    """The shipped config `name` (`quickstart` or `quickstart.yaml`); ConfigError naming the shipped ones."""
    configs = shipped_configs()
    stem = name.removesuffix(SUFFIX)
    if stem in configs:
        return configs[stem]
    shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:57] + "..."
    raise ConfigError(f"no config file or shipped config named {shown} (shipped: {', '.join(configs)}; "
                      f"`esam configs` describes them){did_you_mean(stem, configs, quote=True)}")


def resolve(text: str) -> str:
    """A search config argument as the file to read: a path that exists wins, then a shipped name.

    `tune_configs/NAME.yaml` (as the README and the files' headers write it) is a shipped name
    too when run elsewhere. Something else that looks like a file (a folder in it, or a .yaml/.yml
    suffix) is returned as given, for the loader to say it is missing; an unknown bare name is a
    ConfigError.
    """
    if _exists(text):
        return text
    path = Path(text)
    shipped = shipped_configs()
    stem = path.stem if path.suffix == SUFFIX else path.name
    if stem in shipped and str(path.parent) in (".", "tune_configs"):
        return str(shipped[stem])
    if "/" in text or "\\" in text or text.endswith((SUFFIX, ".yml")):
        return text
    return str(shipped_config(text))


def _exists(text: str) -> bool:
    try:
        return Path(text).exists()
    except (OSError, ValueError):  # a name too long for the filesystem, a NUL byte
        return False


def header_line(path: Path) -> str:
    """The first line of the file's header comment, without the `#` ('' when it opens with none)."""
    try:
        with path.open(encoding="utf-8") as f:
            first = f.readline().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return first.lstrip("#").strip() if first.startswith("#") else ""
