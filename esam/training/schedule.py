"""Learning-rate schedules as per-step multipliers of the peak lr (one LambdaLR, checkpointable)."""
from __future__ import annotations

import math
from typing import Callable


def lr_multiplier(schedule: str, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Step -> factor of the peak lr.

    cosine: linear warm-up, then cosine decay to 0 (the paper's schedule).
    onecycle: linear rise to the peak over the first 25% of steps (or the warm-up if longer),
    then linear decay to 0; short budgets train well with it.
    constant: linear warm-up, then the peak lr.
    """
    total = max(total_steps, 1)
    if schedule == "onecycle":
        rise = max(warmup_steps, total // 4, 1)
        return lambda s: (s + 1) / rise if s < rise else max(0.0, (total - s) / max(total - rise, 1))
    warm = max(warmup_steps, 0)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if schedule == "constant":
            return 1.0
        progress = (step - warm) / max(total - warm, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return factor
