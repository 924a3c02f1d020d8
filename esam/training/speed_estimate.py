"""The trial-level speed estimate: every interleaved method/SGD pair of the run, one robust statistic.

A few pairs timed at the end of one epoch move with whatever the neighbours did in those
milliseconds; a trial's place on the front should not. Each pair gives one ratio, SGD's step time
over the method's, both timed back to back under the same interference. The estimate is the
median of all the run's ratios; its 95% interval is the distribution-free interval of a median
(two order statistics chosen from the binomial(n, 1/2) distribution): no resampling and no seed,
so the same pairs always give the same numbers, and the coverage is exact for independent pairs.

LookSAM, RST and AE-SAM pay for a sharpness step on some steps only, so a pair times a block of
several steps of each (esam.training.speed_probe) and records the block's share of sharpness steps.
Each block's ratio is first moved to the run's share (`block_ratios`): a block holds a whole number
of sharpness steps, and the median block would round the share to a multiple of 1/block.

Stopping rule (`probe_epoch`): each epoch times at least `probe_steps` pairs, then keeps adding
pairs while the interval's relative half-width is above TARGET_HALF_WIDTH and the probe has used
less than BUDGET_SHARE of the run's wall time (training plus probing).
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

CONFIDENCE = 0.95
TARGET_HALF_WIDTH = 0.02  # relative half-width of the interval at which an epoch stops adding pairs
BUDGET_SHARE = 0.20  # the most of the run's wall time (training + probing) the extra pairs may take

# (method block seconds, SGD block seconds), then, for methods that skip passes, the method block's
# share of sharpness steps (a third value; pairs of methods whose steps all cost the same have none)
Pair = tuple[float, float] | tuple[float, float, float]


def median(values: Sequence[float]) -> float:
    """The middle value (the mean of the two middle ones for an even count); nan when empty."""
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        return float("nan")
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


@functools.lru_cache(maxsize=4096)
def _order_rank(n: int, confidence: float) -> int:
    """The 1-based rank k so that [x_(k), x_(n+1-k)] covers the median with at least `confidence`.

    k is the largest with P(Binomial(n, 1/2) <= k - 1) <= (1 - confidence) / 2; 0 when there is
    none (below 6 values at 95%)."""
    tail = (1.0 - confidence) / 2
    k, cdf = 1, 0.0
    while k <= n // 2:
        cdf += math.comb(n, k - 1) / 2 ** n  # P(B = k - 1): Python's int division keeps huge n exact
        if cdf > tail:
            break
        k += 1
    return k - 1


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(median, low, high): the median and its distribution-free interval; nan for no values.

    With too few values for the confidence (below 6 at 95%) the interval is their range, which
    covers the median with probability 1 - 2^(1-n) only."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    k = max(1, _order_rank(n, confidence))
    return median(xs), xs[k - 1], xs[n - k]


def ratios(pairs: Sequence[Pair]) -> list[float]:
    """Speed of the method relative to SGD, one per pair: SGD's step time over the method's (as timed)."""
    for method_s, sgd_s, *_ in pairs:
        if not (method_s > 0 and sgd_s > 0):
            raise ValueError(f"a timed pair needs two positive step times, got ({method_s!r}, {sgd_s!r})")
    return [sgd_s / method_s for method_s, sgd_s, *_ in pairs]


def _share_of(pair: Pair) -> float | None:
    return pair[2] if len(pair) > 2 and math.isfinite(pair[2]) else None


def _weighted_slope(xs: Sequence[float], ys: Sequence[float], weights: Sequence[int]) -> float:
    """The least-squares slope of ys on xs, each point counted `weights` times."""
    total = sum(weights)
    mx = sum(w * x for x, w in zip(xs, weights)) / total
    my = sum(w * y for y, w in zip(ys, weights)) / total
    sxx = sum(w * (x - mx) ** 2 for x, w in zip(xs, weights))
    return sum(w * (x - mx) * (y - my) for x, y, w in zip(xs, ys, weights)) / sxx


def block_ratios(pairs: Sequence[Pair], share: float | None = None) -> list[float]:
    """Each pair's speed ratio (SGD time over the method's), its block moved to `share` of sharpness steps.

    A block's relative step time t = method / SGD grows linearly with its share x of sharpness steps
    (each one costs the same extra), so a block is moved along that line: t' = t + slope (share - x).
    The slope is fitted robustly: the median t of each distinct share, then least squares through
    those medians, weighted by their blocks (a block slowed by a neighbour barely moves its median).
    On a machine whose time only counts passes every moved block gives the exact speed at `share`.
    `share` None: the blocks' own mean share, i.e. the probe's realized share. Pairs without a share
    (methods whose steps all cost the same), or blocks all at one share, are left as they are.
    """
    plain = ratios(pairs)
    shares = [_share_of(p) for p in pairs]
    known = [i for i, x in enumerate(shares) if x is not None]
    groups: dict[float, list[float]] = {}
    for i in known:
        groups.setdefault(shares[i], []).append(1.0 / plain[i])
    if len(groups) < 2:
        return plain
    xs = sorted(groups)
    slope = _weighted_slope(xs, [median(groups[x]) for x in xs], [len(groups[x]) for x in xs])
    slope = max(slope, 0.0)  # a sharpness step is never cheaper than a one-pass step: a negative fit is noise
    target = sum(shares[i] for i in known) / len(known) if share is None else share
    moved = list(plain)
    for i in known:
        t = 1.0 / plain[i] + slope * (target - shares[i])
        moved[i] = 1.0 / t if t > 0 else math.inf  # only a wildly slowed SGD block gets here: an outlier at the top
    return moved


@dataclass
class SpeedEstimate:
    """All pairs of a run, and the seconds spent training and probing (for the budget)."""

    pairs: list[Pair] = field(default_factory=list)
    train_s: float = 0.0  # wall seconds of the run's training epochs
    probe_s: float = 0.0  # wall seconds of the run's probing, warm-up pairs included
    share: float | None = None  # the run's share of sharpness steps, set by the trainer (None: the probe's own)

    def interval(self) -> tuple[float, float, float]:
        """(speed_vs_sgd, low, high): the median of the blocks moved to the run's share, and its interval.

        The interval is the distribution-free one of a median, on the moved blocks, rather than a
        bootstrap over blocks: it needs no seed, and once moved to one share the blocks differ only
        by timing noise, as the blocks of a method whose steps all cost the same do. It leaves out the
        slope's own error, which shifts every block by (slope error) x (share - the block's share):
        those shifts cancel around the blocks' mean share, and the run's share is within a few points
        of it (the probe's coin follows the run's p; AE-SAM's probe times the run's share)."""
        return median_interval(block_ratios(self.pairs, self.share))

    def summary(self) -> dict[str, float | int]:
        """speed_vs_sgd (median ratio) with its 95% interval, step_time_vs_sgd with its own, and probe_pairs."""
        speed, low, high = self.interval()

        def inverse(v: float) -> float:
            return 1.0 / v if v > 0 else float("nan")
        # step_time_vs_sgd is 1 / speed, so its interval is speed's turned over: the front can then
        # tell two of its points apart (or not) as it does with speed_vs_sgd's
        return {"speed_vs_sgd": speed, "speed_vs_sgd_low": low, "speed_vs_sgd_high": high,
                "step_time_vs_sgd": inverse(speed), "step_time_vs_sgd_low": inverse(high),
                "step_time_vs_sgd_high": inverse(low), "probe_pairs": len(self.pairs)}

    def relative_half_width(self) -> float:
        """(high - low) / 2 / median: inf while too few pairs give a 95% interval (below 6)."""
        speed, low, high = self.interval()
        if _order_rank(len(self.pairs), CONFIDENCE) == 0 or not speed > 0:
            return math.inf
        return (high - low) / 2 / speed

    def within_budget(self, share: float = BUDGET_SHARE) -> bool:
        """Whether probing has taken less than `share` of training plus probing so far."""
        return self.probe_s < share * (self.train_s + self.probe_s)

    def to_list(self) -> list[list[float]]:
        """A checkpoint's copy: [[method_s, sgd_s], ...] plus one [train_s, probe_s] row first; with
        shares of sharpness steps, rows of three ([method_s, sgd_s, share], nan where there is none)."""
        rows = [[self.train_s, self.probe_s]] + [[p[0], p[1]] for p in self.pairs]
        if any(_share_of(p) is not None for p in self.pairs):
            shares = [math.nan] + [x if (x := _share_of(p)) is not None else math.nan for p in self.pairs]
            rows = [row + [x] for row, x in zip(rows, shares)]
        return rows

    @classmethod
    def from_list(cls, rows: Sequence[Sequence[float]] | None) -> "SpeedEstimate":
        if not rows:
            return cls()
        (train_s, probe_s, *_), *pairs = [tuple(float(v) for v in row) for row in rows]
        pairs = [p if len(p) > 2 and math.isfinite(p[2]) else p[:2] for p in pairs]
        return cls(pairs=pairs, train_s=train_s, probe_s=probe_s)


def keep_probing(estimate: SpeedEstimate, epoch_pairs: int, min_pairs: int,
                 target: float = TARGET_HALF_WIDTH, share: float = BUDGET_SHARE) -> bool:
    """The stopping rule: the epoch's minimum first, then until precise enough or out of budget."""
    if epoch_pairs < min_pairs:
        return True
    return estimate.relative_half_width() > target and estimate.within_budget(share)


def probe_epoch(estimate: SpeedEstimate, measure: Callable[[int, bool], list[Pair]], min_pairs: int, *,
                chunk: int | None = None, target: float = TARGET_HALF_WIDTH, share: float = BUDGET_SHARE,
                clock: Callable[[], float] = time.perf_counter) -> list[Pair]:
    """Time this epoch's pairs into `estimate` by the stopping rule; returns the epoch's pairs.

    `measure(n, first)` times n pairs (`first`: the epoch's first call, which may discard a warm-up
    pair); pairs come `chunk` at a time (default `min_pairs`), the rule checked between chunks."""
    if min_pairs < 1:
        raise ValueError(f"min_pairs must be >= 1, got {min_pairs!r}")
    chunk = chunk or min_pairs
    epoch: list[Pair] = []
    while keep_probing(estimate, len(epoch), min_pairs, target, share):
        start = clock()
        new = measure(chunk, not epoch)
        estimate.probe_s += clock() - start
        estimate.pairs.extend(new)
        epoch.extend(new)
    return epoch
