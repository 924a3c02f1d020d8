"""The optimizer registry: name -> class (OPTIMIZERS) and name -> record (METHODS), filled by `register_optimizer`.

It imports no optimizer: the classes' modules and the cost model read it, and esam/optim/factory.py
registers the built-in methods in it.
"""
from __future__ import annotations

from collections.abc import Callable

from esam.registry import Registry

from .methods import BASE_KNOBS, Knob, MethodInfo

OptimizerFactory = Callable[..., object]  # factory(params, base_optimizer, **hparams) -> a Plain

OPTIMIZERS = Registry("optimizer")
METHODS = Registry("method")  # name -> MethodInfo, for the registered methods that have a record


def register_optimizer(name: str, factory: OptimizerFactory, info: MethodInfo | None = None) -> OptimizerFactory:
    """Add `factory(params, base_optimizer, **hparams)` to the registry under `name`, with its record.

    A class may list the optimizer-config fields it takes in `hyperparameters` (see Plain), so that
    the trainer passes them from YAML. With `info` (a MethodInfo named `name`) the method is known to
    the cost model, the speed probe and, unless info.searched is False, to a search; without one it
    trains from a config only.
    """
    if info is not None:
        _check(name, factory, info)
    OPTIMIZERS.add(name, factory)
    if info is not None:
        METHODS.add(name, info)
    return factory


def _check(name: str, factory: OptimizerFactory, info: MethodInfo) -> None:
    if info.name != name:
        raise ValueError(f"optimizer {name!r}: its record is named {info.name!r}")
    takes = getattr(factory, "hyperparameters", None)
    missing = [k.name for k in info.knobs if takes is not None and k.name not in takes]
    if missing:
        raise ValueError(f"optimizer {name!r}: its record's knobs {missing} are not in its hyperparameters")
    known = knob_table()
    for knob in info.knobs:  # a knob several methods share (rho, sharpness) means the same in each
        if knob.name in known and known[knob.name] != knob:
            raise ValueError(f"optimizer {name!r}: knob {knob.name!r} differs from the one registered before "
                             f"({known[knob.name]} != {knob})")


def knob_table() -> dict[str, Knob]:
    """Every knob a search may vary, by name: the registered methods' (in registration order), then the base SGD's."""
    table = {k.name: k for info in METHODS.values() for k in info.knobs}
    return {**table, **{k.name: k for k in BASE_KNOBS}}


def searched_methods() -> tuple[str, ...]:
    """The registered methods a search may train, in registration order."""
    return tuple(name for name, info in METHODS.items() if info.searched)
