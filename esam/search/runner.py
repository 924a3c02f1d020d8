"""The search: Ray Tune runs the trials, Optuna proposes ESAM settings, MLflow records all.

Two Ray experiments live under `results_dir/<name>/`: `references` (SGD and SAM with the same
training config, never shown to Optuna) and `search` (Optuna's ESAM trials, both objectives).
Running the same command again continues the search from its records, not from Ray's files:
the Optuna study says which trials ended and which go on (with their own parameters), MLflow
says which references ended, and each unfinished trial goes on from the newest checkpoint it
saved (esam/search/trials/checkpoints.py). Every run is a new Ray experiment in the same folders; Ray's
saved experiments (pickles that could hold code) are never restored or read.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from esam.config import to_dict
from esam.data.datasets import data_root
from esam.errors import ConfigError, EsamError
from esam.optim import METHODS
from esam.search.browse.saved_view import write_view
from esam.search.config import SearchConfig
from esam.search.constraints import OptunaConstraints
from esam.search.front import summary as front_summary
from esam.search.front.report import format_table, tag_front_and_write_artifacts
from esam.search.records import mlflow_runs, retries
from esam.search.records.trial_records import finish_records, open_records, retry, run_id_of
from esam.search.recovery.search_lock import SearchLock
from esam.search.recovery.search_state import check_writable, read_state, storage_error_line, write_state
from esam.search.recovery.startup import (
    check_growth,
    check_study,
    check_study_file,
    known_parent,
    reconcile_all,
    same_config,
    settle_after_stop,
)
from esam.search.space import optuna_space, paper_point
from esam.search.stores import mlflow_store
from esam.search.stores.atomic_writes import sweep_partial_files
from esam.search.stores.mlflow_store import client_settings
from esam.search.stores.optuna_outage import OutageWatch, open_optuna_storage, outage_is_a_stop
from esam.search.stores.paused import SearchPaused
from esam.search.stores.record_buffer import RecordBuffer
from esam.search.stores.results_dir import StoragePath, check_storage_writable
from esam.search.stores.write_refusals import WriteRefused
from esam.search.trials.checkpoints import newest_checkpoint
from esam.search.trials.ddp_trial import DRIVER_CPU, run_ddp_trial
from esam.search.trials.shipping import project_env
from esam.search.trials.trial import run_trial, trial_label, trial_params
from esam.search.trials.user_code import check_user_code, passed_builders, trained_methods
from esam.search.tune.callbacks import FrontProgress, MlflowTrialRuns, Progress
from esam.search.tune.compat import keep_credentials_out_of_trial_envs
from esam.search.tune.local_ray import check_ray_token, init_ray, is_local
from esam.search.tune.moasha import MOASHA, RUNGS_FILE, expected_finishers, rung_epochs
from esam.search.tune.optuna_searcher import RESULT_ATTR, REUSE_ATTR, EsamSearcher
from esam.search.tune.ray_logs import one_line_ray_logs
from esam.search.tune.samplers import SamplerSpec
from esam.search.tune.stop_signals import StopSignals

# Ray snapshots its experiment every few seconds by default: a hard stop then loses which
# trials exist. Two seconds keeps that window short at a negligible cost for small states.
SNAPSHOT_PERIOD_S = "2"


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
    ended: str = ""  # how the trials ended, failures counted (the command's last line)


def _progress_label(cfg: SearchConfig) -> str:
    """The progress lines' prefix for the searched trials: their method, or "trials" when it is searched."""
    return "trials" if "method" in cfg.space else cfg.train.optimizer.name


def _trials_noun(cfg: SearchConfig) -> str:
    """"ESAM trials", "LookSAM trials", or "trials (esam, looksam, ...)" when the method is searched."""
    if "method" in cfg.space:
        return f"trials ({', '.join(cfg.space['method'].choices)})"
    return f"{METHODS[cfg.train.optimizer.name].label} trials"


def _moasha_line(cfg: SearchConfig) -> str:
    """Where MO-ASHA decides, and how many trials it will let finish: only they can make the front."""
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
    s = cfg.scheduler
    return MOASHA(cfg.objective_pairs, grace_epochs=s.grace_epochs, reduction_factor=s.reduction_factor,
                  max_epochs=cfg.train.epochs, rungs_file=cfg.directory / RUNGS_FILE)


def _recorded_epochs(client, parent: str, same: dict) -> int:
    """The last epoch the MLflow run of a trial (found by `same`: see callbacks.same_trial) holds; 0 if none."""
    run_id = mlflow_runs.find_child(client, parent, same)
    return mlflow_runs.last_logged_step(client, run_id, "test_acc") if run_id else 0


def _newest_of_trials(experiment: StoragePath, client, parent: str, number: int,
                      ray_trial_ids: list[str]) -> str | None:
    """Where Optuna trial `number` goes on from: the newest checkpoint its Ray trials (`ray_trial_ids`)
    saved in `experiment`, no newer than the last epoch its MLflow run holds."""
    names = {f"esam_{i}" for i in ray_trial_ids}
    up_to = _recorded_epochs(client, parent, {"optuna_trial_number": str(number)})
    return newest_checkpoint(experiment, names.__contains__, up_to) if up_to else None


def _run_references(cfg: SearchConfig, uri: str, client, parent: str, params_of, objectives, echo,
                     started: float | None, signals: StopSignals, records: RecordBuffer) -> None:
    """The references no earlier run ended, each from its newest checkpoint; a stop if any is left unfinished."""
    from ray import tune

    left = mlflow_runs.references_left(client, parent, cfg.references)
    if not left:
        return
    experiment = cfg.ray_storage / "references"
    resume = {r: c for r in left if (up_to := _recorded_epochs(client, parent, {mlflow_runs.REFERENCE_TAG: r}))
              and (c := newest_checkpoint(experiment, lambda n, r=r: n.startswith(f"{r}_"), up_to))}
    callbacks = [MlflowTrialRuns(uri, parent, "reference", trial_label, params_of, records=records),
                 Progress("references", len(cfg.references), objectives, echo, full_epochs=cfg.train.epochs,
                          ended_before=len(cfg.references) - len(left), started=started)]
    tune_config = tune.TuneConfig(num_samples=1, max_concurrent_trials=cfg.concurrency,
                                  trial_dirname_creator=lambda t: f"{t.config['optimizer']}_{t.trial_id}")
    space = {"optimizer": tune.grid_search(left), **({"_resume": resume} if resume else {})}
    results = _fit(_tuner(cfg, "references", space, tune_config, callbacks), signals)
    ended = [r for r in results if r.error is not None or (r.metrics or {}).get("epoch", 0) >= cfg.train.epochs]
    if len(ended) < len(left):  # Ray stopped them without a signal (an MLflow outage): the next run goes on
        raise SearchPaused("the references did not all end")


def _counted_ended(study) -> list:
    """The study's ended trials (COMPLETE, FAIL or PRUNED) that count against `trials`: a failed one
    that a retry trains again does not (esam/search/records/retries.py)."""
    ended = {s.name for s in _ended_states()}
    return [t for t in retries.counted(study.get_trials(deepcopy=False)) if t.state.name in ended]


def _failure_lines(client, parent: str) -> dict[int, str]:
    """Optuna trial number -> the error line its MLflow run recorded (what a retry is decided on)."""
    lines = {}
    for r in mlflow_runs.trial_runs(client, parent):
        number = r.data.tags.get("optuna_trial_number", "")
        if r.data.tags.get(mlflow_runs.KIND_TAG) == "trial" and number.isdigit() and "error" in r.data.tags:
            lines[int(number)] = r.data.tags["error"]
    return lines


def _to_retry(cfg: SearchConfig, study, client, parent: str, echo: Callable[[str], None] = print) -> list:
    trials = study.get_trials(deepcopy=False)
    if not retries.to_retry(trials, {}, cfg.retry_failed):  # no failure to judge: MLflow is not asked
        return []
    errors = retry(lambda: _failure_lines(client, parent), "the retries (reading the trials' errors)", echo=echo)
    return retries.to_retry(trials, errors, cfg.retry_failed)


def _front_points(trials: list) -> list[dict]:
    """The final metrics of finished trials that can be on the front (no reuse, not stopped early)."""
    return [t.user_attrs[RESULT_ATTR] for t in trials
            if t.state.name == "COMPLETE" and RESULT_ATTR in t.user_attrs and REUSE_ATTR not in t.user_attrs]


def _tuner(cfg: SearchConfig, experiment: str, param_space: dict, tune_config, callbacks):
    from ray import tune

    threads = max(1, int(cfg.resources.cpu))
    if cfg.resources.workers > 1:  # DDP through Ray Train: the workers reserve cpu and gpu each, the trial a driver's share
        trainable = tune.with_resources(
            tune.with_parameters(run_ddp_trial, base_train=to_dict(cfg.train), threads=threads, repeats=cfg.repeats,
                                 workers=cfg.resources.workers, cpu=cfg.resources.cpu, gpu=cfg.resources.gpu,
                                 storage=(cfg.ray_storage / "train_runs").shown),
            {"cpu": DRIVER_CPU})
    else:
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, base_train=to_dict(cfg.train), threads=threads, repeats=cfg.repeats,
                                 builders=passed_builders(cfg.train, trained_methods(cfg)) or None),
            {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu})
    root = cfg.ray_storage  # through its filesystem, a driver killed while Ray copies its state leaves the old copy
    _check_picklable(tune_config, callbacks)  # Ray pickles them into tuner.pkl: fail before it writes anything
    run_config = tune.RunConfig(
        name=experiment, storage_path=root.path, storage_filesystem=root.fs, callbacks=callbacks,
        verbose=0,
        failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
        # Two: a trial goes on from a checkpoint no newer than what MLflow recorded (esam/search/trials/checkpoints.py)
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2))
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


def _fit(tuner, signals: StopSignals):
    """Run an experiment, stoppable by SIGINT and SIGTERM (a signal during it raises SearchStopped);
    Ray's log lines one line each."""
    with one_line_ray_logs():
        return signals.fit(tuner)


def _ended_states() -> tuple:
    import optuna
    S = optuna.trial.TrialState
    return (S.COMPLETE, S.FAIL, S.PRUNED)  # PRUNED: stopped early by the scheduler


def _check_done(storage, cfg: SearchConfig) -> None:
    """The search is done when its study holds `trials` ended trials; else it was stopped.

    A database still away after its outage stopped Ray's loop is a stop too, not an error.
    """
    import optuna

    with outage_is_a_stop():
        study = optuna.load_study(study_name=cfg.name, storage=storage)
        ended = _counted_ended(study)
    if len(ended) < cfg.trials:  # Ray's loop ended early without a signal (a store away past its limit)
        raise SearchPaused(f"{len(ended)} of {cfg.trials} trials ended")


def _complete(cfg: SearchConfig, storage, client, parent: str) -> bool:
    """The search ended before: its study holds `trials` ended trials, none of them a failure to
    retry, and every reference ended."""
    import optuna
    if cfg.name not in optuna.study.get_all_study_names(storage):
        return False
    study = optuna.load_study(study_name=cfg.name, storage=storage)
    return (len(_counted_ended(study)) >= cfg.trials and not _to_retry(cfg, study, client, parent)
            and not mlflow_runs.references_left(client, parent, cfg.references))


def _check_local_data(cfg: SearchConfig, address: str | None) -> None:
    """On a local Ray, a missing data root fails now rather than in every trial.

    On a cluster the driver may not see the workers' data, so the trials check it there.
    """
    if address or os.environ.get("RAY_ADDRESS"):
        return
    data = cfg.train.data
    if data.name in ("cifar10", "cifar100", "imagefolder") and not data.download and not data_root(data).is_dir():
        hint = " (data.download: true fetches it when online)" if data.name != "imagefolder" else ""
        raise ConfigError(f"train.data.root {str(data_root(data))!r} is not a directory{hint}")


def run_search(cfg: SearchConfig, *, address: str | None = None, echo: Callable[[str], None] = print) -> SearchOutcome:
    """Run (or continue) the search `cfg.name` and return its Pareto front.

    One process per search (a lock); SIGINT and SIGTERM stop it as a stop, never as an end; any
    stop leaves the parent run KILLED and the three stores agreeing on every trial.
    """
    with client_settings():  # MLflow's client settings for this search only (see CLIENT_SETTINGS)
        # Everything that can be wrong is checked before the first trial starts, and before
        # anything is created in results_dir.
        started = time.monotonic()  # the progress lines' elapsed time: both phases count from here
        _check_local_data(cfg, address)
        check_user_code(cfg, local=is_local(address))  # the user's model and data: import, and build once on a local Ray
        check_ray_token(address)  # a cluster refusing this driver's token: one line, before anything is written
        uri = mlflow_store.tracking_uri(cfg.mlflow.tracking_uri)
        client = mlflow_store.connect(uri)
        directory = cfg.directory
        check_writable(directory)
        if cfg.ray_storage.path != str(directory):
            check_storage_writable(cfg.ray_storage)
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", SNAPSHOT_PERIOD_S)
        with SearchLock(directory, cfg.name), StopSignals() as signals:
            watch = OutageWatch(stop_requested=signals.stop_requested)  # this search's Optuna storages share it
            try:
                return _run_search(cfg, uri, client, address=address, echo=echo, started=started, signals=signals,
                                   watch=watch)
            except OSError as err:  # e.g. results_dir turned read-only or full during the search
                settle_after_stop(cfg, echo, status="FAILED", watch=watch)
                raise ConfigError(storage_error_line(err, directory)) from None
            except KeyboardInterrupt:
                settle_after_stop(cfg, echo, status="KILLED", watch=watch)
                raise
            except WriteRefused:  # a store refused a write during the search: nothing stays RUNNING
                settle_after_stop(cfg, echo, status="FAILED", watch=watch)
                raise
            except EsamError:  # refused before any trial ran: nothing to settle
                raise
            except Exception:
                settle_after_stop(cfg, echo, status="FAILED", watch=watch)
                raise


def _enqueue_retries(cfg: SearchConfig, study, client, parent: str, echo: Callable[[str], None]) -> None:
    """Trials that failed from outside their setting train again (esam/search/records/retries.py), once each run."""
    failed = _to_retry(cfg, study, client, parent, echo)
    if failed:
        retries.enqueue_retries(study, failed)
        numbers = ", ".join(f"#{t.number}" for t in failed)
        echo(f"search {cfg.name}: retrying {len(failed)} {'trial' if len(failed) == 1 else 'trials'} that failed "
             f"from outside their setting ({numbers}; retry_failed: {cfg.retry_failed})")


def _ended_line(cfg: SearchConfig, study, client, parent: str, echo: Callable[[str], None]) -> str:
    """How the trials ended, failures counted: the command's last line."""
    t = retries.tally(study.get_trials(deepcopy=False))
    line = f"search {cfg.name}: {sum(t.values())} {_trials_noun(cfg)} ended: {t['finished']} finished"
    if t["stopped"]:
        line += f", {t['stopped']} stopped early"
    if t["failed"]:
        left = len(_to_retry(cfg, study, client, parent, echo))
        line += f", {t['failed']} failed"
        line += (f" ({left} from outside their setting: run the same command again to retry "
                 f"{'it' if left == 1 else 'them'})") if left else " (none to retry)"
    return line


def _run_search(cfg: SearchConfig, uri: str, client, *, address: str | None, echo: Callable[[str], None],
                signals: StopSignals, watch: OutageWatch, started: float | None = None) -> SearchOutcome:
    import optuna
    from ray import tune
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
    check_study_file(cfg, state)
    storage = open_optuna_storage(cfg.optuna_url(), watch)
    check_study(cfg, storage, state, client, parent)  # all refusals before the parent run is reopened: a refused run changes nothing
    # A stop between the two would leave a RUNNING parent that search.json does not name (nothing
    # would end it): a signal there waits until the state is written.
    with signals.deferred():
        parent = mlflow_runs.start_parent_run(client, cfg.mlflow.experiment, cfg.name, resolved, parent)
        # No password on disk (results_dir is often a shared filesystem): the command brings it each time.
        write_state(directory, {"config": mlflow_runs.shareable(resolved), "parent_run_id": parent,
                                "tracking_uri": mlflow_store.without_password(uri)})
    objectives, constraints = cfg.objective_pairs, cfg.parsed_constraints()
    echo(f"search {cfg.name}: {cfg.trials} {_trials_noun(cfg)} + references {cfg.references or 'none'}, "
         f"{cfg.concurrency} at a time; MLflow run {parent} at {mlflow_store.without_password(uri)}")
    if added:
        echo(f"search {cfg.name} grows by {added} trials (trials: {cfg.trials - added} -> {cfg.trials})")
    if cfg.scheduler.name == "moasha":
        echo(_moasha_line(cfg))

    params_of = functools.partial(trial_params, resolved["train"]["optimizer"])
    records = open_records(uri, parent, directory, echo)  # trial records an outage kept go first
    reconcile_all(cfg, client, parent, storage, echo)  # after a hard stop the stores may disagree
    complete = bool(state) and _complete(cfg, storage, client, parent)
    if complete:  # nothing to train: Ray is not even started
        echo(f"search {cfg.name} is already complete ({cfg.trials} {_trials_noun(cfg)} ended); showing its results")
    started_ray = False if complete else init_ray(address, project_env(cfg, echo))  # the user's code to every node
    if not complete:  # no AWS key in a trial's runtime env, which Ray logs: workers inherit it or have their own
        keep_credentials_out_of_trial_envs()
    signals.reinstall()
    status = "FAILED"
    try:
        if complete:
            pass
        elif cfg.references:
            _run_references(cfg, uri, client, parent, params_of, objectives, echo, started, signals, records)
        references = mlflow_runs.reference_results(client, parent, cfg.train.epochs) if constraints and not complete else {}
        for c in constraints:
            if not complete:
                c.bound(references)  # a constraint on a reference that did not finish: one line, now
        warm = _warm_start(cfg, storage)  # before the searcher creates the study
        searcher = EsamSearcher(
            optuna_space(cfg.space, cfg.train.optimizer), objectives, cfg.name, sampler_spec(cfg),
            max_trials=cfg.trials, max_concurrent=cfg.concurrency, epochs=cfg.train.epochs,
            constraints=OptunaConstraints(constraints, references) if constraints else None)
        searcher.attach(storage, run_id_of=functools.partial(run_id_of, records),
                        resume_of=functools.partial(_newest_of_trials, cfg.ray_storage / "search", client, parent))
        for point in warm:  # Optuna samples the searched fields the point leaves out (Ray's own would refuse)
            searcher.study.enqueue_trial(point, skip_if_exists=True)
        if not complete:
            _enqueue_retries(cfg, searcher.study, client, parent, echo)
        scheduler = _scheduler(cfg)
        tune_config = tune.TuneConfig(search_alg=searcher, num_samples=cfg.trials, scheduler=scheduler,
                                      max_concurrent_trials=cfg.concurrency,
                                      trial_dirname_creator=lambda t: f"esam_{t.trial_id}")
        before = _counted_ended(searcher.study)  # what earlier runs ended
        # The references' values bound the hypervolume's reference point of a minimized objective (a
        # maximized one's is 0: MLflow is not asked then); a continued search keeps the point its first run fixed.
        if references or complete or all(m == "max" for _, m in objectives):
            bounds = references
        else:
            bounds = retry(lambda: mlflow_runs.reference_results(client, parent, cfg.train.epochs),
                           "the references' results", echo=echo)
        kept = retry(lambda: mlflow_runs.series_reference(client, parent, objectives),
                     "the hypervolume's reference point", echo=echo) if before else None
        callbacks = [MlflowTrialRuns(uri, parent, "trial", trial_label, params_of, full_epochs=cfg.train.epochs,
                                     records=records),
                     Progress(_progress_label(cfg), cfg.trials, objectives, echo, full_epochs=cfg.train.epochs,
                              ended_before=len(before), failed_before=sum(t.state.name == "FAIL" for t in before),
                              started=started),
                     FrontProgress(uri, parent, objectives, cfg.train.epochs, constraints, bounds,
                                   earlier=_front_points(before), ended_before=len(before), records=records,
                                   reference=kept)]
        if not complete:
            # Without `method` in the space every trial's method is train.optimizer's (a constant Ray adds)
            constant = {} if "method" in cfg.space else {"method": cfg.train.optimizer.name}
            _fit(_tuner(cfg, "search", constant, tune_config, callbacks), signals)
            if searcher.refused:  # a store refused a write (a full disk, a read-only directory): its cause
                raise WriteRefused(searcher.refused)
        _check_done(storage, cfg)
        ended = _ended_line(cfg, searcher.study, client, parent, echo)
        finish_records(records, wait=True)  # every trial's record is in MLflow before the parent ends
        retry(lambda: client.set_terminated(parent, status="FINISHED"), "the search run's status", echo=echo)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if started_ray:
            import ray
            ray.shutdown()
        finish_records(records, wait=False)  # after a stop, what MLflow did not take is kept on disk
        if status != "FINISHED":
            with contextlib.suppress(Exception):  # MLflow may be away; the next run reopens the parent
                client.set_terminated(parent, status=status)
    rows, front, references = retry(lambda: tag_front_and_write_artifacts(client, parent, objectives, constraints),
                                    "the Pareto artifacts", echo=echo)
    summary = retry(lambda: front_summary.summarize_parent(client, parent, rows, front, references, objectives,
                                                      constraints), "the search run's summary", echo=echo)
    table = format_table(front, references)
    exp_id = client.get_run(parent).info.experiment_id
    url, serve = mlflow_store.runs_url(uri, exp_id)
    # The search's saved view (its trials and references, objectives, their scatter chart) in MLflow's Views
    # menu, which `esam ui` opens; the printed URL stays the runs table, where the parent run is too
    retry(lambda: write_view(client, exp_id, parent, cfg.name, objectives, tuple(cfg.space)),
          "the search's saved view", echo=echo)
    return SearchOutcome(parent, uri, directory, front, rows, table, exp_id, url, serve, complete, summary, ended)
