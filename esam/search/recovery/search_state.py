"""`<state_dir>/<name>/search.json`: a search's resolved config, MLflow parent run and store.

state_dir defaults to results_dir.

It is what makes "run the same command again" continue a search, so a damaged or missing
file is refused with one line (restore it, or remove the directory) instead of silently
starting a second search beside the first one's trials.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from esam.errors import ConfigError
from esam.search.recovery import ray_state
from esam.search.stores.results_dir import StoragePath
from esam.search.stores.write_refusals import cause, refusal_line

STATE_FILE = "search.json"
EXPERIMENTS = ("references", "search")  # the Ray experiments of a search
_KEYS = ("config", "parent_run_id", "tracking_uri")


def _start_over(directory: Path) -> str:
    return f"restore it, or remove {directory} (and the search's MLflow runs) to start the search over"


def has_trials(ray_storage: StoragePath) -> bool:
    """Whether Ray saved any experiment of this search (its trials would be lost)."""
    return any((ray_storage / e / "tuner.pkl").exists() or ray_state.state_file(ray_storage / e) is not None
               for e in EXPERIMENTS)


def read_state(directory: Path, ray_storage: StoragePath) -> dict:
    """The saved state; {} for a new search; ConfigError when it is damaged or lost."""
    path = directory / STATE_FILE
    if not path.exists():
        if has_trials(ray_storage):
            raise ConfigError(f"{path} is missing, but {ray_storage} holds this search's trials; "
                              f"{_start_over(directory)}")
        return {}
    try:
        state = json.loads(path.read_text())
        missing = [k for k in _KEYS if k not in state] if isinstance(state, dict) else list(_KEYS)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path} is unreadable ({type(err).__name__}: {str(err)[:100]}); "
                          f"{_start_over(directory)}") from None
    if missing:
        raise ConfigError(f"{path} lacks {', '.join(missing)}; {_start_over(directory)}")
    return state


def write_state(directory: Path, state: dict) -> None:
    """Written whole or not at all: a crash never leaves half a file."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (STATE_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(state, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / STATE_FILE)


def check_writable(directory: Path) -> None:
    """A read-only or full results_dir is refused before any trial runs."""
    probe = directory / ".write_probe"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * 65536)  # a full disk refuses this, not only the empty file
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as err:
        raise ConfigError(storage_error_line(err, directory)) from None


def storage_error_line(err: OSError, directory: Path) -> str:
    """One line naming the real cause (no space, read-only, a name too long) and the way out."""
    reason = cause(err) or (err.strerror or type(err).__name__).lower()
    return refusal_line(reason, str(err.filename or directory))
