"""The Ray Tune trainable: a thin adapter from a trial's sampled settings to `train()`.

A trial's config holds only what differs between trials: the optimizer name for reference
trials, the sampled hyperparameters (rho, beta, gamma, ...) for ESAM trials. The shared training
config arrives through `tune.with_parameters`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ray import tune

from esam.config import train_config_from_dict
from esam.search.scratch import trial_scratch
from esam.optim import OPTIMIZERS
from esam.training.checkpoint import CHECKPOINT_FILE
from esam.training.trainer import train


def trial_overrides(trial_config: dict) -> dict:
    """{"optimizer": "sam"} or {"rho": .., "beta": ..} -> overrides of the training config."""
    settings = dict(trial_config)
    method = settings.pop("optimizer", "esam")
    return {"optimizer": {"name": method, **settings}}


def trial_label(trial_config: dict) -> str:
    """A trial's name in MLflow and on the terminal: "sgd", "sam", or "esam rho=0.05 beta=0.6 ..."."""
    if "optimizer" in trial_config:
        return str(trial_config["optimizer"])
    return "esam " + " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial_config.items())


_BASE_PARAMS = ("lr", "momentum", "weight_decay")  # the base SGD's, shared by every method


def trial_params(base_optimizer: dict, trial_config: dict) -> dict:
    """The optimizer settings a trial really uses (searched and fixed), for MLflow's params.

    Which settings a method uses is the optimizer class's own list (`hyperparameters`)."""
    resolved = {**base_optimizer, **trial_overrides(trial_config)["optimizer"]}
    method = resolved["name"]
    used = _BASE_PARAMS + tuple(getattr(OPTIMIZERS[method], "hyperparameters", ()))
    return {"optimizer": method, **{k: resolved[k] for k in used}}


def _resume_copy(checkpoint, target: Path) -> Path | None:
    """A local copy of the newest checkpoint this trial saved, or None to start over.

    Ray names the checkpoint of its last snapshot; after a hard stop that snapshot can lag, and
    the checkpoint it names may be gone (only the newest is kept): then the newest one left.
    An explicit target: without one Ray copies into a checkpoint_tmp_<uuid> it never removes.
    """
    if getattr(checkpoint.filesystem, "type_name", "local") != "local":  # remote storage: Ray's copy
        return Path(checkpoint.to_directory(str(target)))
    saved = Path(checkpoint.path)
    if (saved / CHECKPOINT_FILE).is_file():  # newer ones may hold epochs the driver never recorded
        return Path(checkpoint.to_directory(str(target)))
    candidates = sorted(saved.parent.glob("checkpoint_*")) if saved.parent.is_dir() else []
    newest = next((c for c in reversed(candidates) if (c / CHECKPOINT_FILE).is_file()), None)
    if newest is not None:
        return Path(tune.Checkpoint.from_directory(str(newest)).to_directory(str(target)))
    return None


def run_trial(trial_config: dict, base_train: dict, threads: int | None) -> None:
    config = train_config_from_dict(base_train, trial_overrides(trial_config))
    if config.threads is None and threads:
        # Each trial owns its CPU share: unlimited threads would oversubscribe the cores.
        config = dataclasses.replace(config, threads=threads)

    def report(metrics: dict, saved: Path | None) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(saved) if saved else None)

    with trial_scratch() as tmp:
        resume_from = None
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:  # a restored trial continues from its last epoch
            resume_from = _resume_copy(checkpoint, tmp / "resume")
        train(config, report, checkpoint_dir=tmp / "checkpoint", resume_from=resume_from)
