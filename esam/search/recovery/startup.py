"""What a search checks and repairs before its first trial, and settles after any stop.

Before: the recorded parent run must be in this MLflow store, the Optuna study must still
hold the trials MLflow recorded, and the two are reconciled (esam/search/recovery/reconcile.py). After a
stop: the parent is left KILLED (FAILED on an error) and no child run stays RUNNING.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

from esam.config import from_dict, to_dict, train_config_from_dict
from esam.errors import ConfigError, first_line
from esam.search.config import SearchConfig
from esam.search.constraints import OptunaConstraints
from esam.search.records import mlflow_runs
from esam.search.records.mlflow_runs import shareable
from esam.search.recovery.reconcile import Experiment, reconcile, summary
from esam.search.recovery.search_state import STATE_FILE, read_state
from esam.search.stores import mlflow_store
from esam.search.stores.optuna_outage import OutageWatch, open_optuna_storage
from esam.search.tune.moasha import MOASHA, RUNGS_FILE


def _with_defaults(saved: dict) -> dict:
    """A config saved by an older esam, with the keys added since filled in by their defaults.

    A key added with a default (say `repeats`) does not make an existing search "different";
    a saved config this version cannot read stays as it was, and so compares unequal.
    """
    import dataclasses

    try:
        rest = {k: v for k, v in saved.items() if k != "train"}
        cfg = dataclasses.replace(from_dict(SearchConfig, rest), train=train_config_from_dict(saved.get("train", {})))
    except (ConfigError, TypeError):
        return saved
    return to_dict(cfg)


# What a search may change when it continues: where MLflow lives (a moved store may be named
# again), how many trials run at once, how many trials it has (it grows; see check_growth), and how
# often a setting that failed from outside is trained again (esam/search/records/retries.py).
_MAY_CHANGE = ("trials", "concurrency", "retry_failed")


def same_config(saved: dict, resolved: dict) -> bool:
    """Configs match except for what a continued search may change (_MAY_CHANGE, the MLflow URI)."""
    def what(c: dict) -> dict:
        kept = {k: v for k, v in c.items() if k not in _MAY_CHANGE}
        return {**kept, "mlflow": {**c.get("mlflow", {}), "tracking_uri": None}}
    return what(shareable(_with_defaults(saved))) == what(shareable(resolved))  # search.json keeps no password


def check_growth(saved: dict, cfg: SearchConfig) -> int:
    """The trials a continued search adds (0 or more); a lowered `trials` is refused in one line."""
    before = int(saved.get("trials", cfg.trials))
    if cfg.trials < before:
        raise ConfigError(f"search {cfg.name!r} has trials: {before}; a search can grow but not shrink "
                          f"(--set trials={before} or more, or give a new name)")
    return cfg.trials - before


def _has_run(client, run_id: str) -> bool:
    try:
        client.get_run(run_id)
        return True
    except Exception:  # noqa: BLE001 - MLflow raises its own error for an unknown run id
        return False


def known_parent(client, state: dict, uri: str) -> str:
    """The search's parent run in this store; ConfigError when this store does not hold it."""
    parent, recorded = state["parent_run_id"], state["tracking_uri"]
    if _has_run(client, parent):
        return parent  # the same store, or the same store moved with the working directory
    uri = mlflow_store.without_password(uri)
    if recorded == uri:
        raise ConfigError(f"the MLflow store {uri} has no run {parent}, which {STATE_FILE} names as this search's "
                          f"run (store replaced?); restore the store, or remove the search's results directory to "
                          f"start over")
    raise ConfigError(f"this search records its runs in {recorded}, but this command would use {uri} (moved the "
                      f"working directory, or another MLFLOW_TRACKING_URI?); run it where it started, or "
                      f"--set mlflow.tracking_uri=<the store holding run {parent}>")


def check_study_file(cfg: SearchConfig, state: dict | None) -> None:
    """A continued search whose SQLite study file is gone or empty is refused before Optuna opens it:
    opening writes an empty schema, which would hide what happened to the file."""
    if not state or cfg.optuna_storage:
        return
    path = cfg.directory / "optuna.db"
    if not path.is_file() or path.stat().st_size == 0:
        raise ConfigError(f"{path} is {'empty' if path.is_file() else 'missing'}: no study {cfg.name!r}, yet "
                          f"{STATE_FILE} says the search ran (database emptied or removed?); restore it, or remove "
                          f"{cfg.directory} to start the search over")


def check_study(cfg: SearchConfig, storage, state: dict, client, parent: str | None) -> None:
    """A resumed search whose Optuna study vanished (emptied or replaced database) is refused."""
    import optuna
    if not state or parent is None or not any(r.data.tags.get(mlflow_runs.KIND_TAG) == "trial"
                                              for r in mlflow_runs.trial_runs(client, parent)):
        return
    try:
        names = optuna.study.get_all_study_names(storage)
    except Exception as err:  # noqa: BLE001 - a damaged database
        raise ConfigError(f"the Optuna storage {cfg.optuna_url()} is unreadable ({first_line(err, 150)}); "
                          f"restore it, or remove {cfg.directory} to start the search over") from None
    if cfg.name not in names:
        raise ConfigError(f"the Optuna storage {cfg.optuna_url()} has no study {cfg.name!r}, yet MLflow holds its "
                          f"trials (database emptied or replaced?); restore it, or remove {cfg.directory} to start "
                          f"the search over")


def _scheduler_stops(cfg: SearchConfig) -> dict[int, int]:
    """{Optuna trial number: epoch} of the trials MO-ASHA stopped, from its rung records (none without it)."""
    if cfg.scheduler.name != "moasha":
        return {}
    path = cfg.directory / RUNGS_FILE
    if not path.is_file():
        return {}
    scheduler = MOASHA(cfg.objective_pairs, cfg.scheduler.grace_epochs, cfg.scheduler.reduction_factor,
                       cfg.train.epochs, rungs_file=path)
    return {int(key[1:]): epoch for key, epoch in scheduler.stopped.items() if key.startswith("#") and key[1:].isdigit()}


def _experiments(cfg: SearchConfig, client, parent: str, storage) -> list[Experiment]:
    import optuna
    objectives = cfg.objective_pairs
    exps = [Experiment("reference", objectives)] if cfg.references else []
    study = None
    if cfg.name in optuna.study.get_all_study_names(storage):
        study = optuna.load_study(study_name=cfg.name, storage=storage)
    constraints = None
    if cfg.constraints:
        constraints = OptunaConstraints(cfg.parsed_constraints(), mlflow_runs.reference_results(client, parent, cfg.train.epochs))
    exps.append(Experiment("trial", objectives, study, _scheduler_stops(cfg), constraints, storage))
    return exps


def _reconcile(cfg: SearchConfig, client, parent: str, storage) -> str:
    total: dict[str, int] = {}
    for exp in _experiments(cfg, client, parent, storage):
        for what, n in reconcile(exp, client, parent).items():
            total[what] = total.get(what, 0) + n
    return summary(total)


def reconcile_all(cfg: SearchConfig, client, parent: str, storage, echo: Callable[[str], None]) -> None:
    """Bring Ray's snapshot, the study and the MLflow runs to one account; say what changed, in one line."""
    try:
        line = _reconcile(cfg, client, parent, storage)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - a damaged store: one line that names it
        raise ConfigError(f"search {cfg.name}: reading its stores failed ({type(err).__name__}: "
                          f"{first_line(err, 150)}); check "
                          f"{cfg.directory} and the MLflow store") from None
    if line:
        echo(f"search {cfg.name}: reconciled Optuna and MLflow: {line}")


def settle_after_stop(cfg: SearchConfig, echo: Callable[[str], None], status: str, watch: OutageWatch | None = None) -> None:
    """After a stop or an error: the parent ends `status`, the stopped trials' runs KILLED."""
    with contextlib.suppress(Exception):  # best effort: the next start reconciles again
        _settle(cfg, status, watch)
    echo(f"search {cfg.name} stopped; run the same command again to continue it")


def _settle(cfg: SearchConfig, status: str, watch: OutageWatch | None = None) -> None:
    state = read_state(cfg.directory, cfg.ray_storage)
    if not state:
        return
    client = mlflow_store.connect(mlflow_store.tracking_uri(cfg.mlflow.tracking_uri))  # search.json keeps no password
    parent = state["parent_run_id"]
    if client.get_run(parent).info.status == "RUNNING":
        client.set_terminated(parent, status=status)
    try:
        _reconcile(cfg, client, parent, open_optuna_storage(cfg.optuna_url(), watch))
    finally:  # an Optuna database that refuses writes (a full disk) stops the reconciliation: end MLflow's runs
        for run in mlflow_runs.trial_runs(client, parent):
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, status="KILLED")
