"""The optimizer registry: a dict of name -> class plus `register_optimizer`, as in pycls and timm."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable

import torch

from esam.registry import Registry

from .aesam import AESAM
from .esam import ESAM
from .looksam import LookSAM
from .plain import Plain
from .rst import RST
from .sam import SAM

OptimizerFactory = Callable[..., Plain]

OPTIMIZERS = Registry("optimizer")
for _cls in (Plain, SAM, ESAM, LookSAM, RST, AESAM):
    OPTIMIZERS.add(_cls.method, _cls)


def register_optimizer(name: str, factory: OptimizerFactory) -> OptimizerFactory:
    """Add `factory(params, base_optimizer, **hparams)` to the registry under `name`.

    A class may list the optimizer-config fields it takes in `hyperparameters` (see Plain), so
    that the trainer passes them from YAML.
    """
    return OPTIMIZERS.add(name, factory)


def build_optimizer(name: str, params: Iterable, base_optimizer: torch.optim.Optimizer, **hparams: Any) -> Plain:
    """The registered optimizer `name` (sgd | sam | esam | looksam | rst | aesam) wrapped around `base_optimizer`.

    An unknown name, or a hyperparameter the optimizer does not take, raises ValueError listing the valid ones.
    """
    factory = OPTIMIZERS.lookup(name)
    accepted = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(hparams) - set(accepted))
        if unknown:
            valid = [k for k in accepted if k not in ("params", "base_optimizer")]
            raise ValueError(f"optimizer {name!r} takes no {', '.join(unknown)} (valid: {', '.join(valid)})")
    return factory(params, base_optimizer, **hparams)
