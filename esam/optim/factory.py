"""Building a registered optimizer by name; the built-in methods are registered here with their records."""
from __future__ import annotations

import inspect
from typing import Any, Iterable

import torch

from .aesam import AESAM, AESAM_INFO
from .esam import ESAM, ESAM_INFO
from .looksam import LOOKSAM_INFO, LookSAM
from .plain import SGD_INFO, Plain
from .registry import OPTIMIZERS, register_optimizer
from .rst import RST, RST_INFO
from .sam import SAM, SAM_INFO

for _cls, _info in ((Plain, SGD_INFO), (SAM, SAM_INFO), (ESAM, ESAM_INFO), (LookSAM, LOOKSAM_INFO), (RST, RST_INFO),
                    (AESAM, AESAM_INFO)):
    register_optimizer(_cls.method, _cls, _info)


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
