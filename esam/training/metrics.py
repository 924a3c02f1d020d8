"""The metrics `train()` reports after every epoch: the one list the search, MLflow and exports read."""
from __future__ import annotations

# name -> what it measures (the README's metric table is generated from these lines)
EPOCH_METRICS: dict[str, str] = {
    "epoch": "epochs finished (1-based)",
    "train_loss": "mean training loss of the epoch's optimizer steps",
    "test_loss": "mean cross-entropy on the test set",
    "test_acc": "test accuracy in %",
    "images_per_s": "training images per second: timed steps only, after the warm-up steps, full batch counted",
    "step_time_vs_sgd": "the method's step time over an SGD step's, timed interleaved in the same process",
    "speed_vs_sgd": "1 / step_time_vs_sgd: throughput relative to SGD, robust to neighbours sharing the device",
    "relative_cost": "the optimizer's own count of the step's work in the paper's cost model (SGD 1, SAM 2)",
    "epoch_time_s": "wall seconds of the epoch's training and speed probe (evaluation excluded)",
    "learning_rate": "the base optimizer's learning rate after the epoch",
}
METRICS: tuple[str, ...] = tuple(EPOCH_METRICS)
