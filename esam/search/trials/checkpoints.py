"""Where an unfinished trial goes on from: the newest checkpoint any earlier run of it saved.

Each run of a search is a new Ray experiment (Ray's saved experiments are never restored: their
pickles are not trusted to hold only data). A trial that did not finish is started again under a
new Ray trial id with a note, `_resume`, naming the checkpoint it continues from. The trainable
writes its epoch beside each checkpoint (PROGRESS_FILE), so the driver picks the newest without
loading a model. Only checkpoints written by this trial's own directories are candidates:
`esam_<ray trial id>` for a search trial (the ids its Optuna trial was given), `<optimizer>_*` for
a reference.
"""
from __future__ import annotations

import json
import posixpath
from collections.abc import Callable

from esam.search.stores.results_dir import StoragePath

PROGRESS_FILE = "esam_progress.json"  # {"epoch": n}, in each checkpoint the trainable saves


def mark_epoch(checkpoint_dir, metrics: dict) -> None:
    """Write the epoch of `metrics` beside a checkpoint the trainable is about to hand to Ray."""
    from pathlib import Path
    (Path(checkpoint_dir) / PROGRESS_FILE).write_text(json.dumps({"epoch": int(metrics.get("epoch") or 0)}))


def _entries(fs, path: str) -> list:
    import pyarrow.fs as pafs
    try:
        return fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError:
        return []


def _epoch(fs, checkpoint: str) -> int | None:
    try:
        with fs.open_input_stream(posixpath.join(checkpoint, PROGRESS_FILE)) as f:
            epoch = json.loads(f.read().decode()).get("epoch")
    except (OSError, ValueError, AttributeError):
        return None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch > 0 else None


def newest_checkpoint(experiment: StoragePath, is_mine: Callable[[str], bool], up_to: int | None = None) -> str | None:
    """The checkpoint with the highest epoch (at most `up_to`) in the trial directories of `experiment`
    that `is_mine` accepts (by name), as Ray opens it (a path, or a URI without credentials); None when
    there is none.

    `up_to` is the last epoch the trial's MLflow run holds: a driver killed before MLflow took an
    epoch's metrics leaves a newer checkpoint, and going on from it would leave that epoch out of
    the run's history. The epochs after `up_to` are trained again instead."""
    import pyarrow.fs as pafs
    best: tuple[int, str] | None = None
    for trial_dir in _entries(experiment.fs, experiment.path):
        if trial_dir.type != pafs.FileType.Directory or not is_mine(trial_dir.base_name):
            continue
        for checkpoint in _entries(experiment.fs, trial_dir.path):
            if checkpoint.type != pafs.FileType.Directory or not checkpoint.base_name.startswith("checkpoint_"):
                continue
            epoch = _epoch(experiment.fs, checkpoint.path)
            if epoch is not None and (up_to is None or epoch <= up_to) and (best is None or epoch > best[0]):
                best = (epoch, f"{trial_dir.base_name}/{checkpoint.base_name}")
    if best is None:
        return None
    return (experiment / best[1]).shown
