"""Make Ray's saved state, the Optuna study and the MLflow runs agree on every trial.

Which store says what (see README, "failures the project survives"):
- That a trial ended, and how (finished, stopped early by the scheduler, or failed), is decided
  by the first durable record of it. Ray tells the searcher before its callbacks, so for ESAM trials the Optuna study speaks
  first, then MLflow; for references (not in Optuna) MLflow. Ray's snapshot is written every
  few seconds and can lag, so it speaks last: it only says "finished" when the trial's last
  result covers every epoch, or (stopped early) when the scheduler's rung records say it stopped it.
- What a trial measured (metric histories) is MLflow's; which trials exist is Ray's snapshot
  (trials it never saved are re-proposed: their MLflow runs are deleted, Optuna's trial is
  handed to the new Ray trial by the searcher).

`reconcile` corrects the other stores to that verdict and returns what it changed.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from esam.search import ray_state
from esam.search import tracking
from esam.errors import ConfigError
from esam.search.optuna_searcher import RAY_TRIAL_ATTR, RESULT_ATTR, RUN_ATTR, final_metrics, open_trial
from esam.search.results_storage import StoragePath

FINISHED, STOPPED, FAILED = "finished", "stopped", "failed"
_OPTUNA = {"COMPLETE": FINISHED, "PRUNED": STOPPED, "FAIL": FAILED}
_MLFLOW = {"FINISHED": FINISHED, "FAILED": FAILED}
_RAY = {FINISHED: "TERMINATED", STOPPED: "TERMINATED", FAILED: "ERROR"}


@dataclass
class Experiment:
    """One Ray experiment of a search and how to match its trials elsewhere."""
    directory: StoragePath | Path  # Ray's storage: results_dir/<name>/<experiment>
    kind: str  # MLflow esam.kind of its child runs: reference | trial
    epochs: int  # a trial that reported this epoch has finished
    objectives: list[tuple[str, str]]
    study: object = None  # the Optuna study (ESAM trials only)
    stopped: dict = field(default_factory=dict)  # trial id -> epoch: the scheduler's stop decisions
    constraints: object = None  # esam.search.constraints.OptunaConstraints of a constrained search
    storage: object = None  # the Optuna storage the study was opened on


def _mlflow_verdict(run) -> str:
    if run.info.status == "FINISHED" and run.data.tags.get(tracking.STOPPED_TAG) == "true":
        return STOPPED
    return _MLFLOW[run.info.status]


def _verdict(saved: ray_state.SavedTrial, optuna_trial, run, epochs: int, stopped: dict) -> str | None:
    """finished | stopped | failed | None (unfinished: Ray resumes it)."""
    if optuna_trial is not None and optuna_trial.state.name in _OPTUNA:
        return _OPTUNA[optuna_trial.state.name]
    if run is not None and run.info.status in _MLFLOW:
        return _mlflow_verdict(run)
    if saved.status == "ERROR":
        return FAILED
    if saved.status == "TERMINATED" and saved.epoch >= epochs:
        return FINISHED
    if saved.trial_id in stopped:  # the scheduler decided; the decision is final
        return STOPPED
    return None


def _values(objectives, run, saved) -> list[float] | None:
    source = run.data.metrics if run is not None else saved.last_result
    values = [source.get(metric) for metric, _ in objectives]
    return None if any(v is None for v in values) else [float(v) for v in values]


class _Reconciler:
    def __init__(self, exp: Experiment, client, parent_run_id: str):
        self.exp, self.client = exp, client
        self.changes: Counter = Counter()
        self.runs = {r.data.tags.get("trial_id"): r for r in tracking.trial_runs(client, parent_run_id)
                     if r.data.tags.get(tracking.KIND_TAG) == exp.kind}
        self.optuna = {}
        if exp.study is not None:
            for t in exp.study.get_trials(deepcopy=False):
                self.optuna.setdefault(t.user_attrs.get(RAY_TRIAL_ATTR), t)

    def run(self, stopping: bool) -> Counter:
        saved = ray_state.read_trials(self.exp.directory)
        if saved is None:
            self._check_nothing_lost()
            saved = []
        fixes = {}
        for trial in saved:
            status = self._one(trial, stopping)
            if status is not None:
                fixes[trial.trial_id] = status
        ray_state.set_statuses(self.exp.directory, fixes)
        self._drop_unsaved({t.trial_id for t in saved})
        return self.changes

    def _check_nothing_lost(self) -> None:
        ended = [r for r in self.runs.values() if r.info.status in _MLFLOW]
        ended += [t for t in self.optuna.values() if t.state.name in _OPTUNA]
        if ended:
            raise ConfigError(f"Ray's experiment state in {self.exp.directory} is missing, but {len(ended)} of its "
                              f"trials are recorded as ended; restore that directory, or remove "
                              f"{self.exp.directory.parent} and the search's MLflow runs to start over")

    def _one(self, trial: ray_state.SavedTrial, stopping: bool) -> str | None:
        """Bring Optuna and MLflow in line; return Ray's corrected status, if it changes."""
        optuna_trial, run = self.optuna.get(trial.trial_id), self.runs.get(trial.trial_id)
        verdict = _verdict(trial, optuna_trial, run, self.exp.epochs, self.exp.stopped)
        if optuna_trial is not None and optuna_trial.state.name == "RUNNING" and verdict is not None:
            self._tell_optuna(optuna_trial, verdict, run, trial)
        if run is not None:
            stop_epoch = self.exp.stopped.get(trial.trial_id) or (
                optuna_trial.user_attrs.get("stopped_at_epoch") if optuna_trial is not None else None) or trial.epoch
            self._fix_run(run, verdict, stop_epoch)
        if verdict is None:
            if trial.status in ray_state.TERMINAL:  # saved as ended, yet no store saw it end: run it again
                self.changes["stopped trials Ray saved as ended, resumed"] += 1
                return "PENDING"
            return None
        if trial.status != _RAY[verdict]:
            self.changes[f"trials ended ({verdict}) that Ray saved as {trial.status}, not resumed"] += 1
            return _RAY[verdict]
        return None

    def _tell_optuna(self, optuna_trial, verdict: str, run, trial) -> None:
        import optuna
        values = _values(self.exp.objectives, run, trial) if verdict == FINISHED else None
        state = optuna.trial.TrialState.COMPLETE if values else optuna.trial.TrialState.FAIL
        if verdict == STOPPED:
            state = optuna.trial.TrialState.PRUNED
        trial_notes = open_trial(self.exp.study, self.exp.storage, optuna_trial.number)
        if values and self.exp.constraints is not None and not optuna_trial.constraints:  # as the searcher would
            self.exp.constraints.set_on(trial_notes, run.data.metrics if run is not None else trial.last_result)
        if run is not None:  # the notes the searcher could not make (the driver killed, or its database away)
            if RUN_ATTR not in optuna_trial.user_attrs:
                trial_notes.set_user_attr(RUN_ATTR, run.info.run_id)
            if values and RESULT_ATTR not in optuna_trial.user_attrs:
                trial_notes.set_user_attr(RESULT_ATTR, final_metrics(run.data.metrics))
        self.exp.study.tell(optuna_trial.number, values, state=state)
        self.changes[f"Optuna trials left RUNNING set {state.name}"] += 1

    def _fix_run(self, run, verdict: str | None, stop_epoch: int | None = None) -> None:
        run_id, status = run.info.run_id, run.info.status
        if verdict == STOPPED and (status != "FINISHED" or run.data.tags.get(tracking.STOPPED_TAG) != "true"):
            tracking.end_trial_run(self.client, run_id, tags={tracking.STOPPED_TAG: "true",
                                                              tracking.STOPPED_EPOCH_TAG: str(stop_epoch or "")})
        elif verdict == FINISHED and status != "FINISHED":
            self.client.set_terminated(run_id, status="FINISHED")
        elif verdict == FAILED and status != "FAILED":
            if "error" not in run.data.tags:
                self.client.set_tag(run_id, "error", "the trial failed while its run was not being recorded")
            self.client.set_terminated(run_id, status="FAILED")
        elif verdict is None and status == "RUNNING":
            self.client.set_terminated(run_id, status="KILLED")  # stopped; RUNNING again when resumed
        else:
            return
        self.changes["MLflow runs whose status disagreed, corrected"] += 1

    def _drop_unsaved(self, saved_ids: set[str]) -> None:
        """MLflow runs of trials Ray never saved: those trials start again under new ids."""
        for trial_id, run in self.runs.items():
            if trial_id not in saved_ids and run.info.status not in _MLFLOW:
                self.client.delete_run(run.info.run_id)
                self.changes["MLflow runs of trials Ray never saved, deleted (the trials run again)"] += 1


def reconcile(exp: Experiment, client, parent_run_id: str, stopping: bool = False) -> Counter:
    """Correct Ray's snapshot, the study and the MLflow runs of one experiment; count the changes."""
    return _Reconciler(exp, client, parent_run_id).run(stopping)


def fail_orphans(study) -> int:
    """At the end of a search: Optuna trials still RUNNING belong to no trial; record them FAIL."""
    import optuna
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in running:
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    return len(running)


def summary(changes: Counter) -> str:
    return "; ".join(f"{n} {what}" for what, n in changes.items())
