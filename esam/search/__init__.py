"""The search: Ray Tune runs trials, Optuna proposes settings, MLflow records them.

`esam.search.run(config, model=..., data=...)` runs one from Python (esam/search/api.py); it is
imported on first use, so that `import esam.cli` (behind `esam --help`) loads no Ray, Optuna or MLflow.
"""
_API = ("run", "SearchResult")


def __getattr__(name: str):
    if name in _API:
        from esam.search import api
        return getattr(api, name)
    raise AttributeError(f"module 'esam.search' has no attribute {name!r}")
