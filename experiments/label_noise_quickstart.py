"""Test accuracy of SGD, SAM and ESAM at the quickstart's training settings, with and without label noise.

    python experiments/label_noise_quickstart.py --quick                          # smoke run: 1 epoch, 1 seed
    python experiments/label_noise_quickstart.py --noise 0 0.2 0.3 0.4 --seeds 0 1 2 --out noise.md
    python experiments/label_noise_quickstart.py --noise 0.2 0.4 --epochs 12 20 30 --set data.train_limit=null

Each run is what `esam train tune_configs/quickstart.yaml --set data.label_noise=P
--set optimizer.name=M ...` trains: the search config's `train:` block (small CNN, digits, the
first 720 training images, 24 epochs, batch 64, one-cycle, lr 0.05; `--set` and `--epochs` change
it), with the search's references and warm start as the methods: SGD, SAM (rho 0.05) and ESAM at
the paper's setting (rho 0.05, beta 0.6, gamma 0.5, loss-rise SDS), plus any `--esam
rho,beta,gamma` given. `--noise` replaces the config's rate; symmetric noise replaces training
labels only (label_noise_seed 0, the same in every run); the test labels stay clean. Runs go
`--jobs` at a time with one torch thread each, as a search's trials do (`resources: {cpu: 1}`), so
wall seconds are this machine's under that load. experiments/RESULTS.md, section 10, has the results.
"""
from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a bare checkout

REPO = Path(__file__).resolve().parent.parent
METHODS = {  # label -> optimizer overrides (the search's references and its warm start)
    "sgd": {"name": "sgd"},
    "sam": {"name": "sam", "rho": 0.05},
    "esam": {"name": "esam", "rho": 0.05, "beta": 0.6, "gamma": 0.5, "score": "loss_rise"},
}


def one_run(config_path: str, method: str, optimizer: dict, noise: float, epochs: int | None, seed: int,
            extra: tuple[str, ...] = ()) -> dict:
    import torch

    from esam.config import load_train_config
    from esam.training.trainer import train
    torch.set_num_threads(1)
    overrides = [*extra, f"data.label_noise={noise}", f"seed={seed}", "threads=1"]
    overrides += [f"optimizer.{k}={v}" for k, v in optimizer.items()]
    if epochs is not None:
        overrides.append(f"epochs={epochs}")
    config = load_train_config(config_path, overrides)
    start = time.perf_counter()
    metrics = train(config)
    return {"method": method, "noise": noise, "epochs": config.epochs, "seed": seed,
            "test_acc": metrics["test_acc"], "speed_vs_sgd": metrics["speed_vs_sgd"],
            "wall_s": time.perf_counter() - start}


def markdown(rows: list[dict], methods: list[str], args: argparse.Namespace) -> str:
    import torch
    where = (f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, torch {torch.__version__}, "
             f"{args.jobs} runs at a time, 1 thread each. Config: {args.config}"
             f"{', with ' + ', '.join(args.overrides) if args.overrides else ''}. Symmetric label noise on the "
             "training labels (seed 0); test accuracy on the clean test set (mean ± sample SD over seeds, "
             "then each seed's value).")
    lines = [f"`python experiments/label_noise_quickstart.py {' '.join(args.argv)}`", "", where, "",
             "| noise | epochs | " + " | ".join(methods) + " | " + " | ".join(f"{m} - sgd" for m in methods[1:])
             + " | wall s per run |",
             "|---" * (2 + 2 * len(methods) - 1 + 1) + "|"]
    for noise in args.noise:
        for epochs in sorted({r["epochs"] for r in rows if r["noise"] == noise}):
            cell, mean = [], {}
            walls = [r["wall_s"] for r in rows if r["noise"] == noise and r["epochs"] == epochs]
            for m in methods:
                accs = [r["test_acc"] for r in sorted(rows, key=lambda r: r["seed"])
                        if r["method"] == m and r["noise"] == noise and r["epochs"] == epochs]
                mean[m] = statistics.fmean(accs)
                sd = f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
                cell.append(f"{mean[m]:.2f}{sd} ({', '.join(f'{a:.2f}' for a in accs)})")
            gaps = [f"{mean[m] - mean[methods[0]]:+.2f}" for m in methods[1:]]
            lines.append(f"| {noise:g} | {epochs} | " + " | ".join(cell + gaps) + f" | {statistics.fmean(walls):.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO / "tune_configs" / "quickstart.yaml"),
                   help="a search config: its train: block is what every run trains")
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.2, 0.4])
    p.add_argument("--epochs", type=int, nargs="+", help="epochs to try (default: the config's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--esam", action="append", default=[], metavar="RHO,BETA,GAMMA",
                   help="another ESAM setting (loss-rise SDS) to train, e.g. 0.2,0.6,0.7")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override the training config in every run, e.g. data.train_limit=720")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="smoke run: noise 0 and 0.4, 1 epoch, seed 0")
    p.add_argument("--out", help="also write the table to this markdown file")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    if args.quick:
        args.noise, args.epochs, args.seeds = [0.0, 0.4], [1], [0]
    methods = {m: METHODS[m] for m in args.methods}
    for spec in args.esam:
        rho, beta, gamma = (float(x) for x in spec.split(","))
        methods[f"esam {rho:g}/{beta:g}/{gamma:g}"] = {"name": "esam", "rho": rho, "beta": beta, "gamma": gamma,
                                                       "score": "loss_rise"}
    jobs = [(args.config, m, opt, noise, epochs, seed, tuple(args.overrides)) for noise in args.noise
            for epochs in (args.epochs or [None]) for seed in args.seeds for m, opt in methods.items()]
    rows = []
    with ProcessPoolExecutor(args.jobs) as pool:
        for row in pool.map(one_run, *zip(*jobs)):
            print(f"noise {row['noise']:g} epochs {row['epochs']} seed {row['seed']} {row['method']}: "
                  f"test_acc {row['test_acc']:.2f}, speed_vs_sgd {row['speed_vs_sgd']:.3f}, {row['wall_s']:.0f} s",
                  flush=True)
            rows.append(row)
    table = markdown(rows, list(methods), args)
    print(table)
    if args.out:
        Path(args.out).write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
