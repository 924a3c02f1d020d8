"""LookSAM (Liu et al., CVPR 2022): the sharpness-aware gradient every k steps, its new direction reused in between."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch

from .methods import Knob, MethodInfo
from .plain import Closure, require_closure
from .skipping import SKIPPING_KNOBS, SkippingSAM

_EPS = 1e-12


class LookSAM(SkippingSAM):
    """A full sharpness step every k steps; in between one pass plus the last sharpness step's orthogonal part.

    Steps t = 0, k, 2k, ... take the sharpness step (SAM's, or ESAM's with sharpness="esam"):
        g   = grad L(w)                           ascent pass (under SWP the kept tensors; the others count as 0)
        g_s = grad L(w + e)                       descent pass (under SDS the selected samples)
        g_v = g_s - (<g, g_s> / ||g||^2) g        the part of g_s orthogonal to g: what SAM adds to SGD's
                                                  direction (the paper's g_s - ||g_s|| cos(theta) g / ||g||)
        w  <- base_optimizer(w, g_s)
    The k - 1 steps in between take one pass and reuse g_v, scaled to the new gradient's norm:
        g   = grad L(w)
        w  <- base_optimizer(w, g + alpha * (||g|| / ||g_v||) * g_v)
    Norms and the inner product are global (over every tensor), as in the paper's Algorithm 1; its
    layer-wise variant (Look-LayerSAM, for large batches) is not built here. Everything stays on the
    device: no host sync. Cost: (S + k - 1) / k, S the sharpness step's (SAM: 1.2 at k = 5, SAM's
    throughput times 1.67 at best). Memory: g_v, one gradient's worth, plus g kept during a sharpness step.

    Degenerate cases: k = 1 is SAM (or ESAM) exactly; alpha = 0 is SAM every k steps and the base
    optimizer in between (the paper's "SAM-k"). The paper's settings: k = 5, alpha = 0.7.

    Args (beyond SkippingSAM's): looksam_k >= 1, looksam_alpha >= 0 (the names of their config fields).
    """

    method = "looksam"
    hyperparameters = SkippingSAM.hyperparameters + ("looksam_k", "looksam_alpha")
    _float_keys = SkippingSAM._float_keys + ("looksam_alpha",)

    def __init__(self, params: Iterable, base_optimizer: torch.optim.Optimizer, rho: float = 0.05,
                 looksam_k: int = 5, looksam_alpha: float = 0.7, sharpness: str = "sam", beta: float = 0.6,
                 gamma: float = 0.5, score: str = "loss_rise", adaptive: bool = False, bn_update: str = "all",
                 max_grad_norm: float | None = None, model: torch.nn.Module | None = None, seed: int | None = None,
                 generator: torch.Generator | None = None, swp_patterns: int | None = None) -> None:
        if isinstance(looksam_k, bool) or not isinstance(looksam_k, int) or looksam_k < 1:
            raise ValueError(f"looksam_k must be a positive integer, got {looksam_k!r}")
        if not looksam_alpha >= 0:
            raise ValueError(f"looksam_alpha must be >= 0, got {looksam_alpha}")
        super().__init__(params, base_optimizer, rho, sharpness, beta, gamma, score, adaptive, bn_update,
                         max_grad_norm, model, seed, generator, swp_patterns)
        self.defaults.update(looksam_k=looksam_k, looksam_alpha=looksam_alpha)
        self.k, self.alpha = looksam_k, float(looksam_alpha)
        self._g_v: list[torch.Tensor] | None = None  # one per trainable tensor; set by each sharpness step
        self._g_v_scale: torch.Tensor | None = None  # alpha / ||g_v||, a device scalar
        self._plain_grad: list[torch.Tensor | None] | None = None  # g, held from first_step to second_step

    def step(self, closure: Closure | None = None) -> torch.Tensor:  # type: ignore[override]
        """The sharpness step at t % k == 0 (or before the first g_v), else one pass plus alpha-scaled g_v."""
        closure = require_closure(closure)
        if self.num_steps % self.k == 0 or self._g_v is None:
            return self._sharpness_step(closure)
        loss, losses = self._one_pass(closure)
        with torch.no_grad():
            with_grad = [i for i, p in enumerate(self._params) if p.grad is not None]
            grads = [self._params[i].grad for i in with_grad]
            if grads:
                norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
                scale = norm * self._g_v_scale  # alpha ||g|| / ||g_v||, a device tensor: no sync
                torch._foreach_add_(grads, torch._foreach_mul([self._g_v[i] for i in with_grad], scale))
        return self._base_update(loss, losses.shape[0])

    # --- the sharpness step's halves keep g and leave g_v behind ------------------------------------

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """SAM's (ESAM's) climb to w + e, keeping g for the decomposition in second_step."""
        if self.k > 1:  # at k = 1 nothing is ever reused: SAM's step exactly, without the extra work
            self._plain_grad = [p.grad for p in self._params]
        super().first_step(zero_grad=False)  # e into fresh tensors, so g survives in our references
        if zero_grad:
            self._zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """g_v from g and the descent gradient g_s (before clipping), then SAM's restore and base step."""
        if self._plain_grad is not None:
            self._decompose(self._plain_grad, [p.grad for p in self._params])
            self._plain_grad = None
        super().second_step(zero_grad)

    def _decompose(self, g: list[torch.Tensor | None], g_s: list[torch.Tensor | None]) -> None:
        # A tensor without g (left out by SWP) keeps all of g_s; one without g_s (unused) gets zeros.
        g_v = [torch.zeros_like(p) if b is None else b for p, b in zip(self._params, g_s)]
        both = [i for i, (a, b) in enumerate(zip(g, g_s)) if a is not None and b is not None]
        if both:  # one flat inner product: a few launches, whatever the number of tensors
            flat_g = torch.cat([g[i].reshape(-1) for i in both])
            coef = torch.dot(flat_g, torch.cat([g_s[i].reshape(-1) for i in both])) / (torch.dot(flat_g, flat_g)
                                                                                        + _EPS * _EPS)
            orthogonal = torch._foreach_sub([g_s[i] for i in both], torch._foreach_mul([g[i] for i in both], coef))
            for i, v in zip(both, orthogonal):
                g_v[i] = v
        self._g_v = g_v
        self._set_scale()

    def _set_scale(self) -> None:
        self._g_v_scale = self.alpha / (torch.linalg.vector_norm(torch.stack(torch._foreach_norm(self._g_v))) + _EPS)

    # --- state -------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """SkippingSAM's state and g_v (None before the first sharpness step)."""
        return {**super().state_dict(), "g_v": self._g_v}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        super().load_state_dict(state_dict)
        g_v = state_dict.get("g_v")
        if g_v is None:
            self._g_v = self._g_v_scale = None
            return
        if len(g_v) != len(self._params) or any(t.shape != p.shape for t, p in zip(g_v, self._params)):
            raise ValueError(f"the state dict's g_v has {len(g_v)} tensors; this LookSAM has {len(self._params)} "
                             "trainable tensors of other shapes")
        self._g_v = [t.to(device=p.device, dtype=p.dtype) for t, p in zip(g_v, self._params)]
        self._set_scale()


def sharp_share(knobs: Mapping[str, Any]) -> float:
    """One sharpness step in every k."""
    k = knobs["looksam_k"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"looksam_k must be a positive integer, got {k!r}")
    return 1 / k


LOOKSAM_INFO = MethodInfo("looksam", "LookSAM", knobs=SKIPPING_KNOBS + (
    Knob("looksam_k", low=1, integer=True, short="k", paper=5),
    Knob("looksam_alpha", low=0.0, short="alpha", paper=0.7)), skips=True, share=sharp_share, cycle="looksam_k")
