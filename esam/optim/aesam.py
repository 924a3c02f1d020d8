"""AE-SAM (Jiang et al., ICLR 2023): a sharpness step only where the gradient norm says the region is sharp."""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import torch

from .cost import StepCost, aesam_sharp_fraction
from .methods import Knob, MethodInfo
from .plain import Closure, require_closure
from .skipping import SKIPPING_KNOBS, SkippingSAM


class AESAM(SkippingSAM):
    """SAM's (or ESAM's) step when ||g||^2 is high against its running statistics, else the base step.

    Step t of T (t counts every step):
        g     = grad L(w)                             one pass over the batch, every weight gradient
        s     = ||g||^2                               read on the host (see below)
        mu    = delta mu + (1 - delta) s              running mean and variance of s, both 0 before step 0,
        var   = delta var + (1 - delta) (s - mu)^2    updated before the test (so step 0 always sharpens)
        c     = c_start + (c_end - c_start) t / (T - 1)       the paper's linear schedule, lambda_2 -> lambda_1
        s >= mu + c sqrt(var):  the sharpness step with g as its ascent gradient, no pass wasted:
                                SAM: e = rho g / ||g||, descent at w + e, base step with its gradient;
                                ESAM: SWP drops the gradients of the tensors it leaves out of e (which saves
                                nothing here: the pass has run), SDS picks the descent samples
        otherwise:              w <- base_optimizer(w, g)
    The paper's settings: delta = 0.9, c from 1 to -1 (about half the steps sharpen, as its Gaussian
    model predicts: cost.aesam_sharp_fraction).

    How the decision reaches the host: s is a device scalar, and `float(s)` waits for the first
    pass's backward to finish. That is this step's one device sync (SAM, ESAM, LookSAM and RST have
    none): on a GPU the host cannot queue the next pass while the first one runs, so the device idles
    while the host launches what follows, about one pass's launch latency per step (its size on an
    H100 is not measured yet). On the CPU it costs nothing. The running statistics are Python floats.

    Under DDP the first pass is all-reduced (it may become the base step's gradient), so every replica
    sees the same s and takes the same decision; the ascent then uses the global gradient (n-SAM), not
    each replica's own. T is `total_steps`, the run's length; without it c stays at (c_start + c_end) / 2
    for the whole run (the schedule's mean, so the expected share of sharpness steps is about the same).

    Degenerate cases: a c low enough that the test always passes (e.g. -1e9) is SAM (or ESAM) exactly;
    one high enough that it never passes (e.g. 1e9; step 0 then too) is the base optimizer exactly.

    Args (beyond SkippingSAM's; the config fields' names): aesam_c_start, aesam_c_end (finite),
    aesam_momentum (delta) in [0, 1), total_steps (a positive int or None).
    """

    method = "aesam"
    hyperparameters = SkippingSAM.hyperparameters + ("aesam_c_start", "aesam_c_end", "aesam_momentum")
    _float_keys = SkippingSAM._float_keys + ("aesam_c_start", "aesam_c_end", "aesam_momentum")

    def __init__(self, params: Iterable, base_optimizer: torch.optim.Optimizer, rho: float = 0.05,
                 aesam_c_start: float = 1.0, aesam_c_end: float = -1.0, aesam_momentum: float = 0.9,
                 total_steps: int | None = None, sharpness: str = "sam", beta: float = 0.6, gamma: float = 0.5,
                 score: str = "loss_rise", adaptive: bool = False, bn_update: str = "all",
                 max_grad_norm: float | None = None, model: torch.nn.Module | None = None, seed: int | None = None,
                 generator: torch.Generator | None = None, swp_patterns: int | None = None) -> None:
        for name, value in (("aesam_c_start", aesam_c_start), ("aesam_c_end", aesam_c_end)):
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        if not 0 <= aesam_momentum < 1:
            raise ValueError(f"aesam_momentum must be in [0, 1), got {aesam_momentum}")
        if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, int)
                                        or total_steps < 1):
            raise ValueError(f"total_steps must be a positive integer or None, got {total_steps!r}")
        super().__init__(params, base_optimizer, rho, sharpness, beta, gamma, score, adaptive, bn_update,
                         max_grad_norm, model, seed, generator, swp_patterns)
        self.defaults.update(aesam_c_start=aesam_c_start, aesam_c_end=aesam_c_end, aesam_momentum=aesam_momentum)
        self.c_start, self.c_end, self.momentum = float(aesam_c_start), float(aesam_c_end), float(aesam_momentum)
        self.total_steps = total_steps
        self.mean = 0.0  # running statistics of ||g||^2, on the host
        self.var = 0.0
        self.last_sq_norm = float("nan")
        self.timed_share: float | None = None  # see time_at_share

    def time_at_share(self, share: float | None) -> None:
        """For timing only (the trainer's speed probe): sharpen on `share` of the steps, spread evenly
        (step t sharpens when floor((t + 1) share) > floor(t share)), whatever the test says; None
        returns to the test. The first pass, the norm and its host sync still run, so each step costs
        what a training step of its kind costs, at the share of sharpness steps the run really had."""
        if share is not None and not 0 <= share <= 1:
            raise ValueError(f"share must be in [0, 1] or None, got {share}")
        self.timed_share = share

    def threshold_c(self, t: int) -> float:
        """c at step t: linear from c_start (t = 0) to c_end (t = T - 1, and after); the mean without T."""
        if self.total_steps is None:
            return (self.c_start + self.c_end) / 2
        progress = min(t, self.total_steps - 1) / max(1, self.total_steps - 1)
        return self.c_start + (self.c_end - self.c_start) * progress

    def step(self, closure: Closure | None = None) -> torch.Tensor:  # type: ignore[override]
        """One pass, the test on ||g||^2, then the sharpness step from g or the base step with g."""
        closure = require_closure(closure)
        loss, losses = self._one_pass(closure)
        with torch.no_grad():
            grads = [p.grad for p in self._params if p.grad is not None]
            sq = torch.stack(torch._foreach_norm(grads)).square().sum() if grads else torch.zeros(())
        s = self.last_sq_norm = float(sq)  # the step's one host sync (free on the CPU)
        self.mean = self.momentum * self.mean + (1 - self.momentum) * s
        self.var = self.momentum * self.var + (1 - self.momentum) * (s - self.mean) ** 2
        if self.timed_share is not None:
            t, f = self.num_steps, self.timed_share
            sharpen = math.floor((t + 1) * f) > math.floor(t * f)
        else:
            sharpen = s >= self.mean + self.threshold_c(self.num_steps) * math.sqrt(self.var)
        if sharpen:
            return self._sharpen_from(closure, loss, losses)
        return self._base_update(loss, losses.shape[0])

    def _sharpen_from(self, closure: Closure, loss: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """SAM.step after its ascent pass, with the first pass's gradient as the ascent gradient."""
        frozen = self._freeze()  # ESAM's SWP draw (SAM: none); the gradients exist already, so drop theirs
        for p in frozen:
            p.requires_grad_(True)
            p.grad = None
        k, scored = self._perturb_and_descend(closure, losses)
        # Every weight gradient was computed in the first pass, whatever SWP kept afterwards.
        self.last_cost = StepCost.two_pass(self.method, losses.shape[0], k, 1.0, scored)
        self.sharpness_steps += 1
        self.last_sharpened = True
        return loss.detach()

    # --- state -------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """SkippingSAM's state and the running mean and variance of ||g||^2."""
        return {**super().state_dict(), "sq_norm_mean": self.mean, "sq_norm_var": self.var}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        super().load_state_dict(state_dict)
        self.mean = float(state_dict.get("sq_norm_mean", 0.0))
        self.var = float(state_dict.get("sq_norm_var", 0.0))


def sharp_share(knobs: Mapping[str, Any]) -> float:
    """The expected share of steps whose ||g||^2 passes the test (cost.aesam_sharp_fraction)."""
    return aesam_sharp_fraction(knobs["aesam_c_start"], knobs["aesam_c_end"])


AESAM_INFO = MethodInfo("aesam", "AESAM", knobs=SKIPPING_KNOBS + (
    Knob("aesam_c_start", short="c0", paper=1.0), Knob("aesam_c_end", short="c1", paper=-1.0),
    Knob("aesam_momentum", 0.0, 1.0, open_high=True, paper=0.9)), skips=True, share=sharp_share, full_ascent=True)
