"""The only place esam touches a library's private attributes, each checked on the version named.

Everything else uses public APIs (tests/test_layout.py checks that no other module does this).
`check()` fails with the library and version when an attribute moves; tests/test_compat.py runs it.
"""
from __future__ import annotations

RAY_CHECKED = "2.60.0"


def replace_restored_settings(tuner, *, search_alg, scheduler, num_samples: int, max_concurrent_trials: int,
                              callbacks: list) -> None:
    """Give a restored Ray experiment this command's searcher, scheduler, sample count, concurrency and callbacks.

    Ray 2.60: `Tuner.restore` takes no TuneConfig or RunConfig; the restored experiment keeps the
    ones pickled in its `tuner.pkl`, held by `Tuner._local_tuner` (`_tune_config`, `_run_config`).
    A continued search must run with a searcher attached to its study (the pickled one holds only
    its settings), its current trial budget and concurrency, and callbacks writing to its parent run.
    """
    internal = tuner._local_tuner
    internal._tune_config.search_alg = search_alg
    internal._tune_config.scheduler = scheduler
    internal._tune_config.num_samples = num_samples
    internal._tune_config.max_concurrent_trials = max_concurrent_trials
    internal._run_config.callbacks = callbacks


def check() -> None:
    """Raise RuntimeError naming Ray's version when an attribute used above is gone."""
    import ray
    from ray import tune
    tuner = tune.Tuner(lambda config: None)
    internal = getattr(tuner, "_local_tuner", None)
    missing = [name for name in ("_tune_config", "_run_config") if not hasattr(internal, name)]
    missing += [f"TuneConfig.{a}" for a in ("search_alg", "scheduler", "num_samples", "max_concurrent_trials")
                if internal is not None and hasattr(internal, "_tune_config")
                and not hasattr(internal._tune_config, a)]
    if internal is None or missing:
        raise RuntimeError(f"ray {ray.__version__}: Tuner._local_tuner{' ' + ', '.join(missing) if missing else ''} "
                           f"is gone (esam.search.compat was checked on ray {RAY_CHECKED}); "
                           f"update replace_restored_settings")
