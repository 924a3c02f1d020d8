"""The search space: which optimizer settings a trial samples, and which of them a method uses.

A search varies ESAM (rho, beta, gamma, ...) or one of the pass-skipping methods (LookSAM, RST,
AE-SAM: when to take a sharpness step), and may vary the method itself: `space: {method:
{choices: [esam, looksam, rst, aesam]}, ...}`. A field is sampled only for the trials whose method
uses it (the optimizer class's `hyperparameters`), so an RST trial never draws LookSAM's k, and
ESAM's beta, gamma and score reach a skipping method only when its sharpness step is ESAM's
(`sharpness: esam`, fixed in train.optimizer or searched). Without `method` in the space, every
trial uses train.optimizer.name.

Which methods a search may train, their knobs' ranges, integer knobs, short names and paper values
come from the registered methods' records (esam/optim/methods.py), read when asked: a method
registered with its record is searchable with no edit here.

Why one conditional space rather than one study per method: the front compares methods at the
same cost (a LookSAM point and an ESAM point compete on accuracy and speed), and a sampler
learns which method is worth its trials. A space whose fields every trial uses is a fixed set
of Optuna distributions; one with conditions is define-by-run (Optuna asks for each field while
the trial is sampled; TPE models such spaces, NSGA-II samples fields outside the common part
independently).
"""
from __future__ import annotations

from dataclasses import dataclass

from esam.config import OptimizerConfig
from esam.optim import BASE_KNOBS, METHODS, OPTIMIZERS, knob_table

DEFAULT_REFERENCES = ("sgd", "sam")
ESAM_STEP_FIELDS = ("beta", "gamma", "score", "swp_patterns")  # used by a skipping method only with sharpness esam
BASE_FIELDS = tuple(k.name for k in BASE_KNOBS)  # the base SGD's (lr, momentum, weight_decay), used by every method
_CONDITION_FIELDS = ("method", "sharpness")  # sampled first: they decide which other fields a trial uses


def reference_methods() -> tuple[str, ...]:
    """The optimizers a search may train beside, at train.optimizer's settings: every method with a record."""
    return tuple(METHODS)


def shown_knobs() -> tuple[tuple[str, str], ...]:
    """(knob, short name) of the methods' own knobs, as tables, labels and `esam export` show them."""
    return tuple((name, k.short) for name, k in knob_table().items() if k.short)


def shown_fields() -> tuple[str, ...]:
    """A setting's searched knobs that are shown: ESAM's rho, beta, gamma and the methods' own."""
    return ("rho", "beta", "gamma") + tuple(name for name, _ in shown_knobs())


def is_integer(name: str) -> bool:
    """Whether the searched field `name` takes integers (its knob says so)."""
    knob = knob_table().get(name)
    return knob is not None and knob.integer


def uses(method: str, field: str, sharpness: str) -> bool:
    """Whether a trial of `method` (with a skipping method's `sharpness`) uses optimizer field `field`."""
    if field == "method" or field in BASE_FIELDS:
        return True
    if field not in getattr(OPTIMIZERS[method], "hyperparameters", ()):
        return False
    skips = method in METHODS and METHODS[method].skips
    return not skips or field not in ESAM_STEP_FIELDS or sharpness == "esam"


def used_fields(method: str, sharpness: str) -> tuple[str, ...]:
    """The optimizer fields a trial of `method` really uses, in the class's order."""
    return tuple(f for f in getattr(OPTIMIZERS[method], "hyperparameters", ()) if uses(method, f, sharpness))


def is_conditional(space: dict) -> bool:
    """Whether some trials leave out fields that others sample (the method or sharpness is searched)."""
    return any(name in space for name in _CONDITION_FIELDS)


def methods_of(space: dict, base: OptimizerConfig) -> tuple[str, ...]:
    return tuple(space["method"].choices) if "method" in space else (base.name,)


def sharpness_of(space: dict, base: OptimizerConfig) -> tuple[str, ...]:
    return tuple(space["sharpness"].choices) if "sharpness" in space else (base.sharpness,)


def unused_field(space: dict, base: OptimizerConfig) -> str | None:
    """A searched field no trial could use (with why), or None."""
    for name in space:
        if not any(uses(m, name, s) for m in methods_of(space, base) for s in sharpness_of(space, base)):
            methods = "/".join(methods_of(space, base))
            extra = (" with sharpness sam (add sharpness to the space, or set train.optimizer.sharpness: esam)"
                     if name in ESAM_STEP_FIELDS and any(uses(m, name, "esam") for m in methods_of(space, base))
                     else "")
            return f"space.{name} is not used by {methods}{extra}"
    return None


def distribution(name: str, p):
    """The Optuna distribution of one field's ParamSpace."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    if p.choices is not None:
        return CategoricalDistribution(p.choices)
    if is_integer(name):
        return IntDistribution(int(p.low), int(p.high), log=p.log)
    return FloatDistribution(float(p.low), float(p.high), log=p.log)


@dataclass(frozen=True)
class DefineByRun:
    """Samples a conditional space: the method and sharpness first, then the fields they use.

    A frozen dataclass, not a closure: Ray pickles the searcher (and this) with the experiment."""
    space: dict  # field -> ParamSpace
    base_method: str
    base_sharpness: str

    def __call__(self, trial) -> None:
        def draw(name):
            p = self.space[name]
            if p.choices is not None:
                return trial.suggest_categorical(name, p.choices)
            if is_integer(name):
                return trial.suggest_int(name, int(p.low), int(p.high), log=p.log)
            return trial.suggest_float(name, float(p.low), float(p.high), log=p.log)
        method = draw("method") if "method" in self.space else self.base_method
        sharpness = self.base_sharpness
        if "sharpness" in self.space and uses(method, "sharpness", sharpness):
            sharpness = draw("sharpness")
        for name in self.space:
            if name not in _CONDITION_FIELDS and uses(method, name, sharpness):
                draw(name)
        return None


def optuna_space(space: dict, base: OptimizerConfig):
    """What Ray's OptunaSearch takes as `space`: fixed distributions, or a DefineByRun when conditional."""
    if is_conditional(space):
        return DefineByRun(dict(space), base.name, base.sharpness)
    return {name: distribution(name, p) for name, p in space.items()}


def paper_point(space: dict, base: OptimizerConfig) -> dict:
    """The first proposal of a warm-started search: the papers' settings (the knobs' `paper` values, which are
    OptimizerConfig's defaults: ESAM rho 0.05, beta 0.6, gamma 0.5, loss_rise; LookSAM k 5, alpha 0.7; RST p 0.5;
    AE-SAM c 1 -> -1), for ESAM when the space allows it, else for the first method; only fields whose range
    holds them."""
    papers = OptimizerConfig()
    knobs = knob_table()
    methods = methods_of(space, base)
    method = "esam" if "esam" in methods else methods[0]
    sharpness = papers.sharpness if papers.sharpness in sharpness_of(space, base) else sharpness_of(space, base)[0]
    point = {}
    conditions = {"method": method, "sharpness": sharpness}
    for name, p in space.items():
        known = name in conditions or name in knobs and knobs[name].paper is not None
        if not known or not uses(method, name, sharpness):
            continue  # the user's base settings are sampled, and so are fields this method does not use
        value = conditions[name] if name in conditions else knobs[name].paper
        if value in p.choices if p.choices is not None else p.low <= value <= p.high:
            point[name] = value
    return point
