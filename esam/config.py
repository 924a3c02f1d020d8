"""Typed training configs: the defaults live here, YAML files hold only what differs.

Every field has a one-line comment. `load_train_config` merges a YAML file and `--set key=value`
overrides into these frozen dataclasses and validates them; a bad value raises `ConfigError`
naming the field (for example `optimizer.beta`) and the value. The data section, DataConfig, lives
with the data package (esam/data/config.py), which builds on it without importing this module.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from esam.data import DATASETS
from esam.data.config import LABEL_NOISE_KINDS, DataConfig
from esam.errors import ConfigError
from esam.models import MODELS
from esam.optim import OPTIMIZERS, knob_table
from esam.optim.cost import SCORES, SHARPNESS
from esam.optim.sam import BN_UPDATES
from esam.suggestions import did_you_mean

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "esam"  # sgd | sam | esam | looksam | rst | aesam
    lr: float = 0.05  # peak learning rate of the base SGD
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # inside SGD, as in the authors' code
    nesterov: bool = False  # Nesterov momentum
    rho: float = 0.05  # SAM/ESAM neighbourhood size
    beta: float = 0.6  # ESAM SWP: probability that a parameter tensor is perturbed
    gamma: float = 0.5  # ESAM SDS: fraction of the batch used in the descent pass
    score: str = "loss_rise"  # ESAM SDS rule: loss_rise (paper) | clean_loss (no extra forward)
    adaptive: bool = False  # ASAM's scale-invariant perturbation
    bn_update: str = "all"  # BatchNorm stats: all forwards update (authors) | clean: only the clean pass
    max_grad_norm: float | None = None  # clip the descent gradient to this norm (None: no clipping)
    swp_patterns: int | None = None  # ESAM SWP: reuse a pool of N masks (for cuda_graphs/compile; None: fresh each step)
    sharpness: str = "sam"  # looksam, rst, aesam: a sharpness step is SAM's (sam) or ESAM's (esam: beta, gamma, score)
    looksam_k: int = 5  # LookSAM: a sharpness step every k steps, one pass reusing its orthogonal part in between
    looksam_alpha: float = 0.7  # LookSAM: weight of the reused orthogonal part, scaled to the gradient's norm
    rst_p: float = 0.5  # RST: probability that a step is a sharpness step (a seeded draw)
    aesam_c_start: float = 1.0  # AE-SAM: sharpen when the squared gradient norm >= running mean + c std; c at step 0
    aesam_c_end: float = -1.0  # AE-SAM: c at the last step, linear in between (without total_steps: the mean)
    aesam_momentum: float = 0.9  # AE-SAM: momentum (delta) of that running mean and variance
    knobs: dict[str, Any] = field(default_factory=dict)  # a registered method's own settings that have no field here (esam/optim/methods.py); YAML writes them beside the fields

    def setting(self, name: str) -> Any:
        """A setting by name: a field, else a registered method's own knob (unset: its record's paper value)."""
        if name in {f.name for f in dataclasses.fields(self)}:
            return getattr(self, name)
        if name in self.knobs:
            return self.knobs[name]
        knob = knob_table().get(name)
        if knob is None:
            raise AttributeError(f"no optimizer setting {name!r}: neither a field nor a registered method's knob")
        return knob.paper


def _own_knobs() -> dict:
    """The registered methods' knobs that have no OptimizerConfig field: they live in `knobs`."""
    fields = {f.name for f in dataclasses.fields(OptimizerConfig)}
    return {name: knob for name, knob in knob_table().items() if name not in fields}


def _nest_knobs(values: dict) -> dict:
    """An optimizer mapping with a method's own settings written beside the fields (`my_q: 0.3`) moved into `knobs`."""
    flat = {k: v for k, v in values.items() if k in _own_knobs()}
    nested = values.get("knobs") or {}
    if not flat or not isinstance(nested, dict):  # a `knobs` that is no mapping: _convert says so
        return values
    return {**{k: v for k, v in values.items() if k not in flat}, "knobs": {**nested, **flat}}


@dataclass(frozen=True)
class TrainConfig:
    model: str = "small_cnn"  # a name from esam.models (small_cnn, resnet18, wrn28_10, ...), or your builder's import path (my_project.nets:build)
    data: DataConfig = field(default_factory=DataConfig)  # the dataset and its augmentation
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)  # SGD/SAM/ESAM settings
    epochs: int = 10  # training epochs
    batch_size: int = 128  # training batch (images/s counts all of it)
    eval_batch_size: int = 1024  # test-time batch
    schedule: str = "cosine"  # learning-rate schedule: cosine | onecycle | constant
    warmup_epochs: float = 0.0  # linear warm-up before the schedule (cosine, constant)
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    channels_last: bool = True  # NHWC activations on CUDA (ignored on the CPU)
    compile: bool = False  # torch.compile the model (ESAM's SWP ascent stays eager; compile time excluded from images/s)
    compile_mode: str = "default"  # torch.compile mode: default | reduce-overhead (CUDA graphs) | max-autotune | ...
    cuda_graphs: bool = False  # replay each training pass as a CUDA graph (CUDA only; not with compile)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch CPU threads (None: torch's default)
    seed: int = 0  # one seed for weights, data order, augmentation and SWP
    timing_warmup_steps: int = 3  # steps per epoch excluded from images/s (warm-up, autotuning)
    probe_steps: int = 3  # per epoch: at least this many method/SGD step pairs timed interleaved, more until precise (0: off)
    checkpoint_every: int = 1  # epochs between checkpoints when a checkpoint dir is given (0: never)


def brief(value: Any, limit: int = 60, quote: bool = True) -> str:
    """`repr(value)` (or str) cut to about `limit` characters: an error message stays one short line."""
    text = repr(value) if quote else str(value)
    text = text.encode("unicode_escape").decode("ascii") if not quote else text  # no newline in a key
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; YAML ints are accepted for floats."""
    if _is_optional(tp):
        if value is None:
            return None
        (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {brief(value)}")
        return from_dict(tp, value, where + ".")
    if typing.get_origin(tp) is dict:  # dict[str, X]: a mapping of names to X
        _, item = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {brief(value)}")
        return {k: _convert(v, item, f"{where}.{k}") for k, v in value.items()}
    if typing.get_origin(tp) is list and typing.get_args(tp):  # list[X]
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {brief(value)}")
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where} must be a list of {len(args)} values, got {brief(value)}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError(f"{where} must be a finite number, got an integer of {len(str(value))} digits") from None
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise ConfigError(f"{where} must be {tp.__name__}, got {brief(value)}")
    if tp is float and not math.isfinite(value):
        # nan slips past every range check (all comparisons are false) and inf breaks the schedule.
        raise ConfigError(f"{where} must be a finite number, got {value}")
    return value


def from_dict(cls: type, values: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from a (partial) mapping; unknown keys are an error."""
    if cls is OptimizerConfig:
        values = _nest_knobs(values)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted((k for k in values if k not in names), key=str)  # YAML keys may be ints or null
    if unknown:
        raise ConfigError(f"unknown key {prefix}{brief(unknown[0], quote=False)} (valid: {', '.join(sorted(names))})"
                          + did_you_mean(unknown[0], names, prefix))
    return cls(**{k: _convert(v, hints[k], prefix + k) for k, v in values.items()})


def to_dict(config: Any) -> dict:
    """A plain nested dict (YAML-friendly: tuples become lists; an optimizer's `knobs` beside its fields)."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            values = {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
            if isinstance(v, OptimizerConfig):  # read back by from_dict: a method's own settings read like fields
                values.update(values.pop("knobs"))
            return values
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(config)


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> dict:
    """`["optimizer.rho=0.1", "epochs=3"]` -> nested dict; values are parsed as YAML scalars."""
    nested: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {brief(pair)}")
        try:
            value = _load_yaml(raw) if raw.strip() else None
        except ConfigError as err:
            raise ConfigError(f"--set {brief(key.strip(), quote=False)}: {err}") from None
        except (yaml.YAMLError, ValueError):  # not YAML (or an int past Python's digit limit): a string
            value = raw
        except RecursionError:
            raise ConfigError(f"--set {brief(key.strip(), quote=False)}: the value is nested too deeply") from None
        node = nested
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {brief(key, quote=False)}: {brief(p, quote=False)} is not a section")
        node[leaf] = value
    return nested


def deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for k, v in override.items():
        merged[k] = deep_merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


MAX_CONFIG_BYTES = 1_000_000  # configs are a few hundred bytes; this bounds time and memory of a bad file
MAX_YAML_NODES = 10_000  # scalars, lists and mappings after alias expansion (a config has ~100)


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses documents whose aliases expand past MAX_YAML_NODES, or loop.

    Anchors and aliases stay legal (sharing a section is ordinary YAML), but a few hundred bytes
    of nested aliases ("billion laughs") expand to 10**9 values in every later walk: repr, merge,
    validation. Counting the expansion on the composed node graph (shared nodes counted once per
    use, memoized) costs time linear in the file, so a bomb is refused in milliseconds.
    """

    def compose_document(self):  # noqa: D102 - PyYAML's hook between parsing and constructing
        node = super().compose_document()
        if node is not None:
            _expanded_size(node, {}, set())
        return node


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """Nodes under `node` with every alias expanded; ConfigError above the bound or on a cycle."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise ConfigError("a YAML alias refers to a node that contains it (a recursive structure)")
    open_nodes.add(key)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = []
    for child in children:
        size += _expanded_size(child, sizes, open_nodes)
        if size > MAX_YAML_NODES:
            raise ConfigError(f"YAML aliases expand to more than {MAX_YAML_NODES} values (refused: an alias bomb?)")
    open_nodes.discard(key)
    sizes[key] = size
    return size


def _load_yaml(text: str) -> Any:
    """yaml.safe_load with the expansion bound of _BoundedLoader."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> dict:
    """A YAML config file's top-level mapping; any problem with the file is one ConfigError line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {brief(str(path), 200, quote=False)}")
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)  # never more, whatever the file claims to be
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror or type(err).__name__})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes, not an esam config")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None
    try:
        data = _load_yaml(text)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{at}") from None
    except ValueError as err:  # e.g. an integer longer than Python's 4300-digit limit
        raise ConfigError(f"{path}: not a valid config value ({brief(str(err), 100, quote=False)})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


MAX_SEED = 2**32 - 1  # numpy's and Optuna's seed range; torch accepts it too

_CHOICES = {
    "schedule": ("cosine", "onecycle", "constant"),
    "precision": ("auto", "fp32", "bf16"),
    "optimizer.score": SCORES,
    "optimizer.bn_update": BN_UPDATES,
    "optimizer.sharpness": SHARPNESS,
    "compile_mode": COMPILE_MODES,
    "data.label_noise_kind": LABEL_NOISE_KINDS,
}


def _check_registered(config: TrainConfig) -> None:
    """Names are valid when their registry holds them, so registered additions work from YAML and the CLI.

    An import path (model, data.name) is checked for its form only: it is imported where it is built
    (a search's driver checks it first: esam/search/trials/user_code.py)."""
    MODELS.check(config.model, "model")
    OPTIMIZERS.check(config.optimizer.name, "optimizer.name")
    DATASETS.check(config.data.name, "data.name")


def _check_knobs(knobs: dict) -> None:
    """A method's own settings (`knobs`) name registered knobs and hold values their records admit."""
    own = _own_knobs()
    for name, value in knobs.items():
        if name not in own:
            raise ConfigError(f"unknown key optimizer.{brief(name, quote=False)} (no registered method takes it; "
                              f"methods' own settings: {', '.join(own) or 'none'})"
                              + did_you_mean(name, own, "optimizer."))
        if not own[name].admits(value):
            valid = ", ".join(map(str, own[name].choices)) if own[name].choices is not None else \
                f"{'an integer' if own[name].integer else 'a number'} in {own[name].interval()}"
            raise ConfigError(f"optimizer.{name} must be {valid}, got {brief(value)}")


def validate(config: TrainConfig) -> TrainConfig:
    """Range checks that the types cannot express; returns the config unchanged."""
    def get(path: str) -> Any:
        obj = config
        for part in path.split("."):
            obj = getattr(obj, part)
        return obj

    for path, choices in _CHOICES.items():
        if get(path) not in choices:
            if path == "precision" and get(path) == "fp16":
                raise ConfigError("precision: fp16 needs a GradScaler, which SAM/ESAM steps do not support; use bf16")
            raise ConfigError(f"{path}: unknown value {brief(get(path))} (valid: {', '.join(choices)})"
                              + did_you_mean(get(path), choices, quote=True))
    _check_registered(config)
    positive = ["epochs", "batch_size", "eval_batch_size", "data.synthetic_size", "data.synthetic_classes"]
    for path in positive:
        if get(path) <= 0:
            raise ConfigError(f"{path} must be positive, got {brief(get(path))}")
    non_negative = ["optimizer.lr", "optimizer.momentum", "optimizer.weight_decay", "optimizer.rho",
                    "warmup_epochs", "timing_warmup_steps", "probe_steps", "checkpoint_every",
                    "data.crop_padding", "data.cutout", "data.num_workers"]
    for path in non_negative:
        if get(path) < 0:
            raise ConfigError(f"{path} must be >= 0, got {brief(get(path))}")
    for path in ("optimizer.beta", "optimizer.gamma"):
        if not 0.0 < get(path) <= 1.0:
            raise ConfigError(f"{path} must be in (0, 1], got {brief(get(path))}")
    if config.optimizer.looksam_k < 1:
        raise ConfigError(f"optimizer.looksam_k must be >= 1, got {brief(config.optimizer.looksam_k)}")
    if config.optimizer.looksam_alpha < 0:
        raise ConfigError(f"optimizer.looksam_alpha must be >= 0, got {brief(config.optimizer.looksam_alpha)}")
    if not 0.0 <= config.optimizer.rst_p <= 1.0:
        raise ConfigError(f"optimizer.rst_p must be in [0, 1], got {brief(config.optimizer.rst_p)}")
    if not 0.0 <= config.optimizer.aesam_momentum < 1.0:
        raise ConfigError(f"optimizer.aesam_momentum must be in [0, 1), got {brief(config.optimizer.aesam_momentum)}")
    _check_knobs(config.optimizer.knobs)
    for path in ("label_smoothing", "data.cutout_prob"):
        if not 0.0 <= get(path) <= 1.0:
            raise ConfigError(f"{path} must be in [0, 1], got {brief(get(path))}")
    if not 0.0 <= config.data.label_noise < 1.0:  # 1 would replace every label: nothing true left to learn
        raise ConfigError(f"data.label_noise must be in [0, 1), got {brief(config.data.label_noise)}")
    for path in ("data.train_limit", "data.test_limit", "data.image_size", "threads", "optimizer.max_grad_norm",
                 "optimizer.swp_patterns"):
        if get(path) is not None and get(path) <= 0:
            raise ConfigError(f"{path} must be positive or null, got {brief(get(path))}")
    for path in ("seed", "data.label_noise_seed"):
        if not 0 <= get(path) <= MAX_SEED:
            raise ConfigError(f"{path} must be in [0, {MAX_SEED}], got {brief(get(path))}")
    if config.cuda_graphs and config.compile:
        raise ConfigError("cuda_graphs and compile are both true: choose one")
    if config.cuda_graphs and config.device == "cpu":
        raise ConfigError("cuda_graphs: true needs a CUDA device, but device is 'cpu'")
    if config.data.name == "imagefolder" and config.data.root is None:
        raise ConfigError("data.root is required for data.name imagefolder")
    return config


def train_config_from_dict(values: dict, overrides: dict | None = None) -> TrainConfig:
    merged = deep_merge(values, overrides or {})
    return validate(from_dict(TrainConfig, merged))


def load_train_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """YAML file (or defaults when None) + `key=value` overrides -> validated TrainConfig.

    A search config (its `train:` section) and an exported config (its `exported:` provenance
    section is skipped) load too.
    """
    values = read_yaml(path) if path is not None else {}
    if "train" in values and isinstance(values["train"], dict):
        values = values["train"]  # a search config: train its training section
    values = {k: v for k, v in values.items() if k != "exported"}  # provenance of an exported config
    return train_config_from_dict(values, parse_overrides(overrides))
