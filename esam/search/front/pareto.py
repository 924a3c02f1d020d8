"""The accuracy/throughput Pareto front and the picks users export from it (pure functions).

A point dominates another when it is at least as good on every objective and better on one.
Objectives are (metric, mode) pairs, mode "max" or "min"; points are dicts holding the metrics.

Measurements are noisy, so two points can also be *indistinguishable* (see `indistinguishable`):
the front keeps both, and reports do not rank one above the other.
"""
from __future__ import annotations

import math
from typing import Sequence

from esam.suggestions import did_you_mean

Objective = tuple[str, str]
PICKS = ("max-accuracy", "max-throughput", "knee", "fastest-within=D")


def _signed(point: dict, objectives: Sequence[Objective]) -> tuple[float, ...]:
    """Objective values turned so that larger is better on every axis."""
    return tuple(point[m] if mode == "max" else -point[m] for m, mode in objectives)


def dominates(a: dict, b: dict, objectives: Sequence[Objective]) -> bool:
    sa, sb = _signed(a, objectives), _signed(b, objectives)
    return all(x >= y for x, y in zip(sa, sb)) and any(x > y for x, y in zip(sa, sb))


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def noise_of(point: dict, metric: str) -> tuple[str, float, float] | None:
    """How noisy `point[metric]` is: ("se", se, se) from `<metric>_se` (a standard error, e.g.
    test_acc_se, binomial, in accuracy points), ("interval", low, high) from `<metric>_low` and
    `<metric>_high` (a 95% interval, e.g. speed_vs_sgd's), or None when the run recorded neither."""
    se = _number(point.get(f"{metric}_se"))
    if se is not None and se >= 0:
        return "se", se, se
    low, high = _number(point.get(f"{metric}_low")), _number(point.get(f"{metric}_high"))
    if low is not None and high is not None and low <= high:
        return "interval", low, high
    return None


def error_band(point: dict, metric: str) -> tuple[float, float] | None:
    """The ~95% band drawn as an error bar: value +- 2 SE, or the recorded interval; None without noise data."""
    value, noise = _number(point.get(metric)), noise_of(point, metric)
    if value is None or noise is None:
        return None
    kind, a, b = noise
    return (value - 2 * a, value + 2 * a) if kind == "se" else (a, b)


def within_noise(a: dict, b: dict, metric: str) -> bool:
    """True when a[metric] and b[metric] differ by no more than their noise (one axis of `indistinguishable`)."""
    va, vb = _number(a.get(metric)), _number(b.get(metric))
    if va is None or vb is None:
        return False
    na, nb = noise_of(a, metric), noise_of(b, metric)
    if (na and na[0] == "se") or (nb and nb[0] == "se"):
        sa = na[1] if na and na[0] == "se" else 0.0
        sb = nb[1] if nb and nb[0] == "se" else 0.0
        return abs(va - vb) <= 2 * math.hypot(sa, sb)
    la, ha = (na[1], na[2]) if na else (va, va)
    lb, hb = (nb[1], nb[2]) if nb else (vb, vb)
    return la <= hb and lb <= ha


def indistinguishable(a: dict, b: dict, objectives: Sequence[Objective]) -> bool:
    """True when no objective tells `a` and `b` apart beyond the measurement noise.

    The rule, per objective metric m (both points must be within noise on every objective):
    - a standard error recorded (`m_se`, e.g. test_acc_se): |a - b| <= 2 * sqrt(se_a^2 + se_b^2)
      (a missing SE counts as 0);
    - else a 95% interval recorded (`m_low`, `m_high`, e.g. speed_vs_sgd's): the intervals overlap
      (a missing interval is the value alone);
    - else (no noise data): only equal values are indistinguishable.
    Such points are not ranked against each other, even when one dominates the other on the raw values.
    """
    return all(within_noise(a, b, m) for m, _ in objectives)


def _usable(point: dict, objectives: Sequence[Objective]) -> bool:
    return all(isinstance(point.get(m), (int, float)) and math.isfinite(point[m]) for m, _ in objectives)


def pareto_front(points: Sequence[dict], objectives: Sequence[Objective]) -> list[int]:
    """Indices of the non-dominated points (points lacking a finite objective are ignored).

    Ties (equal on every objective) all stay on the front. O(n^2), fine for searches of
    thousands of trials.
    """
    usable = [i for i, p in enumerate(points) if _usable(p, objectives)]
    return [i for i in usable
            if not any(dominates(points[j], points[i], objectives) for j in usable if j != i)]


def _normalized(front: list[dict], objectives: Sequence[Objective]) -> list[tuple[float, ...]]:
    """Each objective scaled to [0, 1] over the front, 1 best."""
    signed = [_signed(p, objectives) for p in front]
    lows = [min(s[d] for s in signed) for d in range(len(objectives))]
    highs = [max(s[d] for s in signed) for d in range(len(objectives))]
    return [tuple((s[d] - lows[d]) / (highs[d] - lows[d]) if highs[d] > lows[d] else 1.0
                  for d in range(len(objectives))) for s in signed]


def pick(points: Sequence[dict], objectives: Sequence[Objective], rule: str) -> int:
    """Index (into `points`) of the front point chosen by `rule`.

    Objectives: the first is accuracy, the second throughput.
    - max-accuracy / max-throughput: the front's best on that axis (ties: better other axis).
    - knee: the front point closest to the utopia point (both axes scaled to [0, 1] over the front).
    - fastest-within=D: the fastest front point whose accuracy is at most D below the best one
      (D in the accuracy metric's units, percentage points for test_acc).
    """
    check_rule(rule)  # a bad rule is named as such, even when no trial has finished
    front = pareto_front(points, objectives)
    if not front:
        raise ValueError("no finished trial has finite values for every objective")
    members = [points[i] for i in front]
    signed = [_signed(p, objectives) for p in members]
    if rule == "max-accuracy":
        best = max(range(len(front)), key=lambda i: signed[i])
    elif rule == "max-throughput":
        best = max(range(len(front)), key=lambda i: (signed[i][1], signed[i][0]))
    elif rule == "knee":
        norm = _normalized(members, objectives)
        best = min(range(len(front)), key=lambda i: (math.dist(norm[i], [1.0] * len(objectives)), -signed[i][0]))
    elif rule.startswith("fastest-within="):
        margin = within_margin(rule)
        top = max(s[0] for s in signed)
        ok = [i for i in range(len(front)) if signed[i][0] >= top - margin]
        best = max(ok, key=lambda i: (signed[i][1], signed[i][0]))
    else:
        raise ValueError(f"unknown pick {_shown(rule)} (valid: {', '.join(PICKS)})")
    return front[best]


def check_rule(rule: str) -> None:
    """ValueError unless `rule` is one of PICKS (with a finite margin >= 0 for fastest-within)."""
    if rule.startswith("fastest-within="):
        within_margin(rule)
    elif rule not in PICKS:
        raise ValueError(f"unknown pick {_shown(rule)} (valid: {', '.join(PICKS)})"
                         + did_you_mean(rule, PICKS, quote=True))


def within_margin(rule: str) -> float:
    """D of `fastest-within=D`: a finite number >= 0 (nan would leave no point within it)."""
    try:
        margin = float(rule.split("=", 1)[1])
    except ValueError:
        raise ValueError(f"pick {_shown(rule)}: the margin must be a number, e.g. fastest-within=0.2") from None
    if not math.isfinite(margin) or margin < 0:
        raise ValueError(f"pick {_shown(rule)}: the margin must be a finite number >= 0, e.g. fastest-within=0.2")
    return margin


def _shown(rule: str) -> str:
    text = repr(rule)
    return text if len(text) <= 60 else text[:60] + "..."
