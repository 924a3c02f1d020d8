"""Randomized SAM (RST, Zhao et al., 2022): each step a sharpness step with probability p, else the base step."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch

from .methods import Knob, MethodInfo
from .plain import Closure, require_closure
from .skipping import SKIPPING_KNOBS, SkippingSAM


class RST(SkippingSAM):
    """A seeded coin per step: SAM's (or ESAM's) step with probability p, one pass and the base step otherwise.

    Each step:
        u ~ U[0, 1)   from a seeded CPU generator (the one ESAM's SWP draws from): the host decides, no device sync
        u < p:        the sharpness step (SAM's two passes; ESAM's with sharpness="esam")
        otherwise:    g = grad L(w); w <- base_optimizer(w, g)         (Plain's step)
    Expected cost p S + (1 - p), S the sharpness step's: 1.5 at p = 0.5 with SAM, SAM's throughput
    times 1.33 at best. The paper also schedules p over training and mixes the two gradients (G-RST);
    here p is constant, its default schedule, with the paper's p = 0.5.

    Degenerate cases: p = 1 is SAM (or ESAM) exactly and p = 0 the base optimizer exactly; neither
    draws, so the generator's stream (and ESAM's SWP draws) is then the wrapped method's own.

    Args (beyond SkippingSAM's): rst_p in [0, 1] (the name of its config field).
    """

    method = "rst"
    hyperparameters = SkippingSAM.hyperparameters + ("rst_p",)
    _float_keys = SkippingSAM._float_keys + ("rst_p",)

    def __init__(self, params: Iterable, base_optimizer: torch.optim.Optimizer, rho: float = 0.05,
                 rst_p: float = 0.5, sharpness: str = "sam", beta: float = 0.6, gamma: float = 0.5,
                 score: str = "loss_rise", adaptive: bool = False, bn_update: str = "all",
                 max_grad_norm: float | None = None, model: torch.nn.Module | None = None, seed: int | None = None,
                 generator: torch.Generator | None = None, swp_patterns: int | None = None) -> None:
        if not 0 <= rst_p <= 1:
            raise ValueError(f"rst_p must be in [0, 1], got {rst_p}")
        super().__init__(params, base_optimizer, rho, sharpness, beta, gamma, score, adaptive, bn_update,
                         max_grad_norm, model, seed, generator, swp_patterns)
        self.defaults.update(rst_p=rst_p)
        self.p = float(rst_p)

    def step(self, closure: Closure | None = None) -> torch.Tensor:  # type: ignore[override]
        """The sharpness step with probability p, else Plain's step. Returns the mean clean loss, detached."""
        closure = require_closure(closure)
        if self._coin():
            return self._sharpness_step(closure)
        loss, losses = self._one_pass(closure)
        return self._base_update(loss, losses.shape[0])

    def _coin(self) -> bool:
        if self.p >= 1 or self.p <= 0:
            return self.p >= 1
        return float(torch.rand((), generator=self.generator)) < self.p  # a CPU tensor: no device sync


def sharp_share(knobs: Mapping[str, Any]) -> float:
    """A sharpness step with probability p."""
    p = knobs["rst_p"]
    if not 0 <= p <= 1:
        raise ValueError(f"rst_p must be in [0, 1], got {p}")
    return p


RST_INFO = MethodInfo("rst", "RST", knobs=SKIPPING_KNOBS + (Knob("rst_p", 0.0, 1.0, short="p", paper=0.5),),
                      skips=True, share=sharp_share)
