"""Ray Tune callbacks run on the driver: MLflow child runs per trial, a terse progress line, and
the front's hypervolume after each ended trial."""
from __future__ import annotations

import heapq
import json
import math
import os
import signal
import time
from typing import Callable

from ray import tune

from esam.search.constraints import is_feasible
from esam.search.front.hypervolume import fixed_reference, hypervolume, usable
from esam.search.records.mlflow_runs import (
    HYPERVOLUME_SERIES,
    NODE_TAG,
    REFERENCE_TAG,
    REUSED_TAG,
    SERIES_REFERENCE_TAG,
    STOPPED_EPOCH_TAG,
    STOPPED_TAG,
    WORKERS_TAG,
)
from esam.search.stores.mlflow_store import without_password
from esam.search.stores.record_buffer import RecordBuffer
from esam.search.trials.trial import NODE_KEY, WORKERS_KEY, trial_label
from esam.training.metrics import METRICS

# What a child run records per result: train()'s metrics, and for repeated settings their spreads.
LOGGED = METRICS + tuple(f"{m}_std" for m in METRICS) + ("repeats",)


def trial_tags(trial_config: dict) -> dict:
    """MLflow tags from the searcher's notes: Optuna's trial number, and the run a reuse repeats."""
    tags = {}
    if "_number" in trial_config:
        tags["optuna_trial_number"] = str(trial_config["_number"])
    reuse = trial_config.get("_reuse")
    if isinstance(reuse, dict):
        tags[REUSED_TAG] = str(reuse.get("run_id") or "")
        tags["esam.reused_trial_number"] = str(reuse.get("number", ""))
    return tags


def same_trial(trial_config: dict) -> dict:
    """Tags naming a trial across Ray trial ids: its Optuna trial number, or its reference's optimizer.

    An unfinished trial goes on in a later run under a new Ray id; its MLflow run is found by these."""
    if "_number" in trial_config:
        return {"optuna_trial_number": str(trial_config["_number"])}
    if "optimizer" in trial_config:
        return {REFERENCE_TAG: str(trial_config["optimizer"])}
    return {}


def stopped_at(trial, full_epochs: int) -> int | None:
    """The epoch at which the scheduler stopped this ending trial, or None if it ran all its epochs."""
    epoch = int((trial.last_result or {}).get("epoch") or 0)
    return epoch if full_epochs and epoch < full_epochs else None


def error_line(trial) -> str:
    """The last line of a trial's traceback, e.g. 'FloatingPointError: training loss is nan ...'."""
    text = ""
    if trial.error_file and os.path.isfile(trial.error_file):  # written locally before callbacks run
        with open(trial.error_file) as f:
            text = f.read()
    text = text or trial.get_error() or ""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else "trial failed"


def resumes_from(trial) -> str:
    """Where a retried trial goes on: "from epoch N" when it saved a checkpoint (one each epoch,
    so the epoch after its last result), else "from the start"."""
    if getattr(trial, "checkpoint", None) is None:
        return "from the start"
    return f"from epoch {int((trial.last_result or {}).get('epoch') or 0) + 1}"


class MlflowTrialRuns(tune.Callback):
    """One MLflow run per trial, nested under the search's parent run; metrics per epoch.

    Only the driver writes, which keeps a SQLite store free of lock contention. Writes go
    through the search's record buffer (esam/search/records/trial_records.py): the Tune loop never waits on
    MLflow and never sees its errors (an exception here would abort the experiment). When the
    buffer gives up on an outage, the experiment stops as Ctrl-C stops it and can be continued.
    Each run is tagged `esam.node` with the Ray node its trial runs on (from the results), set again
    when a retried or resumed trial goes on elsewhere; a DDP trial's also `esam.workers`, its rank count.
    """

    def __init__(self, uri: str, parent_run_id: str, kind: str, name_of: Callable[[dict], str],
                 params_of: Callable[[dict], dict], full_epochs: int = 0, records: RecordBuffer | None = None):
        self.uri, self.parent_run_id, self.kind = uri, parent_run_id, kind
        self.records = records  # the search's record writer (esam/search/records/trial_records.py)
        self.name_of, self.params_of = name_of, params_of
        self.full_epochs = full_epochs  # a trial ending before this epoch was stopped by the scheduler
        self._stopping = False
        self._nodes: dict[str, str] = {}  # trial id -> the node its results last came from

    def __getstate__(self):  # Ray pickles callbacks with the experiment: no password; a stop request is per run
        return {**self.__dict__, "uri": without_password(self.uri), "_stopping": False, "_nodes": {}, "records": None}

    def _put(self, trial, op: str, **fields) -> None:
        self.records.put({"op": op, "trial_id": trial.trial_id, **fields})

    def on_trial_start(self, iteration, trials, trial, **info):
        self._put(trial, "start", name=self.name_of(trial.config), kind=self.kind,
                  params=self.params_of(trial.config), tags=trial_tags(trial.config), same=same_trial(trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        metrics = {k: float(result[k]) for k in LOGGED
                   if isinstance(result.get(k), (int, float)) and not isinstance(result.get(k), bool)}
        extra = {}
        node, nodes = result.get(NODE_KEY), self.__dict__.setdefault("_nodes", {})
        if isinstance(node, str) and nodes.get(trial.trial_id) != node:  # the first result on this node
            nodes[trial.trial_id] = node
            extra["tags"] = {NODE_TAG: node}
            if isinstance(result.get(WORKERS_KEY), int):  # a DDP trial: its rank count beside its nodes
                extra["tags"][WORKERS_TAG] = str(result[WORKERS_KEY])
        # A retried or resumed trial reports epochs its run may hold already: the writer keeps the
        # first attempt's points (esam/search/records/trial_records.py), so every result is passed on.
        self._put(trial, "metrics", step=int(result.get("epoch", 0)), timestamp=int(time.time() * 1000),
                  metrics=metrics, **extra)

    def on_trial_complete(self, iteration, trials, trial, **info):
        epoch = stopped_at(trial, getattr(self, "full_epochs", 0))
        tags = {} if epoch is None else {STOPPED_TAG: "true", STOPPED_EPOCH_TAG: str(epoch)}
        self._put(trial, "end", error=None, tags=tags)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._put(trial, "end", error=error_line(trial))

    def on_step_end(self, iteration, trials, **info):
        if getattr(self, "_stopping", False) or not self.records.gave_up:
            return
        handler = signal.getsignal(signal.SIGUSR1)
        if callable(handler):  # Ray's own stop request (the Ctrl-C path): checkpoint, then return
            self._stopping = True
            print(f"MLflow at {self.uri} {self.records.gave_up}: "
                  f"stopping the search", flush=True)
            handler(signal.SIGUSR1, None)



def duration(seconds: float) -> str:
    """12s, 3m05s, 1h02m."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


# A running trial's epoch gets a line at most this often per trial. A rate, not an epoch-time
# threshold: a GPU trial (minutes an epoch) shows every epoch, a trial of many 10 s epochs still
# shows it is alive every few epochs, and a quick search (seconds a trial) keeps to its end lines.
EPOCH_LINE_EVERY_S = 30.0


class Progress(tune.Callback):
    """Progress lines: one per ended or failed trial, and on long trials one per epoch now and then.

    Counts come from the trials' states, plus those an earlier run ended; the callback runs
    before Ray updates the ending trial's state, so that trial is counted by hand. Elapsed time
    counts from `started`, the command's start on `clock`: one clock for the references' phase and
    the search's. Time left comes from the epochs this run trained (see `_left`), not from ended
    trials: with several trials at once, a mean per ended trial is off by the concurrency.
    """

    def __init__(self, label: str, total: int, objectives: list[tuple[str, str]], echo: Callable[[str], None] = print,
                 full_epochs: int = 0, ended_before: int = 0, failed_before: int = 0, started: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.label, self.total, self.objectives, self.echo = label, total, objectives, echo
        self.full_epochs = full_epochs
        # Trials an earlier run of the search ended: this run's Ray experiment does not hold them.
        self.ended_before, self.failed_before = ended_before, failed_before
        self.best: dict[str, float] = {}
        self.clock = clock
        self.started = clock() if started is None else started
        self.setup()

    def __getstate__(self):
        return {**self.__dict__, "echo": print}

    def setup(self, **info):  # each Ray experiment: the command's clock goes on, the epoch counts start over
        self.epoch_s, self.epochs_timed = 0.0, 0  # wall seconds of the trained epochs (each trial's own), their count
        self.last: dict[str, tuple[int, float]] = {}  # running trial id -> (its last epoch, when it started that epoch)
        self.shown: dict[str, float] = {}  # trial id -> when its last line (or its start) was
        self.ended_at: list[int] = []  # the epoch each trial that trained in this run ended at
        self.slots = 1  # the most trials seen running at once: Ray's concurrency, or what the cluster fits

    def _running(self, trials, trial, counted: bool) -> list:
        """The running trials, `trial` among them if `counted` (Ray may not have set its state yet)."""
        running = [t for t in trials if t.status == "RUNNING" and t is not trial] + ([trial] if counted else [])
        self.slots = max(self.slots, len(running))
        return running

    def _left(self, running: list, pending: int, now: float) -> float | None:
        """Seconds until the last trial ends: trials fill the slots as they free up, each epoch taking
        the mean wall time of an epoch trained so far (slots sharing a machine slow each other: included).

        A running trial has its epochs left (its current one partly done); a trial not started has
        the epochs this run's trials ended at (the scheduler's early stops included), all of them
        before any ended. None before the first trained epoch."""
        if not self.epochs_timed:
            return None
        full = self.full_epochs or max(self.ended_at, default=0)
        if not full:
            return None
        per_epoch = self.epoch_s / self.epochs_timed
        per_trial = (sum(self.ended_at) / len(self.ended_at) if self.ended_at else full) * per_epoch
        free = []  # when each slot frees up
        for t in running:
            if "_reuse" in t.config:
                continue  # trains nothing: ends at once
            epoch, since = self.last.get(t.trial_id, (0, now))
            todo = max(0, full - epoch)
            free.append(max(0.0, per_epoch - (now - since)) + (todo - 1) * per_epoch if todo else 0.0)
        free += [0.0] * max(0, self.slots - len(free))
        heapq.heapify(free)
        for _ in range(pending):
            heapq.heappush(free, heapq.heappop(free) + per_trial)
        return max(free, default=0.0)

    def _timing(self, ended: int, running: list, now: float) -> str:
        to_end = max(0, self.total - ended)
        timing = f"{duration(now - self.started)} elapsed"
        if not to_end:
            return timing + ", done"
        left = self._left(running, max(0, to_end - len(running)), now)
        return timing + (f", ~{duration(left)} left" if left is not None else "")

    def _shown(self, result: dict) -> str:
        return ", ".join(f"{m} {result[m]:.4g}" for m, _ in self.objectives
                         if isinstance(result.get(m), (int, float)))

    def _line(self, trials, trial, failed_now: bool, what: str) -> str:
        others = [t for t in trials if t is not trial]
        failed = sum(t.status == "ERROR" for t in others) + failed_now + self.failed_before
        ended = sum(t.status in ("TERMINATED", "ERROR") for t in others) + 1 + self.ended_before
        running = self._running(trials, trial, counted=False)
        best = ", ".join(f"best {m} {v:.4g}" for m, v in self.best.items())
        return (f"[{self.label}] {ended}/{self.total} ended ({failed} failed), {len(running)} running, "
                f"{self._timing(ended, running, self.clock())} | {what}" + (f" | {best}" if best else ""))

    def on_trial_start(self, iteration, trials, trial, **info):
        now = self.clock()
        # A retried trial starts again: its next epoch is timed from now, from the epoch it last reported
        self.last[trial.trial_id] = (self.last.get(trial.trial_id, (0, now))[0], now)
        self.shown.setdefault(trial.trial_id, now)
        self._running(trials, trial, counted=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "_reuse" in trial.config:  # reports the original's metrics: no epoch trained
            return
        now, epoch = self.clock(), int(result.get("epoch") or 0)
        _, since = self.last.get(trial.trial_id, (0, now))
        self.epoch_s, self.epochs_timed = self.epoch_s + now - since, self.epochs_timed + 1
        self.last[trial.trial_id] = (epoch, now)
        running = self._running(trials, trial, counted=True)
        full = getattr(self, "full_epochs", 0)
        if result.get("done") or (full and epoch >= full):  # its end line follows at once
            return
        if now - self.shown.get(trial.trial_id, now) < EPOCH_LINE_EVERY_S:
            return
        self.shown[trial.trial_id] = now
        ended = sum(t.status in ("TERMINATED", "ERROR") for t in trials) + self.ended_before
        shown = self._shown(result)
        self.echo(f"[{self.label}] {trial_label(trial.config)} epoch {epoch}{f'/{full}' if full else ''}"
                  f"{f': {shown}' if shown else ''} | {ended} of {self.total} ended, {len(running)} running, "
                  f"{self._timing(ended, running, now)}")

    def _ended(self, trial, trained: bool) -> None:
        self.last.pop(trial.trial_id, None)
        self.shown.pop(trial.trial_id, None)
        if trained and "_reuse" not in trial.config:
            self.ended_at.append(int((trial.last_result or {}).get("epoch") or 0))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial, trained=True)
        result = trial.last_result or {}
        epoch = stopped_at(trial, getattr(self, "full_epochs", 0))
        if epoch is not None:  # its values are an earlier epoch's: no "best so far"
            self.echo(self._line(trials, trial, False, f"{trial_label(trial.config)}: stopped early at epoch {epoch}"))
            return
        for metric, mode in self.objectives:
            v = result.get(metric)
            if isinstance(v, (int, float)) and math.isfinite(v):
                old = self.best.get(metric)
                if old is None or (v > old if mode == "max" else v < old):
                    self.best[metric] = v
        self.echo(self._line(trials, trial, False, f"{trial_label(trial.config)}: {self._shown(result)}"))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial, trained=False)  # where it failed says nothing of where others end
        self.echo(self._line(trials, trial, True, f"FAILED {trial_label(trial.config)}: {error_line(trial)}"))

    def on_trial_recover(self, iteration, trials, trial, **info):
        # A crash with retries left (`max_failures`), e.g. its node lost: the trial goes on from its
        # last checkpoint, on any node; one line, not Ray's traceback.
        failures = getattr(getattr(trial, "run_metadata", None), "num_failures", 0)
        self.echo(f"[{self.label}] {trial_label(trial.config)}: {error_line(trial)}; retry {failures} of "
                  f"{trial.max_failures}, {resumes_from(trial)}")


class FrontProgress(tune.Callback):
    """After each ended ESAM trial: the hypervolume of the front so far, as a series on the parent run.

    MLflow's chart view then shows the search converging (step: trials ended so far). The front
    is made of the trials that ran all their epochs and meet the constraints, as the final front
    is. The reference point is fixed at the first ended trial and kept (esam.search.front.hypervolume's
    fixed_reference: 0 for maximized objectives; for a minimized one the worst of the reference
    trials' values and the points then), so a dominated trial never raises the series.
    """

    def __init__(self, uri: str, parent_run_id: str, objectives: list[tuple[str, str]], full_epochs: int,
                 constraints: list = (), references: dict | None = None, earlier: list[dict] = (),
                 ended_before: int = 0, records: RecordBuffer | None = None, reference: dict | None = None):
        self.uri, self.parent_run_id, self.objectives = uri, parent_run_id, objectives
        self.records = records  # the search's record writer: the series goes through it
        self.full_epochs, self.constraints, self.references = full_epochs, list(constraints), references or {}
        # What an earlier run of the search ended: the final metrics of its front candidates, and how many ended.
        self.earlier, self.ended_before = list(earlier), ended_before
        # fixed by the first points, then kept; an earlier run's (SERIES_REFERENCE_TAG) when the search continues
        self.reference: dict[str, float] | None = reference
        self._new_reference = False  # fixed by this run: written beside its first series point

    def __getstate__(self):  # Ray pickles callbacks with the experiment: no password, no live writer
        return {**self.__dict__, "uri": without_password(self.uri), "records": None}

    def _point(self, trial) -> dict | None:
        result = trial.last_result or {}
        if "_reuse" in trial.config or stopped_at(trial, self.full_epochs) is not None:
            return None
        if self.constraints and not is_feasible(self.constraints, result, self.references):
            return None
        return result

    def _log(self, trials, trial, failed: bool) -> None:
        # Ray updates the ending trial's status after its callbacks: it is counted by hand
        others = [t for t in trials if t is not trial]
        finished = [t for t in others if t.status == "TERMINATED"] + ([] if failed else [trial])
        points = [p for t in finished if (p := self._point(t)) is not None]
        points += [p for p in self.earlier if not self.constraints or is_feasible(self.constraints, p, self.references)]
        area = self.area(points)
        step = sum(t.status in ("TERMINATED", "ERROR") for t in others) + 1 + self.ended_before
        tags = {SERIES_REFERENCE_TAG: json.dumps(self.reference)} if self._new_reference else None
        self._new_reference = False
        self.records.put(
            {"op": "search_metrics", "trial_id": "", "step": step, "timestamp": int(time.time() * 1000),
             "metrics": {HYPERVOLUME_SERIES: area}, **({"tags": tags} if tags else {})})

    def area(self, points: list[dict]) -> float:
        """The hypervolume of `points` over the search's reference point (fixed by the first points given)."""
        if self.reference is None and usable(points, self.objectives):  # a point lacking a value fixes nothing
            self.reference = fixed_reference(points, self.objectives, list(self.references.values()))
            self._new_reference = True
        return hypervolume(points, self.objectives, self.reference)[0]

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._log(trials, trial, failed=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._log(trials, trial, failed=True)
