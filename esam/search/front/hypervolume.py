"""The hypervolume of a two-objective front: one number for how good a search's front is.

The area the points dominate, bounded by a reference point: 0 for a maximized objective (0 %
accuracy, 0 x SGD's speed: fixed, so searches with the same objectives compare), and for a
minimized objective (no natural zero) the worst value among the points given. Units: the product
of the objectives' units.

The series a search logs after each trial (`fixed_reference`) keeps one reference point for the
whole search instead: with the worst value of all points so far, a dominated trial worse on a
minimized objective would move the reference and raise the area ({95 %, 1.0x SGD's step time}
alone: 0; with {10 %, 3.0x} added: 190). With the reference fixed, adding a point never lowers
the area, and a dominated point leaves it as it was: the series rises only when the front moves.
"""
from __future__ import annotations

import math
from collections.abc import Sequence


def _value(point: dict, metric: str) -> float | None:
    v = point.get(metric)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def usable(points: Sequence[dict], objectives: Sequence[tuple[str, str]]) -> list[dict]:
    """The points holding a finite value of every objective (only they can dominate any area)."""
    return [p for p in points if all(_value(p, m) is not None for m, _ in objectives)]


def reference_point(points: Sequence[dict], objectives: Sequence[tuple[str, str]]) -> dict[str, float]:
    return {m: 0.0 if mode == "max" else max((v for p in points if (v := _value(p, m)) is not None), default=0.0)
            for m, mode in objectives}


def fixed_reference(first: Sequence[dict], objectives: Sequence[tuple[str, str]],
                    references: Sequence[dict] = ()) -> dict[str, float]:
    """A reference point to keep for a whole search: 0 for a maximized objective; for a minimized
    one the worst value among the reference trials' (`references`, e.g. SGD's and SAM's final
    metrics, when the search has them) and the first points (the first trials to finish)."""
    return reference_point([*usable(first, objectives), *references], objectives)


def hypervolume(points: Sequence[dict], objectives: Sequence[tuple[str, str]],
                reference: dict[str, float] | None = None) -> tuple[float, dict[str, float]]:
    """(area, reference point) of `points` (dicts holding both objectives' metrics)."""
    points = usable(points, objectives)
    reference = reference or reference_point(points, objectives)
    gains = [tuple((_value(p, m) - reference[m]) if mode == "max" else (reference[m] - _value(p, m))
                   for m, mode in objectives) for p in points]
    gains = sorted((g for g in gains if all(x >= 0 for x in g)), reverse=True)
    area, top = 0.0, 0.0
    for first, second in gains:  # first descending: each point adds the strip above the best second so far
        if second > top:
            area += first * (second - top)
            top = second
    return area, reference
