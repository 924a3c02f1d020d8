"""The Ray Tune trainable: a thin adapter from a trial's sampled settings to `train()`.

A trial's config holds only what differs between trials: the optimizer name for reference
trials (`optimizer`), the method and the sampled hyperparameters (rho, beta, gamma, ...) for
search trials (`method`: esam, looksam, rst or aesam; sampled, or train.optimizer's; a trial of a
search made before methods were searchable has none and is ESAM's). The shared training
config arrives through `tune.with_parameters`, with the builders of the user's that this process
would not have (`builders`, esam/search/trials/user_code.py). Keys starting with "_" are the searcher's notes,
not settings: `_number` (the Optuna trial number) and `_reuse` (this proposal repeats a finished
trial: {"number", "run_id", "metrics"}; the trainable reports those metrics and trains nothing,
see esam/search/tune/optuna_searcher.py).

Every result also says which Ray node the trial runs on (`node`, see `node_label`); the driver tags
the trial's MLflow run with it, so a cluster search shows where each trial ran, and where a trial
retried after a node failure went on.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from ray import tune

from esam.config import train_config_from_dict
from esam.search.space import BASE_FIELDS, used_fields
from esam.search.trials.checkpoints import mark_epoch
from esam.search.trials.scratch import trial_scratch
from esam.search.trials.user_code import register_passed
from esam.training.checkpoint import CHECKPOINT_FILE
from esam.training.trainer import train


def searched(trial_config: dict) -> dict:
    """The settings of a trial's config, without the searcher's notes (keys starting with "_")."""
    return {k: v for k, v in trial_config.items() if not str(k).startswith("_")}


def method_of(trial_config: dict) -> str:
    """The optimizer a trial trains: a reference's, the sampled or fixed method, else ESAM."""
    return str(trial_config.get("optimizer") or trial_config.get("method") or "esam")


def trial_overrides(trial_config: dict) -> dict:
    """{"optimizer": "sam"} or {"method": "rst", "rho": .., "rst_p": ..} -> overrides of the training config."""
    settings = {k: v for k, v in searched(trial_config).items() if k not in ("optimizer", "method")}
    return {"optimizer": {"name": method_of(trial_config), **settings}}


def trial_label(trial_config: dict) -> str:
    """A trial's name in MLflow and on the terminal: "sgd", "sam", or "#3 esam rho=0.05 beta=0.6 ...",
    "#4 looksam rho=0.05 looksam_k=5 ...".

    The number is Optuna's trial number (unique in the search; two trials whose rounded values
    read alike still differ by it); a reused proposal ends "(reuses #1)".
    """
    if "optimizer" in trial_config:
        return str(trial_config["optimizer"])
    settings = {k: v for k, v in searched(trial_config).items() if k != "method"}
    label = f"{method_of(trial_config)} " + " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in settings.items())
    if "_number" in trial_config:
        label = f"#{trial_config['_number']} {label}"
    reuse = trial_config.get("_reuse")
    if isinstance(reuse, dict) and "number" in reuse:
        label += f" (reuses #{reuse['number']})"
    return label


def trial_params(base_optimizer: dict, trial_config: dict) -> dict:
    """The optimizer settings a trial really uses (searched and fixed), for MLflow's params.

    Which settings a method uses is the optimizer class's own list (`hyperparameters`), less ESAM's
    beta, gamma and score for a skipping method whose sharpness step is SAM's (esam.search.space)."""
    resolved = {**base_optimizer, **trial_overrides(trial_config)["optimizer"]}
    method = resolved["name"]
    used = BASE_FIELDS + used_fields(method, resolved.get("sharpness", "sam"))
    # a method's own knob that is neither searched nor set takes its paper value in training: no param
    return {"optimizer": method, **{k: resolved[k] for k in used if k in resolved}}


def resume_copy(checkpoint, target: Path) -> Path | None:
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


NODE_KEY = "node"  # in every result: node_label() of the process that reported it
WORKERS_KEY = "workers"  # in a DDP trial's results: the ranks that trained it


def node_label() -> str:
    """This process's Ray node: "<node IP> <node id, first 8 hex digits>".

    The IP alone names no node where several share one address (nodes on one machine, or a
    node restarted under the same address); the id prefix does.
    """
    import ray
    return f"{ray.util.get_node_ip_address()} {ray.get_runtime_context().get_node_id()[:8]}"


def _report(metrics: dict, saved: Path | None) -> None:
    """One epoch's result to Tune, with the node that trained it and the epoch's checkpoint.

    The checkpoint says its epoch (esam.search.trials.checkpoints.mark_epoch): a later run picks the newest without loading it."""
    if saved:
        mark_epoch(saved, metrics)
    tune.report({**metrics, NODE_KEY: node_label()},
                checkpoint=tune.Checkpoint.from_directory(saved) if saved else None)


def resume_checkpoint(trial_config: dict):
    """The checkpoint a trial goes on from: Ray's (a retry in this run), else the driver's `_resume` note
    (a trial an earlier run did not finish; for references a note per optimizer), else None."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        return checkpoint
    note = trial_config.get("_resume")
    if isinstance(note, dict):
        note = note.get(method_of(trial_config))
    return tune.Checkpoint(note) if isinstance(note, str) and note else None


REPEATS_FILE = "repeats.json"  # in a repeated trial's checkpoints: the final metrics of its earlier repeats
_NOT_AVERAGED = ("epoch", "learning_rate")


def mean_over_repeats(finals: list[dict]) -> dict:
    """One result from the final metrics of each repeat: means, `<metric>_std` spreads, `repeats`."""
    out = dict(finals[-1])
    for key, value in finals[-1].items():
        values = [f.get(key) for f in finals]
        if key in _NOT_AVERAGED or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            continue
        mean = sum(values) / len(values)
        out[key] = mean
        out[f"{key}_std"] = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    out["repeats"] = len(finals)
    return out


def run_trial(trial_config: dict, base_train: dict, threads: int | None, repeats: int = 1,
              builders: dict | None = None) -> None:
    # The driver's own registrations of the model and dataset (esam/search/trials/user_code.py), before the config names them
    register_passed(builders)
    config = train_config_from_dict(base_train, trial_overrides(trial_config))
    reuse = trial_config.get("_reuse")
    if isinstance(reuse, dict):  # the searcher's duplicate: the original's result, nothing trained
        tune.report({"epoch": config.epochs, **reuse.get("metrics", {}), "reused": 1.0, NODE_KEY: node_label()})
        return
    if config.threads is None and threads:
        # Each trial owns its CPU share: unlimited threads would oversubscribe the cores.
        config = dataclasses.replace(config, threads=threads)

    with trial_scratch() as tmp:
        resume_from = None
        checkpoint = resume_checkpoint(trial_config)
        if checkpoint is not None:  # a retried or continued trial goes on from its last epoch
            resume_from = resume_copy(checkpoint, tmp / "resume")
        if repeats <= 1:
            train(config, _report, checkpoint_dir=tmp / "checkpoint", resume_from=resume_from)
            return
        _run_repeats(config, repeats, tmp, resume_from)


def _run_repeats(config, repeats: int, tmp: Path, resume_from: Path | None) -> None:
    """Train `repeats` times, seeds config.seed + 0, 1, ...; only the last repeat reports per epoch.

    Its last epoch reports the mean over repeats (the objectives Optuna gets) with `<metric>_std`.
    Its checkpoints carry the earlier repeats' final metrics, so a resumed trial goes on in the
    last repeat; a stop during an earlier repeat trains that setting's earlier repeats again.
    """
    finals: list[dict] = []
    if resume_from is not None and (resume_from / REPEATS_FILE).is_file():
        finals = json.loads((resume_from / REPEATS_FILE).read_text())
    else:
        resume_from = None  # a checkpoint without the earlier repeats' results: start over
    for r in range(len(finals), repeats - 1):
        final = train(dataclasses.replace(config, seed=config.seed + r))
        finals.append({k: v for k, v in final.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})

    def report(metrics: dict, saved: Path | None) -> None:
        if int(metrics.get("epoch", 0)) >= config.epochs:
            metrics = mean_over_repeats(finals + [metrics])
        if saved:
            (Path(saved) / REPEATS_FILE).write_text(json.dumps(finals))
        _report(metrics, saved)

    train(dataclasses.replace(config, seed=config.seed + repeats - 1), report, checkpoint_dir=tmp / "checkpoint",
          resume_from=resume_from)
