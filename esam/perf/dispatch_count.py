"""How many ATen operators a piece of code dispatches: the host-side cost of a step.

When a GPU step is bound by the host launching kernels (small batches on an H100/H200), its time
follows the number of operators dispatched, not the arithmetic; this count is measurable on any
machine, the CPU included. Views and metadata operators (detach, view, t, ...) launch no kernel and
are left out; a replayed CUDA graph counts as nothing, which is the point of replaying one.
"""
from __future__ import annotations

import collections
from typing import Callable

from torch.utils._python_dispatch import TorchDispatchMode

NO_KERNEL = frozenset({
    "detach", "t", "view", "_unsafe_view", "as_strided", "expand", "permute", "unsqueeze", "squeeze", "alias",
    "empty", "empty_strided", "_reshape_alias", "reshape", "slice", "select", "transpose", "lift_fresh",
    "_record_function_enter_new", "_record_function_exit",
})


class _Counter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in NO_KERNEL:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], object]) -> collections.Counter[str]:
    """Run fn() once; return {operator name: times dispatched}, kernel-launching operators only."""
    with _Counter() as counter:
        fn()
    return counter.counts
