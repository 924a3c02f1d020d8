"""Search configs: what to train, what to search, what to optimize, where results go.

Validated completely before Ray, Optuna or MLflow start, so a bad file costs no trial.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

from esam.config import (
    MAX_SEED,
    OptimizerConfig,
    TrainConfig,
    brief,
    deep_merge,
    from_dict,
    parse_overrides,
    read_yaml,
    train_config_from_dict,
)
from esam.errors import ConfigError
from esam.optim import knob_table, searched_methods
from esam.search.constraints import parse_all
from esam.search.space import DEFAULT_REFERENCES, reference_methods, unused_field
from esam.search.stores.mlflow_store import check_uri
from esam.search.stores.results_dir import StoragePath, is_uri
from esam.suggestions import did_you_mean
from esam.training.metrics import METRICS

# An objective is a metric train() reports, except the epoch count and the schedule's learning rate.
OBJECTIVE_METRICS = tuple(m for m in METRICS if m not in ("epoch", "learning_rate"))
# Search names go into MLflow filter strings, paths and study names: no quotes, slashes or spaces.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# ... and into file names (a file system allows 255 bytes) with prefixes and suffixes added.
NAME_MAX = 100
SAMPLERS = ("nsga2", "tpe", "gp", "random")
SCHEDULERS = ("none", "moasha")
def choice_params() -> dict[str, tuple]:
    """Categorical optimizer fields a search may vary, and their values: the method (optimizer.name), which
    the registered methods' records allow, and the knobs with choices (sharpness, score, bn_update)."""
    return {"method": searched_methods(), **{n: k.choices for n, k in knob_table().items() if k.choices is not None}}


def searchable() -> tuple[str, ...]:
    """Optimizer fields a search may vary: the registered knobs with ranges, then the categorical ones."""
    return tuple(n for n, k in knob_table().items() if k.choices is None) + tuple(choice_params())


@dataclass(frozen=True)
class ParamSpace:
    low: float | None = None  # lower bound of a numeric range
    high: float | None = None  # upper bound of a numeric range
    log: bool = False  # sample on a log scale (needs low > 0)
    choices: list | None = None  # categorical values instead of a range


@dataclass(frozen=True)
class Objective:
    metric: str = "test_acc"  # a metric train() reports
    mode: str = "max"  # max | min


@dataclass(frozen=True)
class SamplerConfig:
    name: str = "nsga2"  # nsga2 | tpe | gp | random
    seed: int = 0  # seeds the sampler: the same search proposes the same trials
    population_size: int | None = None  # nsga2 generation size (None: Optuna's default)


@dataclass(frozen=True)
class SchedulerConfig:
    name: str = "none"  # none (every trial trains all its epochs) | moasha (two-objective early stopping)
    grace_epochs: int = 1  # moasha: the first rung; no trial stops before it
    reduction_factor: float = 3.0  # moasha: each rung lets the best 1/reduction_factor of its trials go on
    max_epochs: int | None = None  # moasha: a finished trial's epochs (None: train.epochs, the only value allowed)


@dataclass(frozen=True)
class Resources:
    cpu: float = 1.0  # CPU cores per trial, per worker when workers > 1 (also torch's thread count)
    gpu: float = 0.0  # GPUs per trial, per worker when workers > 1; a fraction packs several trials on one GPU
    workers: int = 1  # DDP processes per trial (Ray Train); each trains its share of every batch


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here
    experiment: str = "esam"  # MLflow experiment holding the search's parent run


def _default_space() -> dict[str, ParamSpace]:
    return {"rho": ParamSpace(0.01, 0.5, log=True), "beta": ParamSpace(0.3, 1.0), "gamma": ParamSpace(0.3, 1.0)}


def _default_objectives() -> list[Objective]:
    return [Objective("test_acc", "max"), Objective("speed_vs_sgd", "max")]


@dataclass(frozen=True)
class SearchConfig:
    name: str = "search"  # names the Optuna study, the Ray experiment and the MLflow parent run
    train: TrainConfig = field(default_factory=TrainConfig)  # every trial's training config
    space: dict[str, ParamSpace] = field(default_factory=_default_space)  # optimizer field -> its range or choices
    objectives: list[Objective] = field(default_factory=_default_objectives)  # exactly two: accuracy, throughput
    sampler: SamplerConfig = field(default_factory=SamplerConfig)  # Optuna's sampler
    trials: int = 8  # trials proposed by Optuna (references not counted)
    concurrency: int = 2  # trials running at once
    resources: Resources = field(default_factory=Resources)  # per trial
    references: list = field(default_factory=lambda: list(DEFAULT_REFERENCES))  # baselines trained beside: sgd, sam, esam, looksam, rst, aesam
    results_dir: str = "esam_results"  # Ray's experiments and checkpoints: a path (shared on clusters) or s3://...
    state_dir: str | None = None  # the driver's files (search.json, lock, journals); None: results_dir
    optuna_storage: str | None = None  # an RDB URL; None: sqlite in <state_dir>/<name>/optuna.db
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)  # where runs are recorded
    max_failures: int = 0  # retries of a crashed trial before it counts as failed
    retry_failed: int = 1  # times the next run trains again a setting that failed from outside (not a nan loss)
    repeats: int = 1  # trainings per setting, seeds train.seed + 0..repeats-1; objectives are their mean
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)  # early stopping of the proposed trials
    constraints: list = field(default_factory=list)  # e.g. ["speed_vs_sgd >= sam", "test_acc >= sam - 0.5"]
    warm_start: bool = True  # the paper's setting (ESAM: rho 0.05, beta 0.6, gamma 0.5) is the first trial

    @property
    def objective_pairs(self) -> list[tuple[str, str]]:
        """[(metric, mode), ...]: the form Optuna, the front and the progress lines take."""
        return [(o.metric, o.mode) for o in self.objectives]

    @property
    def directory(self) -> Path:
        """The driver's own files: search.json, the lock, rung records, the MLflow journal, SQLite stores."""
        return Path(self.state_dir or self.results_dir).expanduser().resolve() / self.name

    @functools.cached_property  # resolving s3:// may ask the store: once per config
    def ray_storage(self):
        """Ray's experiments and checkpoints (esam.search.stores.results_dir.StoragePath): results_dir/<name>."""
        return StoragePath.of(self.results_dir) / self.name

    def parsed_constraints(self) -> list:
        """`constraints` as esam.search.constraints.Constraint objects (validated at load)."""
        return parse_all(self.constraints, OBJECTIVE_METRICS, self.references)

    def optuna_url(self) -> str:
        return self.optuna_storage or f"sqlite:///{self.directory / 'optuna.db'}"


def _check_shapes(values: dict) -> None:
    """The YAML shapes of `space` and `objectives`, with messages that show the expected form."""
    space = values.get("space", {"rho": {}})
    if not isinstance(space, dict) or not space:
        raise ConfigError("space must be a non-empty mapping of optimizer fields to ranges")
    varied = set(searchable())
    optimizer_fields = {f.name for f in dataclasses.fields(OptimizerConfig)}
    for name, spec in space.items():
        if name not in varied:
            hint = "is not searchable" if name in optimizer_fields else "is no optimizer field"
            raise ConfigError(f"space.{brief(name, quote=False)} {hint} (searchable: {', '.join(sorted(varied))})"
                              + did_you_mean(name, varied, "space."))
        if not isinstance(spec, dict):
            raise ConfigError(f"space.{name} must be a mapping like {{low: 0.1, high: 1.0}}, got {brief(spec)}")
    objectives = values.get("objectives", [{}, {}])
    if not isinstance(objectives, list) or len(objectives) != 2:
        raise ConfigError("objectives must list exactly two entries: an accuracy metric and a throughput metric")
    for i, o in enumerate(objectives):
        if not isinstance(o, dict):
            raise ConfigError(f"objectives[{i}] must be a mapping {{metric: ..., mode: max|min}}, got {brief(o)}")


def _validate_space(space: dict[str, ParamSpace]) -> None:
    if not space:
        raise ConfigError("space must be a non-empty mapping of optimizer fields to ranges")
    varied, choices, knobs = searchable(), choice_params(), knob_table()
    for name, p in space.items():
        if name not in varied:
            raise ConfigError(f"space.{brief(name, quote=False)} is not searchable "
                              f"(searchable: {', '.join(sorted(varied))})"
                              + did_you_mean(name, varied, "space."))
        if name in choices:
            valid = choices[name]
            if not p.choices or any(c not in valid for c in p.choices):
                wrong = next((c for c in p.choices or () if c not in valid), None)
                raise ConfigError(f"space.{name}.choices must be a non-empty list from {', '.join(valid)}, "
                                  f"got {brief(p.choices)}" + did_you_mean(wrong, valid, quote=True))
            continue
        if p.choices is not None:
            raise ConfigError(f"space.{name}: use low/high, not choices")
        for end in ("low", "high"):
            value = getattr(p, end)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"space.{name}.{end} must be a number, got {brief(value)}")
        knob = knobs[name]  # the range its optimizer accepts, from the method's record
        if knob.integer and not all(float(v).is_integer() for v in (p.low, p.high)):
            raise ConfigError(f"space.{name} takes integers, got low={p.low} high={p.high}")
        if not p.low < p.high:
            raise ConfigError(f"space.{name}: empty or inverted range low={p.low} high={p.high}")
        if not (knob.admits(p.low) and knob.admits(p.high)):
            raise ConfigError(f"space.{name}: range [{p.low}, {p.high}] leaves the valid interval {knob.interval()}")
        if p.log and p.low <= 0:
            raise ConfigError(f"space.{name}: a log scale needs low > 0, got {p.low}")


def _validate_scheduler(cfg: SearchConfig) -> None:
    s = cfg.scheduler
    if s.name not in SCHEDULERS:
        raise ConfigError(f"scheduler.name: unknown scheduler {brief(s.name)} (valid: {', '.join(SCHEDULERS)})"
                          + did_you_mean(s.name, SCHEDULERS, quote=True))
    if s.name == "none":
        return
    if s.max_epochs is not None and s.max_epochs != cfg.train.epochs:
        raise ConfigError(f"scheduler.max_epochs ({s.max_epochs}) must equal train.epochs ({cfg.train.epochs}): "
                          f"a trial that is not stopped trains all its epochs (leave max_epochs out)")
    if not isinstance(s.grace_epochs, int) or s.grace_epochs < 1:
        raise ConfigError(f"scheduler.grace_epochs must be an integer >= 1, got {brief(s.grace_epochs)}")
    if s.grace_epochs >= cfg.train.epochs:
        raise ConfigError(f"scheduler.grace_epochs ({s.grace_epochs}) must be below train.epochs ({cfg.train.epochs}): "
                          f"lower it (--set scheduler.grace_epochs=N) or turn early stopping off (--set scheduler=none)")
    if not s.reduction_factor > 1:
        raise ConfigError(f"scheduler.reduction_factor must be > 1, got {brief(s.reduction_factor)}")
    if cfg.repeats > 1:
        raise ConfigError("scheduler moasha with repeats > 1: the earlier repeats would train in full before "
                          "the first rung; use repeats: 1 or scheduler: {name: none}")


def validate_search(cfg: SearchConfig) -> SearchConfig:
    if not NAME_PATTERN.fullmatch(cfg.name):
        raise ConfigError(f"name must be letters, digits, '_', '-', '.', got {brief(cfg.name)}")
    if len(cfg.name) > NAME_MAX:
        raise ConfigError(f"name must be at most {NAME_MAX} characters (it names files), got {len(cfg.name)}")
    _validate_space(cfg.space)
    if len(cfg.objectives) != 2:
        raise ConfigError("objectives must list exactly two entries: an accuracy metric and a throughput metric")
    for i, o in enumerate(cfg.objectives):
        if o.metric not in OBJECTIVE_METRICS:
            raise ConfigError(f"objectives[{i}].metric {brief(o.metric)} names no metric "
                              f"(valid: {', '.join(OBJECTIVE_METRICS)})"
                              + did_you_mean(o.metric, OBJECTIVE_METRICS, quote=True))
        if o.mode not in ("max", "min"):
            raise ConfigError(f"objectives[{i}].mode must be max or min, got {brief(o.mode)}")
    if cfg.train.probe_steps == 0 and {o.metric for o in cfg.objectives} & {"speed_vs_sgd", "step_time_vs_sgd"}:
        raise ConfigError("train.probe_steps is 0, so speed_vs_sgd is not measured: raise it or choose another objective")
    if cfg.sampler.name not in SAMPLERS:
        raise ConfigError(f"sampler.name: unknown sampler {brief(cfg.sampler.name)} (valid: {', '.join(SAMPLERS)})"
                          + did_you_mean(cfg.sampler.name, SAMPLERS, quote=True))
    if not 0 <= cfg.sampler.seed <= MAX_SEED:
        raise ConfigError(f"sampler.seed must be in [0, {MAX_SEED}], got {brief(cfg.sampler.seed)}")
    if cfg.sampler.population_size is not None and cfg.sampler.population_size < 2:
        raise ConfigError(f"sampler.population_size must be >= 2, got {brief(cfg.sampler.population_size)}")
    for key in ("trials", "concurrency", "repeats"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {brief(getattr(cfg, key))}")
    if cfg.train.seed + cfg.repeats - 1 > MAX_SEED:
        raise ConfigError(f"train.seed + repeats - 1 must be <= {MAX_SEED}, got {cfg.train.seed + cfg.repeats - 1}")
    for key in ("max_failures", "retry_failed"):
        if isinstance(getattr(cfg, key), bool) or getattr(cfg, key) < 0:
            raise ConfigError(f"{key} must be an integer >= 0, got {brief(getattr(cfg, key))}")
    if cfg.resources.cpu <= 0 or cfg.resources.gpu < 0:
        raise ConfigError(f"resources: cpu must be > 0 and gpu >= 0, got cpu={cfg.resources.cpu} gpu={cfg.resources.gpu}")
    workers = cfg.resources.workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"resources.workers must be an integer >= 1, got {brief(workers)}")
    if cfg.train.batch_size % workers:
        raise ConfigError(f"train.batch_size {cfg.train.batch_size} does not split evenly over resources.workers {workers}")
    if is_uri(cfg.results_dir) and cfg.state_dir is None:
        raise ConfigError(f"results_dir {brief(cfg.results_dir)} is a URI: set state_dir to a filesystem path on the "
                          f"driver's machine for the search's lock, state and journals (they need flock, which an "
                          f"object store lacks)")
    if cfg.state_dir is not None and (not isinstance(cfg.state_dir, str) or is_uri(cfg.state_dir)):
        raise ConfigError(f"state_dir must be a filesystem path (it holds the search's lock, state and journals), "
                          f"got {brief(cfg.state_dir)}")
    if cfg.mlflow.tracking_uri is not None:
        check_uri(cfg.mlflow.tracking_uri, " (mlflow.tracking_uri)")
    known = reference_methods()
    if not isinstance(cfg.references, list) or any(r not in known for r in cfg.references):
        wrong = next((r for r in cfg.references if r not in known), None) if isinstance(cfg.references, list) else None
        raise ConfigError(f"references must be a list from {', '.join(known)}, got {brief(cfg.references)}"
                          + did_you_mean(wrong, known, quote=True))
    _validate_scheduler(cfg)
    cfg.parsed_constraints()  # a bad constraint is one line now, before anything starts
    methods = searched_methods()
    if cfg.train.optimizer.name not in methods:
        raise ConfigError(f"train.optimizer.name must be one of {', '.join(methods)} in a search "
                          f"(sgd and sam train as references), got {brief(cfg.train.optimizer.name)}"
                          + did_you_mean(cfg.train.optimizer.name, methods, quote=True))
    unused = unused_field(cfg.space, cfg.train.optimizer)
    if unused:
        raise ConfigError(unused)
    return cfg


def load_search_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SearchConfig:
    """YAML file + `key=value` overrides (e.g. `trials=4`, `train.epochs=2`) -> validated SearchConfig."""
    return search_config_from_dict(read_yaml(path), overrides)


def search_config_from_dict(values: dict, overrides: list[str] | tuple[str, ...] = ()) -> SearchConfig:
    """A search config's mapping (as its YAML file holds it) + `key=value` overrides -> validated SearchConfig."""
    if not isinstance(values, dict):
        raise ConfigError(f"a search config must be a mapping, got {type(values).__name__}")
    values = deep_merge(values, parse_overrides(overrides))
    train_values = values.pop("train", {}) or {}
    if not isinstance(train_values, dict):
        raise ConfigError(f"train must be a mapping, got {brief(train_values)}")
    try:
        train = train_config_from_dict(train_values)
    except ConfigError as err:
        # "model: unknown model ..." names a field: qualify it (train.model); other messages get a "train:" prefix.
        message = str(err)
        raise ConfigError(f"train.{message}" if re.match(r"[A-Za-z_][\w.]*: ", message) else f"train: {message}") from None
    if isinstance(values.get("scheduler"), str):  # `scheduler: moasha` is short for {name: moasha}
        values["scheduler"] = {"name": values["scheduler"]}
    for key in ("space", "objectives"):
        if key in values and values[key] is None:
            raise ConfigError(f"{key} is empty")
    _check_shapes(values)
    cfg = from_dict(SearchConfig, {k: v for k, v in values.items()})
    return validate_search(dataclasses.replace(cfg, train=train))
