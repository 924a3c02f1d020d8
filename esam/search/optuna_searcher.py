"""Ray's OptunaSearch, made to agree with Ray and MLflow after any stop.

- A crashed trial is told to Optuna as FAIL (Ray passes its last epoch as a result, which
  Optuna would record as a finished trial with truncated metrics and put on the front).
- Each Optuna trial carries its Ray trial id (user attr `ray_trial_id`), so the three stores
  can be matched at start-up.
- An Optuna trial left RUNNING by a killed driver, whose Ray trial was never saved (an orphan),
  is handed to the next Ray trial instead of asking Optuna for a new one: no fifth trial for
  four, no second trial with the same settings. The study decides how many ESAM trials exist:
  once it holds `max_trials`, Ray gets no new one even if its lagging snapshot asks.
- It limits concurrency itself (Ray's ConcurrencyLimiter is bypassed): live trials are those
  Optuna holds RUNNING, so a trial the start-up reconciliation ended frees its slot (the
  limiter's pickled count would keep it forever and the search would wait for nothing).
- A restored searcher opens the study where the search lives now (`storage_url`), not where
  its pickle says: a moved results directory keeps its study.
- No wasted trials: a proposal whose searched values equal a finished (COMPLETE) trial's, as the
  study stores them (floats compared to 12 significant digits, so float noise cannot hide a
  repeat), is not trained. The Ray trial still exists and reports the original's final metrics
  at once (esam/search/trial.py), so Optuna is told the same values for it, MLflow records it as
  a reuse (tag `esam.reused_from`: the original's run id) and the three stores stay matched by
  the usual ray_trial_id. Asking the sampler for another point instead was rejected: on a small
  or categorical space it can loop for ever, it hides from Optuna (and from the study's history)
  what the sampler proposed, and NSGA-II would keep breeding the same child; telling it the known
  values moves it on at no cost. The reuse counts against `trials` (the budget is proposals). A
  duplicate of a trial still running, or one that failed, is trained.
- A trial the scheduler stopped early (its last result is before the last epoch) is told to
  Optuna as PRUNED, with no values: Optuna 5 has no multi-objective pruning, but a PRUNED trial
  is never on the study's front (`best_trials` and NSGA-II's population take COMPLETE trials
  only; TPE ranks pruned trials below the complete ones), so its truncated accuracy cannot pose
  as a result. Its metrics at the stop are kept as user attrs `partial_result` and
  `stopped_at_epoch`. Telling the truncated values as COMPLETE (the default of Ray's searcher)
  would put them on the sampler's front; FAIL would be a lie and discard the information.
- Under `constraints:`, each ending trial's violations go to Optuna by name before its values
  (`Trial.set_constraint`), so the sampler steers away from infeasible settings.
- A continued search may grow: `limits` (trials, concurrency, epochs), set by the running
  search, override what the restored pickle holds.
- The database may go away for a while (a PostgreSQL restart): the study's storage waits it out
  (esam/search/storage_outage.py), Ray's loop waiting meanwhile. Past the outage limit the
  searcher asks Ray to stop, as Ctrl-C does, instead of raising into Ray's loop (which would end
  it without saving the experiment): the search ends as stopped, and a trial whose end Optuna
  could not be told is told by the next run's start-up reconciliation. A trial Optuna created for
  a proposal Ray never got stays RUNNING, unclaimed: the next run hands it on as an orphan.
- The study names its objectives (`set_metric_names`: optuna-dashboard shows test_acc, not 0),
  and each trial carries its MLflow run id (user attr `mlflow_run_id`, from the driver's record
  writer once it created the run; absent when MLflow was away all the trial long) and its final
  metrics (user attr `result`, what a reuse reports).

Defined at module level so that a restored experiment unpickles this code, not a frozen copy.
"""
from __future__ import annotations

import contextlib
import signal
import warnings

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

RAY_TRIAL_ATTR = "ray_trial_id"
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
def _stop_on_outage():
    """Inside Ray's loop: an Optuna database away past its limit stops the search the way Ctrl-C does.

    Ray's stop request (its SIGUSR1 handler, which StopSignals forwards Ctrl-C to) ends the loop
    after saving the experiment; an exception raised into the loop would end it unsaved.
    """
    from esam.search.storage_outage import StorageOutage, is_outage
    try:
        yield
    except StorageOutage:
        _ask_ray_to_stop()
    except Exception as err:
        if not is_outage(err):  # not the database's absence: a real error
            raise
        _ask_ray_to_stop()  # the outage outlasted its limit earlier: calls now fail at once


def _ask_ray_to_stop() -> None:
    handler = signal.getsignal(signal.SIGUSR1)
    if callable(handler):
        handler(signal.SIGUSR1, None)


def final_metrics(result: dict) -> dict:
    """The numbers of a trial's last result worth keeping (train()'s metrics and their spreads)."""
    from esam.training.metrics import METRICS
    keep = set(METRICS) | {f"{m}_std" for m in METRICS} | {"repeats"}
    return {k: v for k, v in result.items()
            if k in keep and isinstance(v, (int, float)) and not isinstance(v, bool)}


class ReconcilingOptunaSearch(OptunaSearch):
    storage_url: str | None = None  # set by the running search: where its study lives now
    records_key: tuple[str, str] | None = None  # (tracking URI, parent run id) of the running search
    limits: tuple[int, int, int] | None = None  # (trials, concurrency, epochs) of the running search
    constraints = None  # the running search's esam.search.constraints.OptunaConstraints, if any

    def __init__(self, *args, max_trials: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_trials = max_trials
        self.max_concurrent: int | None = None
        self._name_metrics()

    def _name_metrics(self) -> None:
        if self._ot_study is None or not isinstance(self._metric, list):
            return
        with warnings.catch_warnings(), contextlib.suppress(Exception):  # experimental in Optuna; cosmetic
            warnings.simplefilter("ignore")
            if self._ot_study.metric_names != list(self._metric):
                self._ot_study.set_metric_names(list(self._metric))

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        self.max_concurrent = max_concurrent
        return True

    def _live(self) -> int:
        import optuna
        running = {t._trial_id for t in self._ot_study.get_trials(deepcopy=False,
                                                                  states=(optuna.trial.TrialState.RUNNING,))}
        return sum(t._trial_id in running for t in self._ot_trials.values())

    def suggest(self, trial_id: str):
        new = trial_id not in self._ot_trials
        with _stop_on_outage():
            return self._suggest(trial_id, new)
        if new:  # Ray got no trial: an Optuna trial made for it is an orphan for the next run
            self._ot_trials.pop(trial_id, None)
        return None

    def _suggest(self, trial_id: str, new: bool):
        if new and self._ot_study is not None:
            if self.max_concurrent is not None and self._live() >= self.max_concurrent:
                return None  # Ray asks again when a trial ends
            orphan = self._next_orphan()
            if orphan is not None:
                self._ot_trials[trial_id] = orphan
            elif self.max_trials is not None and self._proposed() >= self.max_trials:
                return Searcher.FINISHED
        params = super().suggest(trial_id)
        if trial_id not in self._ot_trials or not isinstance(params, dict):
            return params
        ot_trial = self._ot_trials[trial_id]
        if new:
            ot_trial.set_user_attr(RAY_TRIAL_ATTR, trial_id)
        return self._noted(ot_trial, params, new)

    def _noted(self, ot_trial, params: dict, new: bool) -> dict:
        """`params` with the searcher's notes: the trial number, and the trial it reuses if any."""
        reuse = self._ot_study._storage.get_trial(ot_trial._trial_id).user_attrs.get(REUSE_ATTR)
        if reuse is None and new:
            reuse = self._duplicate_of(params, ot_trial.number)
            if reuse is not None:
                ot_trial.set_user_attr(REUSE_ATTR, reuse)
        return {**params, "_number": ot_trial.number, **({"_reuse": reuse} if reuse else {})}

    def _duplicate_of(self, params: dict, number: int) -> dict | None:
        """The finished trial with the same searched values (the earliest not itself a reuse), or None."""
        import optuna
        key = setting_key(params)
        same = [t for t in self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if t.number != number and setting_key(t.params) == key]
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
        attached = self.__dict__.setdefault("_attached", set())
        ot_trial = self._ot_trials.get(trial_id)
        if trial_id in attached or ot_trial is None or type(self).records_key is None:
            return
        from esam.search.trial_records import _open
        buffer = _open.get(type(self).records_key)
        runs = getattr(getattr(buffer, "write", None), "_runs", {})
        if trial_id not in runs and wait_s and buffer is not None:
            buffer.drain(wait_s)
        run_id = runs.get(trial_id)
        if run_id:
            with contextlib.suppress(Exception):  # a trial the reconciliation already ended
                ot_trial.set_user_attr(RUN_ATTR, run_id)
                attached.add(trial_id)

    def on_trial_result(self, trial_id: str, result: dict):
        with _stop_on_outage():
            self._attach_run(trial_id)
            super().on_trial_result(trial_id, result)

    def _proposed(self) -> int:
        """Trials the study has given out: a WAITING one (the warm start, enqueued) is still to come."""
        import optuna
        return sum(t.state != optuna.trial.TrialState.WAITING for t in self._ot_study.get_trials(deepcopy=False))

    def _next_orphan(self):
        import optuna
        known = set(self._ot_trials)
        for frozen in self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if frozen.user_attrs.get(RAY_TRIAL_ATTR) not in known:
                return optuna.trial.Trial(self._ot_study, frozen._trial_id)
        return None

    def _stopped_early(self, result: dict | None) -> bool:
        epochs = (type(self).limits or (0, 0, 0))[2]
        return bool(result) and epochs > 0 and int(result.get("epoch") or 0) < epochs

    def on_trial_complete(self, trial_id, result=None, error=False):
        with _stop_on_outage():  # past the outage limit the trial stays RUNNING in Optuna: the next run tells it
            self._complete(trial_id, result, error)

    def _complete(self, trial_id, result, error):
        stopped = not error and self._stopped_early(result)
        if trial_id in self._ot_trials and trial_id not in self._completed_trials:
            self._attach_run(trial_id, wait_s=3.0)
            ot_trial = self._ot_trials[trial_id]
            with contextlib.suppress(Exception):  # a trial the reconciliation already ended
                if stopped:
                    ot_trial.set_user_attr(PARTIAL_ATTR, final_metrics(result))
                    ot_trial.set_user_attr(STOPPED_ATTR, int(result.get("epoch") or 0))
                elif result and not error:
                    ot_trial.set_user_attr(RESULT_ATTR, final_metrics(result))
                if result and not error and type(self).constraints is not None:  # before tell: the sampler reads them
                    type(self).constraints.set_on(ot_trial, result)
        super().on_trial_complete(trial_id, None if error or stopped else result, error)

    def restore(self, checkpoint_path: str):
        import optuna
        super().restore(checkpoint_path)
        if type(self).limits is not None:  # a search that grows, or runs more trials at once
            self.max_trials, self.max_concurrent = type(self).limits[0], type(self).limits[1]
        url = type(self).storage_url
        if url and self._ot_study is not None:
            from esam.search.runner import ENGINE_KWARGS
            from esam.search.storage_outage import open_rdb
            self._storage = open_rdb(url, ENGINE_KWARGS)
            self._ot_study = optuna.load_study(study_name=self._ot_study.study_name, storage=self._storage,
                                               sampler=self._ot_study.sampler, pruner=self._ot_study.pruner)
            self._ot_trials = {rid: optuna.trial.Trial(self._ot_study, t._trial_id)
                               for rid, t in self._ot_trials.items()}
        self._name_metrics()
