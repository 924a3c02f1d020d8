"""Step time relative to SGD, measured interleaved in the same process.

Trials that share a GPU (or CPU cores) slow each other down, so raw images/s depends on the
neighbours. Timing the method's step and an SGD step alternately on the same batch exposes both
to the same interference; their ratio stays comparable across packings and machines.
The probe trains throw-away copies of the model, so the real training run is untouched.
"""
from __future__ import annotations

import copy
import statistics
import time
from typing import Callable

import torch

from esam.training.timing import synchronize


class InterleavedProbe:
    """Times `pairs` alternating (method step, SGD step) pairs on one fixed batch."""

    def __init__(self, model: torch.nn.Module, make_optimizer: Callable, make_sgd: Callable,
                 device: torch.device, wrap: Callable | None = None):
        self.device = device
        self.method_model = copy.deepcopy(model)
        self.sgd_model = copy.deepcopy(model)
        self.method_opt = make_optimizer(self.method_model)
        self.sgd_opt = make_sgd(self.sgd_model)
        # What the closures call for each copy: the copy itself, or its CUDA graphs (wrapped once, kept).
        wrap = wrap or (lambda m: m)
        self.runners = [wrap(self.method_model), wrap(self.sgd_model)]

    def _time_step(self, opt, closure) -> float:
        synchronize(self.device)
        start = time.perf_counter()
        opt.step(closure)
        synchronize(self.device)
        return time.perf_counter() - start

    def warm_up(self, make_closure: Callable, repeat: Callable[[Callable[[], None]], object]) -> None:
        """Untimed pairs, as many as `repeat(step)` calls step (for example until CUDA graphs are captured)."""
        method_closure, sgd_closure = (make_closure(r) for r in self.runners)

        def step() -> None:
            self.method_opt.step(method_closure)
            self.sgd_opt.step(sgd_closure)
        repeat(step)

    def step_time_ratio(self, make_closure: Callable, pairs: int) -> float:
        """Median method step time / median SGD step time; one warm-up pair is discarded.

        `make_closure(runner)` builds a step's closure around what a copy's passes call."""
        method_closure, sgd_closure = (make_closure(r) for r in self.runners)
        method_times, sgd_times = [], []
        for i in range(pairs + 1):
            m = self._time_step(self.method_opt, method_closure)
            s = self._time_step(self.sgd_opt, sgd_closure)
            if i > 0:
                method_times.append(m)
                sgd_times.append(s)
        return statistics.median(method_times) / statistics.median(sgd_times)
