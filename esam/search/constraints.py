"""Search constraints: bounds a trial must meet to count, written as the user would say them.

    constraints:
      - "speed_vs_sgd >= sam"          # at least as fast as the SAM reference measured
      - "test_acc >= sam - 0.5"        # at most half a point below SAM's accuracy (test_acc is in %)
      - "speed_vs_sgd >= 1.2 * sam"    # a scale, an offset, or a plain number (test_acc >= 90)

A bound names a reference (`sgd`, `sam`: that reference trial's final value of the same metric)
or is a number. Each constraint gives a violation, bound - value for `>=` (value - bound for
`<=`); a trial is feasible when every violation is <= 0, as Optuna reads constraints.
Optuna gets them per trial, named by their text (`Trial.set_constraint`, Optuna 5's API: the
samplers' `constraints_func` is deprecated there), so NSGA-II, TPE and GP steer away from
infeasible settings and the study's own front holds feasible trials only; the search's front,
picks and `esam export` keep only feasible trials as well.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from esam.config import brief
from esam.errors import ConfigError
from esam.search.space import reference_methods
from esam.suggestions import did_you_mean

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_PATTERN = re.compile(rf"\s*(?P<metric>[A-Za-z_]\w*)\s*(?P<op>>=|<=)\s*(?:(?P<scale>{_NUMBER})\s*\*\s*)?"
                      rf"(?P<base>[A-Za-z_]\w*|{_NUMBER})\s*(?:(?P<sign>[-+])\s*(?P<offset>{_NUMBER}))?\s*")
FORM = "'<metric> >= <bound>' or '<=', the bound a number or [scale *] <reference> [+|- offset]"
# What an unmeasurable constraint counts as: far past any bound, and finite (Optuna refuses NaN).
UNMEASURED = 1e9


@dataclass(frozen=True)
class Constraint:
    text: str  # as written in the config
    metric: str
    op: str  # ">=" or "<="
    reference: str | None  # sgd | sam, or None for a plain number
    scale: float = 1.0
    offset: float = 0.0  # the number itself when reference is None

    def bound(self, references: dict[str, dict]) -> float:
        if self.reference is None:
            return self.offset
        value = references.get(self.reference, {}).get(self.metric)
        if not _finite(value):
            raise ConfigError(f"constraint {self.text!r} needs the {self.reference} reference's {self.metric}, "
                              f"which did not finish; rerun the search to retry it, or drop the constraint")
        return self.scale * float(value) + self.offset

    def violation(self, metrics: dict, references: dict[str, dict]) -> float:
        value = metrics.get(self.metric)
        if not _finite(value):
            return UNMEASURED
        bound = self.bound(references)
        return bound - float(value) if self.op == ">=" else float(value) - bound


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse(text: object, metrics: tuple[str, ...], references: list[str], where: str = "constraints") -> Constraint:
    """One constraint from its text; ConfigError naming what is wrong."""
    match = _PATTERN.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ConfigError(f"{where}: {brief(text)} is not a constraint ({FORM})")
    metric, base = match["metric"], match["base"]
    if metric not in metrics:
        raise ConfigError(f"{where}: {metric!r} names no metric (valid: {', '.join(metrics)})"
                          + did_you_mean(metric, metrics, quote=True))
    offset = float(match["offset"] or 0.0) * (-1.0 if match["sign"] == "-" else 1.0)
    if re.fullmatch(_NUMBER, base):
        if match["scale"] or match["offset"]:
            raise ConfigError(f"{where}: {text!r}: a numeric bound takes no scale or offset")
        return Constraint(text, metric, match["op"], None, 1.0, float(base))
    if base not in reference_methods():
        raise ConfigError(f"{where}: {text!r}: the bound {base!r} is neither a number nor a reference "
                          f"({', '.join(reference_methods())})")
    if base not in references:
        raise ConfigError(f"{where}: {text!r} needs the {base} reference, which `references` does not train")
    return Constraint(text, metric, match["op"], base, float(match["scale"] or 1.0), offset)


def parse_all(texts: list, metrics: tuple[str, ...], references: list[str]) -> list[Constraint]:
    if not isinstance(texts, list):
        raise ConfigError(f"constraints must be a list of strings like 'speed_vs_sgd >= sam', got {texts!r:.60}")
    return [parse(t, metrics, references, f"constraints[{i}]") for i, t in enumerate(texts)]


def reference_values(rows: list[dict]) -> dict[str, dict]:
    """{optimizer: its final metrics} of the finished reference runs (rows from esam.search.front.rows)."""
    return {r.get("optimizer") or r.get("name"): r for r in rows
            if r.get("kind") == "reference" and r.get("status") == "FINISHED"}


def violations(constraints: list[Constraint], metrics: dict, references: dict[str, dict]) -> list[float]:
    return [c.violation(metrics, references) for c in constraints]


def is_feasible(constraints: list[Constraint], metrics: dict, references: dict[str, dict]) -> bool:
    return all(v <= 0 for v in violations(constraints, metrics, references))


class OptunaConstraints:
    """A trial's violations, told to Optuna before the trial's result (`Trial.set_constraint`).

    The reference values are fixed when the search's trials start (the references ran first);
    a plain class, so the searcher pickles with Ray's experiment.
    """

    def __init__(self, constraints: list[Constraint], references: dict[str, dict]):
        self.constraints = constraints
        self.references = {name: {c.metric: values.get(c.metric) for c in constraints}
                           for name, values in references.items()}

    def violations(self, metrics: dict) -> list[float]:
        try:
            return violations(self.constraints, metrics, self.references)
        except ConfigError:  # a reference that did not finish: nothing can be judged feasible
            return [UNMEASURED] * len(self.constraints)

    def set_on(self, ot_trial, metrics: dict) -> None:
        for c, v in zip(self.constraints, self.violations(metrics)):
            ot_trial.set_constraint(c.text, v)
