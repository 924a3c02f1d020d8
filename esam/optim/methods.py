"""One record per method (as timm's OptimInfo): what the search, the cost model and the trainer know of it.

A method is an optimizer class (or factory) plus its `MethodInfo`, registered together
(`register_optimizer(name, cls, info)`, esam/optim/registry.py). The record says how tables show
the method, which settings a search may vary for it and in which range (`Knob`), whether it skips
sharpness passes and how often (the cost model, the speed probe), which sharpness step it takes
(the step builder's SWP), and whether a search may train it. Each built-in method's record lives
beside its class (SAM_INFO in sam.py, ...); nothing else names the methods one by one.

A knob is an OptimizerConfig field (rho, looksam_k, ...) or, for a setting of a registered
method's own that has no field there, a key of `OptimizerConfig.knobs`: YAML, `--set` and a
search's space name it like a field (`optimizer: {name: mine, my_q: 0.3}`, `space: {my_q: ...}`).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Knob:
    """A setting a search may vary: a numeric range the optimizer accepts, or categorical choices."""

    name: str  # an OptimizerConfig field, or a key of its `knobs` (a registered method's own setting)
    low: float | None = None  # the lowest valid value; None: unbounded
    high: float | None = None  # the highest valid value; None: unbounded
    open_low: bool = False  # low itself is invalid (beta > 0)
    open_high: bool = False  # high itself is invalid (aesam_momentum < 1)
    integer: bool = False  # sampled as an integer (LookSAM's k)
    choices: tuple | None = None  # categorical values instead of a range
    short: str | None = None  # its name in the front's method-knob columns and labels ("k"); None: none there
    paper: Any = None  # the paper's setting: a warm-started search's first trial takes it; None: the user's (lr, ...)

    def interval(self) -> str:
        """The valid interval as errors show it: "(0, 1]", "[0, inf)"."""
        left = "(-inf" if self.low is None else f"{'(' if self.open_low else '['}{self.low:g}"
        right = "inf)" if self.high is None else f"{self.high:g}{')' if self.open_high else ']'}"
        return f"{left}, {right}"

    def admits(self, value: Any) -> bool:
        """Whether `value` is a valid setting: one of the choices, else a number (an integer if integer) in range."""
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not float(value).is_integer():
            return False
        above = self.low is None or (value > self.low if self.open_low else value >= self.low)
        below = self.high is None or (value < self.high if self.open_high else value <= self.high)
        return above and below


@dataclass(frozen=True)
class MethodInfo:
    """What esam needs to know of a method beyond its class: written once, read by the search, the cost
    model, the step builder and the speed probe."""

    name: str  # its registered name: optimizer.name, a search's method choice
    label: str  # as tables and sentences show it ("LookSAM")
    knobs: tuple[Knob, ...] = ()  # the settings a search may vary for it, the base SGD's (BASE_KNOBS) aside
    sharpness: str | None = "sam"  # its sharpness step: "sam", "esam" (SWP + SDS) or None (SGD); a skipping
    #                                method takes the one its `sharpness` setting names
    skips: bool = False  # a sharpness step on some steps only, one pass on the others (esam/optim/skipping.py)
    share: Callable[[Mapping[str, Any]], float] | None = None  # a skipping method's expected share of sharpness
    #                                steps, from its knobs' values by name (the cost model)
    cycle: str | None = None  # a skipping method's knob counting the steps of its cycle (LookSAM's k); None: its
    #                           steps sharpen by chance (RST, AE-SAM), so the speed probe times longer blocks
    full_ascent: bool = False  # its first pass computes every weight gradient: SWP saves nothing there (AE-SAM)
    searched: bool = True  # a search may train it; False: a reference only (sgd, sam)

    def __post_init__(self) -> None:
        names = [k.name for k in self.knobs]
        if len(set(names)) != len(names):
            raise ValueError(f"method {self.name!r}: a knob is listed twice in {names}")
        if self.sharpness not in ("sam", "esam", None):
            raise ValueError(f"method {self.name!r}: sharpness must be 'sam', 'esam' or None, got {self.sharpness!r}")
        if self.skips and self.share is None:
            raise ValueError(f"method {self.name!r} skips sharpness passes: its record needs share=")
        if self.cycle is not None and self.cycle not in names:
            raise ValueError(f"method {self.name!r}: cycle {self.cycle!r} is none of its knobs {names}")

    def knob(self, name: str) -> Knob | None:
        return next((k for k in self.knobs if k.name == name), None)

    def sharpness_step(self, sharpness: str) -> str | None:
        """The sharpness step a run of this method takes, given the config's `sharpness` setting."""
        return sharpness if self.skips else self.sharpness


# The base SGD's settings: every method takes them (the trainer builds the SGD it wraps).
BASE_KNOBS = (Knob("lr", low=0.0), Knob("momentum", 0.0, 1.0), Knob("weight_decay", low=0.0))
