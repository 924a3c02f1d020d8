"""Does early stopping pay? The same search with and without MO-ASHA, several sampler seeds.

    python experiments/bench_search.py --out search.md        # 3 seeds x 3 variants: ~20 min on 2 idle cores
    python experiments/bench_search.py --quick                # smoke run: tiny trials, 1 seed

The problem is the clean quickstart's (digits, small CNN, 12 epochs, all 1437 training images and
their true labels, NSGA-II, 2 trials at a time on 2 cores), without references (they cost the
same in every variant). Variants:
  fifo        `trials` trials, each trains every epoch (scheduler: none)
  moasha      the same `trials` under MO-ASHA (grace 2 epochs, reduction factor 3: rungs 2 and 6)
  moasha-3x   3x the trials under MO-ASHA: about fifo's trial-epoch budget spent on more settings
Per variant and seed it reads the search's MLflow runs back: trial-epochs consumed (epochs each
trial really trained), wall time, the final front's hypervolume (reference point 0 on both axes,
as the search logs it), hypervolume per trial-epoch, and the hypervolume the search had reached
when it had spent the budget moasha spent in all (its trial-epochs at each trial's end, from the
per-epoch metric timestamps). Targets: moasha reaches >= 95% of fifo's hypervolume with <= 50% of
its trial-epochs (mean over seeds), and at moasha's budget it is ahead of fifo.
Speed is measured while trials share the cores: run it on an otherwise quiet machine.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # a bare checkout, no install needed
QUICKSTART = ROOT / "tune_configs" / "quickstart.yaml"
OBJECTIVES = [("test_acc", "max"), ("speed_vs_sgd", "max")]
MOASHA = {"name": "moasha", "grace_epochs": 2, "reduction_factor": 3}
# The problem this bench measured (RESULTS section 8): the clean 12-epoch quickstart on all 1437 training
# images, before the quickstart took noisy labels (label_noise 0.3, train_limit 720, 24 epochs).
CLEAN_12_EPOCHS = ["train.data.label_noise=0", "train.data.train_limit=null", "train.epochs=12"]


def search_config(variant: str, seed: int, trials: int, directory: Path, quick: bool):
    from esam.search.config import load_search_config
    overrides = [*CLEAN_12_EPOCHS, f"name={variant}-{seed}", f"results_dir={directory / 'results'}", "references=[]",
                 f"sampler.seed={seed}", f"trials={trials * (3 if variant == 'moasha-3x' else 1)}",
                 f"mlflow.tracking_uri=sqlite:///{directory / 'mlflow.db'}"]
    if variant != "fifo":
        overrides += [f"scheduler.{k}={v}" for k, v in MOASHA.items()]
    if quick:
        overrides += ["train.epochs=4", "train.data.train_limit=256", "train.data.test_limit=128",
                      "train.probe_steps=1"] + (["scheduler.grace_epochs=1"] if variant != "fifo" else [])
    return load_search_config(QUICKSTART, overrides)


def epochs_timeline(client, parent: str, full_epochs: int) -> tuple[list[tuple[int, float, dict | None]], int]:
    """[(trial-epochs spent when a trial ended, its end time, its point if it finished)], total epochs."""
    from esam.search.records import mlflow_runs
    stamps, ends = [], []
    for run in mlflow_runs.trial_runs(client, parent):
        history = client.get_metric_history(run.info.run_id, "epoch")
        stamps += [m.timestamp for m in history]
        row = mlflow_runs.run_summary(run)
        done = not row.get("stopped_early") and not row.get("reused_from") and len(history) >= full_epochs
        ends.append((max((m.timestamp for m in history), default=0), row if done else None))
    stamps.sort()
    timeline = [(sum(s <= end for s in stamps), end, point) for end, point in sorted(ends, key=lambda e: e[0])]
    return timeline, len(stamps)


def hypervolume_at(timeline, budget: int) -> float:
    from esam.search.front.hypervolume import hypervolume
    points = [p for spent, _, p in timeline if spent <= budget and p is not None]
    return hypervolume(points, OBJECTIVES, {"test_acc": 0.0, "speed_vs_sgd": 0.0})[0]


def run_one(variant: str, seed: int, trials: int, quick: bool) -> dict:
    from esam.search.runner import run_search
    from esam.search.stores import mlflow_store
    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        cfg = search_config(variant, seed, trials, Path(tmp), quick)
        start = time.perf_counter()
        outcome = run_search(cfg, echo=lambda line: None)
        wall = time.perf_counter() - start
        client = mlflow_store.connect(outcome.tracking_uri)
        timeline, spent = epochs_timeline(client, outcome.parent_run_id, cfg.train.epochs)
        stopped = sum(bool(r.get("stopped_early")) for r in outcome.rows)
    return {"variant": variant, "seed": seed, "trials": cfg.trials, "epochs": spent, "wall_s": wall,
            "stopped": stopped, "hv": hypervolume_at(timeline, spent), "timeline": timeline}


def table(results: list[dict]) -> str:
    by = {v: [r for r in results if r["variant"] == v] for v in dict.fromkeys(r["variant"] for r in results)}
    fifo = {r["seed"]: r for r in by.get("fifo", [])}
    budget = {r["seed"]: r["epochs"] for r in by.get("moasha", [])}  # moasha's whole spend, per seed
    lines = ["| variant | trials | stopped | trial-epochs | wall s | hypervolume | HV / trial-epoch | "
             "HV at moasha's budget | vs fifo: epochs | vs fifo: HV |", "|---" * 10 + "|"]
    for variant, rs in by.items():
        at_budget = [hypervolume_at(r["timeline"], budget[r["seed"]]) for r in rs if r["seed"] in budget]
        epochs_ratio = [r["epochs"] / fifo[r["seed"]]["epochs"] for r in rs if r["seed"] in fifo]
        hv_ratio = [r["hv"] / fifo[r["seed"]]["hv"] for r in rs if r["seed"] in fifo and fifo[r["seed"]]["hv"]]

        def mean(xs, spec=".3g"):
            return format(statistics.mean(xs), spec) + (f" ± {statistics.stdev(xs):{spec}}" if len(xs) > 1 else "")
        lines.append(f"| {variant} | {rs[0]['trials']} | {mean([r['stopped'] for r in rs], '.1f')} | "
                     f"{mean([r['epochs'] for r in rs], '.0f')} | {mean([r['wall_s'] for r in rs], '.0f')} | "
                     f"{mean([r['hv'] for r in rs], '.4g')} | {mean([r['hv'] / r['epochs'] for r in rs], '.3g')} | "
                     f"{mean(at_budget, '.4g') if at_budget else '-'} | "
                     f"{mean(epochs_ratio, '.2f') if epochs_ratio else '-'} | {mean(hv_ratio, '.3f') if hv_ratio else '-'} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=12, help="trials of fifo and moasha (moasha-3x: 3x)")
    parser.add_argument("--variants", default="fifo,moasha,moasha-3x")
    parser.add_argument("--grace", type=int, default=MOASHA["grace_epochs"], help="MO-ASHA's first rung (epochs)")
    parser.add_argument("--rf", type=float, default=MOASHA["reduction_factor"], help="MO-ASHA's reduction factor")
    parser.add_argument("--quick", action="store_true", help="tiny trials and 1 seed: a smoke run")
    parser.add_argument("--out", help="also write the table (markdown) here")
    args = parser.parse_args()
    MOASHA.update(grace_epochs=args.grace, reduction_factor=args.rf)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    seeds = range(1 if args.quick else args.seeds)
    results = []
    for seed in seeds:  # seed-major: a drift in the machine's load touches every variant alike
        for variant in args.variants.split(","):
            r = run_one(variant, seed, args.trials, args.quick)
            print(f"{variant:10s} seed {seed}: {r['trials']} trials ({r['stopped']} stopped), "
                  f"{r['epochs']} trial-epochs, {r['wall_s']:.0f} s, hypervolume {r['hv']:.4g}", flush=True)
            results.append(r)
    text = (f"{dt.date.today()} on {platform.machine()} with {os.cpu_count()} CPUs, {platform.python_version()}; "
            f"MO-ASHA {MOASHA}\n\n" + table(results))
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
