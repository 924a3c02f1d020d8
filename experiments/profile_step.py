"""Where an optimizer step spends its time: torch.profiler over a few steps, SAM against ESAM.

    python experiments/profile_step.py --batch-size 512 --out profile.txt     # on a GPU
    python experiments/profile_step.py --quick                               # CPU smoke run

Prints, per method, the device time of one step and the operators that take most of it, so a
gap between the measured speed and the cost model can be traced to kernels (or to host gaps:
device time well below wall time means the GPU waits for Python).
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from esam.models import build_model  # noqa: E402
from esam.config import OptimizerConfig  # noqa: E402
from esam.training.step import build_step_optimizer, loss_closure  # noqa: E402

# Base SGD: lr 0.05, momentum 0.9, no weight decay (as profiled before); rho 0.05.
_SGD = dict(lr=0.05, momentum=0.9, weight_decay=0.0, rho=0.05)
VARIANTS = {
    "SAM": OptimizerConfig(name="sam", **_SGD),
    "ESAM b0.6 g0.5 loss_rise": OptimizerConfig(name="esam", beta=0.6, gamma=0.5, score="loss_rise", **_SGD),
    "ESAM b1.0 g0.5 loss_rise (SDS only)": OptimizerConfig(name="esam", beta=1.0, gamma=0.5, score="loss_rise", **_SGD),
    "ESAM b0.6 g1.0 (SWP only)": OptimizerConfig(name="esam", beta=0.6, gamma=1.0, **_SGD),
    "ESAM b1.0 g0.5 clean_loss": OptimizerConfig(name="esam", beta=1.0, gamma=0.5, score="clean_loss", **_SGD),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--out")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.quick
    dev = torch.device("cuda" if cuda else "cpu")
    model_name, batch = ("small_cnn", 32) if args.quick else (args.model, args.batch_size)
    torch.backends.cudnn.benchmark = True
    fmt = torch.contiguous_format if (args.no_channels_last or not cuda) else torch.channels_last
    torch.manual_seed(0)
    base_model = build_model(model_name, 10, 3).to(dev, memory_format=fmt)
    x = torch.randn(batch, 3, 32, 32, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=dev)
    lines = [f"{model_name} batch {batch} {'bf16' if cuda else 'fp32'} {fmt} on {torch.cuda.get_device_name(0) if cuda else 'CPU'}"]

    for label, settings in VARIANTS.items():
        net = copy.deepcopy(base_model)
        opt = build_step_optimizer(net, settings, seed=0)
        closure = loss_closure(net, x, y, precision="bf16" if cuda else "fp32",
                               channels_last=fmt == torch.channels_last)
        for _ in range(10):
            opt.step(closure)
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(20):
            opt.step(closure)
        if cuda:
            torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - start) / 20 * 1e3
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        with torch.profiler.profile(activities=acts) as prof:
            for _ in range(args.steps):
                opt.step(closure)
            if cuda:
                torch.cuda.synchronize()
        events = prof.key_averages()
        key = "device_time_total" if cuda else "cpu_time_total"
        total = sum(getattr(e, "self_device_time_total" if cuda else "self_cpu_time_total") for e in events) / args.steps / 1e3
        lines.append(f"\n== {label}: wall {wall_ms:.2f} ms/step ({batch / wall_ms * 1e3:.0f} img/s), "
                     f"self {'device' if cuda else 'cpu'} time {total:.2f} ms/step")
        try:
            lines.append(events.table(sort_by="self_" + key, row_limit=18, max_name_column_width=60))
        except (KeyError, AttributeError, ValueError):  # older torch names the column cuda, not device
            lines.append(events.table(sort_by="self_cuda_time_total", row_limit=18, max_name_column_width=60))
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
