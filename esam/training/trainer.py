"""One training run: `train(config, report) -> metrics`. Knows nothing of Ray or MLflow.

Each epoch reports the metrics of esam.training.metrics: losses, test_acc with its standard error,
images_per_s (this process's raw throughput), speed_vs_sgd with its 95% interval (the method's
step against an SGD step, timed interleaved in this process, over every pair of the run so far:
comparable when trials share a device), the epoch's own figure beside it, relative_cost, ...

Read top to bottom: `_setup` builds the run, `_resume` continues a checkpoint, `_train_epoch`
steps through one epoch, `_speed_vs_sgd` runs the speed probe, `_save` writes the checkpoint.

Data-parallel: called on every rank of an initialised process group (Ray Train, torchrun), train()
runs as one DDP rank (esam/training/distributed.py). Every rank builds the same run from the same
seed, draws the same global batches and trains on its `rank_share` of each (so `batch_size` is
the global batch); gradients are averaged as SAM's and ESAM's docstrings describe. train_loss and
relative_cost are means over the ranks, images_per_s counts the global batch, test accuracy is
summed over the ranks' parts of the test set (rank 0's BatchNorm statistics on every rank), and
only rank 0 reports and writes checkpoints; every rank resumes from one. The speed probe times
each rank's own step on its share (no communication: the compute ratio, all-reduce not included).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from esam.config import TrainConfig
from esam.data import build_data
from esam.errors import ConfigError
from esam.models import build_model
from esam.training import distributed
from esam.training.checkpoint import CHECKPOINT_FILE, load_checkpoint, restore, save_checkpoint
from esam.training.cuda_graphs import warm_up, warm_up_quiet_steps
from esam.training.schedule import lr_multiplier
from esam.training.speed_estimate import SpeedEstimate, block_ratios, median, probe_epoch
from esam.training.speed_probe import InterleavedProbe, cycle_steps
from esam.training.step import (PassMode, autocast, build_step_optimizer, loss_closure, prepare_device,
                                resolve_precision)
from esam.training.timing import StepTimer, synchronize

Report = Callable[[dict, "Path | None"], None]


@torch.no_grad()
def evaluate(model: Callable, loader, device: torch.device, precision: str,
             channels_last: bool) -> tuple[float, float]:
    """(test accuracy in %, mean test loss)."""
    correct, loss_sum, count = evaluation_sums(model, loader, device, precision, channels_last)
    return 100.0 * correct / count, loss_sum / count


@torch.no_grad()
def evaluation_sums(model: Callable, loader, device: torch.device, precision: str,
                    channels_last: bool) -> tuple[float, float, int]:
    """(correct predictions, summed test loss, samples) over what `loader` yields."""
    model.eval()
    correct = torch.zeros((), device=device, dtype=torch.long)
    loss_sum = torch.zeros((), device=device)
    count = 0
    for x, y in loader.epoch(0):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        count += y.numel()
    model.train()
    return float(correct.item()), loss_sum.item(), count


@dataclass
class _Run:
    """What one training run holds between epochs."""

    config: TrainConfig
    device: torch.device
    precision: str  # fp32 | bf16, resolved for the device
    channels_last: bool  # NHWC activations (CUDA only)
    data: object  # esam.data's train and test loaders
    model: torch.nn.Module
    optimizer: object  # Plain, SAM or ESAM around the base SGD
    scheduler: torch.optim.lr_scheduler.LambdaLR
    passes: PassMode  # how a pass runs: eager, compiled or graphed
    forward: Callable  # the model as the passes call it (wrapped once: graphs live in the wrapper)
    probe: InterleavedProbe | None  # speed_vs_sgd; None when probing is off or the method is SGD
    rank: int = 0  # this process's rank under DDP; 0 alone
    world: int = 1  # DDP ranks; 1: a single-process run
    probe_warmed: bool = False
    speed: SpeedEstimate = dataclasses.field(default_factory=SpeedEstimate)  # every pair of the run, resumed too

    def closure(self, x: torch.Tensor, y: torch.Tensor, run: Callable | None = None, eager_ascent=None):
        return loss_closure(self.forward if run is None else run, x, y, precision=self.precision,
                            channels_last=self.channels_last, label_smoothing=self.config.label_smoothing,
                            eager_ascent=eager_ascent)


def _setup(config: TrainConfig) -> _Run:
    device = prepare_device(config)
    world = distributed.world_size()
    rank = torch.distributed.get_rank() if world > 1 else 0
    if world > 1 and config.cuda_graphs:
        raise ConfigError("cuda_graphs: true cannot run under DDP (a graph cannot hold its all-reduce); "
                          "use compile: true")
    if config.batch_size % world:
        raise ConfigError(f"batch_size {config.batch_size} does not split evenly over {world} DDP ranks")
    torch.manual_seed(config.seed)  # weights; data and SWP draw from their own seeded generators

    data = build_data(config.data, device, config.seed, config.batch_size, config.eval_batch_size)
    model = build_model(config.model, num_classes=data.num_classes, in_channels=data.in_channels).to(device)
    channels_last = config.channels_last and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    local = model  # what the probe copies: a DDP module would not copy
    if world > 1:
        data.train, data.test = (distributed.RankShare(data.train, rank, world),
                                 distributed.RankShare(data.test, rank, world))
        model = distributed.wrap(model, device)
    total_steps = config.epochs * data.steps_per_epoch
    optimizer = build_step_optimizer(model, config.optimizer, config.seed, total_steps=total_steps)
    if world > 1:
        distributed.check_swp_agrees(optimizer)
    warmup_steps = round(config.warmup_epochs * data.steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(config.schedule, total_steps, warmup_steps))
    passes = PassMode.of(config)
    probe = None
    if config.probe_steps > 0 and config.optimizer.name != "sgd":
        # Throw-away copies with their own seed; graphed like the run, compiled never (compiling costs more than it shows).
        # Each pair times a whole cycle of the method (speed_probe.cycle_steps). AE-SAM's copy sharpens at the
        # run's share of sharpness steps (_speed_vs_sgd): its own test on one repeated batch would say little.
        probe = InterleavedProbe(local, lambda m: build_step_optimizer(m, config.optimizer, config.seed + 1),
                                 lambda m: build_step_optimizer(m, config.optimizer, config.seed + 1, method="sgd"),
                                 device, wrap=passes.wrap if passes.kind == "cuda_graphs" else None,
                                 block=cycle_steps(config.optimizer))
    return _Run(config, device, resolve_precision(config.precision, device), channels_last, data, model,
                optimizer, scheduler, passes, passes.wrap(model), probe, rank, world)


def _resume(run: _Run, resume_from: str | Path | None) -> int:
    """The first epoch to train: 0, or the one after the checkpoint in `resume_from`."""
    if resume_from is None:
        return 0
    path = Path(resume_from) / CHECKPOINT_FILE
    state = load_checkpoint(path)
    first = restore(state, path, distributed.unwrap(run.model), run.optimizer, run.scheduler, run.device)
    speed = state.get("speed_pairs")  # absent in checkpoints written before the run-level estimate
    run.speed = SpeedEstimate.from_list(speed.tolist() if isinstance(speed, torch.Tensor) else None)
    return first


def _train_epoch(run: _Run, epoch: int) -> tuple[dict, tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of optimizer steps: its train_loss, images_per_s, relative_cost, and its first batch."""
    config, data = run.config, run.data
    timer = StepTimer(run.device, skip=min(config.timing_warmup_steps, data.steps_per_epoch - 1))
    loss_sum = torch.zeros((), device=run.device)
    cost_sum = 0.0
    first_batch = None
    eager_ascent = run.passes.eager_ascent(run.model)
    for step, (x, y) in enumerate(data.train.epoch(epoch)):
        timer.before_step(step)
        if run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)  # once per step, not once per pass
        loss_sum += run.optimizer.step(run.closure(x, y, eager_ascent=eager_ascent))
        run.scheduler.step()
        cost_sum += run.optimizer.last_cost.relative_cost
        timer.after_step(step)
        if first_batch is None:
            first_batch = (x, y)
    elapsed = timer.elapsed()
    train_loss = loss_sum.item()
    if run.world > 1:  # each rank's loss and cost are its share's: report their means
        train_loss, cost_sum = (v / run.world for v in distributed.sum_over_ranks([train_loss, cost_sum], run.device))
    train_loss /= data.steps_per_epoch
    if not math.isfinite(train_loss):
        raise FloatingPointError(f"training loss is {train_loss} at epoch {epoch + 1}")
    return {"train_loss": train_loss,
            "images_per_s": timer.steps * config.batch_size / elapsed if elapsed > 0 else float("nan"),
            "relative_cost": cost_sum / data.steps_per_epoch}, first_batch


def _speed_vs_sgd(run: _Run, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    """The speed metrics: this epoch's pairs timed on `batch` by the stopping rule, then the run's estimate.

    SGD is 1 with the interval [1, 1]; with probing off every figure is nan."""
    if run.probe is None:
        one = 1.0 if run.config.optimizer.name == "sgd" else float("nan")
        return {"step_time_vs_sgd": one, "step_time_vs_sgd_low": one, "step_time_vs_sgd_high": one,
                "speed_vs_sgd": one, "speed_vs_sgd_low": one, "speed_vs_sgd_high": one,
                "epoch_speed_vs_sgd": one, "probe_pairs": 0}

    def make_closure(runs: Callable):
        return run.closure(*batch, run=runs)
    if run.passes.kind == "cuda_graphs" and not run.probe_warmed:  # captures out of the probe's timing, once per run
        quiet = warm_up_quiet_steps(run.config.optimizer.swp_patterns)
        run.probe.warm_up(make_closure, lambda step: warm_up(step, run.probe.runners, quiet_steps=quiet))
        run.probe_warmed = True
    if hasattr(run.optimizer, "sharpness_steps"):  # LookSAM, RST, AE-SAM: the share of sharpness steps the run paid
        run.speed.share = run.optimizer.sharpness_steps / max(1, run.optimizer.num_steps)
    if hasattr(run.probe.method_opt, "time_at_share"):  # AE-SAM: time its steps at the run's share of sharpening
        run.probe.method_opt.time_at_share(run.speed.share)
    # probe_steps counts steps of each kind: a method timed in blocks needs fewer pairs for the same minimum
    min_pairs = -(-run.config.probe_steps // run.probe.block)
    epoch = probe_epoch(run.speed, lambda n, first: run.probe.time_pairs(make_closure, n, discard_first=first),
                        min_pairs)
    return {**run.speed.summary(), "epoch_speed_vs_sgd": median(block_ratios(epoch, run.speed.share))}


def _evaluate(run: _Run) -> tuple[float, float]:
    """(test accuracy in %, mean test loss); under DDP each rank evaluates its part with rank 0's weights and buffers."""
    if run.world == 1:
        return evaluate(run.forward, run.data.test, run.device, run.precision, run.channels_last)
    distributed.broadcast_buffers(run.model)
    # The module itself: its DDP wrapper would broadcast buffers at every forward, and the ranks' parts differ in length.
    sums = evaluation_sums(distributed.unwrap(run.model), run.data.test, run.device, run.precision, run.channels_last)
    correct, loss_sum, count = distributed.sum_over_ranks(list(sums), run.device)
    return 100.0 * correct / count, loss_sum / count


def _save(run: _Run, checkpoint_dir: str | Path | None, epoch: int, metrics: dict) -> Path | None:
    """Write the checkpoint when one is due after `epoch`; returns its directory, or None."""
    every = run.config.checkpoint_every
    if checkpoint_dir is None or run.rank != 0 or not every or ((epoch + 1) % every and epoch + 1 != run.config.epochs):
        return None
    device = run.device
    save_checkpoint(Path(checkpoint_dir), {
        "model": distributed.unwrap(run.model).state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "epoch": epoch, "metrics": metrics,
        # plain float64 rows, so weights_only loading reads them: [train_s, probe_s], then [method_s, sgd_s] per
        # pair (and a third column, the block's share of sharpness steps, for LookSAM, RST and AE-SAM)
        "speed_pairs": torch.tensor(run.speed.to_list(), dtype=torch.float64)})
    return Path(checkpoint_dir)


def train(config: TrainConfig, report: Report | None = None, *,
          checkpoint_dir: str | Path | None = None, resume_from: str | Path | None = None) -> dict:
    """Train `config.model` on `config.data` with `config.optimizer`; return the last epoch's metrics.

    report(metrics, checkpoint_dir_or_None) is called after every epoch (on rank 0 only under DDP:
    see the module's docstring). With `checkpoint_dir`,
    a checkpoint (model, optimizer with its base state, scheduler, RNG, epoch) is written there
    every `config.checkpoint_every` epochs; `resume_from` (a directory holding one) continues it.
    """
    run = _setup(config)
    metrics: dict = {}
    for epoch in range(_resume(run, resume_from), config.epochs):
        epoch_start = time.perf_counter()
        trained, first_batch = _train_epoch(run, epoch)
        synchronize(run.device)
        run.speed.train_s += time.perf_counter() - epoch_start  # the probe's budget is a share of this
        speed = _speed_vs_sgd(run, first_batch)
        synchronize(run.device)
        epoch_time = time.perf_counter() - epoch_start
        test_acc, test_loss = _evaluate(run)
        p = test_acc / 100
        metrics = {
            "epoch": epoch + 1,
            "train_loss": trained["train_loss"],
            "test_loss": test_loss,
            "test_acc": test_acc,
            "test_acc_se": 100 * math.sqrt(p * (1 - p) / run.data.test_size),
            "images_per_s": trained["images_per_s"],
            "step_time_vs_sgd": speed["step_time_vs_sgd"],
            "step_time_vs_sgd_low": speed["step_time_vs_sgd_low"],
            "step_time_vs_sgd_high": speed["step_time_vs_sgd_high"],
            "speed_vs_sgd": speed["speed_vs_sgd"],
            "speed_vs_sgd_low": speed["speed_vs_sgd_low"],
            "speed_vs_sgd_high": speed["speed_vs_sgd_high"],
            "epoch_speed_vs_sgd": speed["epoch_speed_vs_sgd"],
            "probe_pairs": speed["probe_pairs"],
            "relative_cost": trained["relative_cost"],
            "epoch_time_s": epoch_time,
            "learning_rate": run.scheduler.get_last_lr()[0],
        }
        saved = _save(run, checkpoint_dir, epoch, metrics)
        if report is not None and run.rank == 0:
            report(dict(metrics), saved)
    return metrics
