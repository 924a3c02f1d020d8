"""Several search trials on one GPU: aggregate throughput and per-trial figures, raw and corrected.

    python experiments/gpu_packing.py --packings 1,2,4 --out packing.md   # on a GPU machine
    python experiments/gpu_packing.py --quick                            # CPU smoke run

For each packing n, Ray Tune runs n identical ESAM trials at once with `gpu = 1/n` each
(ResNet-18, synthetic CIFAR-sized batches of 128, bf16). Per trial it records images/s (raw:
slowed by the neighbours) and speed_vs_sgd (the ESAM step against an SGD step timed interleaved
in the same process: what a search uses as its interference-corrected throughput). The aggregate
is the sum of the trials' images/s, each the median over the epochs after the first.
"""
from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def trial(config: dict, base: dict) -> None:
    from ray import tune

    from esam.config import train_config_from_dict
    from esam.training.trainer import train
    train(train_config_from_dict(base), lambda m, _: tune.report(m))


def run_packing(n: int, base: dict, cpus: float, gpu: bool) -> list[dict]:
    from ray import tune
    trainable = tune.with_resources(tune.with_parameters(trial, base=base),
                                    {"cpu": cpus, "gpu": (1.0 / n) if gpu else 0})
    tuner = tune.Tuner(trainable, param_space={"copy": tune.grid_search(list(range(n)))},
                       tune_config=tune.TuneConfig(max_concurrent_trials=n),
                       run_config=tune.RunConfig(name=f"packing{n}", verbose=0,
                                                 storage_path=str(Path("packing_results").resolve())))
    grid = tuner.fit()
    rows = []
    for result in grid:
        if result.error:
            raise RuntimeError(f"packing {n}: a trial failed: {result.error}")
        history = result.metrics_dataframe
        later = history[history["epoch"] > 1] if len(history) > 1 else history
        rows.append({"images_per_s": statistics.median(later["images_per_s"]),
                     "speed_vs_sgd": statistics.median(later["speed_vs_sgd"]),
                     "relative_cost": float(later["relative_cost"].mean())})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--packings", default="1,2,4")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--samples", type=int, default=128 * 80, help="synthetic training samples per epoch")
    p.add_argument("--cpus-per-trial", type=float, default=2)
    p.add_argument("--out")
    p.add_argument("--quick", action="store_true", help="CPU smoke run: small CNN, packings 1,2")
    args = p.parse_args(argv)

    import ray
    import torch
    gpu = torch.cuda.is_available() and not args.quick
    model, packings = args.model, [int(x) for x in args.packings.split(",")]
    samples, epochs, cpus = args.samples, args.epochs, args.cpus_per_trial
    if args.quick:
        model, packings, samples, epochs, cpus = "small_cnn", [1, 2], 64 * 12, 2, 1
    base = {"model": model, "epochs": epochs, "batch_size": args.batch_size, "probe_steps": 5,
            "timing_warmup_steps": 5, "data": {"name": "synthetic", "synthetic_size": samples, "test_limit": 256},
            "optimizer": {"name": "esam", "rho": 0.05, "beta": 0.6, "gamma": 0.5}}
    ray.init(include_dashboard=False, log_to_driver=False)
    device = torch.cuda.get_device_name(0) if gpu else "CPU"
    lines = [f"ESAM (rho 0.05, beta 0.6, gamma 0.5) trials packed on one device: {model}, synthetic 3x32x32, "
             f"batch {args.batch_size}, {device}, torch {torch.__version__}, {dt.date.today()}", "",
             "| trials per device | aggregate img/s | vs 1 trial | per-trial img/s (raw) | per-trial speed vs SGD (corrected) | corrected vs 1 trial |",
             "|---|---|---|---|---|---|"]
    single = None
    for n in packings:
        rows = run_packing(n, base, cpus, gpu)
        aggregate = sum(r["images_per_s"] for r in rows)
        speed = statistics.median(r["speed_vs_sgd"] for r in rows)
        single = single or (aggregate, speed)
        raw = ", ".join(f"{r['images_per_s']:.0f}" for r in rows)
        corrected = ", ".join(f"{r['speed_vs_sgd']:.3f}" for r in rows)
        lines.append(f"| {n} | {aggregate:.0f} | {aggregate / single[0]:.2f}x | {raw} | {corrected} | {speed / single[1]:.3f} |")
        print(lines[-1], flush=True)
    ray.shutdown()
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
