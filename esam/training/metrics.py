"""The metrics `train()` reports after every epoch: the one list the search, MLflow and exports read."""
from __future__ import annotations

# name -> what it measures (the README's metric table is generated from these lines)
EPOCH_METRICS: dict[str, str] = {
    "epoch": "epochs finished (1-based)",
    "train_loss": "mean training loss of the epoch's optimizer steps",
    "test_loss": "mean cross-entropy on the test set",
    "test_acc": "test accuracy in %",
    "test_acc_se": "binomial standard error of test_acc in percentage points: sqrt(p(1-p)/n)*100, n the test-set size",
    "images_per_s": "this process's raw training images per second (timed steps after the warm-up, full batch "
                    "counted); trials sharing a device slow each other, so compare trials by speed_vs_sgd",
    "step_time_vs_sgd": "1 / speed_vs_sgd: the method's step time over an SGD step's, run level",
    "step_time_vs_sgd_low": "lower end of step_time_vs_sgd's 95% interval: 1 / speed_vs_sgd_high",
    "step_time_vs_sgd_high": "upper end of step_time_vs_sgd's 95% interval: 1 / speed_vs_sgd_low",
    "speed_vs_sgd": "throughput relative to SGD: median over every interleaved method/SGD pair of the run so far "
                    "of SGD step time / method step time (the objective; SGD 1, probing off nan; LookSAM, RST, "
                    "AE-SAM: each pair's blocks moved to the run's share of sharpness steps first)",
    "speed_vs_sgd_low": "lower end of speed_vs_sgd's 95% interval (distribution-free, order statistics of the pairs)",
    "speed_vs_sgd_high": "upper end of speed_vs_sgd's 95% interval",
    "epoch_speed_vs_sgd": "the median ratio of this epoch's pairs only (a diagnostic; once the objective, it moved "
                          "with the neighbours)",
    "probe_pairs": "interleaved method/SGD pairs timed in the run so far (warm-up pairs excluded; LookSAM, RST, AE-SAM: "
                   "pairs of blocks, a cycle of steps each)",
    "relative_cost": "the optimizer's own count of the step's work in the paper's cost model (SGD 1, SAM 2)",
    "epoch_time_s": "wall seconds of the epoch's training and speed probe (evaluation excluded)",
    "learning_rate": "the base optimizer's learning rate after the epoch",
}
METRICS: tuple[str, ...] = tuple(EPOCH_METRICS)
