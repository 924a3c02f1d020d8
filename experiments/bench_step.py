"""The step benchmark (SGD, SAM, ESAM with both SDS rules, interleaved): `esam bench`, runnable from a checkout.

    python experiments/bench_step.py --model resnet18 --batch-size 128 --dtype bf16 --channels-last --device cuda
    python experiments/bench_step.py --quick
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a bare checkout, no install needed
from esam.perf.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
