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
from esam.scratch import trial_scratch
from esam.train import train


def trial_overrides(trial_config: dict) -> dict:
    """{"optimizer": "sam"} or {"rho": .., "beta": ..} -> overrides of the training config."""
    settings = dict(trial_config)
    method = settings.pop("optimizer", "esam")
    return {"optimizer": {"name": method, **settings}}


_METHOD_PARAMS = {"sgd": ("lr", "momentum", "weight_decay"),
                  "sam": ("lr", "momentum", "weight_decay", "rho", "adaptive", "bn_update"),
                  "esam": ("lr", "momentum", "weight_decay", "rho", "adaptive", "bn_update", "beta", "gamma", "score")}


def trial_params(base_optimizer: dict, trial_config: dict) -> dict:
    """The optimizer settings a trial really uses (searched and fixed), for MLflow's params."""
    resolved = {**base_optimizer, **trial_overrides(trial_config)["optimizer"]}
    method = resolved["name"]
    return {"optimizer": method, **{k: resolved[k] for k in _METHOD_PARAMS[method]}}


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
            # An explicit target: without one Ray copies into a checkpoint_tmp_<uuid> it never removes.
            resume_from = Path(checkpoint.to_directory(str(tmp / "resume")))
        train(config, report, checkpoint_dir=tmp / "checkpoint", resume_from=resume_from)
