"""The optimizer registry: a dict of name -> class plus `register_optimizer`, as in pycls and timm."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable

import torch

from .esam import ESAM
from .plain import Plain
from .sam import SAM

OptimizerFactory = Callable[..., Plain]

OPTIMIZERS: dict[str, OptimizerFactory] = {"sgd": Plain, "sam": SAM, "esam": ESAM}


def register_optimizer(name: str, factory: OptimizerFactory) -> OptimizerFactory:
    """Add `factory(params, base_optimizer, **hparams)` to the registry under `name`."""
    if name in OPTIMIZERS:
        raise ValueError(f"optimizer {name!r} is already registered")
    OPTIMIZERS[name] = factory
    return factory


def build_optimizer(name: str, params: Iterable, base_optimizer: torch.optim.Optimizer, **hparams: Any) -> Plain:
    """The registered optimizer `name` (sgd | sam | esam) wrapped around `base_optimizer`.

    An unknown name, or a hyperparameter the optimizer does not take, raises ValueError listing the valid ones.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r} (valid: {', '.join(sorted(OPTIMIZERS))})")
    factory = OPTIMIZERS[name]
    accepted = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(hparams) - set(accepted))
        if unknown:
            valid = [k for k in accepted if k not in ("params", "base_optimizer")]
            raise ValueError(f"optimizer {name!r} takes no {', '.join(unknown)} (valid: {', '.join(valid)})")
    return factory(params, base_optimizer, **hparams)
