"""Step time relative to SGD, measured interleaved in the same process.

Trials that share a GPU (or CPU cores) slow each other down, so raw images/s depends on the
neighbours. Timing the method's step and an SGD step alternately on the same batch exposes both
to the same interference; their ratio stays comparable across packings and machines.
The probe trains throw-away copies of the model, so the real training run is untouched.
esam.training.speed_estimate turns the pairs of a whole run into the estimate and its interval.
"""
from __future__ import annotations

import copy
import statistics
import time
from typing import Callable

import torch

from esam.training.timing import synchronize


class InterleavedProbe:
    """Times alternating (method step, SGD step) pairs on one fixed batch."""

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
        self._order = 0  # pairs timed so far: even ones time the method first, odd ones SGD first

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

    def time_pairs(self, make_closure: Callable, pairs: int, discard_first: bool = True) -> list[tuple[float, float]]:
        """`pairs` timed (method seconds, SGD seconds) pairs, after one discarded pair if `discard_first`.

        `make_closure(runner)` builds a step's closure around what a copy's passes call. The order
        within a pair alternates (method first, then SGD first), so that whatever the first step of
        a pair pays or leaves behind (cold caches, a clock ramping up) falls on both alike."""
        method_closure, sgd_closure = (make_closure(r) for r in self.runners)
        timed = []
        for i in range(pairs + int(discard_first)):
            if self._order % 2 == 0:
                m = self._time_step(self.method_opt, method_closure)
                s = self._time_step(self.sgd_opt, sgd_closure)
            else:
                s = self._time_step(self.sgd_opt, sgd_closure)
                m = self._time_step(self.method_opt, method_closure)
            self._order += 1
            if i > 0 or not discard_first:
                timed.append((m, s))
        return timed

    def step_time_ratio(self, make_closure: Callable, pairs: int) -> float:
        """Median method step time / median SGD step time of `pairs` pairs; one warm-up pair is discarded."""
        timed = self.time_pairs(make_closure, pairs)
        return statistics.median(m for m, _ in timed) / statistics.median(s for _, s in timed)
