"""Accuracy at equal epochs on the CPU: SGD, SAM, ESAM, LookSAM, RST and AE-SAM at their papers' defaults.

    python experiments/skip_accuracy.py --quick                       # smoke run: digits, 2 epochs, 2 seeds (~20 s)
    python experiments/skip_accuracy.py --dataset digits --epochs 30 --seeds 0 1 2 3 4 --out digits.md
    python experiments/skip_accuracy.py --dataset imagefolder --data-root DIR/cifar10-jpeg \
        --train-limit 5000 --test-limit 2000 --epochs 10 --seeds 0 1 2 --out cifar_subset.md

Every method trains the same small CNN from the same initial weights (per seed) on the same batch
order and augmentation, with the same base SGD (lr 0.05, momentum 0.9, weight decay 5e-4, cosine
schedule, batch 128) and rho 0.05; only the optimizer wrapper differs. The papers' settings: ESAM
beta 0.6, gamma 0.5 with the loss-rise SDS rule; LookSAM k 5, alpha 0.7; RST p 0.5; AE-SAM delta
0.9 and c from 1 to -1 over the run (it is told the run's length here, as `esam train` does not yet
do). The table gives the test accuracy's mean and sample standard deviation over the seeds, every
seed's value, the realized cost (cost-model units per step, SGD = 1, from each step's `last_cost`)
and the share of sharpness steps. Wall seconds per run are this process's own, on whatever else
the machine was running: compare the realized cost, not the seconds.
"""
from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a bare checkout

from esam.config import train_config_from_dict  # noqa: E402
from esam.data import build_data  # noqa: E402
from esam.models import build_model  # noqa: E402
from esam.optim import build_optimizer  # noqa: E402
from esam.training.schedule import lr_multiplier  # noqa: E402
from esam.training.step import loss_closure, optimizer_hparams  # noqa: E402
from esam.training.trainer import evaluate  # noqa: E402

METHODS = {  # label -> optimizer settings (the rest: the config's defaults, the papers')
    "SGD": {"name": "sgd"},
    "SAM": {"name": "sam"},
    "ESAM": {"name": "esam", "beta": 0.6, "gamma": 0.5, "score": "loss_rise"},
    "LookSAM (k 5)": {"name": "looksam", "looksam_k": 5, "looksam_alpha": 0.7},
    "RST (p 0.5)": {"name": "rst", "rst_p": 0.5},
    "AE-SAM": {"name": "aesam", "aesam_c_start": 1.0, "aesam_c_end": -1.0, "aesam_momentum": 0.9},
}


def config_for(args: argparse.Namespace, optimizer: dict, seed: int):
    data = {"name": args.dataset, "train_limit": args.train_limit, "test_limit": args.test_limit}
    if args.dataset == "imagefolder":
        data.update(root=args.data_root, crop_padding=4, flip=True, cutout=0)
    return train_config_from_dict({
        "model": "small_cnn", "epochs": args.epochs, "batch_size": args.batch_size, "schedule": "cosine",
        "device": "cpu", "seed": seed, "data": data,
        "optimizer": {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "rho": 0.05, **optimizer}})


def train_one(config) -> dict:
    """One run: the trainer's data, model, closure, schedule and evaluation; AE-SAM also gets the run's length."""
    torch.manual_seed(config.seed)
    data = build_data(config.data, "cpu", config.seed, config.batch_size, config.eval_batch_size)
    model = build_model(config.model, num_classes=data.num_classes, in_channels=data.in_channels)
    o = config.optimizer
    total_steps = config.epochs * data.steps_per_epoch
    base = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    hparams = optimizer_hparams(o.name, o, model, config.seed)
    if o.name == "aesam":
        hparams["total_steps"] = total_steps
    opt = build_optimizer(o.name, model.parameters(), base, **hparams)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_multiplier(config.schedule, total_steps, 0))
    cost, sharpened, start = 0.0, 0, time.perf_counter()
    for epoch in range(config.epochs):
        for x, y in data.train.epoch(epoch):
            opt.step(loss_closure(model, x, y, precision="fp32", channels_last=False))
            scheduler.step()
            cost += opt.last_cost.relative_cost
            sharpened += bool(getattr(opt, "last_sharpened", o.name in ("sam", "esam")))
    seconds = time.perf_counter() - start
    test_acc, _ = evaluate(model, data.test, torch.device("cpu"), "fp32", False)
    return {"test_acc": test_acc, "cost": cost / total_steps, "sharp": sharpened / total_steps, "seconds": seconds,
            "test_size": data.test_size, "train_size": data.train_size}


def markdown(results: dict[str, list[dict]], args: argparse.Namespace) -> str:
    first = next(iter(results.values()))[0]
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    data = "digits" if args.dataset == "digits" else "CIFAR-10 JPEG subset"
    mean = statistics.fmean(r["test_acc"] for runs in results.values() for r in runs)
    se = 100 * (mean / 100 * (1 - mean / 100) / first["test_size"]) ** 0.5
    head = [
        f"### {data}: {first['train_size']} training / {first['test_size']} test images, small_cnn, "
        f"{args.epochs} epochs, batch {args.batch_size}",
        "",
        f"- {cpu}, {torch.get_num_threads()} thread(s), torch {torch.__version__}; "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; seeds {' '.join(map(str, args.seeds))}",
        "- accuracy: mean and sample standard deviation over the seeds; one run's binomial standard error at "
        f"{mean:.1f}% on {first['test_size']} images is {se:.2f} points",
        "- cost: realized cost-model units per step (SGD 1, SAM 2); sharpness steps: their share of all steps",
        "",
        "| method | test acc % (mean ± std) | per seed | cost | sharpness steps | s per run |",
        "|---|---:|---|---:|---:|---:|",
    ]
    rows = []
    for label, runs in results.items():
        accs = [r["test_acc"] for r in runs]
        spread = statistics.stdev(accs) if len(accs) > 1 else float("nan")
        rows.append(f"| {label} | {statistics.fmean(accs):.2f} ± {spread:.2f} | {', '.join(f'{a:.2f}' for a in accs)} "
                    f"| {statistics.fmean(r['cost'] for r in runs):.2f} "
                    f"| {statistics.fmean(r['sharp'] for r in runs):.2f} "
                    f"| {statistics.fmean(r['seconds'] for r in runs):.0f} |")
    return "\n".join(head + rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="digits, 2 epochs, seeds 0 1")
    p.add_argument("--dataset", choices=("digits", "imagefolder"), default="digits")
    p.add_argument("--data-root", help="imagefolder: the cifar10-jpeg directory (train/ and test/)")
    p.add_argument("--train-limit", type=int)
    p.add_argument("--test-limit", type=int)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="also write the table to this markdown file")
    args = p.parse_args(argv)
    if args.quick:
        args.dataset, args.epochs, args.seeds = "digits", 2, [0, 1]
    torch.set_num_threads(args.threads)
    results: dict[str, list[dict]] = {label: [] for label in args.methods}
    for seed in args.seeds:  # seed-major: a stopped run still has every method for the seeds done
        for label in args.methods:
            run = train_one(config_for(args, METHODS[label], seed))
            results[label].append(run)
            print(f"seed {seed} {label}: test_acc {run['test_acc']:.2f}, cost {run['cost']:.2f}, "
                  f"sharpness steps {run['sharp']:.2f}, {run['seconds']:.1f} s", flush=True)
    table = markdown(results, args)
    print(table)
    if args.out:
        Path(args.out).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
