"""Optuna's samplers as specs: a name, a seed and options, built into a sampler where it runs.

Ray pickles its searcher with the experiment, so what the searcher keeps must pickle on every
Optuna release the project allows. A live sampler need not: Optuna 5.1.0's NSGA-II holds a
`threading.Lock` (cannot be pickled), and a future release may hold anything else. The searcher
keeps this spec and the driver builds the sampler from it when it opens the study.
"""
from __future__ import annotations

from dataclasses import dataclass, field

SAMPLERS = ("nsga2", "tpe", "gp", "random")


@dataclass(frozen=True)
class SamplerSpec:
    name: str = "nsga2"  # one of SAMPLERS
    seed: int = 0  # the same search proposes the same trials
    options: dict = field(default_factory=dict)  # keyword arguments of the sampler (nsga2: population_size)

    def build(self, offset: int = 0):
        """The Optuna sampler this spec names (random search ignores constraints), seeded `seed + offset`.

        A continued search passes the number of trials its study holds: a sampler seeded as at the
        start would draw the same points again, each a duplicate of a finished trial."""
        import optuna
        samplers = {"nsga2": optuna.samplers.NSGAIISampler, "tpe": optuna.samplers.TPESampler,
                    "gp": optuna.samplers.GPSampler, "random": optuna.samplers.RandomSampler}
        if self.name not in samplers:
            raise ValueError(f"sampler {self.name!r} is not one of {', '.join(SAMPLERS)}")
        return samplers[self.name](seed=(self.seed + offset) % 2**32, **self.options)
