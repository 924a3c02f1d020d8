"""Training-step throughput of SGD, SAM and ESAM (both SDS rules), timed interleaved in one process.

    esam bench --quick                 # CPU, small CNN, batch 32, 1 thread: about 30 s
    esam bench --model resnet18 --batch-size 128 --dtype bf16 --channels-last \
        --device cuda --repeats 5 --steps 30 --warmup 10 [--compile | --cuda-graphs --swp-patterns 8] [--out results.md]

What is timed: `steps` whole optimizer steps (every pass, the closure, the base SGD update) on
synthetic CIFAR-sized batches already on the device, after `warmup` untimed steps (which absorb
cudnn autotuning and compilation), with the device synchronized at both ends. The methods run
round robin, each repeat starting with a different one, so drifting clocks and noisy neighbours
hit all alike; the table gives the median over repeats and the min/max. Each method trains its
own copy of the same initial model with SGD(lr 0.05, momentum 0.9, wd 5e-4) as the base.
Under --compile, ESAM's SWP flips requires_grad, and each new pattern is a recompile (up to
dynamo's recompile limit, then eager): ESAM's compiled numbers include that.
Under --cuda-graphs every method replays its passes as CUDA graphs (esam.graphs); ESAM's ascent
is graphed only when --swp-patterns N lets its SWP patterns repeat. Untimed steps come first, until
no new pass has been captured for 10 + 4N steps, so that captures stay out of the timing.
"host ops/step" counts the ATen operators one step dispatches (esam.dispatch_count): where the host
launching kernels is the bottleneck, step time follows it.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from esam.training.compiling import compile_model
from esam.config import COMPILE_MODES
from esam.perf.dispatch_count import count_ops
from esam.training.cuda_graphs import GraphedPasses, graph_budget, warm_up, warm_up_quiet_steps
from esam.models import build_model
from esam.optim import build_optimizer, predicted_relative_cost

# label -> (registry name, its hyperparameter names)
METHODS = {
    "SGD": ("sgd", {}),
    "SAM": ("sam", {}),
    "ESAM paper (loss_rise)": ("esam", {"score": "loss_rise"}),
    "ESAM cheap (clean_loss)": ("esam", {"score": "clean_loss"}),
}
QUICK = dict(model="small_cnn", batch_size=32, steps=5, warmup=2, repeats=3, device="cpu", threads=1)
FULL = dict(model="resnet18", batch_size=128, steps=30, warmup=10, repeats=5, device=None, threads=None)


def _closure(net: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool, channels_last: bool):
    device_type = x.device.type

    def closure(indices: torch.Tensor | None = None) -> torch.Tensor:
        xb, yb = (x, y) if indices is None else (x.index_select(0, indices), y.index_select(0, indices))
        if channels_last and indices is not None:  # indexing drops channels_last
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
            logits = net(xb)
        return F.cross_entropy(logits.float(), yb, reduction="none")
    return closure


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def run_bench(model: str = "small_cnn", batch_size: int = 128, dtype: str = "fp32", channels_last: bool = False,
              device: str | None = None, repeats: int = 5, steps: int = 30, warmup: int = 10, compile: bool = False,
              rho: float = 0.05, beta: float = 0.6, gamma: float = 0.5, threads: int | None = None, seed: int = 0,
              methods: Sequence[str] | None = None, num_classes: int = 10, cuda_graphs: bool = False,
              swp_patterns: int | None = None, compile_mode: str = "default") -> list[dict]:
    """Time each method interleaved; one row per method with images/s (median, min, max), ratios and costs."""
    if dtype not in ("fp32", "bf16"):
        raise ValueError(f"dtype must be fp32 or bf16, got {dtype!r}")
    if min(repeats, steps) < 1 or warmup < 0:
        raise ValueError(f"repeats and steps must be >= 1 and warmup >= 0, got {repeats}, {steps}, {warmup}")
    methods = list(methods or METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown} (valid: {', '.join(METHODS)})")
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if cuda_graphs and (compile or dev.type != "cuda"):
        raise ValueError(f"--cuda-graphs needs a CUDA device and no --compile (device {dev}, compile {compile})")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # static shapes (ESAM's subset size included): tune once
    torch.manual_seed(seed)
    base_model = build_model(model, num_classes=num_classes, in_channels=3).to(dev)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    base_model = base_model.to(memory_format=memory_format)
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(batch_size, 3, 32, 32, generator=g).to(dev, memory_format=memory_format),
                torch.randint(0, num_classes, (batch_size,), generator=g).to(dev)) for _ in range(4)]

    runs = {}
    for label in methods:
        name, extra = METHODS[label]
        net = copy.deepcopy(base_model)
        base = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4,
                               foreach=True)  # as on CUDA: one launch per update, on any device
        hparams = {} if name == "sgd" else {"rho": rho, "model": net}
        if name == "esam":
            hparams.update(beta=beta, gamma=gamma, score=extra["score"], seed=seed, swp_patterns=swp_patterns)
        opt = build_optimizer(name, net.parameters(), base, **hparams)
        fwd = GraphedPasses(net, graph_budget(swp_patterns)) if cuda_graphs else compile_model(net, compile_mode, swp_patterns) if compile else net
        closures = [_closure(fwd, x, y, dtype == "bf16", channels_last) for x, y in batches]
        runs[label] = dict(opt=opt, closures=closures, i=0, ips=[], costs=[], syncs=None, ops=None, fwd=fwd)

    def run_steps(r: dict, n: int, record: bool) -> torch.Tensor:
        loss = torch.zeros(())
        for _ in range(n):
            loss = r["opt"].step(r["closures"][r["i"] % len(r["closures"])])
            r["i"] += 1
            if record:
                r["costs"].append(r["opt"].last_cost.relative_cost)
        return loss

    if cuda_graphs:  # untimed: each pass is captured at its second sighting, ESAM's pool patterns late
        for r in runs.values():
            warm_up(lambda: run_steps(r, 1, record=False), [r["fwd"]], quiet_steps=warm_up_quiet_steps(swp_patterns))
    for rep in range(repeats):
        order = methods[rep % len(methods):] + methods[:rep % len(methods)]
        for label in order:
            r = runs[label]
            run_steps(r, warmup, record=False)
            if rep == 0:  # untimed steps: one counting dispatched operators, one checking host syncs
                r["ops"] = sum(count_ops(lambda: run_steps(r, 1, record=False)).values())
                if dev.type == "cuda":
                    r["syncs"] = count_host_syncs(lambda: run_steps(r, 1, record=False))
            _sync(dev)
            start = time.perf_counter()
            loss = run_steps(r, steps, record=True)
            _sync(dev)
            elapsed = time.perf_counter() - start
            if not torch.isfinite(loss).item():  # outside the timed region
                raise RuntimeError(f"{label}: loss is {loss.item()} after {r['i']} steps")
            r["ips"].append(steps * batch_size / elapsed)

    medians = {label: statistics.median(runs[label]["ips"]) for label in methods}
    rows = []
    for label in methods:
        name, extra = METHODS[label]
        ips = runs[label]["ips"]
        predicted = predicted_relative_cost(name, beta, gamma, extra["score"], batch_size) \
            if name == "esam" else predicted_relative_cost(name)
        rows.append(dict(
            method=label, images_per_s=medians[label], min=min(ips), max=max(ips),
            ratio_to_sam=medians[label] / medians["SAM"] if "SAM" in medians else float("nan"),
            ratio_to_sgd=medians[label] / medians["SGD"] if "SGD" in medians else float("nan"),
            predicted_ratio_to_sam=predicted_relative_cost("sam") / predicted,
            predicted_relative_cost=predicted,
            relative_cost=statistics.fmean(runs[label]["costs"]),
            host_syncs_per_step=runs[label]["syncs"],
            host_ops_per_step=runs[label]["ops"],
            graphs=runs[label]["fwd"].num_graphs if cuda_graphs else 0,
        ))
    return rows


def markdown(rows: list[dict], settings: dict) -> str:
    """The rows as a markdown table under a header naming the machine and the settings."""
    s = settings
    dev = torch.device(s["device"] or ("cuda" if torch.cuda.is_available() else "cpu"))
    syncs = ("- host syncs in one step (CUDA sync debug mode): "
             + ", ".join(f"{r['method']} {r['host_syncs_per_step']}" for r in rows)
             if dev.type == "cuda" else "- host syncs: not checked on the CPU")
    head = [
        f"## Step throughput: {s['model']}, batch {s['batch_size']}, {s['dtype']}"
        f"{', channels_last' if s['channels_last'] else ''}"
        f"{', compiled (' + s.get('compile_mode', 'default') + ')' if s['compile'] else ''}"
        f"{', CUDA graphs' if s.get('cuda_graphs') else ''}"
        f"{', SWP pool of ' + str(s['swp_patterns']) if s.get('swp_patterns') else ''}",
        "",
        f"- device: {device_name(dev)}; torch {torch.__version__}; "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- {s['repeats']} repeats x {s['steps']} timed steps after {s['warmup']} warm-up steps each, interleaved; "
        f"rho {s['rho']}, beta {s['beta']}, gamma {s['gamma']}",
        syncs,
        *([f"- CUDA graphs captured: " + ", ".join(f"{r['method']} {r['graphs']}" for r in rows)]
          if s.get("cuda_graphs") else []),
        "- host ops/step: ATen operators one step dispatches (views excluded; a graph replay counts 0)",
        "- predicted: the cost model (forward 1, backward 2 per sample; PAPER.md); relative_cost: realized, "
        "mean of last_cost over timed steps",
        "",
        "| method | images/s (median) | min | max | vs SAM | vs SGD | predicted vs SAM | relative_cost | host ops/step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    body = [f"| {r['method']} | {r['images_per_s']:,.0f} | {r['min']:,.0f} | {r['max']:,.0f} | "
            f"{r['ratio_to_sam']:.2f} | {r['ratio_to_sgd']:.2f} | {r['predicted_ratio_to_sam']:.2f} | "
            f"{r['relative_cost']:.2f} | {r['host_ops_per_step']} |" for r in rows]
    return "\n".join(head + body) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="esam bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help=f"CPU smoke run: {QUICK}")
    p.add_argument("--model", help="a name from esam.models (default resnet18)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--device", help="cuda | cpu (default: cuda if available)")
    p.add_argument("--repeats", type=int)
    p.add_argument("--steps", type=int, help="timed steps per method per repeat")
    p.add_argument("--warmup", type=int, help="untimed steps per method per repeat")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default="default", help="torch.compile's mode")
    p.add_argument("--cuda-graphs", action="store_true", help="replay every training pass as a CUDA graph")
    p.add_argument("--swp-patterns", type=int, help="ESAM draws SWP masks from a pool of N (graphable)")
    p.add_argument("--rho", type=float, default=0.05)
    p.add_argument("--beta", type=float, default=0.6)
    p.add_argument("--gamma", type=float, default=0.5)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the table to this markdown file")
    args = p.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    settings = {k: v for k, v in vars(args).items() if k not in ("quick", "out")}
    for k, v in defaults.items():
        if settings.get(k) is None:
            settings[k] = v
    rows = run_bench(**settings)
    table = markdown(rows, settings)
    print(table)
    if args.out:
        Path(args.out).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
