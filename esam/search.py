"""The search: Ray Tune runs the trials, Optuna proposes ESAM settings, MLflow records all.

Two Ray experiments live under `results_dir/<name>/`: `references` (SGD and SAM with the same
training config, never shown to Optuna) and `search` (Optuna's ESAM trials, both objectives).
Running the same command again continues both: Ray restores its experiments (checkpointed
trials resume from their last epoch) and Optuna's study lives in an RDB storage.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from esam import tracking
from esam.config import to_dict
from esam.errors import ConfigError
from esam.local_ray import init_ray
from esam.pareto_report import format_table, update_pareto
from esam.search_config import SearchConfig

STATE_FILE = "search.json"


@dataclass
class SearchOutcome:
    parent_run_id: str
    tracking_uri: str
    directory: Path
    front: list[dict]
    references: list[dict]
    rows: list[dict]
    table: str


def _sampler(cfg: SearchConfig):
    import optuna
    s = cfg.sampler
    if s.name == "nsga2":
        kwargs = {"population_size": s.population_size} if s.population_size else {}
        return optuna.samplers.NSGAIISampler(seed=s.seed, **kwargs)
    if s.name == "tpe":
        return optuna.samplers.TPESampler(seed=s.seed)
    if s.name == "gp":
        return optuna.samplers.GPSampler(seed=s.seed)
    return optuna.samplers.RandomSampler(seed=s.seed)


def _distributions(cfg: SearchConfig) -> dict:
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    space = {}
    for name, p in cfg.space_params.items():
        space[name] = (CategoricalDistribution(p.choices) if p.choices is not None
                       else FloatDistribution(float(p.low), float(p.high), log=p.log))
    return space


def _optuna_storage(url: str):
    import optuna
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as err:  # noqa: BLE001 - a bad URL or unreachable database
        raise ConfigError(f"optuna_storage {url!r} cannot be opened: {str(err).splitlines()[0][:200]}") from None


def _optuna_searcher():
    """Ray's OptunaSearch, except that a crashed trial is told to Optuna as FAIL.

    Ray passes a failed trial's last epoch as its result, which Optuna would record as a
    finished trial with truncated metrics and put on the front.
    """
    from ray.tune.search.optuna import OptunaSearch

    class FailAwareOptunaSearch(OptunaSearch):
        def on_trial_complete(self, trial_id, result=None, error=False):
            super().on_trial_complete(trial_id, None if error else result, error)
    return FailAwareOptunaSearch


def _read_state(directory: Path) -> dict:
    path = directory / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_state(directory: Path, state: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / STATE_FILE).write_text(json.dumps(state, indent=2))


def _tuner(cfg: SearchConfig, experiment: str, param_space: dict, tune_config, callbacks, restore: bool):
    from ray import tune

    from esam.trial import run_trial

    threads = max(1, int(cfg.resources.cpu))
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base_train=to_dict(cfg.train), threads=threads),
        {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu})
    path = cfg.directory / experiment
    if restore and tune.Tuner.can_restore(str(path)):
        return tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=False,
                                  restart_errored=False)
    run_config = tune.RunConfig(
        name=experiment, storage_path=str(cfg.directory), callbacks=callbacks, verbose=0,
        failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1))
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


def _fit(tuner, expected: int) -> None:
    """Run an experiment; a stop (Ctrl-C: Ray stops gracefully and returns) counts as an interrupt."""
    grid = tuner.fit()
    if grid.num_terminated + grid.num_errors < expected:
        raise KeyboardInterrupt


def _trial_name(config: dict) -> str:
    if "optimizer" in config:
        return str(config["optimizer"])
    return "esam " + " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items())


def _check_local_data(cfg: SearchConfig, address: str | None) -> None:
    """On a local Ray, a missing data root fails now rather than in every trial.

    On a cluster the driver may not see the workers' data, so the trials check it there.
    """
    if address or os.environ.get("RAY_ADDRESS"):
        return
    from esam.data.datasets import data_root
    data = cfg.train.data
    if data.name in ("cifar10", "cifar100", "imagefolder") and not data.download and not data_root(data).is_dir():
        hint = " (data.download: true fetches it when online)" if data.name != "imagefolder" else ""
        raise ConfigError(f"train.data.root {str(data_root(data))!r} is not a directory{hint}")


def run_search(cfg: SearchConfig, *, address: str | None = None, echo: Callable[[str], None] = print) -> SearchOutcome:
    """Run (or continue) the search `cfg.name` and return its Pareto front."""
    from ray import tune

    from esam.callbacks import MlflowTrialRuns, Progress
    from esam.trial_records import finish_records, open_records, retry
    from esam.trial import trial_params

    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # Everything that can be wrong is checked before the first trial starts.
    _check_local_data(cfg, address)
    uri = tracking.tracking_uri(cfg.mlflow.tracking_uri)
    client = tracking.connect(uri)
    resolved = to_dict(cfg)
    directory = cfg.directory
    state = _read_state(directory)
    if state and state.get("config") != resolved:
        raise ConfigError(f"search {cfg.name!r} already exists in {directory} with a different config; "
                          f"continue it unchanged, or give a new name (--set name=...)")
    directory.mkdir(parents=True, exist_ok=True)
    storage = _optuna_storage(cfg.optuna_url())
    parent = state.get("parent_run_id") if state.get("tracking_uri") == uri else None
    parent = tracking.start_parent_run(client, cfg.mlflow.experiment, cfg.name, resolved, parent)
    _write_state(directory, {"config": resolved, "parent_run_id": parent, "tracking_uri": uri})
    objectives = [(o.metric, o.mode) for o in cfg.objective_list]
    echo(f"search {cfg.name}: {cfg.trials} ESAM trials + references {cfg.references or 'none'}, "
         f"{cfg.concurrency} at a time; MLflow run {parent} at {uri}")

    params_of = functools.partial(trial_params, resolved["train"]["optimizer"])
    open_records(uri, parent, directory, echo)  # trial records an outage kept go first
    started_ray = init_ray(address)
    status = "FAILED"
    try:
        if cfg.references:
            callbacks = [MlflowTrialRuns(uri, parent, "reference", _trial_name, params_of),
                         Progress("references", len(cfg.references), objectives, echo)]
            tune_config = tune.TuneConfig(num_samples=1, max_concurrent_trials=cfg.concurrency,
                                          trial_dirname_creator=lambda t: f"{t.config['optimizer']}_{t.trial_id}")
            _fit(_tuner(cfg, "references", {"optimizer": tune.grid_search(list(cfg.references))},
                        tune_config, callbacks, restore=bool(state)), len(cfg.references))
        searcher = _optuna_searcher()(
            space=_distributions(cfg), metric=[m for m, _ in objectives], mode=[d for _, d in objectives],
            sampler=_sampler(cfg), study_name=cfg.name, storage=storage)
        tune_config = tune.TuneConfig(search_alg=searcher, num_samples=cfg.trials,
                                      max_concurrent_trials=cfg.concurrency,
                                      trial_dirname_creator=lambda t: f"esam_{t.trial_id}")
        callbacks = [MlflowTrialRuns(uri, parent, "trial", _trial_name, params_of),
                     Progress("esam", cfg.trials, objectives, echo)]
        _fit(_tuner(cfg, "search", {}, tune_config, callbacks, restore=bool(state)), cfg.trials)
        finish_records(uri, parent, wait=True)  # every trial's record is in MLflow before the parent ends
        retry(lambda: client.set_terminated(parent, status="FINISHED"), "the search run's status", echo=echo)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if started_ray:
            import ray
            ray.shutdown()
        finish_records(uri, parent, wait=False)  # after a stop, what MLflow did not take is kept on disk
        if status != "FINISHED":
            with contextlib.suppress(Exception):  # MLflow may be away; the next run reopens the parent
                client.set_terminated(parent, status=status)
            echo(f"search {cfg.name} stopped; run the same command again to continue it")
    rows, front, references = retry(lambda: update_pareto(client, parent, objectives), "the Pareto artifacts",
                                    echo=echo)
    table = format_table(front, references)
    return SearchOutcome(parent, uri, directory, front, references, rows, table)
