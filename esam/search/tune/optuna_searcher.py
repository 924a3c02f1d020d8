"""The search's Ray Tune searcher: Optuna's study asked and told through its public API.

Built on Ray's public `Searcher` interface (`suggest`, `on_trial_result`, `on_trial_complete`,
`save`, `restore`, `set_max_concurrency`) and Optuna's ask-and-tell (`study.ask`, `study.tell`,
`study.get_trials`, `Trial.set_user_attr`, `Trial.set_constraint`): no private attribute of
either library, so a new release breaks nothing here silently.

What Ray pickles is a spec. Ray pickles the searcher with its experiment (`tuner.pkl`); the
searcher pickles only its settings (space, objectives, study name, the sampler's spec): never
the study, its storage (a PostgreSQL URL holds a password) or a live sampler (Optuna 5.1.0's
NSGA-II holds a lock that cannot be pickled). The driver opens the study (`attach`) each time
the search runs, so the study is the searcher's state: `restore` reads nothing from Ray's files.

Behaviour the three stores rely on:
- Each Optuna trial carries its Ray trial id (user attr `ray_trial_id`), so the stores can be
  matched at start-up.
- An Optuna trial left RUNNING by a killed driver whose Ray trial was never saved (an orphan) is
  handed to the next Ray trial with its own parameters (those it lacks, when the driver died
  while Optuna drew them, are drawn now): no fifth trial for four, and never a Ray trial without
  the searched fields. The study decides how many trials exist: once it holds `max_trials`, Ray
  gets no new one.
- It limits concurrency itself (Ray's ConcurrencyLimiter is bypassed): live trials are those
  Optuna holds RUNNING, so a trial the start-up reconciliation ended frees its slot.
- No wasted trials: a proposal whose searched values equal a finished (COMPLETE) trial's, as the
  study stores them (floats compared to 12 significant digits), is not trained. The Ray trial
  still exists and reports the original's final metrics at once (esam/search/trials/trial.py), so Optuna
  is told the same values, MLflow records it as a reuse (tag `esam.reused_from`) and the stores
  stay matched. Asking the sampler again instead could loop for ever on a small space and would
  hide the proposal from the study. The reuse counts against `trials`.
- A trial the scheduler stopped early (its last result is before the last epoch) is told as
  PRUNED, with no values: a PRUNED trial is never on the study's front, so its truncated
  accuracy cannot pose as a result. Its metrics at the stop are kept as user attrs
  `partial_result` and `stopped_at_epoch`.
- Under `constraints:`, each ending trial's violations go to Optuna before its values, so the
  sampler steers away from infeasible settings.
- The database may go away for a while: the study's storage waits it out
  (esam/search/stores/optuna_outage.py). Past the outage limit the searcher asks Ray to stop, as Ctrl-C
  does, instead of raising into Ray's loop (which would end it without saving the experiment).
- The study names its objectives (optuna-dashboard shows test_acc, not 0), and each trial
  carries its MLflow run id (user attr `mlflow_run_id`) and its final metrics (user attr `result`,
  what a reuse reports).
"""
from __future__ import annotations

import contextlib
import json
import signal
import warnings
from typing import Callable

from ray.tune.search import Searcher

from esam.search.records.retries import counted
from esam.search.stores.optuna_outage import StorageOutage, is_outage
from esam.search.stores.write_refusals import cause, refusal_line
from esam.search.tune.samplers import SamplerSpec
from esam.training.metrics import METRICS

RAY_TRIAL_ATTR = "ray_trial_id"  # the Ray trial training it now (or last)
RAY_TRIALS_ATTR = "ray_trial_ids"  # every Ray trial that trained it, oldest first: where its checkpoints are
RUN_ATTR = "mlflow_run_id"  # the trial's MLflow child run
RESULT_ATTR = "result"  # the trial's final metrics
REUSE_ATTR = "reused_from"  # {"number", "run_id", "metrics"} of the finished trial this proposal repeats
PARTIAL_ATTR = "partial_result"  # a stopped trial's metrics at its last epoch
STOPPED_ATTR = "stopped_at_epoch"


def _same(value) -> object:
    """A searched value as compared for duplicates: floats to 12 significant digits."""
    return float(f"{value:.12g}") if isinstance(value, float) else value


def setting_key(params: dict) -> tuple:
    return tuple(sorted((k, _same(v)) for k, v in params.items()))


@contextlib.contextmanager
def _stop_on_outage(searcher: "EsamSearcher"):
    """Inside Ray's loop: an Optuna database away past its limit stops the search the way Ctrl-C does,
    and one that refuses writes (a full disk, a read-only directory) stops it with its cause kept in
    `searcher.refused`, for the driver's one line (esam/search/stores/write_refusals.py).

    Ray's stop request (its SIGUSR1 handler, which StopSignals forwards Ctrl-C to) ends the loop;
    an exception raised into the loop would end it with Ray's traceback.
    """
    try:
        yield
    except StorageOutage:
        _ask_ray_to_stop()
    except Exception as err:
        reason = cause(err)
        if reason:
            searcher.refused = searcher.refused or refusal_line(
                reason, f"Optuna's database {getattr(searcher._storage, 'where', searcher.study_name)}")
        elif not is_outage(err):  # not the database's absence: a real error
            raise
        _ask_ray_to_stop()  # (an outage that outlasted its limit earlier: calls now fail at once)


def _ask_ray_to_stop() -> None:
    handler = signal.getsignal(signal.SIGUSR1)
    if callable(handler):
        handler(signal.SIGUSR1, None)


def final_metrics(result: dict) -> dict:
    """The numbers of a trial's last result worth keeping (train()'s metrics and their spreads)."""
    keep = set(METRICS) | {f"{m}_std" for m in METRICS} | {"repeats"}
    return {k: v for k, v in result.items()
            if k in keep and isinstance(v, (int, float)) and not isinstance(v, bool)}


def draw(trial, distributions: dict) -> dict:
    """Each field of `distributions` on `trial` through Optuna's public suggest calls.

    A field the trial holds already keeps its value (Optuna returns it), so an orphan whose
    driver died while Optuna drew its fields keeps the ones it has and gets the rest.
    """
    from optuna.distributions import CategoricalDistribution, IntDistribution
    for name, d in distributions.items():
        if isinstance(d, CategoricalDistribution):
            trial.suggest_categorical(name, d.choices)
        elif isinstance(d, IntDistribution):
            trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
        else:
            trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
    return dict(trial.params)


def open_trial(study, storage, number: int):
    """Trial `number` of `study` (opened on `storage`), to write to: public storage calls only."""
    import optuna
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name),
                                                               number)
    return optuna.trial.Trial(study, trial_id)


class EsamSearcher(Searcher):
    """Optuna proposes; Ray trains; the study is the record (see the module's docstring).

    `space`: {field: Optuna distribution}, or a callable drawing a conditional space on a trial
    (esam.search.space.DefineByRun). `objectives`: [(metric, "max" | "min"), ...].
    """

    _SPEC = ("_metric", "_mode", "space", "study_name", "sampler", "max_trials", "max_concurrent", "epochs")

    def __init__(self, space, objectives: list[tuple[str, str]], study_name: str, sampler: SamplerSpec,
                 max_trials: int, max_concurrent: int | None = None, epochs: int = 0, constraints=None):
        super().__init__(metric=[m for m, _ in objectives], mode=[d for _, d in objectives])
        self.space, self.study_name, self.sampler = space, study_name, sampler
        self.max_trials, self.max_concurrent, self.epochs = max_trials, max_concurrent, epochs
        self.constraints = constraints  # esam.search.constraints.OptunaConstraints, or None
        self._detach()

    def _detach(self) -> None:
        self.study = self._storage = None
        self._trials: dict = {}  # Ray trial id -> the live Optuna trial it trains
        self._told: set[str] = set()
        self._attached_runs: set[str] = set()
        self._run_id_of: Callable[[str, float], str | None] | None = None
        self._resume_of: Callable[[int, list[str]], str | None] | None = None
        self.refused: str | None = None  # why a store refused a write and the search stopped (one line)

    # What Ray pickles with its experiment: the settings, no live object and no store URL.
    def __getstate__(self) -> dict:
        return {k: self.__dict__[k] for k in self._SPEC}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.constraints = None
        self._detach()

    def attach(self, storage, saved_ray_trials=(), run_id_of: Callable[[str, float], str | None] | None = None,
               resume_of: Callable[[int, list[str]], str | None] | None = None):
        """Open (or create) the study on `storage` with a sampler built here, and take up the trials
        Ray runs already (`saved_ray_trials`: their ids); the study's other RUNNING trials are orphans,
        handed to the next Ray trials with their own parameters.

        `run_id_of(ray_trial_id, wait_s)`: the trial's MLflow run id once the driver's record writer
        created it (None until then). `resume_of(number, ray_trial_ids)`: where Optuna trial `number`
        goes on from, the newest checkpoint those Ray trials saved (esam/search/trials/checkpoints.py)."""
        import optuna
        directions = ["maximize" if d == "max" else "minimize" for d in self._mode]
        held = 0  # trials the study holds already: a continued search's sampler draws new points
        if self.study_name in optuna.get_all_study_names(storage):
            held = len(optuna.load_study(study_name=self.study_name, storage=storage).get_trials(deepcopy=False))
        self.study = optuna.create_study(study_name=self.study_name, storage=storage, directions=directions,
                                         sampler=self.sampler.build(offset=held), load_if_exists=True)
        self._storage, self._run_id_of, self._resume_of = storage, run_id_of, resume_of
        saved = set(saved_ray_trials)
        for frozen in self.study.get_trials(deepcopy=False):
            rid = frozen.user_attrs.get(RAY_TRIAL_ATTR)
            if rid in saved:
                self._trials[rid] = self._live_trial(frozen.number)
        with warnings.catch_warnings(), contextlib.suppress(Exception):  # experimental in Optuna; cosmetic
            warnings.simplefilter("ignore")
            if self.study.metric_names != list(self._metric):
                self.study.set_metric_names(list(self._metric))
        return self

    def _live_trial(self, number: int):
        return open_trial(self.study, self._storage, number)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space is the searcher's own; Ray's param_space holds constants only

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        self.max_concurrent = max_concurrent
        return True

    def _require_study(self) -> None:
        if self.study is None:
            raise RuntimeError("EsamSearcher is not attached to its study (the driver calls attach() before Ray runs)")

    def _states(self, *names: str) -> list:
        import optuna
        return self.study.get_trials(deepcopy=False, states=tuple(optuna.trial.TrialState[n] for n in names))

    def _live(self) -> int:
        running = {t.number for t in self._states("RUNNING")}
        return sum(t.number in running for t in self._trials.values())

    def _proposed(self) -> int:
        """Trials the study has given out: a WAITING one (the warm start, a retry) is still to come, and
        a failed trial that a retry trains again does not count (esam/search/records/retries.py)."""
        import optuna

        return sum(t.state != optuna.trial.TrialState.WAITING for t in counted(self.study.get_trials(deepcopy=False)))

    def _next_orphan(self):
        taken = {t.number for t in self._trials.values()}
        for frozen in self._states("RUNNING"):
            if frozen.number not in taken:
                return self._live_trial(frozen.number)
        return None

    def suggest(self, trial_id: str):
        self._require_study()
        with _stop_on_outage(self):
            return self._suggest(trial_id)
        return None  # the database stayed away: Ray is asked to stop; an Optuna trial made here is an orphan

    def _suggest(self, trial_id: str):
        if self.max_concurrent is not None and self._live() >= self.max_concurrent:
            return None  # Ray asks again when a trial ends
        trial = self._next_orphan()
        resume = self._resume(trial) if trial is not None else None
        if trial is None:
            if self._proposed() >= self.max_trials:
                return Searcher.FINISHED
            trial = self.study.ask(self.space if isinstance(self.space, dict) else None)
        params = draw(trial, self.space) if isinstance(self.space, dict) else self._draw_conditional(trial)
        history = list(trial.user_attrs.get(RAY_TRIALS_ATTR) or [])
        trial.set_user_attr(RAY_TRIALS_ATTR, [*history, trial_id])
        trial.set_user_attr(RAY_TRIAL_ATTR, trial_id)
        self._trials[trial_id] = trial
        reuse = trial.user_attrs.get(REUSE_ATTR) or self._duplicate_of(params, trial.number)
        if reuse is not None:
            trial.set_user_attr(REUSE_ATTR, reuse)
        notes = {"_number": trial.number, **({"_reuse": reuse} if reuse else {}),
                 **({"_resume": resume} if resume and not reuse else {})}
        return {**params, **notes}

    def _resume(self, trial) -> str | None:
        """Where an orphan goes on from: the newest checkpoint of the Ray trials that trained it."""
        if self._resume_of is None:
            return None
        attrs = trial.user_attrs
        ids = list(attrs.get(RAY_TRIALS_ATTR) or []) + ([attrs[RAY_TRIAL_ATTR]] if RAY_TRIAL_ATTR in attrs else [])
        return self._resume_of(trial.number, ids) if ids else None

    def _draw_conditional(self, trial) -> dict:
        self.space(trial)
        return dict(trial.params)

    def _duplicate_of(self, params: dict, number: int) -> dict | None:
        """The finished trial with the same searched values (the earliest not itself a reuse), or None."""
        key = setting_key(params)
        same = [t for t in self._states("COMPLETE") if t.number != number and setting_key(t.params) == key]
        if not same:
            return None
        same.sort(key=lambda t: (REUSE_ATTR in t.user_attrs, t.number))
        original = same[0]
        if REUSE_ATTR in original.user_attrs:
            return original.user_attrs[REUSE_ATTR]
        metrics = original.user_attrs.get(RESULT_ATTR) or dict(zip(self._metric, original.values))
        return {"number": original.number, "run_id": original.user_attrs.get(RUN_ATTR), "metrics": metrics}

    def _attach_run(self, trial_id: str, wait_s: float = 0.0) -> None:
        """Record the trial's MLflow run id on its Optuna trial, once the record writer knows it.

        At the trial's end (`wait_s`) the writer gets that long to catch up: a reuse ends
        before the writer thread has created its run.
        """
        trial = self._trials.get(trial_id)
        if trial_id in self._attached_runs or trial is None or self._run_id_of is None:
            return
        run_id = self._run_id_of(trial_id, wait_s)
        if run_id:
            with contextlib.suppress(Exception):  # a trial the reconciliation already ended
                trial.set_user_attr(RUN_ATTR, run_id)
                self._attached_runs.add(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        with _stop_on_outage(self):
            self._attach_run(trial_id)

    def _stopped_early(self, result: dict | None) -> bool:
        return bool(result) and self.epochs > 0 and int(result.get("epoch") or 0) < self.epochs

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        with _stop_on_outage(self):  # past the outage limit the trial stays RUNNING in Optuna: the next run tells it
            self._complete(trial_id, result, error)

    def _complete(self, trial_id: str, result: dict | None, error: bool) -> None:
        import optuna
        trial = self._trials.get(trial_id)
        if trial is None or trial_id in self._told:
            return
        self._attach_run(trial_id, wait_s=3.0)
        stopped = not error and self._stopped_early(result)
        with contextlib.suppress(Exception):  # a trial the reconciliation already ended
            if stopped:
                trial.set_user_attr(PARTIAL_ATTR, final_metrics(result))
                trial.set_user_attr(STOPPED_ATTR, int(result.get("epoch") or 0))
            elif result and not error:
                trial.set_user_attr(RESULT_ATTR, final_metrics(result))
            if result and not error and self.constraints is not None:  # before tell: the sampler reads them
                self.constraints.set_on(trial, result)
        S = optuna.trial.TrialState
        values = None
        if result and not error and not stopped and all(isinstance(result.get(m), (int, float)) for m in self._metric):
            values = [float(result[m]) for m in self._metric]
        state = S.COMPLETE if values is not None else S.PRUNED if stopped else S.FAIL
        with warnings.catch_warnings():  # a nan objective makes the trial FAIL, with Optuna's warning
            warnings.simplefilter("ignore")
            self.study.tell(trial, values, state=state, skip_if_finished=True)
        self._told.add(trial_id)

    def save(self, checkpoint_path: str) -> None:
        """Ray's searcher checkpoint: a note, not a state (the study is the state; see `attach`)."""
        with open(checkpoint_path, "w") as f:
            json.dump({"study": self.study_name, "state": "in the Optuna study"}, f)

    def restore(self, checkpoint_path: str) -> None:
        """Nothing is read from Ray's files (they are not trusted to hold code); `attach` did the work."""
        self._require_study()
