"""The base of LookSAM, RST and AE-SAM: a sharpness step on some steps, one pass on the others.

When to take a sharpness step is each method's own rule (every k steps, a seeded coin, a test on
the gradient norm); how to take it is `sharpness`: SAM's step, or ESAM's (SWP + SDS), so that a
search can vary the two together. The sharpness step is ESAM's, which with beta = gamma = 1 is
SAM's exactly (tests/test_optim.py), so `sharpness="sam"` runs it with beta = gamma = 1.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch

from .cost import SHARPNESS, StepCost
from .esam import BETA, ESAM, GAMMA, SCORE
from .methods import Knob
from .plain import Closure
from .sam import BN_UPDATE, RHO

# What every skipping method's record lists: SAM's knobs, which sharpness step, and ESAM's (used with sharpness esam).
SKIPPING_KNOBS = (RHO, Knob("sharpness", choices=SHARPNESS, short="sharpness", paper="sam"), BETA, GAMMA, SCORE,
                  BN_UPDATE)


class SkippingSAM(ESAM):
    """A sharpness step (SAM's or ESAM's) when the subclass's rule says so, else one forward+backward pass.

    Args (beyond ESAM's, see esam.py): sharpness "sam" | "esam". With "sam" the ESAM settings
    beta, gamma, score and swp_patterns are checked but not used (a config carries ESAM's defaults
    for them). The one-pass steps clip (max_grad_norm) and step the base optimizer like Plain.

    `last_cost` reports the passes each step really ran: 1.0 for a one-pass step, SAM's or ESAM's
    cost for a sharpness step. `last_sharpened` says which the last step was, and `sharpness_steps`
    counts the sharpness steps so far (kept in the state dict, with ESAM's generator and SWP pool).
    """

    hyperparameters = ESAM.hyperparameters + ("sharpness",)

    def __init__(self, params: Iterable, base_optimizer: torch.optim.Optimizer, rho: float = 0.05,
                 sharpness: str = "sam", beta: float = 0.6, gamma: float = 0.5, score: str = "loss_rise",
                 adaptive: bool = False, bn_update: str = "all", max_grad_norm: float | None = None,
                 model: torch.nn.Module | None = None, seed: int | None = None,
                 generator: torch.Generator | None = None, swp_patterns: int | None = None) -> None:
        if sharpness not in SHARPNESS:
            raise ValueError(f"unknown sharpness {sharpness!r} (valid: {', '.join(SHARPNESS)})")
        if sharpness == "sam":  # ESAM at beta = gamma = 1 is SAM: no SWP draw (so none shifts the generator), no SDS
            for name, value in (("beta", beta), ("gamma", gamma)):  # an error even unused: a config may switch
                if not 0 < value <= 1:
                    raise ValueError(f"{name} must be in (0, 1], got {value}")
            beta = gamma = 1.0
        super().__init__(params, base_optimizer, rho, beta, gamma, score, adaptive, bn_update, max_grad_norm, model,
                         seed, generator, swp_patterns)
        self.sharpness = sharpness
        self.defaults.update(sharpness=sharpness)
        self.sharpness_steps = 0
        self.last_sharpened = False

    # --- the two kinds of step ----------------------------------------------------------------------

    def _sharpness_step(self, closure: Closure) -> torch.Tensor:
        """SAM's or ESAM's whole step: ascent, perturb, [score], descent, restore, base step."""
        loss = super().step(closure)
        self.sharpness_steps += 1
        self.last_sharpened = True
        return loss

    def _one_pass(self, closure: Closure) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward + backward of the whole batch, the gradient left in .grad: (mean loss, per-sample losses).

        Outside DDP's no_sync: the gradient may become the base step's, so it is all-reduced."""
        self._zero_grad()
        with torch.enable_grad():
            losses = self._forward(closure)
            loss = losses.mean()
            loss.backward()
        return loss, losses.detach()

    def _base_update(self, loss: torch.Tensor, batch: int) -> torch.Tensor:
        """Clip the gradient in .grad and take the base optimizer's step: one pass's cost, Plain's arithmetic."""
        self._clip()
        self.base_optimizer.step()
        self.num_steps += 1
        self.last_cost = StepCost.one_pass(self.method, batch)
        self.last_sharpened = False
        return loss.detach()

    # --- state -------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """ESAM's state (base optimizer, step counter, generator, SWP pool) and the sharpness-step count."""
        return {**super().state_dict(), "sharpness_steps": self.sharpness_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        super().load_state_dict(state_dict)
        self.sharpness_steps = int(state_dict.get("sharpness_steps", 0))
