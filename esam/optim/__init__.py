"""Step-closure optimizers: Plain (SGD's cost), SAM / ASAM, ESAM (SWP + SDS), LookSAM, RST, AE-SAM, their cost report.

LookSAM, RST and AESAM take a sharpness step (SAM's, or ESAM's with sharpness="esam") on some steps
and one pass on the others (esam/optim/skipping.py).

    base = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    opt = ESAM(model.parameters(), base, rho=0.05, beta=0.6, gamma=0.5, model=model, seed=0)
    loss = opt.step(lambda idx=None: F.cross_entropy(model(x if idx is None else x[idx]),
                                                      y if idx is None else y[idx], reduction="none"))
    opt.last_cost.relative_cost  # cost-model units / SGD's

A method of your own is a class (or factory) plus its record, a MethodInfo (esam/optim/methods.py):
`register_optimizer("mine", Mine, MethodInfo("mine", "Mine", knobs=(...)))` makes it trainable from YAML
and, with its knobs, searchable.
"""
from .aesam import AESAM
from .cost import StepCost, predicted_relative_cost, subset_size
from .esam import ESAM
from .factory import build_optimizer
from .looksam import LookSAM
from .methods import BASE_KNOBS, Knob, MethodInfo
from .plain import Plain, require_closure
from .registry import METHODS, OPTIMIZERS, knob_table, register_optimizer, searched_methods
from .rst import RST
from .sam import SAM

__all__ = ["AESAM", "BASE_KNOBS", "ESAM", "METHODS", "OPTIMIZERS", "RST", "SAM", "Knob", "LookSAM", "MethodInfo",
           "Plain", "StepCost", "build_optimizer", "knob_table", "predicted_relative_cost", "register_optimizer",
           "require_closure", "searched_methods", "subset_size"]
