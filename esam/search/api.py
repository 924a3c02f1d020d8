"""`esam.search.run`: a search from Python, the one `esam search` runs (the command is a layer over it).

    from esam.search import run
    result = run("search.yaml")                        # a path, a shipped config's name, a dict or a SearchConfig
    result = run({"name": "mine", "trials": 4, "train": {"epochs": 2}}, model=build, data=load)
    for point in result.front:                         # pareto.csv's columns
        print(point["test_acc"], point["speed_vs_sgd"], point["rho"], point["run_id"])

`model` and `data` are callables under the contracts of esam.models (`build(num_classes,
in_channels) -> nn.Module`) and esam.data.datasets (`load(DataConfig) -> InMemory | Streamed |
(train, test)`). Each is registered in this process under the name `module:qualname`
(esam.import_paths.path_of), which the config then holds (train.model, train.data.name), and it
reaches the trials with their parameters (esam/search/trials/user_code.py); its module, when it lives in
the working directory, is shipped to every node too (esam/search/trials/shipping.py). A callable that
imports by that name leaves an exported config that `esam train` runs from the same directory; a
lambda or a nested function imports by no name: put an import path in such an exported config.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from esam import import_paths
from esam.config import read_yaml, to_dict
from esam.errors import ConfigError
from esam.search.config import SearchConfig, search_config_from_dict
from esam.search.front.report import TABLE_COLUMNS
from esam.search.runner import run_search
from esam.search.trials.user_code import FIELDS, registries
from esam.shipped_configs import resolve

# pareto.csv's columns (esam/search/front/report.py writes the file from the same rows)
FRONT_FIELDS_EXTRA = ("name",)


@dataclass
class SearchResult:
    front: list[dict]  # the ESAM trials on the Pareto front, best first objective first: pareto.csv's fields
    rows: list[dict] = field(repr=False)  # every child run (trials and references, any status), as MLflow holds it
    parent_run_id: str  # the search's MLflow run: its pareto/ artifacts, its trials as child runs
    tracking_uri: str = field(repr=False)  # the MLflow store (as given: it may hold a password)
    config: SearchConfig = field(repr=False)  # the validated config the search ran
    outcome: object = field(repr=False)  # esam.search.runner.SearchOutcome: the table, the MLflow UI's URL, the last line


def run(config: str | Path | dict | SearchConfig, *, model: Callable | None = None, data: Callable | None = None,
        overrides: list[str] | tuple[str, ...] = (), address: str | None = None,
        echo: Callable[[str], None] = print) -> SearchResult:
    """Run (or continue) the search `config` and return its front; `overrides` as `--set`, `address` as `--address`.

    Bad input raises esam.errors.ConfigError (one line) before anything starts; `echo` gets the progress lines.
    """

    cfg = _config(config, overrides, model, data)
    outcome = run_search(cfg, address=address, echo=echo)
    columns = (*TABLE_COLUMNS, *FRONT_FIELDS_EXTRA)
    front = [{k: r.get(k) for k in columns} for r in outcome.front]
    return SearchResult(front, outcome.rows, outcome.parent_run_id, outcome.tracking_uri, cfg, outcome)


def _config(config, overrides, model: Callable | None, data: Callable | None) -> SearchConfig:
    """The validated SearchConfig, naming the given callables (registered here first, so that it validates)."""
    if isinstance(config, SearchConfig):
        if model is None and data is None and not overrides:
            return config
        values = to_dict(config)
    elif isinstance(config, dict):
        values = dict(config)
    elif isinstance(config, (str, Path)):
        values = read_yaml(resolve(str(config)))
    else:
        raise ConfigError(f"config must be a path, a dict or a SearchConfig, got {type(config).__name__}")
    if model is not None or data is not None:
        train = values.get("train") or {}
        if not isinstance(train, dict) or not isinstance(train.get("data") or {}, dict):
            raise ConfigError("train and train.data must be mappings")
        train = dict(train)
        if model is not None:
            train["model"] = _registered("model", model)
        if data is not None:
            train["data"] = {**(train.get("data") or {}), "name": _registered("data", data)}
        values = {**values, "train": train}
    return search_config_from_dict(values, overrides)


def _registered(kind: str, builder: Callable) -> str:
    """Register `builder` in this process under its `module:qualname`; that name."""
    if not callable(builder):
        raise ConfigError(f"{kind}= must be a callable ({FIELDS[kind]}'s builder), got {type(builder).__name__}")
    name = import_paths.path_of(builder)
    registries()[kind].provide(name, builder)
    return name


__all__ = ["SearchResult", "run"]
