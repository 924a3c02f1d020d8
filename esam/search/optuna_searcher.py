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

Defined at module level so that a restored experiment unpickles this code, not a frozen copy.
"""
from __future__ import annotations

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

RAY_TRIAL_ATTR = "ray_trial_id"


class ReconcilingOptunaSearch(OptunaSearch):
    storage_url: str | None = None  # set by the running search: where its study lives now

    def __init__(self, *args, max_trials: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_trials = max_trials
        self.max_concurrent: int | None = None

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
        if new and self._ot_study is not None:
            if self.max_concurrent is not None and self._live() >= self.max_concurrent:
                return None  # Ray asks again when a trial ends
            orphan = self._next_orphan()
            if orphan is not None:
                self._ot_trials[trial_id] = orphan
            elif self.max_trials is not None and len(self._ot_study.get_trials(deepcopy=False)) >= self.max_trials:
                return Searcher.FINISHED
        params = super().suggest(trial_id)
        if new and trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr(RAY_TRIAL_ATTR, trial_id)
        return params

    def _next_orphan(self):
        import optuna
        known = set(self._ot_trials)
        for frozen in self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if frozen.user_attrs.get(RAY_TRIAL_ATTR) not in known:
                return optuna.trial.Trial(self._ot_study, frozen._trial_id)
        return None

    def on_trial_complete(self, trial_id, result=None, error=False):
        super().on_trial_complete(trial_id, None if error else result, error)

    def restore(self, checkpoint_path: str):
        import optuna
        super().restore(checkpoint_path)
        url = type(self).storage_url
        if url and self._ot_study is not None:
            self._storage = optuna.storages.RDBStorage(url)
            self._ot_study = optuna.load_study(study_name=self._ot_study.study_name, storage=self._storage,
                                               sampler=self._ot_study.sampler, pruner=self._ot_study.pruner)
            self._ot_trials = {rid: optuna.trial.Trial(self._ot_study, t._trial_id)
                               for rid, t in self._ot_trials.items()}
