"""The search: Ray Tune runs the trials, Optuna proposes ESAM settings, MLflow records all.

Two Ray experiments live under `results_dir/<name>/`: `references` (SGD and SAM with the same
training config, never shown to Optuna) and `search` (Optuna's ESAM trials, both objectives).
Running the same command again continues both: Ray restores its experiments (checkpointed
trials resume from their last epoch) and Optuna's study lives in an RDB storage.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from esam.search import ray_state
from esam.search import tracking
from esam.config import to_dict
from esam.errors import ConfigError, EsamError
from esam.optim import OPTIMIZERS
from esam.search.atomic_storage import sweep_partial_files
from esam.search.results_storage import StoragePath, check_storage_writable
from esam.search.samplers import SamplerSpec
from esam.search.local_ray import init_ray
from esam.search.pareto_report import format_table, tag_front_and_write_artifacts
from esam.search.config import SearchConfig
from esam.search.space import optuna_space, paper_point
from esam.search.lock import SearchLock
from esam.search.state import check_writable, read_state, storage_error_line, write_state
from esam.search.startup import (check_growth, check_ray_states, check_study, known_parent, reconcile_all,
                                 same_config, settle_after_stop)
from esam.search.stop_signals import StopSignals
from esam.search.store_lock import store_creation_lock

# Ray snapshots its experiment every few seconds by default: a hard stop then loses which
# trials exist. Two seconds keeps that window short at a negligible cost for small states.
SNAPSHOT_PERIOD_S = "2"
# A database server restarted under a search leaves dead pooled connections: test each before use.
ENGINE_KWARGS = {"pool_pre_ping": True}
RUNGS_FILE = "moasha_rungs.json"  # under <state_dir>/<name>/: MO-ASHA's rung records, kept across restarts


@dataclass
class SearchOutcome:
    parent_run_id: str
    tracking_uri: str
    directory: Path
    front: list[dict]  # the ESAM trials on the Pareto front, best first objective first
    rows: list[dict]  # every child run (trials and references, any status)
    table: str  # the front and the references as printed
    experiment_id: str = ""
    runs_url: str = ""  # the experiment's runs table in the MLflow UI
    serve_command: str | None = None  # what serves runs_url (None: the tracking server does)
    already_complete: bool = False  # the search had finished before this command: nothing ran
    summary: dict | None = None  # the parent run's summary metrics


def _progress_label(cfg: SearchConfig) -> str:
    """The progress lines' prefix for the searched trials: their method, or "trials" when it is searched."""
    return "trials" if "method" in cfg.space else cfg.train.optimizer.name


def _trials_noun(cfg: SearchConfig) -> str:
    """"ESAM trials", "LookSAM trials", or "trials (esam, looksam, ...)" when the method is searched."""
    if "method" in cfg.space:
        return f"trials ({', '.join(cfg.space['method'].choices)})"
    return f"{OPTIMIZERS[cfg.train.optimizer.name].__name__} trials"


def _moasha_line(cfg: SearchConfig) -> str:
    """Where MO-ASHA decides, and how many trials it will let finish: only they can make the front."""
    from esam.search.moasha import expected_finishers, rung_epochs
    s, epochs = cfg.scheduler, cfg.train.epochs
    rungs = rung_epochs(s.grace_epochs, s.reduction_factor, epochs)
    finishers = expected_finishers(cfg.trials, s.grace_epochs, s.reduction_factor, epochs)
    line = (f"MO-ASHA: {'rungs at epochs' if len(rungs) > 1 else 'a rung at epoch'} {', '.join(map(str, rungs))}; "
            f"about {round(finishers, 1):g} of {cfg.trials} trials will train all {epochs} epochs "
            f"and can make the front")
    if finishers < 2:  # a front of one point says little about the trade-off
        line += " (a thin front: raise trials, or grace_epochs for fewer rungs)"
    return line


def sampler_spec(cfg: SearchConfig) -> SamplerSpec:
    """The configured Optuna sampler, as a spec the searcher keeps (built where the study is opened)."""
    s = cfg.sampler
    options = {"population_size": s.population_size} if s.name == "nsga2" and s.population_size else {}
    return SamplerSpec(s.name, s.seed, options)


def _warm_start(cfg: SearchConfig, storage) -> list[dict]:
    """The paper's setting as the first proposal, for the searched fields whose range holds it
    (esam.search.space.paper_point). Only for a new study: a continued search has proposed it already.
    """
    import optuna
    if not cfg.warm_start or (cfg.name in optuna.study.get_all_study_names(storage)
                              and optuna.load_study(study_name=cfg.name, storage=storage).get_trials(deepcopy=False)):
        return []
    point = paper_point(cfg.space, cfg.train.optimizer)
    return [point] if point else []


def _scheduler(cfg: SearchConfig):
    """Ray's scheduler for the ESAM trials: FIFO (every trial runs all its epochs) or MO-ASHA."""
    if cfg.scheduler.name != "moasha":
        return None
    from esam.search.moasha import MOASHA
    s = cfg.scheduler
    return MOASHA(cfg.objective_pairs, grace_epochs=s.grace_epochs, reduction_factor=s.reduction_factor,
                  max_epochs=cfg.train.epochs, rungs_file=cfg.directory / RUNGS_FILE)


def _reference_results(cfg: SearchConfig) -> dict[str, dict]:
    """{sgd|sam: final metrics} of the references that ran all their epochs (Ray's saved results)."""
    saved = ray_state.read_trials(cfg.ray_storage / "references") or []
    return {t.config.get("optimizer"): t.last_result for t in saved
            if t.status == "TERMINATED" and t.epoch >= cfg.train.epochs}


def _grow(tuner, cfg: SearchConfig, searcher, scheduler, callbacks) -> None:
    """A restored search experiment with this command's searcher, trials, concurrency, scheduler and callbacks.

    Ray keeps the sample count in its saved search state and the rest in tuner.pkl; a search
    that grows (more `trials`) continues the same experiment with the extra trials.
    """
    import ray.cloudpickle as cloudpickle

    from esam.search.compat import replace_restored_settings
    replace_restored_settings(tuner, search_alg=searcher, scheduler=scheduler, num_samples=cfg.trials,
                              max_concurrent_trials=cfg.concurrency, callbacks=callbacks)
    for path in (cfg.ray_storage / "search").files("search_gen_state-*.json"):
        state = cloudpickle.loads(path.read_bytes())
        if state.get("total_samples") != cfg.trials:
            state["total_samples"], state["finished"] = cfg.trials, False
            path.write_bytes(cloudpickle.dumps(state))


def _optuna_storage(url: str):
    """The search's Optuna storage; its calls wait out a database outage (esam/search/storage_outage.py)."""
    from esam.search.storage_outage import open_rdb
    try:
        with store_creation_lock(url):  # its first use creates the tables; a reader may be opening it too
            return open_rdb(url, ENGINE_KWARGS)
    except Exception as err:  # noqa: BLE001 - a bad URL or unreachable database
        raise ConfigError(f"optuna_storage {tracking.without_password(url)!r} cannot be opened: "
                          f"{str(err).splitlines()[0][:200]}") from None


def _tuner(cfg: SearchConfig, experiment: str, param_space: dict, tune_config, callbacks, restore: bool,
           refresh: Callable | None = None):
    from ray import tune

    from esam.search.trial import run_trial

    threads = max(1, int(cfg.resources.cpu))
    if cfg.resources.workers > 1:  # DDP through Ray Train: the workers reserve cpu and gpu each, the trial a driver's share
        from esam.search.ddp_trial import DRIVER_CPU, run_ddp_trial
        trainable = tune.with_resources(
            tune.with_parameters(run_ddp_trial, base_train=to_dict(cfg.train), threads=threads, repeats=cfg.repeats,
                                 workers=cfg.resources.workers, cpu=cfg.resources.cpu, gpu=cfg.resources.gpu,
                                 storage=(cfg.ray_storage / "train_runs").shown),
            {"cpu": DRIVER_CPU})
    else:
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, base_train=to_dict(cfg.train), threads=threads, repeats=cfg.repeats),
            {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu})
    root = cfg.ray_storage  # through its filesystem, a driver killed while Ray copies its state leaves the old copy
    path = root / experiment
    if restore and tune.Tuner.can_restore(path.path, storage_filesystem=root.fs):
        try:
            tuner = tune.Tuner.restore(path.path, trainable, resume_unfinished=True, resume_errored=False,
                                       restart_errored=False, storage_filesystem=root.fs)
            if refresh is not None:
                refresh(tuner)
            return tuner
        except Exception as err:  # noqa: BLE001 - a damaged tuner.pkl or state: say which, no traceback
            raise ConfigError(f"Ray's experiment {path} cannot be restored ({type(err).__name__}: "
                              f"{str(err).strip()[:150]}); restore it, or remove {path} to run its trials "
                              f"again") from None
    _check_picklable(tune_config, callbacks)  # Ray pickles them into tuner.pkl: fail before it writes anything
    run_config = tune.RunConfig(
        name=experiment, storage_path=root.path, storage_filesystem=root.fs, callbacks=callbacks,
        verbose=0,
        failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1))
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


def _check_picklable(tune_config, callbacks) -> None:
    """What Ray pickles with a new experiment pickles; else one line naming it, before tuner.pkl is written.

    (Optuna 5.1.0's NSGA-II sampler, held by a searcher, once failed here halfway through Ray's write.)"""
    from ray import cloudpickle
    parts = {"searcher": tune_config.search_alg, "scheduler": tune_config.scheduler,
             **{f"callback {type(c).__name__}": c for c in callbacks}}
    for what, obj in parts.items():
        try:
            cloudpickle.dumps(obj)
        except Exception as err:  # noqa: BLE001 - any pickling failure is the same refusal
            raise ConfigError(f"the search's {what} cannot be pickled for Ray ({type(err).__name__}: "
                              f"{str(err)[:150]}); Ray's experiment was not started; the same command tries again") from None


_SIGNALS: list[StopSignals] = []  # the running search's signal catcher (one search per process)


def _fit(tuner, directory: StoragePath, expected: int | None) -> None:
    """Run an experiment; a signal during it, or trials left unfinished, count as a stop.

    Ray's returned trials call a stopped trial TERMINATED like a finished one; its final snapshot,
    written before it stops them, does not. `expected` None: as many as Ray made (the study
    counts ESAM trials, see _check_done).
    """
    _SIGNALS[-1].fit(tuner) if _SIGNALS else tuner.fit()
    saved = ray_state.read_trials(directory) or []
    ended = sum(t.status in ray_state.TERMINAL for t in saved)
    if ended < len(saved) or ended < (expected or 0):
        raise KeyboardInterrupt


def _ended_states() -> tuple:
    import optuna
    S = optuna.trial.TrialState
    return (S.COMPLETE, S.FAIL, S.PRUNED)  # PRUNED: stopped early by the scheduler


def _check_done(storage, cfg: SearchConfig) -> None:
    """The search is done when its study holds `trials` ended trials; else it was stopped.

    A database still away after its outage stopped Ray's loop is a stop too, not an error.
    """
    import optuna

    from esam.search.storage_outage import outage_is_a_stop
    with outage_is_a_stop():
        study = optuna.load_study(study_name=cfg.name, storage=storage)
        ended = study.get_trials(deepcopy=False, states=_ended_states())
    if len(ended) < cfg.trials:
        raise KeyboardInterrupt


def _complete(cfg: SearchConfig, storage) -> bool:
    """The search ended before: its study holds `trials` ended trials, and Ray saved every trial ended."""
    import optuna
    if cfg.name not in optuna.study.get_all_study_names(storage):
        return False
    study = optuna.load_study(study_name=cfg.name, storage=storage)
    ended = study.get_trials(deepcopy=False, states=_ended_states())
    if len(ended) < cfg.trials:
        return False
    for experiment, expected in (("references", len(cfg.references)), ("search", cfg.trials)):
        if experiment == "references" and not expected:
            continue
        saved = ray_state.read_trials(cfg.ray_storage / experiment) or []
        if len(saved) < expected or any(t.status not in ray_state.TERMINAL for t in saved):
            return False
    return True


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
    """Run (or continue) the search `cfg.name` and return its Pareto front.

    One process per search (a lock); SIGINT and SIGTERM stop it as a stop, never as an end; any
    stop leaves the parent run KILLED and the three stores agreeing on every trial.
    """
    # Everything that can be wrong is checked before the first trial starts, and before
    # anything is created in results_dir.
    _check_local_data(cfg, address)
    uri = tracking.tracking_uri(cfg.mlflow.tracking_uri)
    client = tracking.connect(uri)
    directory = cfg.directory
    check_writable(directory)
    if cfg.ray_storage.path != str(directory):
        check_storage_writable(cfg.ray_storage)
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", SNAPSHOT_PERIOD_S)
    with SearchLock(directory, cfg.name), StopSignals() as signals:
        _SIGNALS.append(signals)
        try:
            return _run_search(cfg, uri, client, address=address, echo=echo)
        except OSError as err:  # e.g. results_dir turned read-only or full during the search
            settle_after_stop(cfg, echo, status="FAILED")
            raise ConfigError(storage_error_line(err, directory)) from None
        except KeyboardInterrupt:
            settle_after_stop(cfg, echo, status="KILLED")
            raise
        except EsamError:  # refused before any trial ran: nothing to settle
            raise
        except Exception:
            settle_after_stop(cfg, echo, status="FAILED")
            raise
        finally:
            _SIGNALS.remove(signals)


def _run_search(cfg: SearchConfig, uri: str, client, *, address: str | None,
                echo: Callable[[str], None]) -> SearchOutcome:
    from ray import tune

    from esam.search.callbacks import FrontProgress, MlflowTrialRuns, Progress
    from esam.search.constraints import OptunaConstraints
    from esam.search.optuna_searcher import EsamSearcher
    from esam.search.trial_records import finish_records, open_records, retry, run_id_of
    from esam.search.trial import trial_label, trial_params

    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    resolved = to_dict(cfg)
    directory = cfg.directory
    state = read_state(directory, cfg.ray_storage)
    if state and not same_config(state["config"], resolved):
        raise ConfigError(f"search {cfg.name!r} already exists in {directory} with a different config; "
                          f"continue it unchanged (only trials may grow and concurrency change), "
                          f"or give a new name (--set name=...)")
    added = check_growth(state["config"], cfg) if state else 0
    directory.mkdir(parents=True, exist_ok=True)
    if cfg.ray_storage.local is not None:  # copies a killed driver left half-written (never read; see atomic_storage)
        sweep_partial_files(cfg.ray_storage.local)
    parent = known_parent(client, state, uri) if state else None
    storage = _optuna_storage(cfg.optuna_url())
    check_study(cfg, storage, state)
    check_ray_states(cfg)  # all refusals before the parent run is reopened: a refused run changes nothing
    # A stop between the two would leave a RUNNING parent that search.json does not name (nothing
    # would end it): a signal there waits until the state is written.
    with _SIGNALS[-1].deferred() if _SIGNALS else contextlib.nullcontext():
        parent = tracking.start_parent_run(client, cfg.mlflow.experiment, cfg.name, resolved, parent)
        # No password on disk (results_dir is often a shared filesystem): the command brings it each time.
        write_state(directory, {"config": tracking.shareable(resolved), "parent_run_id": parent,
                                "tracking_uri": tracking.without_password(uri)})
    objectives, constraints = cfg.objective_pairs, cfg.parsed_constraints()
    echo(f"search {cfg.name}: {cfg.trials} {_trials_noun(cfg)} + references {cfg.references or 'none'}, "
         f"{cfg.concurrency} at a time; MLflow run {parent} at {uri}")
    if added:
        echo(f"search {cfg.name} grows by {added} trials (trials: {cfg.trials - added} -> {cfg.trials})")
    if cfg.scheduler.name == "moasha":
        echo(_moasha_line(cfg))

    params_of = functools.partial(trial_params, resolved["train"]["optimizer"])
    open_records(uri, parent, directory, echo)  # trial records an outage kept go first
    reconcile_all(cfg, client, parent, storage, echo)  # after a hard stop the stores may disagree
    complete = bool(state) and _complete(cfg, storage)
    if complete:  # nothing to train: Ray is not even started
        echo(f"search {cfg.name} is already complete ({cfg.trials} {_trials_noun(cfg)} ended); showing its results")
    started_ray = False if complete else init_ray(address)
    if _SIGNALS:
        _SIGNALS[-1].reinstall()
    status = "FAILED"
    try:
        if complete:
            pass
        elif cfg.references:
            callbacks = [MlflowTrialRuns(uri, parent, "reference", trial_label, params_of),
                         Progress("references", len(cfg.references), objectives, echo)]
            tune_config = tune.TuneConfig(num_samples=1, max_concurrent_trials=cfg.concurrency,
                                          trial_dirname_creator=lambda t: f"{t.config['optimizer']}_{t.trial_id}")
            _fit(_tuner(cfg, "references", {"optimizer": tune.grid_search(list(cfg.references))},
                        tune_config, callbacks, restore=bool(state)), cfg.ray_storage / "references", len(cfg.references))
        references = _reference_results(cfg) if constraints and not complete else {}
        for c in constraints:
            if not complete:
                c.bound(references)  # a constraint on a reference that did not finish: one line, now
        warm = _warm_start(cfg, storage)  # before the searcher creates the study
        searcher = EsamSearcher(
            optuna_space(cfg.space, cfg.train.optimizer), objectives, cfg.name, sampler_spec(cfg),
            max_trials=cfg.trials, max_concurrent=cfg.concurrency, epochs=cfg.train.epochs,
            constraints=OptunaConstraints(constraints, references) if constraints else None)
        saved = (ray_state.read_trials(cfg.ray_storage / "search") or []) if state else []
        searcher.attach(storage, saved_ray_trials={t.trial_id for t in saved},
                        run_id_of=functools.partial(run_id_of, uri, parent))
        for point in warm:  # Optuna samples the searched fields the point leaves out (Ray's own would refuse)
            searcher.study.enqueue_trial(point, skip_if_exists=True)
        scheduler = _scheduler(cfg)
        tune_config = tune.TuneConfig(search_alg=searcher, num_samples=cfg.trials, scheduler=scheduler,
                                      max_concurrent_trials=cfg.concurrency,
                                      trial_dirname_creator=lambda t: f"esam_{t.trial_id}")
        callbacks = [MlflowTrialRuns(uri, parent, "trial", trial_label, params_of, full_epochs=cfg.train.epochs),
                     Progress(_progress_label(cfg), cfg.trials, objectives, echo, full_epochs=cfg.train.epochs),
                     FrontProgress(uri, parent, objectives, cfg.train.epochs, constraints, references)]
        if not complete:
            refresh = functools.partial(_grow, cfg=cfg, searcher=searcher, scheduler=scheduler, callbacks=callbacks)
            # Without `method` in the space every trial's method is train.optimizer's (a constant Ray adds)
            constant = {} if "method" in cfg.space else {"method": cfg.train.optimizer.name}
            _fit(_tuner(cfg, "search", constant, tune_config, callbacks, restore=bool(state), refresh=refresh),
                 cfg.ray_storage / "search", None)
        _check_done(storage, cfg)
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
    rows, front, references = retry(lambda: tag_front_and_write_artifacts(client, parent, objectives, constraints),
                                    "the Pareto artifacts", echo=echo)
    summary = retry(lambda: tracking.summarize_parent(client, parent, rows, front, references, objectives,
                                                      constraints), "the search run's summary", echo=echo)
    table = format_table(front, references)
    exp_id = client.get_run(parent).info.experiment_id
    url, serve = tracking.runs_url(uri, exp_id)
    return SearchOutcome(parent, uri, directory, front, rows, table, exp_id, url, serve, complete, summary)
