"""The paper's CIFAR-10 / ResNet-18 row on one GPU: SGD, SAM, ESAM and ESAM with the cheap rule.

    python experiments/paper_table.py --dataset imagefolder --data-root DIR/cifar10-jpeg --epochs 20 --out table.md
    python experiments/paper_table.py --quick      # CPU smoke run: digits, small CNN, 2 epochs

The paper's recipe (random crop with padding 4, horizontal flip, Cutout 16 px with p 0.5; SGD
momentum 0.9; rho 0.05, beta 0.6, gamma 0.5) with the schedule squeezed into the epoch budget
(one-cycle, peak lr 0.1 per 128 images of batch). Each method trains once with the same seed, one
after the other; images/s times the training steps only (after a warm-up), speed_vs_sgd is the
step-time ratio measured interleaved with SGD in the same process. Runs go to MLflow when it is
installed (experiment esam-paper-table, ./mlflow.db by default).
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a bare checkout

from esam.config import train_config_from_dict  # noqa: E402
from esam.training.trainer import train  # noqa: E402

METHODS = {
    "SGD": {"name": "sgd"},
    "SAM": {"name": "sam"},
    "ESAM": {"name": "esam", "score": "loss_rise"},
    "ESAM (clean-loss SDS)": {"name": "esam", "score": "clean_loss"},
}


def base_config(args) -> dict:
    if args.quick:
        return {"model": "small_cnn", "epochs": 2, "batch_size": 64, "schedule": "onecycle", "probe_steps": 2,
                "data": {"name": "digits"},
                "optimizer": {"lr": 0.05, "weight_decay": 5e-4, "rho": 0.05, "beta": 0.6, "gamma": 0.5}}
    data = {"name": args.dataset, "root": args.data_root, "crop_padding": 4, "flip": True, "cutout": 16,
            "cutout_prob": 0.5}
    return {"model": args.model, "epochs": args.epochs, "batch_size": args.batch_size, "schedule": "onecycle",
            "precision": args.precision, "seed": args.seed, "probe_steps": 3, "data": data,
            "optimizer": {"lr": args.lr if args.lr else 0.1 * args.batch_size / 128, "weight_decay": args.weight_decay,
                          "rho": 0.05, "beta": 0.6, "gamma": 0.5}}


def log_to_mlflow(name: str, config, history: list[dict]) -> str | None:
    try:
        import mlflow
    except ImportError:
        return None
    from esam.config import to_dict
    from esam.search.records.mlflow_runs import flatten, provenance
    mlflow.set_experiment("esam-paper-table")
    with mlflow.start_run(run_name=name) as run:
        mlflow.set_tags(provenance())
        mlflow.log_params({k: str(v) for k, v in flatten(to_dict(config)).items()})
        for m in history:
            mlflow.log_metrics({k: v for k, v in m.items() if k != "epoch"}, step=m["epoch"])
        return run.info.run_id


def write_table(base: dict, results: list, out: str | None) -> str:
    """The markdown table of the methods trained so far (rewritten after each: a cut-off run keeps them)."""
    by = dict(results)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    lines = [f"CIFAR-10 / {base['model']} ({base['data']['name']}), {base['epochs']} epochs, batch {base['batch_size']}, "
             f"seed {base.get('seed', 0)}, {device}, torch {torch.__version__}, {dt.date.today()}", "",
             "| method | test acc % | img/s | img/s vs SAM | img/s vs SGD | speed vs SGD (interleaved) | relative cost (model) | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for label, r in results:
        vs_sam = r["images_per_s"] / by["SAM"]["images_per_s"] if "SAM" in by else float("nan")
        vs_sgd = r["images_per_s"] / by["SGD"]["images_per_s"] if "SGD" in by else float("nan")
        lines.append(f"| {label} | {r['test_acc']:.2f} | {r['images_per_s']:.0f} | {vs_sam:.2f} | {vs_sgd:.2f} | "
                     f"{r['speed_vs_sgd']:.3f} | {r['relative_cost']:.2f} | {r['wall_s']:.0f} |")
    table = "\n".join(lines)
    if out:
        Path(out).write_text(table + "\n")
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="imagefolder", choices=["imagefolder", "cifar10"])
    p.add_argument("--data-root", help="cifar10-jpeg folder (imagefolder) or torchvision's CIFAR root")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, help="peak lr (default 0.1 per 128 images of batch)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ", ".join(METHODS))
    p.add_argument("--out", help="write the markdown table here")
    p.add_argument("--quick", action="store_true", help="CPU smoke run (digits, small CNN, 2 epochs)")
    args = p.parse_args(argv)

    base = base_config(args)
    results = []
    for label in [m.strip() for m in args.methods.split(",")]:
        config = train_config_from_dict(base, {"optimizer": METHODS[label]})
        history: list[dict] = []
        start = time.perf_counter()
        final = train(config, lambda m, _: (history.append(m), print(f"  {label} epoch {m['epoch']}: acc {m['test_acc']:.2f}% "
                                                                       f"{m['images_per_s']:.0f} img/s", flush=True)))
        final["wall_s"] = time.perf_counter() - start
        final["run_id"] = log_to_mlflow(label, config, history)
        results.append((label, final))
        table = write_table(base, results, args.out)
    print("\n" + table)

    return 0


if __name__ == "__main__":
    sys.exit(main())
