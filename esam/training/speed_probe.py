"""Step time relative to SGD, measured interleaved in the same process.

Trials that share a GPU (or CPU cores) slow each other down, so raw images/s depends on the
neighbours. Timing the method's step and an SGD step alternately on the same batch exposes both
to the same interference; their ratio stays comparable across packings and machines.
The probe trains throw-away copies of the model, so the real training run is untouched.
esam.training.speed_estimate turns the pairs of a whole run into the estimate and its interval.

A pair times a block of consecutive steps of each, not always one: LookSAM, RST and AE-SAM take
a dear sharpness step on some steps and a cheap one-pass step on the others, and the median of
single-step ratios mostly sees the cheap ones (on digits it put LookSAM at 0.93x SGD where its
cost says 0.85x, RST at 0.96x where it says 0.61x). A block of the method's cycle holds its dear
steps in their share: LookSAM's k steps hold exactly one; RST's and AE-SAM's RANDOM_BLOCK steps
hold about p (or the test's share) of them. A pair of such a method also records its block's share
of sharpness steps, from the optimizer's own count, so that the estimate can move each block to the
run's share (esam.training.speed_estimate.block_ratios) instead of taking the median block's whole
count. Methods whose every step costs the same keep blocks of 1 and record no share.
"""
from __future__ import annotations

import copy
import statistics
import time
from typing import Callable

import torch

from esam.config import OptimizerConfig
from esam.optim import METHODS
from esam.training.timing import synchronize

# RST, AE-SAM (their records name no cycle): steps per timed block; their shares spread, which lets the estimate
# fit their cost
RANDOM_BLOCK = 10


def cycle_steps(config: OptimizerConfig) -> int:
    """How many consecutive steps one probe pair times of each: the method's cycle (1 for SGD, SAM, ESAM)."""
    info = METHODS.get(config.name)
    if info is None or not info.skips:
        return 1
    if info.cycle is not None:
        return config.setting(info.cycle)  # any k consecutive steps of LookSAM hold exactly one sharpness step
    return RANDOM_BLOCK


class InterleavedProbe:
    """Times alternating (method block, SGD block) pairs on one fixed batch; a block is `block` steps in a row."""

    block: int = 1

    def __init__(self, model: torch.nn.Module, make_optimizer: Callable, make_sgd: Callable,
                 device: torch.device, wrap: Callable | None = None, block: int = 1):
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ValueError(f"block must be a positive integer, got {block!r}")
        self.device = device
        self.block = block
        self.method_model = copy.deepcopy(model)
        self.sgd_model = copy.deepcopy(model)
        self.method_opt = make_optimizer(self.method_model)
        self.sgd_opt = make_sgd(self.sgd_model)
        # What the closures call for each copy: the copy itself, or its CUDA graphs (wrapped once, kept).
        wrap = wrap or (lambda m: m)
        self.runners = [wrap(self.method_model), wrap(self.sgd_model)]
        self._order = 0  # pairs timed so far: even ones time the method first, odd ones SGD first

    def _time_step(self, opt, closure) -> float:
        """Seconds of `block` consecutive steps, synchronized once before and once after."""
        synchronize(self.device)
        start = time.perf_counter()
        for _ in range(self.block):
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

    def _sharpness_steps(self) -> int | None:
        """The method copy's count of sharpness steps so far; None for methods that do not skip passes."""
        count = getattr(self.method_opt, "sharpness_steps", None)
        return count if isinstance(count, int) else None

    def _time_method(self, closure) -> tuple[float, ...]:
        """(seconds,) of a method block, or (seconds, share of sharpness steps in it) for a skipping method."""
        before = self._sharpness_steps()
        seconds = self._time_step(self.method_opt, closure)
        after = self._sharpness_steps()
        return (seconds,) if before is None or after is None else (seconds, (after - before) / self.block)

    def time_pairs(self, make_closure: Callable, pairs: int, discard_first: bool = True) -> list[tuple[float, ...]]:
        """`pairs` timed (method seconds, SGD seconds[, share]) pairs of blocks, after one discarded pair
        if `discard_first`; `share` (the method block's share of sharpness steps) for LookSAM, RST and AE-SAM.

        `make_closure(runner)` builds a step's closure around what a copy's passes call. The order
        within a pair alternates (method first, then SGD first), so that whatever the first step of
        a pair pays or leaves behind (cold caches, a clock ramping up) falls on both alike."""
        method_closure, sgd_closure = (make_closure(r) for r in self.runners)
        timed = []
        for i in range(pairs + int(discard_first)):
            if self._order % 2 == 0:
                m = self._time_method(method_closure)
                s = self._time_step(self.sgd_opt, sgd_closure)
            else:
                s = self._time_step(self.sgd_opt, sgd_closure)
                m = self._time_method(method_closure)
            self._order += 1
            if i > 0 or not discard_first:
                timed.append((m[0], s, *m[1:]))
        return timed

    def step_time_ratio(self, make_closure: Callable, pairs: int) -> float:
        """Median method step time / median SGD step time of `pairs` pairs; one warm-up pair is discarded."""
        timed = self.time_pairs(make_closure, pairs)
        return statistics.median(t[0] for t in timed) / statistics.median(t[1] for t in timed)
