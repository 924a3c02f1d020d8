"""Plain: the base optimizer behind the one-call `step(closure)` contract that SAM and ESAM share.

The closure contract: `closure(indices=None)` runs the forward pass on the whole batch (indices
None) or on the samples at `indices` (a LongTensor on the batch's device) and returns the
PER-SAMPLE losses, shape [n], graph attached. The optimizer zeroes the gradients and runs the
backward passes itself; `step` returns the mean clean loss as a detached tensor, without a host
sync. Indexing a channels_last batch returns the default memory format, so a closure should
restore it: `x[idx].contiguous(memory_format=torch.channels_last)`.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from .cost import StepCost
from .methods import MethodInfo

Closure = Callable[..., torch.Tensor]


class Plain(torch.optim.Optimizer):
    """One forward and one backward pass, then `base_optimizer.step()`: SGD's cost (relative_cost 1.0).

    Args:
        params: the base optimizer's parameters (model.parameters() or the same param groups).
        base_optimizer: an optimizer instance, e.g. torch.optim.SGD(model.parameters(), lr=0.05,
            momentum=0.9, weight_decay=5e-4). Its param_groups are shared, so LR schedulers work on
            either object; state_dict() holds its state (momentum) as well as this wrapper's.
        max_grad_norm: clip the gradient to this L2 norm before the update; None: no clipping.

    fp16 weights are refused: they need a GradScaler, which these steps do not support. Keep fp32
    weights and run the closure under bf16 autocast, which needs no scaler.
    """

    method = "sgd"
    # Settings of an optimizer config (`optimizer:` in YAML) this method uses, beyond the base SGD's.
    hyperparameters: tuple[str, ...] = ("max_grad_norm",)

    def __init__(self, params: Iterable, base_optimizer: torch.optim.Optimizer,
                 max_grad_norm: float | None = None) -> None:
        if not isinstance(base_optimizer, torch.optim.Optimizer):
            raise TypeError(f"base_optimizer must be an optimizer instance, e.g. torch.optim.SGD(model.parameters(), "
                            f"lr=0.05), got {base_optimizer!r}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be positive or None, got {max_grad_norm}")
        super().__init__(list(params), dict(max_grad_norm=max_grad_norm))
        mine = {id(p) for g in self.param_groups for p in g["params"]}
        base = [p for g in base_optimizer.param_groups for p in g["params"]]
        if mine != {id(p) for p in base}:
            raise ValueError(f"params must be the base optimizer's parameters: got {len(mine)} tensors, "
                             f"the base optimizer holds {len(base)} (some differ)")
        half = [tuple(p.shape) for p in base if p.dtype == torch.float16]
        if half:
            raise ValueError(f"fp16 parameters (shapes {half[:3]}...) need a GradScaler, which these steps do not "
                             "support: keep fp32 weights and use torch.autocast(dtype=torch.bfloat16) in the closure")
        self.base_optimizer = base_optimizer
        self.param_groups = base_optimizer.param_groups  # shared: schedulers may drive either object
        self.max_grad_norm = max_grad_norm
        # The trainable tensors, fixed at construction (cached: steps walk this list, not the groups).
        self._params = [p for p in base if p.requires_grad]
        self._numels = [p.numel() for p in self._params]
        self._total_numel = max(1, sum(self._numels))
        self.num_steps = 0
        self.last_cost: StepCost | None = None

    # --- one step -------------------------------------------------------------------------------

    def step(self, closure: Closure | None = None) -> torch.Tensor:  # type: ignore[override]
        """Forward + backward on the batch, clip, base step. Returns the mean loss, detached."""
        closure = require_closure(closure)
        self._zero_grad()
        with torch.enable_grad():
            losses = self._forward(closure)
            loss = losses.mean()
            loss.backward()
        self._clip()
        self.base_optimizer.step()
        self.num_steps += 1
        self.last_cost = StepCost.one_pass(self.method, losses.shape[0])
        return loss.detach()

    # --- helpers shared with SAM and ESAM ---------------------------------------------------------

    def _zero_grad(self) -> None:
        for p in self._params:
            p.grad = None

    @staticmethod
    def _forward(closure: Closure, indices: torch.Tensor | None = None, n: int | None = None) -> torch.Tensor:
        """Call the closure and check that it returned per-sample losses of shape [n]."""
        losses = closure() if indices is None else closure(indices)
        if not isinstance(losses, torch.Tensor) or losses.dim() != 1 or (n is not None and losses.shape[0] != n):
            got = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
            want = f"[{n}]" if n is not None else "[batch]"
            raise TypeError(f"closure must return per-sample losses of shape {want} "
                            f"(e.g. F.cross_entropy(..., reduction='none')), got {got}")
        return losses

    def _clip(self) -> None:
        if self.max_grad_norm is not None:  # no sync: the clip coefficient stays on the device
            torch.nn.utils.clip_grad_norm_(self._params, self.max_grad_norm, foreach=True)

    # --- state -------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """The base optimizer's state dict (momentum, lr) plus this wrapper's step counter."""
        return {"base": self.base_optimizer.state_dict(), "num_steps": self.num_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        if "base" not in state_dict:
            raise ValueError(f"not a {type(self).__name__} state dict (keys {sorted(state_dict)}); "
                             "to load a bare base-optimizer state use opt.base_optimizer.load_state_dict")
        self.base_optimizer.load_state_dict(state_dict["base"])
        self.param_groups = self.base_optimizer.param_groups  # loading builds new group dicts: re-share
        self.num_steps = int(state_dict["num_steps"])


SGD_INFO = MethodInfo("sgd", "SGD", sharpness=None, searched=False)  # a search's reference: no sharpness step


def require_closure(closure: Closure | None) -> Closure:
    """`closure` itself; a step called without one (torch's signature allows it) is a TypeError saying what it needs."""
    if closure is None:
        raise TypeError("step needs a closure(indices=None) returning per-sample losses")
    return closure
