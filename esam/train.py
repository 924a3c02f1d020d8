"""One training run: `train(config, report) -> metrics`. Knows nothing of Ray or MLflow.

Each epoch reports: train_loss, test_loss, test_acc (%), images_per_s (timed training steps
only, after a warm-up, full batch counted), step_time_vs_sgd and speed_vs_sgd (the method's step
against an SGD step timed interleaved in this process: comparable when trials share a device),
relative_cost (the optimizer's cost-model report: SGD 1, SAM 2), epoch_time_s and learning_rate.
"""
from __future__ import annotations

import contextlib
import math
import os
import pickle
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from esam.compiling import compile_model
from esam.config import TrainConfig
from esam.data import build_data
from esam.errors import ConfigError, DataError
from esam.graphs import GraphedPasses, graph_budget, warm_up, warm_up_quiet_steps
from esam.models import build_model
from esam.optim import build_optimizer
from esam.probe import InterleavedProbe
from esam.schedule import lr_multiplier
from esam.timing import StepTimer, synchronize

Report = Callable[[dict, "Path | None"], None]
CHECKPOINT_FILE = "checkpoint.pt"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but no CUDA device is available")
    return device


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        # No cast cache: each weight is used once per forward, and CUDA graphs cannot capture the cache.
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def _optimizer_factory(config: TrainConfig, seed: int, method: str | None = None) -> Callable:
    """model -> step-closure optimizer (Plain, SAM or ESAM over a fresh SGD)."""
    o = config.optimizer
    name = method or o.name

    def make(model: torch.nn.Module):
        params = list(model.parameters())
        base = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                               nesterov=o.nesterov)
        kwargs: dict = {"max_grad_norm": o.max_grad_norm}
        if name in ("sam", "esam"):
            kwargs.update(rho=o.rho, adaptive=o.adaptive, bn_update=o.bn_update, model=model)
        if name == "esam":
            kwargs.update(beta=o.beta, gamma=o.gamma, score=o.score, seed=seed, swp_patterns=o.swp_patterns)
        return build_optimizer(name, params, base, **kwargs)
    return make


def _closure_factory(x: torch.Tensor, y: torch.Tensor, device: torch.device, precision: str,
                     channels_last: bool, label_smoothing: float) -> Callable:
    """model -> closure(indices=None) returning per-sample losses, as the optimizers expect.

    With `eager_ascent`, the full-batch gradient pass (ESAM's ascent) runs that module instead:
    SWP switches requires_grad on a random subset of tensors every step, and a compiled model
    would recompile for each new pattern. The scoring pass (no grad) and the descent pass (a fixed
    subset size) keep the compiled model.
    """
    def make(model: Callable, eager_ascent: Callable | None = None):
        def closure(indices: torch.Tensor | None = None) -> torch.Tensor:
            xb, yb = (x, y) if indices is None else (x.index_select(0, indices), y.index_select(0, indices))
            if channels_last:  # a no-op on the full batch (converted once per step); indexing drops NHWC
                xb = xb.contiguous(memory_format=torch.channels_last)
            net = eager_ascent if eager_ascent is not None and indices is None and torch.is_grad_enabled() else model
            with _autocast(device, precision):
                logits = net(xb)
            return F.cross_entropy(logits.float(), yb, reduction="none", label_smoothing=label_smoothing)
        return closure
    return make


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: torch.device, precision: str,
             channels_last: bool) -> tuple[float, float]:
    """(test accuracy in %, mean test loss)."""
    model.eval()
    correct = torch.zeros((), device=device, dtype=torch.long)
    loss_sum = torch.zeros((), device=device)
    count = 0
    for x, y in loader.epoch(0):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, precision):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        count += y.numel()
    model.train()
    return 100.0 * correct.item() / count, loss_sum.item() / count


def _save_checkpoint(directory: Path, state: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (CHECKPOINT_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, directory / CHECKPOINT_FILE)  # atomic: a crash never leaves half a checkpoint


_CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "rng_cpu", "epoch")


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint's state dict, read without running code: tensors and plain containers only.

    Shared storage (results_dir on a cluster) lets others replace checkpoints; a full unpickler
    would run whatever a crafted file asks for. A refused, cut or corrupt file is a DataError.
    """
    path = Path(path)
    try:
        # On the CPU first: RNG and SWP generator states must stay there; load_state_dict moves the rest.
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols: the error says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DataError(f"checkpoint {path} is not a plain esam checkpoint "
                        "(refused: loading it would run code)") from None
    except Exception as err:  # noqa: BLE001 - zip, EOF, magic-number and key errors of a cut or corrupt file
        raise DataError(f"checkpoint {path} is truncated or corrupt ({_first_line(err)})") from None
    if not isinstance(state, dict) or any(k not in state for k in _CHECKPOINT_KEYS):
        raise DataError(f"checkpoint {path} is not an esam checkpoint (expected keys {', '.join(_CHECKPOINT_KEYS)})")
    return state


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0][:160] if text else "") or type(err).__name__


def _restore(state: dict, path: Path, model, optimizer, scheduler, device: torch.device) -> int:
    """Load a checkpoint's states into the run; returns the first epoch still to train."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        return int(state["epoch"]) + 1
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as err:
        # A checkpoint of another model or optimizer: torch's multi-line report becomes one line.
        raise DataError(f"checkpoint {path} does not fit this config: {_first_line(err)}") from None


def train(config: TrainConfig, report: Report | None = None, *,
          checkpoint_dir: str | Path | None = None, resume_from: str | Path | None = None) -> dict:
    """Train `config.model` on `config.data` with `config.optimizer`; return the last epoch's metrics.

    report(metrics, checkpoint_dir_or_None) is called after every epoch. With `checkpoint_dir`,
    a checkpoint (model, optimizer with its base state, scheduler, RNG, epoch) is written there
    every `config.checkpoint_every` epochs; `resume_from` (a directory holding one) continues it.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    precision = config.precision if config.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    channels_last = config.channels_last and device.type == "cuda"
    if config.cuda_graphs and device.type != "cuda":
        raise ConfigError(f"cuda_graphs: true needs a CUDA device, but this run is on {device}")
    if device.type == "cuda":
        # Shapes are static (batch, ESAM's subset k, eval batch): let cudnn time its algorithms once.
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(config.seed)  # weights; data and SWP draw from their own seeded generators

    data = build_data(config.data, device, config.seed, config.batch_size, config.eval_batch_size)
    model = build_model(config.model, num_classes=data.num_classes, in_channels=data.in_channels).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    make_optimizer = _optimizer_factory(config, config.seed)
    optimizer = make_optimizer(model)
    total_steps = config.epochs * data.steps_per_epoch
    warmup_steps = round(config.warmup_epochs * data.steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(config.schedule, total_steps, warmup_steps))
    probe = None
    if config.probe_steps > 0 and config.optimizer.name != "sgd":
        probe = InterleavedProbe(model, _optimizer_factory(config, config.seed + 1),
                                 _optimizer_factory(config, config.seed + 1, method="sgd"), device)
    graphed: dict[int, GraphedPasses] = {}  # model -> its graphs, kept across epochs (the probe's copies too)

    def runner(m: torch.nn.Module) -> Callable:
        """What the closures call: the model itself, compiled, or replaying CUDA graphs."""
        if config.cuda_graphs:
            if id(m) not in graphed:
                graphed[id(m)] = GraphedPasses(m, graph_budget(config.optimizer.swp_patterns))
            return graphed[id(m)]
        return compile_model(m, config.compile_mode, config.optimizer.swp_patterns) if config.compile else m

    forward = runner(model)
    fresh_swp = config.optimizer.name == "esam" and config.optimizer.beta < 1 and not config.optimizer.swp_patterns
    eager_ascent = model if config.compile and fresh_swp else None  # see _closure_factory and esam/compiling.py

    start_epoch = 0
    if resume_from is not None:
        path = Path(resume_from) / CHECKPOINT_FILE
        start_epoch = _restore(load_checkpoint(path), path, model, optimizer, scheduler, device)

    metrics: dict = {}
    probe_warmed = False
    for epoch in range(start_epoch, config.epochs):
        epoch_start = time.perf_counter()
        timer = StepTimer(device, skip=min(config.timing_warmup_steps, data.steps_per_epoch - 1))
        loss_sum = torch.zeros((), device=device)
        cost_sum = 0.0
        probe_batch = None
        for step, (x, y) in enumerate(data.train.epoch(epoch)):
            timer.before_step(step)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)  # once per step, not once per pass
            closure = _closure_factory(x, y, device, precision, channels_last, config.label_smoothing)(
                forward, eager_ascent)
            loss_sum += optimizer.step(closure)
            scheduler.step()
            cost_sum += optimizer.last_cost.relative_cost
            timer.after_step(step)
            if probe_batch is None:
                probe_batch = (x, y)
        elapsed = timer.elapsed()
        steps = data.steps_per_epoch
        train_loss = loss_sum.item() / steps
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"training loss is {train_loss} at epoch {epoch + 1}")
        ratio = 1.0 if config.optimizer.name == "sgd" else float("nan")  # nan: probing switched off
        if probe is not None:
            make_closure = _closure_factory(*probe_batch, device, precision, channels_last, config.label_smoothing)

            def probe_closure(m: torch.nn.Module) -> Callable:
                return make_closure(runner(m) if config.cuda_graphs else m)
            if config.cuda_graphs and not probe_warmed:  # captures out of the probe's timing, once per run
                wrappers = [runner(probe.method_model), runner(probe.sgd_model)]
                quiet = warm_up_quiet_steps(config.optimizer.swp_patterns)
                probe.warm_up(probe_closure, lambda step: warm_up(step, wrappers, quiet_steps=quiet))
                probe_warmed = True
            ratio = probe.step_time_ratio(probe_closure, config.probe_steps)
        synchronize(device)
        epoch_time = time.perf_counter() - epoch_start
        test_acc, test_loss = evaluate(forward, data.test, device, precision, channels_last)
        metrics = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "images_per_s": timer.steps * config.batch_size / elapsed if elapsed > 0 else float("nan"),
            "step_time_vs_sgd": ratio,
            "speed_vs_sgd": 1.0 / ratio,
            "relative_cost": cost_sum / steps,
            "epoch_time_s": epoch_time,
            "learning_rate": scheduler.get_last_lr()[0],
        }
        saved = None
        if checkpoint_dir is not None and config.checkpoint_every and (
                (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs):
            saved = Path(checkpoint_dir)
            _save_checkpoint(saved, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                     "scheduler": scheduler.state_dict(), "rng_cpu": torch.get_rng_state(),
                                     "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                                     "epoch": epoch, "metrics": metrics})
        if report is not None:
            report(dict(metrics), saved)
    return metrics
