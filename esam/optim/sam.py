"""SAM (Foret et al., 2021) and ASAM (Kwon et al., 2021) behind the one-call step(closure) contract."""
from __future__ import annotations

import contextlib
from typing import Iterable

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from .cost import StepCost
from .methods import Knob, MethodInfo
from .plain import Closure, Plain, require_closure

BN_UPDATES = ("all", "clean")  # which forwards update BatchNorm running stats
RHO = Knob("rho", low=0.0, paper=0.05)  # the neighbourhood's size, every sharpness-aware method's
BN_UPDATE = Knob("bn_update", choices=BN_UPDATES)
_EPS = 1e-12


class SAM(Plain):
    """Sharpness-Aware Minimization wrapped around a base optimizer.

    One step at weights w, batch loss L:
        g = grad L(w)                      ascent pass (full batch)
        e = rho * g / ||g||                ASAM (adaptive): e = rho * w^2 g / ||w g||, elementwise
        g' = grad L(w + e)                 descent pass: climb to the local maximum, take its gradient
        w <- base_optimizer(w, g')         w itself is restored by copy, bit for bit
    Two forward+backward passes: relative_cost 2.0. Degenerate case: rho = 0 takes exactly the
    base optimizer's (Plain's) steps.

    Args:
        rho: neighbourhood size, >= 0.
        adaptive: ASAM's scale-invariant neighbourhood.
        max_grad_norm: clip the descent gradient to this norm before the update; None: no clipping.
        model: the module the closure runs; needed for bn_update="clean" and for DDP (below).
        bn_update: "all" (the authors': every forward updates BatchNorm running stats) or "clean"
            (only the clean forward at w does: the stats are saved after it and copied back after
            the perturbed passes).

    Under DDP (`model` is the DistributedDataParallel module the closure runs), with rank r's batch
    loss L_r:
        g_r = grad L_r(w)                  ascent pass inside model.no_sync(): local, no all-reduce
        e_r = rho * g_r / ||g_r||          each rank's own norm: m-sharpness with m = the rank's batch
        g'  = mean_r grad L_r(w + e_r)     descent pass: an ordinary DDP backward, all-reduced
    so w is the same on every rank before and after a step; only w + e_r differs between ranks.
    Tested against a single-process computation of the same quantities (tests/test_ddp_semantics.py).

    `first_step` / `second_step` stay public for callers who run the passes themselves (as in
    davda54/sam): forward+backward, first_step(zero_grad=True), forward+backward, second_step(); under
    DDP such a caller runs the first backward inside model.no_sync() itself.
    """

    method = "sam"
    hyperparameters = Plain.hyperparameters + ("rho", "adaptive", "bn_update")

    def __init__(self, params: Iterable, base_optimizer: torch.optim.Optimizer, rho: float = 0.05,
                 adaptive: bool = False, max_grad_norm: float | None = None, model: torch.nn.Module | None = None,
                 bn_update: str = "all") -> None:
        if not rho >= 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        if bn_update not in BN_UPDATES:
            raise ValueError(f"unknown bn_update {bn_update!r} (valid: {', '.join(BN_UPDATES)})")
        if bn_update == "clean" and model is None:
            raise ValueError("bn_update='clean' needs model=... to find the BatchNorm running stats")
        super().__init__(params, base_optimizer, max_grad_norm)
        self.defaults.update(rho=rho, adaptive=adaptive, bn_update=bn_update)
        self.rho, self.adaptive, self.bn_update, self.model = float(rho), bool(adaptive), bn_update, model
        self._beta = 1.0  # SWP's keep probability: ESAM's e carries 1 / beta
        self._saved: list[torch.Tensor] | None = None  # w during the perturbation, allocated once
        self._perturbed: tuple[list, list] = ([], [])  # (params, their saved copies) of the last first_step
        self._ascent_fraction = 1.0
        self._bn_modules = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats] \
            if bn_update == "clean" else []
        self._bn_saved: list[torch.Tensor] | None = None

    # --- the two halves, public as in davda54/sam -----------------------------------------------

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Climb to w + e, e = rho * g / (beta * ||g||), over the tensors that have a gradient (beta = 1 in SAM).

        w is saved first (exact copy), so second_step can restore it bit for bit.
        """
        if self._saved is None:
            self._saved = [torch.empty_like(p) for p in self._params]
        params, saved, grads, numel = [], [], [], 0
        for p, s, n in zip(self._params, self._saved, self._numels):
            if p.grad is not None:
                params.append(p)
                saved.append(s)
                grads.append(p.grad)
                numel += n
        self._perturbed = (params, saved)
        self._ascent_fraction = numel / self._total_numel
        if params:
            if self.adaptive:  # ASAM: T_w = |w|, e = rho * T_w^2 g / ||T_w g||
                t_w = torch._foreach_abs(params)
                grads = torch._foreach_mul(grads, t_w)
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            scale = (self.rho / self._beta) / (norm + _EPS)  # a device tensor: no sync
            if zero_grad or self.adaptive:  # the grads are dropped (or grads is already a temporary): reuse them as e
                torch._foreach_mul_(grads, scale)
                e = grads
            else:
                e = torch._foreach_mul(grads, scale)
            if self.adaptive:
                torch._foreach_mul_(e, t_w)
            torch._foreach_copy_(saved, params)
            torch._foreach_add_(params, e)
        if zero_grad:
            self._zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Clip the descent gradient (if max_grad_norm), return to w by copy, and take the base optimizer's step."""
        self._clip()
        self._restore_w()
        self.base_optimizer.step()
        if zero_grad:
            self._zero_grad()

    # --- one step ----------------------------------------------------------------------------------

    def step(self, closure: Closure | None = None) -> torch.Tensor:  # type: ignore[override]
        """Ascent, perturb, [select], descent, restore, base step. Returns the mean clean loss, detached."""
        closure = require_closure(closure)
        self._zero_grad()
        frozen = self._freeze()  # ESAM's SWP; nothing in SAM
        everything_frozen = bool(frozen) and len(frozen) == len(self._params)
        try:
            with self._no_sync(), torch.enable_grad():
                losses = self._forward(closure)
                loss = losses.mean()
                if not everything_frozen:
                    loss.backward()
        finally:
            for p in frozen:
                p.requires_grad_(True)
        batch = losses.shape[0]
        k, scored = self._perturb_and_descend(closure, losses.detach())
        self.last_cost = StepCost.two_pass(self.method, batch, k, self._ascent_fraction, scored,
                                           ascent_backward=not everything_frozen)
        return loss.detach()

    def _perturb_and_descend(self, closure: Closure, losses: torch.Tensor) -> tuple[int, bool]:
        """The step after the ascent gradient: perturb, [select], descent pass, restore, base step.

        `losses` are the clean per-sample losses (ESAM's SDS scores from them). Returns (k, scored).
        """
        self._save_bn()
        self.first_step(zero_grad=True)
        try:
            indices, k, scored = self._select(closure, losses)  # ESAM's SDS; the whole batch in SAM
            with torch.enable_grad():
                self._forward(closure, indices, k).mean().backward()
        except BaseException:  # leave w (and the BN stats) as they were before the perturbation
            self._restore_w()
            raise
        finally:
            self._restore_bn()
        self.second_step()
        self.num_steps += 1
        return k, scored

    @torch.no_grad()
    def _restore_w(self) -> None:
        params, saved = self._perturbed
        if params:
            torch._foreach_copy_(params, saved)  # a copy, not w + e - e: exact
        self._perturbed = ([], [])

    def _freeze(self) -> list[torch.Tensor]:
        """Tensors to leave out of the ascent pass (ESAM's SWP). SAM keeps them all."""
        return []

    def _select(self, closure: Closure, clean_losses: torch.Tensor) -> tuple[torch.Tensor | None, int, bool]:
        """(indices for the descent pass or None for all, their count, whether a scoring forward ran)."""
        return None, clean_losses.shape[0], False

    def _no_sync(self):
        if isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
            return self.model.no_sync()  # the ascent gradient stays local; the descent one is all-reduced
        return contextlib.nullcontext()

    # --- BatchNorm running stats for bn_update="clean" -----------------------------------------

    def _bn_buffers(self) -> list[torch.Tensor]:
        # Read from the modules each time: model.to(device) replaces buffer tensors.
        return [b for m in self._bn_modules for b in (m.running_mean, m.running_var, m.num_batches_tracked)
                if b is not None]

    @torch.no_grad()
    def _save_bn(self) -> None:
        if self._bn_modules:
            bufs = self._bn_buffers()
            if self._bn_saved is None:
                self._bn_saved = [b.clone() for b in bufs]
            else:
                torch._foreach_copy_(self._bn_saved, bufs)

    @torch.no_grad()
    def _restore_bn(self) -> None:
        if self._bn_modules:
            torch._foreach_copy_(self._bn_buffers(), self._bn_saved)


SAM_INFO = MethodInfo("sam", "SAM", knobs=(RHO, BN_UPDATE), sharpness="sam", searched=False)  # a search's reference
