"""Make the Optuna study and the MLflow runs agree on every trial, before a search goes on.

Which store says what (see README, "failures the project survives"):
- That a trial ended, and how (finished, stopped early by the scheduler, or failed), is decided
  by the first durable record of it. Ray tells the searcher before its callbacks, so for ESAM
  trials the Optuna study speaks first, then MLflow (whose writes are buffered); then the
  scheduler's rung records (a stop decision is final). For references (not in Optuna) MLflow.
- A trial no store saw end is unfinished: its MLflow run is KILLED until the next run takes it up
  again (the searcher hands its Optuna trial, with its parameters, to a new Ray trial).
- Ray's saved experiments are not a source: every run is a new Ray experiment, and Ray's files
  (pickles) are never read.

Runs and Optuna trials are matched by the Optuna trial number (MLflow tag `optuna_trial_number`),
which stays when a trial goes on under a new Ray trial id. `reconcile` corrects the stores to the
verdict and returns what it changed.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from esam.search.records import mlflow_runs
from esam.search.tune.optuna_searcher import RESULT_ATTR, RUN_ATTR, final_metrics, open_trial

FINISHED, STOPPED, FAILED = "finished", "stopped", "failed"
_OPTUNA = {"COMPLETE": FINISHED, "PRUNED": STOPPED, "FAIL": FAILED}
_MLFLOW = {"FINISHED": FINISHED, "FAILED": FAILED}


@dataclass
class Experiment:
    """One kind of trial of a search and how to match its runs to its records."""
    kind: str  # MLflow esam.kind of its child runs: reference | trial
    objectives: list[tuple[str, str]]
    study: object = None  # the Optuna study (ESAM trials only)
    stopped: dict = field(default_factory=dict)  # Optuna trial number -> epoch: the scheduler's stop decisions
    constraints: object = None  # esam.search.constraints.OptunaConstraints of a constrained search
    storage: object = None  # the Optuna storage the study was opened on


def _mlflow_verdict(run) -> str:
    if run.info.status == "FINISHED" and run.data.tags.get(mlflow_runs.STOPPED_TAG) == "true":
        return STOPPED
    return _MLFLOW[run.info.status]


def _verdict(optuna_trial, run, stopped: dict) -> str | None:
    """finished | stopped | failed | None (unfinished: the next run takes it up again)."""
    if optuna_trial is not None and optuna_trial.state.name in _OPTUNA:
        return _OPTUNA[optuna_trial.state.name]
    if run is not None and run.info.status in _MLFLOW:
        return _mlflow_verdict(run)
    if optuna_trial is not None and optuna_trial.number in stopped:  # the scheduler decided; the decision is final
        return STOPPED
    return None


def _values(objectives, run) -> list[float] | None:
    if run is None:
        return None
    values = [run.data.metrics.get(metric) for metric, _ in objectives]
    return None if any(v is None for v in values) else [float(v) for v in values]


class _Reconciler:
    def __init__(self, exp: Experiment, client, parent_run_id: str):
        self.exp, self.client = exp, client
        self.changes: Counter = Counter()
        self.runs = [r for r in mlflow_runs.trial_runs(client, parent_run_id)
                     if r.data.tags.get(mlflow_runs.KIND_TAG) == exp.kind]

    def run(self) -> Counter:
        if self.exp.study is None:  # references: MLflow is their only record
            for run in self.runs:
                self._fix_run(run, _mlflow_verdict(run) if run.info.status in _MLFLOW else None)
            return self.changes
        by_number: dict[int, object] = {}
        for run in self.runs:  # the oldest run of a trial number is its run
            number = run.data.tags.get("optuna_trial_number", "")
            if number.isdigit():
                by_number.setdefault(int(number), run)
        for trial in self.exp.study.get_trials(deepcopy=False):
            run = by_number.get(trial.number)
            verdict = _verdict(trial, run, self.exp.stopped)
            if trial.state.name == "RUNNING" and verdict is not None:
                self._tell_optuna(trial, verdict, run)
            if run is not None:
                self._fix_run(run, verdict, self.exp.stopped.get(trial.number)
                              or trial.user_attrs.get("stopped_at_epoch"))
        return self.changes

    def _tell_optuna(self, optuna_trial, verdict: str, run) -> None:
        import optuna
        values = _values(self.exp.objectives, run) if verdict == FINISHED else None
        state = optuna.trial.TrialState.COMPLETE if values else optuna.trial.TrialState.FAIL
        if verdict == STOPPED:
            state = optuna.trial.TrialState.PRUNED
        trial_notes = open_trial(self.exp.study, self.exp.storage, optuna_trial.number)
        if values and self.exp.constraints is not None and not optuna_trial.constraints:  # as the searcher would
            self.exp.constraints.set_on(trial_notes, run.data.metrics)
        if run is not None:  # the notes the searcher could not make (the driver killed, or its database away)
            if RUN_ATTR not in optuna_trial.user_attrs:
                trial_notes.set_user_attr(RUN_ATTR, run.info.run_id)
            if values and RESULT_ATTR not in optuna_trial.user_attrs:
                trial_notes.set_user_attr(RESULT_ATTR, final_metrics(run.data.metrics))
        self.exp.study.tell(optuna_trial.number, values, state=state, skip_if_finished=True)
        self.changes[f"Optuna trials left RUNNING set {state.name}"] += 1

    def _fix_run(self, run, verdict: str | None, stop_epoch: int | None = None) -> None:
        run_id, status = run.info.run_id, run.info.status
        if verdict == STOPPED and (status != "FINISHED" or run.data.tags.get(mlflow_runs.STOPPED_TAG) != "true"):
            mlflow_runs.end_trial_run(self.client, run_id, tags={mlflow_runs.STOPPED_TAG: "true",
                                                              mlflow_runs.STOPPED_EPOCH_TAG: str(stop_epoch or "")})
        elif verdict == FINISHED and status != "FINISHED":
            self.client.set_terminated(run_id, status="FINISHED")
        elif verdict == FAILED and status != "FAILED":
            if "error" not in run.data.tags:
                self.client.set_tag(run_id, "error", "the trial failed while its run was not being recorded")
            self.client.set_terminated(run_id, status="FAILED")
        elif verdict is None and status == "RUNNING":
            self.client.set_terminated(run_id, status="KILLED")  # stopped; RUNNING again when it goes on
        else:
            return
        self.changes["MLflow runs whose status disagreed, corrected"] += 1


def reconcile(exp: Experiment, client, parent_run_id: str) -> Counter:
    """Correct the study and the MLflow runs of one kind of trial; count the changes."""
    return _Reconciler(exp, client, parent_run_id).run()


def summary(changes: Counter) -> str:
    return "; ".join(f"{n} {what}" for what, n in changes.items())
