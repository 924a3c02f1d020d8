"""The hypervolume of a two-objective front: one number for how good a search's front is.

The area the points dominate, bounded by a reference point: 0 for a maximized objective (0 %
accuracy, 0 x SGD's speed: fixed, so searches with the same objectives compare, and the series
a search logs only rises), and for a minimized objective (no natural zero) the worst value among
the points given. Units: the product of the objectives' units.
"""
from __future__ import annotations

import math
from typing import Sequence


def _value(point: dict, metric: str) -> float | None:
    v = point.get(metric)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def reference_point(points: Sequence[dict], objectives: Sequence[tuple[str, str]]) -> dict[str, float]:
    return {m: 0.0 if mode == "max" else max((v for p in points if (v := _value(p, m)) is not None), default=0.0)
            for m, mode in objectives}


def hypervolume(points: Sequence[dict], objectives: Sequence[tuple[str, str]],
                reference: dict[str, float] | None = None) -> tuple[float, dict[str, float]]:
    """(area, reference point) of `points` (dicts holding both objectives' metrics)."""
    usable = [p for p in points if all(_value(p, m) is not None for m, _ in objectives)]
    reference = reference or reference_point(usable, objectives)
    gains = [tuple((_value(p, m) - reference[m]) if mode == "max" else (reference[m] - _value(p, m))
                   for m, mode in objectives) for p in usable]
    gains = sorted((g for g in gains if all(x >= 0 for x in g)), reverse=True)
    area, top = 0.0, 0.0
    for first, second in gains:  # first descending: each point adds the strip above the best second so far
        if second > top:
            area += first * (second - top)
            top = second
    return area, reference
