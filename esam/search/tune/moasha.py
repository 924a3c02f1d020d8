"""MO-ASHA: asynchronous successive halving on two objectives at once, as a Ray Tune scheduler.

ASHA (Li et al. 2020) stops a trial early when, on reaching a rung, it is not in the best 1/rf
of the trials that have reached that rung so far. MO-ASHA (Schmucker et al. 2021) ranks the rung on
several objectives instead of one. Here (test accuracy and speed vs SGD, say):

- Rungs sit at the epochs grace * rf**k (rounded to int, duplicates dropped) below max_epochs:
  grace 1, rf 3, max 12 -> 1, 3, 9. Expected trial-epochs per trial: `expected_epochs_per_trial`.
- A trial is recorded at a rung from its result whose epoch equals the milestone, so a rung
  compares every trial at the same epoch. A result that jumps past a milestone (a resumed trial
  whose earlier results the scheduler never saw) records the trial there, from that result, if
  it was not recorded there yet. Recording is idempotent: an epoch reported again (a trial
  resumed from its checkpoint) records nothing and changes no decision.
- The decision is made once, on arrival (asynchronous, the stopping variant of ASHA), from what
  has reached the rung so far, the arriving trial included (n trials). They are ranked by
  non-dominated sorting on both objectives (each in its own direction, max or min); inside a
  front, in the order an epsilon-net picks them (Schmucker et al. 2021): first the member best on
  the first objective, then each time the member farthest from those picked so far, in objective
  space scaled by the rung's range on each axis; ties, identical points included, go by arrival
  at the rung (earlier first). A trial with a NaN, infinite or missing objective value ranks
  after every trial with both values, in order of arrival.
  The arriving trial continues iff its 0-based position p < n / rf: the first arrival always
  continues. A decision is final: a trial stopped at a rung is stopped again if it reports
  later, and a trial continued is never stopped at that rung by later, better arrivals.
- Reference trials (`protected`; in `on_trial_result` a trial config {"optimizer": "sgd" or
  "sam"}) are never stopped and never recorded: they are the yardstick, not contestants.
- A result at epoch >= max_epochs continues: the trainable ends by itself.

With `rungs_file`, the rung records and the stop decisions survive a stopped search: the file is
read at construction (and when Ray unpickles the scheduler with a restored experiment: Ray saves
the scheduler only as it was when the experiment was created), and rewritten atomically after
each change. Plain JSON:
{"version": 1, "milestones": [...], "rungs": {"<epoch>": [[trial_id, [v1, v2]], ...]},
"stopped": {trial_id: epoch}}, each rung in arrival order, a missing or non-finite value as null.

The scheduler knows nothing of MLflow, Optuna or the optimizers; it holds only plain data, so
Ray can pickle it with the experiment.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from esam.errors import ConfigError

_VERSION = 1

Point = tuple[float, float]  # objective values turned so that larger is better on both axes

RUNGS_FILE = "moasha_rungs.json"  # under <state_dir>/<name>/: MO-ASHA's rung records, kept across restarts



def _check_budget(grace_epochs, reduction_factor, max_epochs) -> None:
    if isinstance(grace_epochs, bool) or not isinstance(grace_epochs, int) or grace_epochs < 1:
        raise ConfigError(f"MO-ASHA grace_epochs must be an integer >= 1, got {grace_epochs!r}")
    if (isinstance(reduction_factor, bool) or not isinstance(reduction_factor, (int, float))
            or not math.isfinite(reduction_factor) or reduction_factor <= 1):
        raise ConfigError(f"MO-ASHA reduction_factor must be a number > 1, got {reduction_factor!r}")
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs <= grace_epochs:
        raise ConfigError(f"MO-ASHA max_epochs must be an integer > grace_epochs ({grace_epochs}), "
                          f"got {max_epochs!r}")


def rung_epochs(grace_epochs: int, reduction_factor: float, max_epochs: int) -> list[int]:
    """grace * rf**k, rounded half up to an int, strictly increasing, while below max_epochs."""
    _check_budget(grace_epochs, reduction_factor, max_epochs)
    epochs: list[int] = []
    k = 0
    while True:
        # round(.., 9) first: 2 * 1.1**k must not land a hair below a .5 and round the wrong way
        epoch = math.floor(round(grace_epochs * reduction_factor ** k, 9) + 0.5)
        if epoch >= max_epochs:
            return epochs
        if not epochs or epoch > epochs[-1]:
            epochs.append(epoch)
        k += 1


def expected_epochs_per_trial(grace_epochs: int, reduction_factor: float, max_epochs: int) -> float:
    """Trial-epochs one trial costs on average when each rung lets exactly 1/rf of its trials on.

    E = r0 + (r1 - r0)/rf + (r2 - r1)/rf**2 + ... + (max - rk)/rf**(k+1), r0 = grace the first rung.
    Asynchronous decisions let a few more through early in a search (see the module docstring).
    """
    bounds = rung_epochs(grace_epochs, reduction_factor, max_epochs) + [max_epochs]
    return bounds[0] + sum((b - a) / reduction_factor ** (i + 1) for i, (a, b) in enumerate(pairwise(bounds)))


def expected_finishers(trials: int, grace_epochs: int, reduction_factor: float, max_epochs: int) -> float:
    """How many of `trials` run all max_epochs (and so can make the front): trials / rf**rungs."""
    return trials / reduction_factor ** len(rung_epochs(grace_epochs, reduction_factor, max_epochs))


def _fronts(points: Sequence[Point], members: Sequence[int]) -> list[list[int]]:
    """Non-dominated sorting of points[members] (larger is better): fronts, best first.

    Two objectives allow a sort instead of pairwise counting: taken by the first value
    (descending, then the second), a point joins the first front whose last member does not
    dominate it. Within a front taken in that order the second value only grows, so that last
    member is the only one that could.
    """
    fronts: list[list[int]] = []
    for i in sorted(members, key=lambda i: (-points[i][0], -points[i][1])):
        a, b = points[i]
        for front in fronts:
            la, lb = points[front[-1]]
            if not (la >= a and lb >= b and (la > a or lb > b)):
                front.append(i)
                break
        else:
            fronts.append([i])
    return fronts


def _epsilon_net(points: Sequence[Point], front: Sequence[int], spans: Point) -> list[int]:
    """A front's members in the order an epsilon-net picks them (Schmucker et al. 2021).

    Why not NSGA-II's crowding distance: on two objectives both ends of a front are infinitely
    far, and between the two ends arrival decided, so a newcomer with the best accuracy so far was
    stopped while an older end point went on (arrivals 90%/0.90x, 95%/0.50x, 96%/0.55x: the last
    two stopped at rf 3, where one-objective ASHA keeps them). The net starts from the member best
    on the first objective (the search's accuracy: the trial one-objective ASHA would keep), and
    on a two-objective front the member farthest from it is the other end, so both ends still come
    before the members between them, which then come in the order that spreads the picks most.
    Distances are Euclidean after scaling each axis by `spans`; ties go by arrival (lower index).
    """
    def distance(i: int, j: int) -> float:
        return math.hypot(*((points[i][a] - points[j][a]) / spans[a] for a in (0, 1)))

    first = min(front, key=lambda i: (-points[i][0], i))
    picked, left = [first], [i for i in front if i != first]
    nearest = {i: distance(i, first) for i in left}  # each unpicked member's distance to the picked set
    while left:
        chosen = min(left, key=lambda i: (-nearest[i], i))
        picked.append(chosen)
        left.remove(chosen)
        for i in left:
            nearest[i] = min(nearest[i], distance(i, chosen))
    return picked


def best_first(points: Sequence[Point]) -> list[int]:
    """Indices of `points` (in arrival order, larger is better on both axes) from best to worst:
    front, then the epsilon-net's order inside it, then arrival; points with a non-finite value last."""
    complete = [i for i, p in enumerate(points) if all(math.isfinite(v) for v in p)]
    # each axis scaled by its range over the rung's complete points (1 where they all agree)
    spans = tuple((max(points[i][a] for i in complete) - min(points[i][a] for i in complete)) or 1.0
                  for a in (0, 1)) if complete else (1.0, 1.0)
    ranked: list[int] = []
    for front in _fronts(points, complete):
        ranked += _epsilon_net(points, front, spans)
    incomplete = set(range(len(points))) - set(complete)
    return ranked + sorted(incomplete)


def _number(value) -> float:
    """An objective value as a float; NaN when missing or not a number (it then ranks last)."""
    if isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class MOASHA(FIFOScheduler):
    """Stops trials at rungs on two objectives; the rules are in the module docstring.

    Args:
        objectives: two (metric, "max" | "min") pairs, as in the search config.
        grace_epochs: the first rung; no trial is stopped before it.
        reduction_factor: rf > 1; a rung lets about 1/rf of its trials on.
        max_epochs: the trials' full length; rungs lie below it.
        rungs_file: JSON file keeping the rung records and stop decisions across a stop.
        time_attr: the result key holding the epoch.
    """

    def __init__(self, objectives: list[tuple[str, str]], grace_epochs: int, reduction_factor: float,
                 max_epochs: int, rungs_file: str | Path | None = None, time_attr: str = "epoch"):
        pairs = [tuple(o) if isinstance(o, (list, tuple)) else (o,) for o in objectives] \
            if isinstance(objectives, (list, tuple)) else []
        if (len(pairs) != 2 or pairs[0][:1] == pairs[1][:1]
                or any(len(o) != 2 or not isinstance(o[0], str) or o[1] not in ("max", "min") for o in pairs)):
            raise ConfigError(f"MO-ASHA needs exactly two objectives, distinct (metric, 'max' | 'min') pairs, "
                              f"got {objectives!r}")
        super().__init__()
        self._objectives: list[tuple[str, str]] = pairs
        self._milestones = rung_epochs(grace_epochs, reduction_factor, max_epochs)
        self._reduction_factor = float(reduction_factor)
        self._max_epochs = max_epochs
        self._time_attr = time_attr
        self._rungs_file = str(rungs_file) if rungs_file is not None else None
        # milestone -> {trial_id: [v1, v2]}, in arrival order (dicts keep insertion order)
        self._rungs: dict[int, dict[str, list[float]]] = {m: {} for m in self._milestones}
        self._stopped: dict[str, int] = {}
        if self._rungs_file and Path(self._rungs_file).exists():
            self._load()

    @property
    def milestones(self) -> list[int]:
        return list(self._milestones)

    @property
    def stopped(self) -> dict[str, int]:
        """trial_id -> the rung epoch at which it was stopped."""
        return dict(self._stopped)

    def rung_values(self, epoch: int) -> dict[str, list[float]]:
        """The trials recorded at the rung `epoch`, in arrival order, with their objective values."""
        if epoch not in self._rungs:
            raise ValueError(f"{epoch!r} is not a rung epoch; the rungs are {self._milestones}")
        return {trial: list(values) for trial, values in self._rungs[epoch].items()}

    def record(self, trial_id: str, epoch: int, values: dict[str, float], protected: bool = False) -> str:
        """Record a trial's result at the rungs it reached and decide: "continue" or "stop"."""
        if protected:
            return "continue"
        if trial_id in self._stopped:
            return "stop"  # a decision is final, even for a trial Ray resumed after it
        if epoch >= self._max_epochs:
            return "continue"
        decision, changed = "continue", False
        for milestone in self._milestones:
            if milestone > epoch:
                break
            rung = self._rungs[milestone]
            if trial_id in rung:
                continue
            rung[trial_id] = [_number(values.get(metric)) for metric, _ in self._objectives]
            changed = True
            if not self._continues(milestone, trial_id):
                self._stopped[trial_id] = milestone
                decision = "stop"
                break  # a trial stopped here is not recorded at the later rungs it jumped past
        if changed and self._rungs_file:
            self._save()
        return decision

    def _continues(self, milestone: int, trial_id: str) -> bool:
        rung = self._rungs[milestone]
        signs = [1.0 if mode == "max" else -1.0 for _, mode in self._objectives]
        points = [(signs[0] * v[0], signs[1] * v[1]) for v in rung.values()]
        arrivals = list(rung)
        position = best_first(points).index(arrivals.index(trial_id))
        return position < len(points) / self._reduction_factor

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        epoch = result.get(self._time_attr)
        if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or math.isnan(epoch):
            return TrialScheduler.CONTINUE  # no epoch, no rung to compare at
        config = getattr(trial, "config", None) or {}
        protected = isinstance(config, dict) and "optimizer" in config  # a reference trial (sgd, sam, ...)
        # Keyed by the Optuna trial number: a trial that goes on in a later run has a new Ray id.
        key = f"#{config['_number']}" if isinstance(config, dict) and "_number" in config else trial.trial_id
        decision = self.record(key, epoch, result, protected=protected)
        return TrialScheduler.STOP if decision == "stop" else TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        rungs = ", ".join(f"epoch {m}: {len(self._rungs[m])} recorded" for m in self._milestones)
        return f"Using MO-ASHA (rf {self._reduction_factor:g}): {rungs}; {len(self._stopped)} stopped"

    # --- persistence -------------------------------------------------------------------------

    def __setstate__(self, state: dict) -> None:
        # Ray restores an experiment's scheduler from a pickle taken when the experiment began:
        # the rungs file holds what happened since.
        self.__dict__.update(state)
        if self._rungs_file and Path(self._rungs_file).exists():
            self._load()

    def _load(self) -> None:
        path = self._rungs_file
        try:
            data = json.loads(Path(path).read_text())
            if not isinstance(data, dict) or data.get("version") != _VERSION:
                raise ValueError(f"not a version {_VERSION} rungs file")
            milestones = data["milestones"]
            rungs = {int(epoch): {str(trial): [math.nan if v is None else float(v) for v in values]
                                  for trial, values in entries}
                     for epoch, entries in data["rungs"].items()}
            stopped = {str(trial): int(epoch) for trial, epoch in data["stopped"].items()}
            if any(len(values) != 2 for rung in rungs.values() for values in rung.values()):
                raise ValueError("a rung entry does not hold two values")
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
            raise ConfigError(f"MO-ASHA rungs file {path} is unreadable ({type(err).__name__}: {str(err)[:100]}); "
                              f"restore it, or remove it to forget which trials were stopped") from None
        if milestones != self._milestones or not set(rungs) <= set(self._milestones) \
                or not set(stopped.values()) <= set(self._milestones):
            raise ConfigError(f"MO-ASHA rungs file {path} holds rungs at epochs {milestones}, this scheduler's are "
                              f"{self._milestones}; use the search's own settings, or remove the file")
        self._rungs = {m: rungs.get(m, {}) for m in self._milestones}
        self._stopped = stopped

    def _save(self) -> None:
        """Written whole or not at all: a crash never leaves half a file."""
        def plain(v: float):
            return v if math.isfinite(v) else None  # JSON has no NaN
        data = {"version": _VERSION, "milestones": self._milestones,
                "rungs": {str(m): [[trial, [plain(v) for v in values]] for trial, values in rung.items()]
                          for m, rung in self._rungs.items()},
                "stopped": self._stopped}
        path = Path(self._rungs_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
