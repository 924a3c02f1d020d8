"""Does the throughput objective hold still? One ESAM setting trained as several trials, 2 at a time.

    python experiments/bench_objective.py --out objective.md     # 6 quickstart trials, 2 at a time: a few minutes
    python experiments/bench_objective.py --quick                # smoke run: 4 short trials

Each trial is the clean quickstart's training config (digits, small CNN, 12 epochs, true labels)
with one fixed ESAM setting and the same seed, run by `train()` in its own process with 1 torch
thread, `--concurrency` processes at a time (as the quickstart search packs 2 trials on 2 cores).
Per trial the table gives the objective a search now reads, the run-level speed_vs_sgd with its
95% interval, and the old one, the last epoch's epoch_speed_vs_sgd; then each one's spread across
trials (largest / smallest) and whether each trial's interval covers the median of the other
trials' estimates.
Target: a run-level spread of at most 1.15 (the last-epoch figure spread about 2x). Run it on an
otherwise quiet machine: other load shifts every trial, which is what the paired probe corrects,
but also makes the spread a measurement of that load.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # a bare checkout, no install needed
QUICKSTART = ROOT / "tune_configs" / "quickstart.yaml"
TARGET_SPREAD = 1.15
QUICK = {"epochs": 2, "data": {"train_limit": 320, "test_limit": 128}}
# The problem this bench measured: the clean 12-epoch quickstart on all 1437 training images, before
# the quickstart took noisy labels (label_noise 0.3, train_limit 720, 24 epochs).
CLEAN_12_EPOCHS = {"epochs": 12, "data": {"label_noise": 0.0, "train_limit": None}}


def trial_config(args: argparse.Namespace) -> dict:
    """The quickstart's `train:` section with the fixed setting, 1 thread, on the CPU."""
    import yaml

    from esam.config import deep_merge
    train = deep_merge(yaml.safe_load(QUICKSTART.read_text())["train"], CLEAN_12_EPOCHS)
    fixed = {"threads": 1, "device": "cpu", "seed": args.seed,
             "optimizer": {"name": "esam", "rho": args.rho, "beta": args.beta, "gamma": args.gamma,
                           "score": args.score}}
    return deep_merge(deep_merge(train, fixed), QUICK if args.quick else {})


def worker(config_json: str) -> int:
    """One trial in this process: prints its last epoch's metrics as one JSON line."""
    from esam.config import train_config_from_dict
    from esam.training.trainer import train
    start = time.perf_counter()
    final = train(train_config_from_dict(json.loads(config_json)))
    print(json.dumps({**final, "wall_s": time.perf_counter() - start}))
    return 0


def run_trial(config: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(config)], env=env, cwd=ROOT,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"trial failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> float:
    return max(values) / min(values)


def covers_others(rows: list[dict]) -> list[bool]:
    """Whether each trial's interval holds the median of the other trials' estimates."""
    out = []
    for i, r in enumerate(rows):
        others = statistics.median(o["speed_vs_sgd"] for j, o in enumerate(rows) if j != i)
        out.append(r["speed_vs_sgd_low"] <= others <= r["speed_vs_sgd_high"])
    return out


def markdown(rows: list[dict], config: dict, args: argparse.Namespace, load: tuple[float, ...]) -> str:
    o = config["optimizer"]
    covered = covers_others(rows)
    run_level = spread([r["speed_vs_sgd"] for r in rows])
    last_epoch = spread([r["epoch_speed_vs_sgd"] for r in rows])
    lines = [
        f"## Does the throughput objective hold still? {len(rows)} trials of one ESAM setting, "
        f"{args.concurrency} at a time",
        "",
        f"- {config['model']} on {config['data']['name']}, {config['epochs']} epochs, batch {config['batch_size']}, "
        f"1 torch thread per trial; ESAM rho {o['rho']}, beta {o['beta']}, gamma {o['gamma']}, score {o['score']}, "
        f"seed {config['seed']}{' (--quick)' if args.quick else ''}",
        f"- {platform.processor() or platform.machine()}, {os.cpu_count()} cores; load average before: "
        f"{', '.join(f'{x:.2f}' for x in load)}; {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "- run-level: speed_vs_sgd, the median over all the trial's interleaved pairs [95% interval]; "
        "last epoch: epoch_speed_vs_sgd of the final epoch (the old objective)",
        "",
        "| trial | run-level speed_vs_sgd [95%] | pairs | last epoch (old) | covers others' median | "
        "test acc % | img/s (raw) | wall s |",
        "|---:|---:|---:|---:|:---:|---:|---:|---:|",
    ]
    for i, (r, c) in enumerate(zip(rows, covered), start=1):
        lines.append(f"| {i} | {r['speed_vs_sgd']:.3f} [{r['speed_vs_sgd_low']:.3f}, {r['speed_vs_sgd_high']:.3f}] | "
                     f"{r['probe_pairs']} | {r['epoch_speed_vs_sgd']:.3f} | {'yes' if c else 'no'} | "
                     f"{r['test_acc']:.2f} | {r['images_per_s']:,.0f} | {r['wall_s']:.0f} |")
    lines += [
        "",
        f"- spread (largest / smallest): run-level **{run_level:.3f}**, last epoch {last_epoch:.3f}; "
        f"target run-level <= {TARGET_SPREAD}: {'met' if run_level <= TARGET_SPREAD else 'NOT met'}",
        f"- intervals covering the median of the other trials: {sum(covered)} of {len(rows)}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"smoke run: 4 trials, {QUICK}")
    p.add_argument("--trials", type=int, help="trials of the one setting (default 6; --quick 4)")
    p.add_argument("--concurrency", type=int, default=2, help="trials at a time (default 2)")
    p.add_argument("--rho", type=float, default=0.05)
    p.add_argument("--beta", type=float, default=0.6)
    p.add_argument("--gamma", type=float, default=0.5)
    p.add_argument("--score", default="loss_rise", help="loss_rise | clean_loss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the table to this markdown file")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one trial's config as JSON
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    trials = args.trials or (4 if args.quick else 6)
    if trials < 2 or args.concurrency < 1:
        raise ValueError(f"--trials must be >= 2 and --concurrency >= 1, got {trials}, {args.concurrency}")
    config = trial_config(args)
    load = os.getloadavg()
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        rows = list(pool.map(run_trial, [config] * trials))
    table = markdown(rows, config, args, load)
    print(table)
    if args.out:
        Path(args.out).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
