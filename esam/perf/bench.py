"""Training-step throughput of SGD, SAM, ESAM (both SDS rules), LookSAM, RST and AE-SAM, timed interleaved.

    esam bench --quick                 # CPU, small CNN, batch 32, 1 thread: about a minute
    esam bench --model resnet18 --batch-size 128 --dtype bf16 --channels-last \
        --device cuda --repeats 5 --steps 30 --warmup 10 [--compile | --cuda-graphs --swp-patterns 8] [--out results.md]

What is timed: `steps` whole optimizer steps (every pass, the closure, the base SGD update) on
synthetic CIFAR-sized batches already on the device, after `warmup` untimed steps (which absorb
cudnn autotuning and compilation), with the device synchronized at both ends. The methods run
round robin, each repeat starting with a different one, so drifting clocks and noisy neighbours
hit all alike; the table gives the median over repeats and the min/max of each method's images/s
(raw figures: they move with whatever else runs on the device), and, as the comparable figure, the
median over repeats of each repeat's ratio to SGD and to SAM (paired: both timed in the same repeat)
with its distribution-free 95% interval (esam.training.speed_estimate; below 6 repeats, the range). Each method trains its
own copy of the same initial model with SGD(lr 0.05, momentum 0.9, wd 5e-4) as the base.
Under --compile, ESAM's SWP flips requires_grad, and each new pattern is a recompile (up to
dynamo's recompile limit, then eager): ESAM's compiled numbers include that.
Under --cuda-graphs every method replays its passes as CUDA graphs (esam.training.cuda_graphs); ESAM's ascent
is graphed only when --swp-patterns N lets its SWP patterns repeat. Untimed steps come first, until
no new pass has been captured for 10 + 4N steps, so that captures stay out of the timing.
"host ops/step" counts the ATen operators a step dispatches (esam.perf.dispatch_count), averaged over
20 untimed steps (LookSAM, RST and AE-SAM run one pass on some steps and a sharpness step on others):
where the host launching kernels is the bottleneck, step time follows it.
LookSAM, RST and AE-SAM take their sharpness steps as SAM's (--sharpness esam: ESAM's, with beta,
gamma and the paper's SDS rule). The bench cannot tell AE-SAM the run's length, so its threshold c
stays at the mean of its schedule (0 by default): about half the steps sharpen once its statistics settle.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

import torch

from esam.config import TrainConfig, train_config_from_dict
from esam.errors import ConfigError
from esam.models import build_model
from esam.optim import METHODS as RECORDS
from esam.optim import predicted_relative_cost
from esam.perf.bench_options import FULL, QUICK, add_arguments
from esam.perf.dispatch_count import count_ops
from esam.training.cuda_graphs import warm_up, warm_up_quiet_steps
from esam.training.speed_estimate import median_interval
from esam.training.step import PassMode, build_step_optimizer, loss_closure, prepare_device, resolve_device
from esam.training.timing import synchronize

# label -> (registry name, optimizer settings that differ from the config's)
METHODS = {
    "SGD": ("sgd", {}),
    "SAM": ("sam", {}),
    "ESAM paper (loss_rise)": ("esam", {"score": "loss_rise"}),
    "ESAM cheap (clean_loss)": ("esam", {"score": "clean_loss"}),
    "LookSAM": ("looksam", {}),
    "RST": ("rst", {}),
    "AE-SAM": ("aesam", {}),
}
OPS_STEPS = 20  # untimed steps over which host operators per step are averaged


def count_host_syncs(fn) -> int:
    """How many synchronizing CUDA calls fn makes (torch's sync debug mode, as warnings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU {cpu}, {torch.get_num_threads()} threads"


def run_bench(config: TrainConfig, *, repeats: int = 5, steps: int = 30, warmup: int = 10,
              methods: Sequence[str] | None = None) -> list[dict]:
    """Time each method interleaved; one row per method with images/s (median, min, max), ratios and costs.

    The step is the trainer's (esam.training.step), on synthetic batches: `config` gives the model,
    batch size, precision, channels_last, device, compile / cuda_graphs, threads, seed and the
    optimizer's rho, beta, gamma and swp_patterns; `config.data.synthetic_classes` the classes.
    """
    if min(repeats, steps) < 1 or warmup < 0:
        raise ConfigError(f"repeats and steps must be >= 1 and warmup >= 0, got {repeats}, {steps}, {warmup}")
    methods = list(methods or METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown methods {unknown} (valid: {', '.join(METHODS)})")
    dev = prepare_device(config)
    precision = "bf16" if config.precision == "bf16" else "fp32"
    num_classes, batch_size, seed = config.data.synthetic_classes, config.batch_size, config.seed
    torch.manual_seed(seed)
    try:
        base_model = build_model(config.model, num_classes=num_classes, in_channels=3).to(dev)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    base_model = base_model.to(memory_format=memory_format)
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(batch_size, 3, 32, 32, generator=g).to(dev, memory_format=memory_format),
                torch.randint(0, num_classes, (batch_size,), generator=g).to(dev)) for _ in range(4)]
    passes = PassMode.of(config)
    swp_patterns = config.optimizer.swp_patterns

    runs = {}
    for label in methods:
        name, extra = METHODS[label]
        net = copy.deepcopy(base_model)
        settings = dataclasses.replace(config.optimizer, name=name, **extra)
        # foreach everywhere, as on CUDA: one launch per update, on any device
        opt = build_step_optimizer(net, settings, seed, foreach=True)
        fwd = passes.wrap(net)  # under compile, ESAM's ascent is compiled too: each new SWP pattern recompiles
        closures = [loss_closure(fwd, x, y, precision=precision, channels_last=config.channels_last)
                    for x, y in batches]
        runs[label] = dict(opt=opt, closures=closures, i=0, ips=[], costs=[], syncs=None, ops=None, fwd=fwd,
                           score=settings.score)

    def run_steps(r: dict, n: int, record: bool) -> torch.Tensor:
        loss = torch.zeros(())
        for _ in range(n):
            loss = r["opt"].step(r["closures"][r["i"] % len(r["closures"])])
            r["i"] += 1
            if record:
                r["costs"].append(r["opt"].last_cost.relative_cost)
        return loss

    if config.cuda_graphs:  # untimed: each pass is captured at its second sighting, ESAM's pool patterns late
        for r in runs.values():
            warm_up(lambda: run_steps(r, 1, record=False), [r["fwd"]], quiet_steps=warm_up_quiet_steps(swp_patterns))
    for rep in range(repeats):
        order = methods[rep % len(methods):] + methods[:rep % len(methods)]
        for label in order:
            r = runs[label]
            run_steps(r, warmup, record=False)
            if rep == 0:  # untimed steps: some counting dispatched operators, one checking host syncs
                r["ops"] = sum(count_ops(lambda: run_steps(r, OPS_STEPS, record=False)).values()) / OPS_STEPS
                if dev.type == "cuda":
                    r["syncs"] = count_host_syncs(lambda: run_steps(r, 1, record=False))
            synchronize(dev)
            start = time.perf_counter()
            loss = run_steps(r, steps, record=True)
            synchronize(dev)
            elapsed = time.perf_counter() - start
            if not torch.isfinite(loss).item():  # outside the timed region
                raise RuntimeError(f"{label}: loss is {loss.item()} after {r['i']} steps")
            r["ips"].append(steps * batch_size / elapsed)

    medians = {label: statistics.median(runs[label]["ips"]) for label in methods}

    def paired(label: str, reference: str) -> tuple[float, float, float]:
        """Median of the per-repeat ratios to `reference`, with its 95% interval (nan without the reference)."""
        if reference not in runs:
            return float("nan"), float("nan"), float("nan")
        return median_interval([a / b for a, b in zip(runs[label]["ips"], runs[reference]["ips"])])
    rows = []
    for label in methods:
        name, _ = METHODS[label]
        ips = runs[label]["ips"]
        o = config.optimizer
        predicted = predicted_relative_cost(name, o.beta, o.gamma, runs[label]["score"], batch_size,
                                            sharpness=o.sharpness, looksam_k=o.looksam_k, rst_p=o.rst_p,
                                            aesam_c_start=o.aesam_c_start, aesam_c_end=o.aesam_c_end)
        to_sam, to_sgd = paired(label, "SAM"), paired(label, "SGD")
        rows.append(dict(
            method=label, images_per_s=medians[label], min=min(ips), max=max(ips),
            ratio_to_sam=to_sam[0], ratio_to_sam_low=to_sam[1], ratio_to_sam_high=to_sam[2],
            ratio_to_sgd=to_sgd[0], ratio_to_sgd_low=to_sgd[1], ratio_to_sgd_high=to_sgd[2],
            predicted_ratio_to_sam=predicted_relative_cost("sam") / predicted,
            predicted_relative_cost=predicted,
            relative_cost=statistics.fmean(runs[label]["costs"]),
            host_syncs_per_step=runs[label]["syncs"],
            host_ops_per_step=runs[label]["ops"],
            graphs=runs[label]["fwd"].num_graphs if config.cuda_graphs else 0,
        ))
    return rows


def markdown(rows: list[dict], config: TrainConfig, *, repeats: int, steps: int, warmup: int) -> str:
    """The rows as a markdown table under a header naming the machine and the settings."""
    dev = resolve_device(config.device)
    o = config.optimizer
    precision = "bf16" if config.precision == "bf16" else "fp32"
    syncs = ("- host syncs in one step (CUDA sync debug mode): "
             + ", ".join(f"{r['method']} {r['host_syncs_per_step']}" for r in rows)
             if dev.type == "cuda" else "- host syncs: not checked on the CPU")
    head = [
        f"## Step throughput: {config.model}, batch {config.batch_size}, {precision}"
        f"{', channels_last' if config.channels_last else ''}"
        f"{', compiled (' + config.compile_mode + ')' if config.compile else ''}"
        f"{', CUDA graphs' if config.cuda_graphs else ''}"
        f"{', SWP pool of ' + str(o.swp_patterns) if o.swp_patterns else ''}",
        "",
        f"- device: {device_name(dev)}; torch {torch.__version__}; "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- {repeats} repeats x {steps} timed steps after {warmup} warm-up steps each, interleaved; "
        f"rho {o.rho}, beta {o.beta}, gamma {o.gamma}",
        *([f"- LookSAM k {o.looksam_k}, alpha {o.looksam_alpha}; RST p {o.rst_p}; AE-SAM c "
           f"{(o.aesam_c_start + o.aesam_c_end) / 2:g} (no run length), momentum {o.aesam_momentum}; their sharpness "
           f"steps: {o.sharpness.upper()}'s"] if any(RECORDS[METHODS[r["method"]][0]].skips for r in rows) else []),
        syncs,
        *(["- CUDA graphs captured: " + ", ".join(f"{r['method']} {r['graphs']}" for r in rows)]
          if config.cuda_graphs else []),
        "- images/s: this process alone, raw (it moves with whatever else runs on the device); vs SAM, vs SGD: "
        "median over repeats of the ratio within each repeat, [95% interval] (below 6 repeats: the range)",
        f"- host ops/step: ATen operators a step dispatches, mean of {OPS_STEPS} steps (views excluded; a graph "
        "replay counts 0)",
        "- predicted: the cost model (forward 1, backward 2 per sample; esam/optim/cost.py); relative_cost: "
        "realized, mean of last_cost over timed steps",
        "",
        "| method | images/s (median) | min | max | vs SAM [95%] | vs SGD [95%] | predicted vs SAM | relative_cost | host ops/step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    def ratio(r: dict, to: str) -> str:
        return f"{r[f'ratio_to_{to}']:.2f} [{r[f'ratio_to_{to}_low']:.2f}, {r[f'ratio_to_{to}_high']:.2f}]"
    body = [f"| {r['method']} | {r['images_per_s']:,.0f} | {r['min']:,.0f} | {r['max']:,.0f} | "
            f"{ratio(r, 'sam')} | {ratio(r, 'sgd')} | {r['predicted_ratio_to_sam']:.2f} | "
            f"{r['relative_cost']:.2f} | {r['host_ops_per_step']:.1f} |" for r in rows]
    return "\n".join(head + body) + "\n"


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, dict]:
    """(the training config the bench steps with, its repeats/steps/warmup) from parsed options."""
    defaults = QUICK if args.quick else FULL
    pick = {k: getattr(args, k) if getattr(args, k, None) is not None else v for k, v in defaults.items()}
    config = train_config_from_dict({
        "model": pick["model"], "batch_size": pick["batch_size"], "device": pick["device"],
        "threads": pick["threads"], "precision": args.dtype, "channels_last": args.channels_last,
        "compile": args.compile, "compile_mode": args.compile_mode, "cuda_graphs": args.cuda_graphs,
        "seed": args.seed, "data": {"name": "synthetic"},
        "optimizer": {"rho": args.rho, "beta": args.beta, "gamma": args.gamma, "swp_patterns": args.swp_patterns,
                      "sharpness": args.sharpness, "looksam_k": args.looksam_k, "rst_p": args.rst_p}})
    return config, {k: pick[k] for k in ("repeats", "steps", "warmup")}


def run(args: argparse.Namespace) -> int:
    config, timing = config_from_args(args)
    table = markdown(run_bench(config, **timing), config, **timing)
    print(table)
    if args.out:
        Path(args.out).write_text(table)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="esam bench", description=__doc__.split("\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
