"""Ray Tune's saved experiment state (`<experiment>/experiment_state-*.json`), read as plain JSON.

A search never restores Ray's experiments (it goes on from its records: esam/search/runner.py);
this reads the JSON snapshot as data, never through Ray's decoder (which unpickles), to tell
whether a search left Ray experiments behind, and for tests.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from esam.errors import ConfigError
from esam.search.stores.results_dir import StoragePath, storage_path

STATE_GLOB = "experiment_state-*.json"
TERMINAL = ("TERMINATED", "ERROR")


@dataclass
class SavedTrial:
    trial_id: str
    status: str
    config: dict
    last_result: dict = field(default_factory=dict)

    @property
    def epoch(self) -> int:
        return int(self.last_result.get("epoch") or 0)


def state_file(experiment_dir: StoragePath | Path) -> StoragePath | None:
    """The newest snapshot, chosen as Ray chooses it (the largest file name)."""
    files = storage_path(experiment_dir).files(STATE_GLOB)
    return files[-1] if files else None


def _unreadable(path: StoragePath, why: str) -> ConfigError:
    return ConfigError(f"Ray's experiment state {path} is unreadable ({why}); restore the file, or remove "
                       f"{path.parent} to run that experiment's trials again")


def _load(path: StoragePath) -> dict:
    try:
        doc = json.loads(path.read_bytes())
        for entry in doc["trial_data"]:
            json.loads(entry[0])
        return doc
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise _unreadable(path, f"{type(err).__name__}: {str(err)[:120]}") from None


def _trial(entry: list) -> SavedTrial:
    state = json.loads(entry[0])
    runtime = json.loads(entry[1]) if isinstance(entry[1], str) else (entry[1] or {})
    return SavedTrial(state["trial_id"], state["status"], state.get("config") or {},
                      runtime.get("last_result") or {})


def read_trials(experiment_dir: StoragePath | Path) -> list[SavedTrial] | None:
    """The trials of the newest snapshot; None when Ray saved none; ConfigError when it is damaged."""
    path = state_file(experiment_dir)
    if path is None:
        return None
    doc = _load(path)
    try:
        return [_trial(entry) for entry in doc["trial_data"]]
    except (ValueError, KeyError, TypeError) as err:
        raise _unreadable(path, f"{type(err).__name__}: {str(err)[:120]}") from None
