"""`esam bench`'s command-line options, importable without torch.

`esam --help` builds every subcommand's parser; the bench itself (esam/perf/bench.py) loads torch,
which takes seconds. The two tuples of choices repeat names defined beside torch code
(esam.config.COMPILE_MODES, esam.optim.cost.SHARPNESS); tests/test_cli_light.py keeps them equal.
"""
from __future__ import annotations

import argparse

DESCRIPTION = ("Training-step throughput of SGD, SAM, ESAM (both SDS rules), LookSAM, RST and AE-SAM, "
               "timed interleaved.")  # bench.py's docstring opens with this line
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
SHARPNESS = ("sam", "esam")
# The bench's own settings, and the training config's fields it reads (the rest are unused).
QUICK = {"model": "small_cnn", "batch_size": 32, "steps": 5, "warmup": 2, "repeats": 3, "device": "cpu", "threads": 1}
FULL = {"model": "resnet18", "batch_size": 128, "steps": 30, "warmup": 10, "repeats": 5, "device": "auto",
        "threads": None}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`esam bench`'s options (the CLI's subcommand and experiments/bench_step.py share them)."""
    p.add_argument("--quick", action="store_true", help=f"CPU smoke run: {QUICK}")
    p.add_argument("--model", help="a name from esam.models (default resnet18)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--device", help="cuda | cpu (default: cuda if available)")
    p.add_argument("--repeats", type=int)
    p.add_argument("--steps", type=int, help="timed steps per method per repeat")
    p.add_argument("--warmup", type=int, help="untimed steps per method per repeat")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default="default", help="torch.compile's mode")
    p.add_argument("--cuda-graphs", action="store_true", help="replay every training pass as a CUDA graph")
    p.add_argument("--swp-patterns", type=int, help="ESAM draws SWP masks from a pool of N (graphable)")
    p.add_argument("--rho", type=float, default=0.05)
    p.add_argument("--beta", type=float, default=0.6)
    p.add_argument("--gamma", type=float, default=0.5)
    p.add_argument("--sharpness", choices=SHARPNESS, default="sam", help="LookSAM, RST, AE-SAM: SAM's or ESAM's step")
    p.add_argument("--looksam-k", type=int, default=5, help="LookSAM: a sharpness step every k steps")
    p.add_argument("--rst-p", type=float, default=0.5, help="RST: probability of a sharpness step")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the table to this markdown file")
