"""Is the search worth running? Its best setting against SAM on a noisy-label problem (CPU).

    python experiments/search_vs_sam.py --out search_vs_sam.md    # 6 methods x 3 seeds, then 3 searches
    python experiments/search_vs_sam.py --quick                    # smoke run: 3 epochs, tiny searches
    python experiments/search_vs_sam.py --config tune_configs/cifar10_noisy_cpu.yaml \
        --set data.name=imagefolder --set data.root=cifar10-jpeg --grace 10 --save-runs runs.json \
        --sampler-seeds   # part 1 only, on a JPEG copy in ImageFolder layout
    python experiments/search_vs_sam.py --config tune_configs/cifar10_noisy_cpu.yaml \
        --set data.name=imagefolder --set data.root=cifar10-jpeg --grace 10 --runs runs.json \
        --sampler-seeds 0   # one search, part 1 read back

The problem is `--config`'s `train:` block, its label noise included; by default the quickstart's
(tune_configs/quickstart.yaml): a small CNN on scikit-learn's digits, the first 720 training images
with 30% symmetric label noise, 24 epochs, batch 64. `--set` changes it for part 1 and the search.

1. Each method at its papers' defaults, training seeds 0, 1, 2, trained as `esam train` trains that
   config's `train:` block (2 runs at a time, 1 thread each, as a search's trials): SGD, SAM (rho
   0.05), ESAM (rho 0.05, beta 0.6, gamma 0.5, loss-rise SDS), LookSAM (k 5, alpha 0.7), RST (p 0.5),
   AE-SAM (c 1 -> -1); where the config sets a knob (cifar10_noisy_cpu.yaml: rho 0.1), the config's
   value. Test accuracy and speed vs SGD (each run's own interleaved probe).
2. A budgeted search: the config's problem with the method searched (esam, looksam, rst, aesam;
   sharpness sam or esam; each method's knobs: tune_configs/quickstart_methods.yaml's space), `--trials`
   trials under MO-ASHA, no references (part 1 is the reference), NSGA-II with sampler seeds 0, 1, 2.
   Its cost: the whole command's wall time on the machine's 2 cores, in CPU-minutes (wall x 2).

The target (issue #22): in every sampler seed the search's front holds a setting at least as accurate
as SAM within one standard error (SAM's mean over its seeds minus the standard error of that mean)
at >= 1.5x SAM's mean speed. The table says, per seed, the fastest front point that is that accurate.
Speed is measured while runs share the cores: run it on an otherwise quiet machine.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # a bare checkout, no install needed
sys.path.insert(0, str(ROOT / "experiments"))
from label_noise_quickstart import one_run  # noqa: E402 - the same training runs as section 10

QUICKSTART = ROOT / "tune_configs" / "quickstart.yaml"
METHODS_SPACE = ROOT / "tune_configs" / "quickstart_methods.yaml"
PAPERS = {  # label -> optimizer overrides: each method at its papers' defaults (OptimizerConfig's)
    "sgd": {"name": "sgd"}, "sam": {"name": "sam"}, "esam": {"name": "esam"},
    "looksam": {"name": "looksam"}, "rst": {"name": "rst"}, "aesam": {"name": "aesam"},
}
QUICK = ("epochs=3", "data.train_limit=128", "data.test_limit=64", "probe_steps=1")


def train_methods(config: Path, overrides: tuple[str, ...], methods: list[str], seeds: list[int], quick: bool,
                  jobs: int) -> list[dict]:
    from esam.config import load_train_config
    extra = (*overrides, *(QUICK if quick else ()))
    noise = load_train_config(config, extra).data.label_noise  # the problem's own rate
    runs = [(str(config), m, PAPERS[m], noise, None, seed, extra) for seed in seeds for m in methods]
    rows = []
    with ProcessPoolExecutor(jobs) as pool:
        for row in pool.map(one_run, *zip(*runs)):
            print(f"{row['method']:8s} seed {row['seed']}: test_acc {row['test_acc']:.2f}, "
                  f"speed_vs_sgd {row['speed_vs_sgd']:.3f}, {row['wall_s']:.0f} s", flush=True)
            rows.append(row)
    return rows


def search_config(config: Path, overrides: tuple[str, ...], seed: int, trials: int, directory: Path, quick: bool,
                  grace: int):
    """`config`'s problem with the methods config's space (the method and each one's knobs)."""
    from esam.config import read_yaml
    from esam.search.config import search_config_from_dict
    values = {**read_yaml(config), "space": read_yaml(METHODS_SPACE)["space"]}
    search = [f"name=search-vs-sam-{seed}", f"results_dir={directory / 'results'}", "references=[]",
              "sampler.name=nsga2", f"sampler.seed={seed}", f"trials={trials}", "scheduler.name=moasha",
              f"scheduler.grace_epochs={grace}", "scheduler.reduction_factor=3",
              f"mlflow.tracking_uri=sqlite:///{directory / 'mlflow.db'}"]
    extra = [f"train.{o}" for o in overrides]
    if quick:
        extra += [f"train.{o}" for o in QUICK]
    return search_config_from_dict(values, extra + search)


def run_search_once(config: Path, overrides: tuple[str, ...], seed: int, trials: int, quick: bool, grace: int) -> dict:
    from esam.search.runner import run_search
    with tempfile.TemporaryDirectory(prefix="search_vs_sam_") as tmp:
        cfg = search_config(config, overrides, seed, trials, Path(tmp), quick, grace)
        start = time.perf_counter()
        outcome = run_search(cfg, echo=lambda line: None)
        wall = time.perf_counter() - start
    trials_rows = [r for r in outcome.rows if r.get("kind") == "trial"]
    return {"seed": seed, "wall_s": wall, "front": outcome.front, "trials": len(trials_rows),
            "stopped": sum(bool(r.get("stopped_early")) for r in trials_rows),
            "methods": sorted({str(r.get("optimizer")) for r in trials_rows})}


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _setting(point: dict) -> str:
    knobs = ("rho", "beta", "gamma", "score", "sharpness", "looksam_k", "looksam_alpha", "rst_p", "aesam_c_start")
    return " ".join(f"{k}={point[k]:.3g}" if isinstance(point.get(k), float) else f"{k}={point[k]}"
                    for k in knobs if point.get(k) not in (None, "", "-"))


def report(methods: list[dict], searches: list[dict], args) -> str:
    lines = [f"`python experiments/search_vs_sam.py {' '.join(args.argv)}`", "",
             f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} CPUs, "
             f"Python {platform.python_version()}", "",
             "**Each method at its papers' defaults** (test accuracy %, speed vs SGD; mean ± SD over seeds "
             f"{', '.join(map(str, sorted({r['seed'] for r in methods})))}; problem: {args.config.name}"
             f"{', with ' + ', '.join(args.overrides) if args.overrides else ''}):", "",
             "| method | test acc % | speed vs SGD | per seed (acc @ speed) |", "|---|---:|---:|---|"]
    stats = {}
    for m in dict.fromkeys(r["method"] for r in methods):
        rows = sorted((r for r in methods if r["method"] == m), key=lambda r: r["seed"])
        acc, acc_sd = _mean_sd([r["test_acc"] for r in rows])
        speed, speed_sd = _mean_sd([r["speed_vs_sgd"] for r in rows])
        stats[m] = (acc, acc_sd, speed, len(rows))
        lines.append(f"| {m} | {acc:.2f} ± {acc_sd:.2f} | {speed:.3f} ± {speed_sd:.3f} | "
                     + ", ".join(f"{r['test_acc']:.2f} @ {r['speed_vs_sgd']:.3f}" for r in rows) + " |")
    sam_acc, sam_sd, sam_speed, n = stats["sam"]
    floor = sam_acc - sam_sd / max(n, 1) ** 0.5
    target = 1.5 * sam_speed
    lines += ["", f"**The target**: test accuracy >= {floor:.2f}% (SAM's mean {sam_acc:.2f} minus the standard "
              f"error of that mean, {sam_sd / max(n, 1) ** 0.5:.2f}) at speed >= {target:.3f}x SGD (1.5x SAM's "
              f"{sam_speed:.3f})."]
    if not searches:  # part 1 only (--sampler-seeds with no seed)
        return "\n".join(lines) + "\n"
    lines += ["", f"**The search**: {args.trials} trials, MO-ASHA (grace {args.grace} epochs, reduction factor 3), "
              "NSGA-II, the method searched, 2 trials at a time:", "",
              "| sampler seed | wall s | CPU-min | trials (stopped early) | front (acc @ speed, method) | "
              "fastest front point at SAM's accuracy | x SAM's speed | target met |", "|---" * 8 + "|"]
    met = 0
    for s in searches:
        front = sorted(s["front"], key=lambda p: -p.get("speed_vs_sgd", 0))
        good = [p for p in front if p.get("test_acc", 0) >= floor]
        best = good[0] if good else None
        hit = best is not None and best["speed_vs_sgd"] >= target
        met += hit
        shown = "; ".join(f"{p['test_acc']:.2f} @ {p['speed_vs_sgd']:.3f} {p.get('optimizer')}"
                          for p in front)
        pick = (f"{best['test_acc']:.2f} @ {best['speed_vs_sgd']:.3f} ({best.get('optimizer')} "
                f"{_setting(best)})" if best else "none")
        lines.append(f"| {s['seed']} | {s['wall_s']:.0f} | {2 * s['wall_s'] / 60:.1f} | {s['trials']} ({s['stopped']}) "
                     f"| {shown} | {pick} | {best['speed_vs_sgd'] / sam_speed:.2f} |" if best else
                     f"| {s['seed']} | {s['wall_s']:.0f} | {2 * s['wall_s'] / 60:.1f} | {s['trials']} ({s['stopped']}) "
                     f"| {shown} | none | - |")
        lines[-1] += f" {'yes' if hit else 'no'} |"
    lines += ["", f"Target met in {met} of {len(searches)} sampler seeds."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=QUICKSTART, help="the problem: a search config's train: block")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override the training config in every run and trial, e.g. data.root=cifar10-jpeg")
    p.add_argument("--methods", nargs="+", choices=list(PAPERS), default=list(PAPERS),
                   help="part 1's methods (sam is the target's reference)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds of part 1")
    p.add_argument("--save-runs", type=Path, help="write part 1's runs here (JSON)")
    p.add_argument("--runs", type=Path, help="read part 1's runs from here (--save-runs) instead of training them")
    p.add_argument("--sampler-seeds", type=int, nargs="*", default=[0, 1, 2], help="none: part 1 only")
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--grace", type=int, default=4, help="MO-ASHA's first rung (epochs); rungs grace, 3 x grace")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="smoke run: 3 epochs, 1 seed, 4 trials")
    p.add_argument("--out", help="also write the tables (markdown) here")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    if args.quick:
        args.seeds, args.sampler_seeds, args.trials, args.grace = [0], [0], 4, 1
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not args.runs and "sam" not in args.methods:  # refuse before an hour of training, not after
        p.error("--methods needs sam, the target's reference")
    overrides = tuple(args.overrides)
    if args.runs:
        methods = json.loads(args.runs.read_text())
    else:
        methods = train_methods(args.config, overrides, args.methods, args.seeds, args.quick, args.jobs)
    if args.save_runs:
        args.save_runs.write_text(json.dumps(methods, indent=1))
    if "sam" not in {r["method"] for r in methods}:
        p.error("part 1 needs sam, the target's reference")
    searches = []
    for seed in args.sampler_seeds:
        s = run_search_once(args.config, overrides, seed, args.trials, args.quick, args.grace)
        print(f"search seed {seed}: {s['trials']} trials ({s['stopped']} stopped early), {s['wall_s']:.0f} s, "
              f"front of {len(s['front'])}", flush=True)
        searches.append(s)
    text = report(methods, searches, args)
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
