"""Does the training loop keep up with the model? Bare steps against the loop with data and augmentation.

    python experiments/bench_loop.py --model resnet18 --batch-size 512 --device cuda     # target: loop within 10% of bare
    python experiments/bench_loop.py --quick                                            # CPU smoke run

Four figures, images/s over whole epochs of synthetic CIFAR-sized data (50,000 samples):
  bare          SGD steps on one fixed batch already on the device (the model's ceiling)
  loader+aug    the same steps fed by esam's GPU-resident loader with the paper's augmentation
  loader noaug  the loader without augmentation
  train()       `train()` itself with optimizer sgd (its own images/s: timed steps only)
All in bf16 autocast and channels_last on CUDA, the same SGD settings, epochs interleaved.
A second table counts the ATen operators each loop dispatches per step (esam.perf.dispatch_count):
where the host launching kernels bounds the step (an H200 at CIFAR sizes), that count is what
the loop adds to the bare step, and it can be measured on any machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from esam.config import DataConfig, train_config_from_dict  # noqa: E402
from esam.data import build_data  # noqa: E402
from esam.perf.dispatch_count import count_ops  # noqa: E402
from esam.models import build_model  # noqa: E402
from esam.training.timing import synchronize  # noqa: E402
from esam.training.trainer import evaluate, train  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--samples", type=int, default=50_000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.batch_size, args.samples, args.repeats, args.device = "small_cnn", 64, 1024, 2, "cpu"
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    torch.backends.cudnn.benchmark = True
    fmt = torch.channels_last if cuda else torch.contiguous_format
    augmented = build_data(DataConfig(name="synthetic", synthetic_size=args.samples), dev, 0, args.batch_size, 1024)
    plain = build_data(DataConfig(name="synthetic", synthetic_size=args.samples, augment=False), dev, 0,
                       args.batch_size, 1024)
    model = build_model(args.model, 10).to(dev, memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def step(x, y):
        x = x.contiguous(memory_format=fmt)
        with torch.autocast(dev.type, torch.bfloat16, enabled=cuda):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    x0, y0 = [t.clone() for t in next(iter(augmented.train.epoch(0)))]
    steps = augmented.steps_per_epoch
    for _ in range(10):
        step(x0, y0)
    def train_config(epochs: int):
        return train_config_from_dict({"model": args.model, "epochs": epochs, "batch_size": args.batch_size,
                                       "probe_steps": 0, "data": {"name": "synthetic", "synthetic_size": args.samples,
                                                                  "test_limit": 256},
                                       "optimizer": {"name": "sgd"}, "device": args.device})
    train_cfg = train_config(2)
    results: dict[str, list[float]] = {"bare": [], "loader+aug": [], "loader noaug": [], "train()": []}
    for rep in range(args.repeats):
        for key in results:
            if key == "train()":  # its own timer: 2 epochs, the second one counts
                history = []
                train(train_cfg, lambda m, _: history.append(m["images_per_s"]))
                results[key].append(history[-1])
                continue
            synchronize(dev)
            start = time.perf_counter()
            if key == "bare":
                for _ in range(steps):
                    step(x0, y0)
            else:
                for x, y in (augmented if key == "loader+aug" else plain).train.epoch(rep + 1):
                    step(x, y)
            synchronize(dev)
            results[key].append(steps * args.batch_size / (time.perf_counter() - start))
    device = torch.cuda.get_device_name(dev) if cuda else "CPU"
    print(f"{args.model}, batch {args.batch_size}, {'bf16' if cuda else 'fp32'}, {device}, torch {torch.__version__}")
    print("| loop | images/s (median) | vs bare | all repeats |\n|---|---|---|---|")
    bare = statistics.median(results["bare"])
    for key, values in results.items():
        med = statistics.median(values)
        print(f"| {key} | {med:,.0f} | {med / bare:.3f} | {', '.join(f'{v:,.0f}' for v in values)} |")

    # Host ops per step. train(): one more epoch's operators, less its evaluation, per step.
    ops = {"bare": sum(count_ops(lambda: step(x0, y0)).values())}

    def loader_epoch():
        for x, y in augmented.train.epoch(0):
            step(x, y)
    ops["loader+aug"] = sum(count_ops(loader_epoch).values()) / steps
    one, two = (sum(count_ops(lambda: train(train_config(e))).values()) for e in (1, 2))
    test = build_data(train_cfg.data, dev, 0, args.batch_size, train_cfg.eval_batch_size).test
    eval_ops = sum(count_ops(lambda: evaluate(model, test, dev, "bf16" if cuda else "fp32", cuda)).values())
    ops["train()"] = (two - one - eval_ops) / steps
    print("\n| loop | host ops/step | vs bare |\n|---|---|---|")
    for key, n in ops.items():
        print(f"| {key} | {n:.1f} | {n - ops['bare']:+.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
