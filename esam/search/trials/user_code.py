"""The user's own model and data in a search: checked in the driver before any trial, carried to every trial.

`train.model` and `train.data.name` name either esam's own builders, the user's code by import path
(`my_project.nets:build`, esam.import_paths), or a builder the user registered in this process
(`register_model`, `register_dataset`, or a callable given to `esam.search.run`). Before any trial:
- every import path is imported and must name a callable;
- on a local Ray (the driver sees the trials' files) the data is loaded once, as a trial loads it,
  and the model built once with its num_classes and in_channels; what either returns is checked,
  and inputs that are no 4-D images with channels_last on (NHWC on CUDA) are refused.
  On a cluster the data may exist on the nodes only, so the trials build both there;
- a registration of this process is handed to the trials (`passed_builders`): Ray pickles it with
  the trainable's parameters (cloudpickle: by value for `__main__`'s functions, else by import), and
  `register_passed` registers it in the trial before its config is read. Multi-worker trials
  (esam/search/trials/ddp_trial.py) do not carry them: there an import path is required.
A method the search trains (a space's method choice, train.optimizer.name, a reference) that this
process registered (`register_optimizer` with its record, esam/optim/registry.py) travels the same
way: its class and record, registered again in each trial.
Every failure is one ConfigError naming the field and the path.
"""
from __future__ import annotations

from collections.abc import Callable

from esam import import_paths
from esam.data import DATASETS
from esam.data.datasets import Streamed, Tensors, load_dataset
from esam.errors import ConfigError, EsamError
from esam.models import MODELS, build_model
from esam.optim import METHODS, OPTIMIZERS
from esam.search.space import methods_of

FIELDS = {"model": "train.model", "data": "train.data.name"}


def registries() -> dict:
    return {"model": MODELS, "data": DATASETS}


def _names(train) -> dict[str, str]:
    return {"model": train.model, "data": train.data.name}


def _is_esams(builder: Callable) -> bool:
    module = getattr(getattr(builder, "func", builder), "__module__", "") or ""
    return module == "esam" or module.startswith("esam.")


def trained_methods(cfg) -> tuple[str, ...]:
    """The methods a search trains: the space's method choices (else train.optimizer.name), then the references."""
    return tuple(dict.fromkeys((*methods_of(cfg.space, cfg.train.optimizer), *cfg.references)))


def _users_methods(methods) -> list[str]:
    return [name for name in methods if name in OPTIMIZERS and not _is_esams(OPTIMIZERS[name])]


def passed_builders(train, methods=()) -> dict[str, dict]:
    """{"model": {name: builder}, "data": {...}, "method": {name: (class, record)}}: the builders `train`
    names and the `methods` (trained_methods) that this process registered and a trial's process would
    not have (esam's own register themselves on import)."""
    found = {}
    for kind, registry in registries().items():
        name = _names(train)[kind]
        if name in registry and not _is_esams(registry[name]):
            found[kind] = {name: registry[name]}
    users = {name: (OPTIMIZERS[name], METHODS.get(name)) for name in _users_methods(methods)}
    if users:
        found["method"] = users
    return found


def register_passed(builders: dict[str, dict] | None) -> None:
    """In a trial: register what the driver passed (`passed_builders`), under the names its config uses."""
    found = registries()
    for kind, named in (builders or {}).items():
        for name, builder in named.items():
            if kind == "method":  # the class and its record (None: a method without one)
                factory, info = builder
                OPTIMIZERS.provide(name, factory)
                if info is not None:
                    METHODS.provide(name, info)
            else:
                found[kind].provide(name, builder)


def users_modules(train, methods=()) -> list[str]:
    """The modules holding the user's code that `train` names (import paths and this process's registrations),
    and those of the `methods` this process registered."""
    modules = [import_paths.path_of(OPTIMIZERS[name]).partition(":")[0] for name in _users_methods(methods)]
    for kind, registry in registries().items():
        name = _names(train)[kind]
        if name in registry:
            if not _is_esams(registry[name]):
                modules.append(import_paths.path_of(registry[name]).partition(":")[0])
        elif import_paths.is_import_path(name):
            modules.append(name.partition(":")[0])
    return modules


def check_user_code(cfg, local: bool) -> None:
    """Before any trial: the user's builders import, and (local Ray) build what the contracts say."""
    names = _names(cfg.train)
    found = registries()
    users = {kind: name for kind, name in names.items()
             if name not in found[kind] or not _is_esams(found[kind][name])}
    methods = _users_methods(trained_methods(cfg))
    if cfg.resources.workers > 1 and methods:
        raise ConfigError(f"resources.workers {cfg.resources.workers}: the methods {', '.join(methods)}, registered "
                          f"in this process, do not reach multi-worker trials")
    if not users:
        return
    if cfg.resources.workers > 1 and passed_builders(cfg.train):
        raise ConfigError(f"resources.workers {cfg.resources.workers}: a builder registered in this process "
                          f"({', '.join(passed_builders(cfg.train))}) does not reach multi-worker trials; "
                          f"name it by import path ({import_paths.EXAMPLE})")
    for kind, name in users.items():
        found[kind].lookup(name, FIELDS[kind])  # imports an import path: a one-line ConfigError
    if local:
        _build_once(cfg.train, names)


def _build_once(train, names: dict[str, str]) -> None:
    """Load the data and build the model as a trial would; what fails is one line naming the builder."""
    source = _one_line(lambda: load_dataset(train.data), f"{FIELDS['data']} {names['data']!r}")
    if isinstance(source, Tensors) and source.train_x.dim() != 4 and train.channels_last and train.device != "cpu":
        # on CUDA every batch would be made NHWC, which only a 4-D image batch can be: every trial would fail
        raise ConfigError(f"train.channels_last is true, but {FIELDS['data']} {names['data']!r} gives inputs of shape "
                          f"{list(source.train_x.shape[1:])}, not images: set train.channels_last: false")
    in_channels = source.in_channels if isinstance(source, Streamed) else source.train_x.shape[1]
    _one_line(lambda: build_model(train.model, source.num_classes, int(in_channels)),
              f"{FIELDS['model']} {names['model']!r}")


def _one_line(build: Callable, what: str):
    try:
        return build()
    except EsamError as err:  # "model 'x' returned ...", "data.name 'x': ...": named as the search config names them
        text = str(err)
        raise ConfigError(f"train.{text}" if text.startswith(("model", "data.name")) else f"{what}: {text}") from None
    except Exception as err:  # noqa: BLE001 - the user's builder raised: its first line, no traceback
        raise ConfigError(f"{what} failed: {import_paths.described(err)}") from None
