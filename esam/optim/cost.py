"""What one optimizer step costs, in the units of the paper's cost model.

A forward pass costs 1 unit per sample and a backward pass 2: 1 for the input gradients and 1 for
the weight gradients. So SGD costs 3 units per sample and SAM 6. ESAM's ascent pass skips the
weight gradients of the tensors SWP leaves out (2 + f per sample, f the numel-weighted fraction
kept), the paper's SDS rule scores the batch with one more forward (1 per sample), and the descent
pass runs on k = ceil(gamma * B) samples (3 per sample). `relative_cost` divides by SGD's 3B:

    SGD 1.0    SAM 2.0    ESAM ((2 + f) B + [loss_rise] B + 3 k) / (3 B)

LookSAM, RST and AE-SAM take a whole sharpness step (SAM's or ESAM's) on some steps and one pass
(1.0) on the others, so their cost varies from step to step; each step reports what it ran.

Every number is known on the host from shapes, so reporting it never waits for the device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .registry import METHODS, knob_table

SCORES = ("loss_rise", "clean_loss")  # SDS rules: the paper's, and the cheap one (no extra forward)
SHARPNESS = ("sam", "esam")  # how LookSAM, RST and AE-SAM take a sharpness step


def subset_size(gamma: float, batch_size: int) -> int:
    """k = ceil(gamma * B), at least 1; the tiny slack keeps 0.3 * 10 from rounding up to 4."""
    return min(batch_size, max(1, math.ceil(gamma * batch_size - 1e-9)))


@dataclass(frozen=True)
class StepCost:
    """The work of the last step: samples through each pass and the cost-model total.

    forward_samples / backward_samples add up all passes of the step; weight_grad_fraction is the
    numel-weighted fraction of parameter elements that got weight gradients in the ascent (first)
    pass; relative_cost is the step's cost units over SGD's (3 per sample of the batch).
    """

    method: str
    batch_size: int
    forward_samples: int
    backward_samples: int
    weight_grad_fraction: float
    relative_cost: float

    @classmethod
    def one_pass(cls, method: str, batch_size: int) -> StepCost:
        """SGD: forward + backward of the batch, 3 units per sample."""
        return cls(method, batch_size, batch_size, batch_size, 1.0, 1.0)

    @classmethod
    def two_pass(cls, method: str, batch_size: int, descent_samples: int, weight_grad_fraction: float,
                 scored: bool, ascent_backward: bool = True) -> StepCost:
        """SAM and ESAM: ascent on the batch, an optional scoring forward, descent on k samples.

        ascent_backward is False when SWP froze every tensor: the ascent pass is then a forward only.
        """
        b, k, f = batch_size, descent_samples, weight_grad_fraction if ascent_backward else 0.0
        ascent = b * (1 + (1 + f) * ascent_backward)  # forward + input grads + kept weight grads
        units = ascent + b * scored + 3 * k
        return cls(method, b, b * (1 + scored) + k, b * ascent_backward + k, f, units / (3 * b))


def predicted_relative_cost(method: str, beta: float = 1.0, gamma: float = 1.0, score: str = "loss_rise",
                            batch_size: int | None = None, *, sharpness: str = "sam", **knobs: Any) -> float:
    """The cost model's step cost relative to SGD, before running anything.

    method: sgd (or plain) 1.0, sam 2.0, esam (2 + beta + [score == loss_rise and gamma < 1] + 3 gamma) / 3,
    with gamma replaced by ceil(gamma * B) / B when batch_size is given. esam at beta 0.6 and gamma 0.5 is
    1.7 (paper rule) or about 1.37 (clean_loss rule): SAM's throughput times 1.18 or 1.46 at best.
    Any registered method: its record's sharpness step (esam/optim/methods.py).

    looksam, rst, aesam (a record with skips): a sharpness step of cost S (sharpness "sam": 2; "esam": ESAM's,
    from beta, gamma, score) on a share q of the steps, one pass on the rest: q S + (1 - q). q is the record's
    share of its knobs, given by name in `knobs` (looksam_k, rst_p, aesam_c_start, ...; unset: the paper's).
    LookSAM q = 1 / k (k = 5 with SAM: 1.2, SAM's throughput times 1.67); RST q = p (p = 0.5: 1.5, times
    1.33); AE-SAM's first pass computes every weight gradient (SWP saves nothing there, so S uses beta = 1)
    and q is the expected share of sharpness steps if ||g||^2 were Gaussian about its running mean (see
    aesam_sharp_fraction: 0.5 for the paper's c from 1 to -1).
    """
    method = method.lower()
    info = METHODS.get("sgd" if method == "plain" else method)
    if info is None:
        raise ValueError(f"unknown method {method!r} (valid: {', '.join(METHODS)}, plain)")
    unknown = sorted(set(knobs) - set(knob_table()))
    if unknown:
        raise TypeError(f"predicted_relative_cost() got unknown knobs {unknown}")
    if not info.skips:
        return _sharpness_cost(info.sharpness, beta, gamma, score, batch_size)
    if sharpness not in SHARPNESS:
        raise ValueError(f"unknown sharpness {sharpness!r} (valid: {', '.join(SHARPNESS)})")
    # a full first pass may become the base step: no tensor is left out of it
    sharp = _sharpness_cost(sharpness, 1.0 if info.full_ascent else beta, gamma, score, batch_size)
    share = info.share({k.name: knobs.get(k.name, k.paper) for k in info.knobs})
    return share * sharp + (1 - share)


def _sharpness_cost(step: str | None, beta: float, gamma: float, score: str, batch_size: int | None) -> float:
    """A step's cost when it is the sharpness step `step`: none (one pass) 1, SAM's 2, ESAM's from beta and gamma."""
    if step is None:
        return 1.0
    return 2.0 if step == "sam" else _esam_cost(beta, gamma, score, batch_size)


def aesam_sharp_fraction(c_start: float, c_end: float) -> float:
    """AE-SAM's expected share of sharpness steps when c moves linearly from c_start to c_end.

    The test ||g||^2 >= mu + c sigma passes with probability 1 - Phi(c) if ||g||^2 is Gaussian with
    the running mean mu and deviation sigma (the paper's model); averaged over the schedule with
    F(c) = integral of 1 - Phi = c (1 - Phi(c)) - phi(c). The realized share follows the run.
    """
    def upper(c: float) -> float:  # 1 - Phi(c)
        return 0.5 * math.erfc(c / math.sqrt(2))

    def integral(c: float) -> float:
        return c * upper(c) - math.exp(-c * c / 2) / math.sqrt(2 * math.pi)
    if not (math.isfinite(c_start) and math.isfinite(c_end)):
        raise ValueError(f"aesam_c_start and aesam_c_end must be finite, got {c_start}, {c_end}")
    if abs(c_end - c_start) < 1e-12:
        return upper(c_start)
    return (integral(c_end) - integral(c_start)) / (c_end - c_start)


def _esam_cost(beta: float, gamma: float, score: str, batch_size: int | None) -> float:
    if not 0 < beta <= 1 or not 0 < gamma <= 1:
        raise ValueError(f"beta and gamma must be in (0, 1], got beta={beta}, gamma={gamma}")
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r} (valid: {', '.join(SCORES)})")
    g = gamma if batch_size is None else subset_size(gamma, batch_size) / batch_size
    scored = score == "loss_rise" and g < 1
    return (2 + beta + scored + 3 * g) / 3
