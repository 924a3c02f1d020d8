"""Wall-clock timing that waits for the device: what a GPU timer must do to be honest."""
from __future__ import annotations

import time

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Accumulates the time of the timed steps; the first `skip` steps of each epoch are warm-up.

    The clock starts after the warm-up steps have finished on the device and stops after the
    last step has; only the steps in between count (data loading and augmentation of those steps
    included, evaluation and compilation excluded).
    """

    def __init__(self, device: torch.device, skip: int):
        self.device, self.skip = device, skip
        self.start: float | None = None
        self.steps = 0

    def before_step(self, step_in_epoch: int) -> None:
        if step_in_epoch == self.skip:
            synchronize(self.device)
            self.start = time.perf_counter()

    def after_step(self, step_in_epoch: int) -> None:
        if step_in_epoch >= self.skip:
            self.steps += 1

    def elapsed(self) -> float:
        """Seconds spent in the timed steps (synchronizes)."""
        if self.start is None:
            return 0.0
        synchronize(self.device)
        return time.perf_counter() - self.start
