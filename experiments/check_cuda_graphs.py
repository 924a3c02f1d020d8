"""Do CUDA graphs change the training? The same steps run eagerly and replayed, on a GPU.

    python experiments/check_cuda_graphs.py [--model resnet18] [--batch-size 128] [--steps 12]

For SGD, SAM and ESAM (an SWP pool of 4 patterns, both SDS rules), two copies of one model take the
same steps on the same batches (bf16, channels_last): one eagerly, one through
esam.training.cuda_graphs.GraphedPasses. Printed per method: the largest parameter difference relative to the
parameter's norm, and how many passes were replayed from graphs. Graph replays run the same kernels,
so differences come only from nondeterministic kernels (atomics in weight gradients). Then
esam.train() runs two epochs of synthetic data with `cuda_graphs: true`. Exit 1 on a mismatch.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from esam.config import OptimizerConfig, train_config_from_dict  # noqa: E402
from esam.training.cuda_graphs import GraphedPasses  # noqa: E402
from esam.models import build_model  # noqa: E402
from esam.training.step import build_step_optimizer, loss_closure  # noqa: E402
from esam.training.trainer import train  # noqa: E402

METHODS = {"SGD": OptimizerConfig(name="sgd"), "SAM": OptimizerConfig(name="sam", rho=0.05),
           "ESAM paper, pool 4": OptimizerConfig(name="esam", rho=0.05, score="loss_rise", swp_patterns=4),
           "ESAM clean_loss, pool 4": OptimizerConfig(name="esam", rho=0.05, score="clean_loss", swp_patterns=4)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--tolerance", type=float, default=1e-2, help="largest relative parameter difference allowed")
    p.add_argument("--cpu-standin", action="store_true",
                   help="try this script on the CPU: an eager stand-in replaces the capture, esam.train() is skipped")
    args = p.parse_args(argv)
    standin = args.cpu_standin
    if not torch.cuda.is_available() and not standin:
        print("check_cuda_graphs: needs a CUDA device (or --cpu-standin)", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cpu" if standin else "cuda")
    graphs = (lambda net: GraphedPasses(net, capture=lambda m, x, pool: m)) if standin else GraphedPasses
    torch.manual_seed(0)
    initial = build_model(args.model, 10).to(dev, memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(args.batch_size, 3, 32, 32, generator=g).to(dev, memory_format=torch.channels_last),
                torch.randint(0, 10, (args.batch_size,), generator=g).to(dev)) for _ in range(args.steps)]
    ok = True
    device_name = "CPU stand-in" if standin else torch.cuda.get_device_name(dev)
    print(f"{args.model}, batch {args.batch_size}, bf16, {device_name}, torch {torch.__version__}")
    print("| method | max relative parameter difference | graphs | replayed passes |\n|---|---|---|---|")
    for label, settings in METHODS.items():
        params, runner = [], None
        for graphed in (False, True):
            net = copy.deepcopy(initial)
            opt = build_step_optimizer(net, settings, seed=0)
            runner = graphs(net) if graphed else net
            for x, y in batches:
                opt.step(loss_closure(runner, x, y, precision="bf16", channels_last=True))
            if not standin:
                torch.cuda.synchronize()
            params.append([q.detach().float() for q in net.parameters()])
        diff = max(((a - b).norm() / a.norm().clamp_min(1e-12)).item() for a, b in zip(*params))
        ok &= diff <= args.tolerance and all(torch.isfinite(q).all() for q in params[1])
        print(f"| {label} | {diff:.2e} | {runner.num_graphs} | {runner.replays} |")
    if standin:
        print("OK" if ok else "MISMATCH")
        return 0 if ok else 1
    history = []
    cfg = train_config_from_dict({"model": args.model, "epochs": 2, "batch_size": args.batch_size, "device": "cuda",
                                  "cuda_graphs": True, "data": {"name": "synthetic", "synthetic_size": 4096},
                                  "optimizer": {"name": "esam", "swp_patterns": 4}})
    train(cfg, lambda m, _: history.append(m))
    for m in history:
        print(f"train() with cuda_graphs, epoch {m['epoch']}: train_loss {m['train_loss']:.3f}, "
              f"{m['images_per_s']:,.0f} img/s, speed_vs_sgd {m['speed_vs_sgd']:.3f}")
    ok &= all(torch.isfinite(torch.tensor(m["train_loss"])) for m in history)
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
