"""How one training step is built: the device, the optimizer, the loss closure, and how a pass runs.

The trainer, the step benchmark (esam.perf.bench) and the experiments all build their steps here,
so that a step timed by the benchmark is the step a trial trains with.
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from esam.config import OptimizerConfig, TrainConfig
from esam.errors import ConfigError
from esam.optim import METHODS, OPTIMIZERS, Plain, build_optimizer
from esam.training.compiling import compile_model
from esam.training.cuda_graphs import GraphedPasses, graph_budget

Closure = Callable[[torch.Tensor | None], torch.Tensor]


def resolve_device(name: str = "auto") -> torch.device:
    """"auto": CUDA when there is one, else the CPU; a named CUDA device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: {name[:60]!r} is no device (valid: auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but no CUDA device is available")
    return device


def prepare_device(config: TrainConfig) -> torch.device:
    """The run's device, with torch's threads and cudnn set for it; CUDA graphs need CUDA."""
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    if config.cuda_graphs and device.type != "cuda":
        raise ConfigError(f"cuda_graphs: true needs a CUDA device, but this run is on {device}")
    if device.type == "cuda":
        # Shapes are static (batch, ESAM's subset k, eval batch): let cudnn time its algorithms once.
        torch.backends.cudnn.benchmark = True
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    return precision if precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        # No cast cache: each weight is used once per forward, and CUDA graphs cannot capture the cache.
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def optimizer_hparams(method: str, config: OptimizerConfig, model: torch.nn.Module, seed: int,
                      total_steps: int | None = None) -> dict:
    """The keyword arguments `method` takes from an optimizer config (the class lists them), plus model and seed,
    and `total_steps` (the run's length, for AE-SAM's threshold schedule) where it takes one."""
    factory = OPTIMIZERS[method] if method in OPTIMIZERS else None
    if factory is None:
        return {}  # build_optimizer names the valid methods
    accepted = inspect.signature(factory).parameters
    hparams = {k: config.setting(k) for k in getattr(factory, "hyperparameters", ())}
    hparams.update({k: v for k, v in (("model", model), ("seed", seed), ("total_steps", total_steps))
                    if k in accepted and v is not None})
    return hparams


def build_step_optimizer(model: torch.nn.Module, config: OptimizerConfig, seed: int, method: str | None = None,
                         foreach: bool | None = None, total_steps: int | None = None) -> Plain:
    """`method` (default: config.name) around a fresh SGD over `model`'s parameters, as the trainer steps it.

    `total_steps` is the run's length in steps (AE-SAM schedules its threshold over it; the others ignore it)."""
    name = method or config.name
    params = list(model.parameters())
    base = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                           nesterov=config.nesterov, foreach=foreach)
    return build_optimizer(name, params, base, **optimizer_hparams(name, config, model, seed, total_steps))


def loss_closure(run: Callable, x: torch.Tensor, y: torch.Tensor, *, precision: str, channels_last: bool,
                 label_smoothing: float = 0.0, eager_ascent: Callable | None = None) -> Closure:
    """closure(indices=None) -> per-sample losses of the batch (or of the given samples), as the optimizers expect.

    `run` is what a pass calls (a model, compiled or graphed). With `eager_ascent`, the full-batch
    gradient pass (ESAM's ascent) calls that instead: SWP switches requires_grad on a random subset
    of tensors every step, and a compiled model would recompile for each new pattern.
    """
    device = x.device

    def closure(indices: torch.Tensor | None = None) -> torch.Tensor:
        xb, yb = (x, y) if indices is None else (x.index_select(0, indices), y.index_select(0, indices))
        if channels_last:  # a no-op on the full batch (converted once per step); indexing drops NHWC
            xb = xb.contiguous(memory_format=torch.channels_last)
        net = eager_ascent if eager_ascent is not None and indices is None and torch.is_grad_enabled() else run
        with autocast(device, precision):
            logits = net(xb)
        return F.cross_entropy(logits.float(), yb, reduction="none", label_smoothing=label_smoothing)
    return closure


@dataclass(frozen=True)
class PassMode:
    """How a model's passes run: eagerly, through torch.compile, or replayed as CUDA graphs."""

    kind: str = "eager"  # eager | compile | cuda_graphs
    compile_mode: str = "default"  # torch.compile's mode
    swp_patterns: int | None = None  # ESAM's SWP pool: sizes the graph budget and dynamo's recompile limit
    fresh_swp: bool = False  # SWP draws a new pattern every step: a compiled ascent would recompile for each

    @classmethod
    def of(cls, config: TrainConfig) -> "PassMode":
        kind = "cuda_graphs" if config.cuda_graphs else "compile" if config.compile else "eager"
        o = config.optimizer
        # SWP runs where the sharpness step is ESAM's (a skipping method's: when its `sharpness` says so)
        swp = o.name in METHODS and METHODS[o.name].sharpness_step(o.sharpness) == "esam"
        fresh = swp and o.beta < 1 and not o.swp_patterns
        return cls(kind, config.compile_mode, o.swp_patterns, fresh)

    def wrap(self, model: torch.nn.Module) -> Callable:
        """What the closures call for `model`; wrap each model once and keep the result (graphs live in it)."""
        if self.kind == "cuda_graphs":
            return GraphedPasses(model, graph_budget(self.swp_patterns))
        if self.kind == "compile":
            return compile_model(model, self.compile_mode, self.swp_patterns)
        return model

    def eager_ascent(self, model: torch.nn.Module) -> torch.nn.Module | None:
        """The module ESAM's ascent pass runs instead of the wrapped one (see loss_closure), or None."""
        return model if self.kind == "compile" and self.fresh_swp else None
