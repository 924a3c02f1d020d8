import dataclasses
import math

import pytest
import torch

from esam.config import train_config_from_dict
from esam.training.trainer import train

QUICK = {"model": "small_cnn", "epochs": 2, "batch_size": 64, "probe_steps": 2, "timing_warmup_steps": 1,
         "data": {"name": "digits", "crop_padding": 1, "flip": False, "cutout": 0, "train_limit": 512, "test_limit": 256}}


def config(**optimizer):
    return train_config_from_dict(QUICK, {"optimizer": optimizer})


@pytest.mark.parametrize("name", ["sgd", "sam", "esam"])
def test_reports_every_epoch_with_all_metrics(name):
    reports = []
    final = train(config(name=name), lambda m, ckpt: reports.append(m))
    assert [r["epoch"] for r in reports] == [1, 2]
    for key in ("train_loss", "test_loss", "test_acc", "images_per_s", "step_time_vs_sgd", "speed_vs_sgd",
                "relative_cost", "epoch_time_s", "learning_rate"):
        assert math.isfinite(final[key]), key
    assert reports[1]["train_loss"] < reports[0]["train_loss"]
    assert 0 <= final["test_acc"] <= 100 and final["images_per_s"] > 0
    expected_cost = {"sgd": 1.0, "sam": 2.0}
    if name in expected_cost:
        assert final["relative_cost"] == pytest.approx(expected_cost[name])
    else:  # ESAM sits between SGD and SAM at beta 0.6, gamma 0.5 (cost model: about 1.7)
        assert 1.4 < final["relative_cost"] < 1.95
    if name == "sgd":
        assert final["step_time_vs_sgd"] == 1.0
        assert (final["speed_vs_sgd_low"], final["speed_vs_sgd_high"], final["probe_pairs"]) == (1.0, 1.0, 0)
        assert (final["step_time_vs_sgd_low"], final["step_time_vs_sgd_high"]) == (1.0, 1.0)
    else:  # the run-level estimate: every epoch's pairs, at least probe_steps per epoch
        assert final["speed_vs_sgd_low"] <= final["speed_vs_sgd"] <= final["speed_vs_sgd_high"]
        assert final["probe_pairs"] >= reports[0]["probe_pairs"] + QUICK["probe_steps"] >= 2 * QUICK["probe_steps"]
        assert final["step_time_vs_sgd"] == pytest.approx(1 / final["speed_vs_sgd"])
        assert math.isfinite(final["epoch_speed_vs_sgd"])
    p = final["test_acc"] / 100  # 256 test images
    assert final["test_acc_se"] == pytest.approx(100 * math.sqrt(p * (1 - p) / 256))
    from esam.training.metrics import METRICS
    assert tuple(final) == METRICS  # the one list of metric names is what train() reports


def test_same_seed_same_run():
    a = train(config(name="esam"))
    b = train(config(name="esam"))
    assert a["train_loss"] == b["train_loss"] and a["test_acc"] == b["test_acc"]


def test_resume_from_checkpoint_continues_identically(tmp_path):
    straight = []
    train(config(name="esam"), lambda m, c: straight.append(m))

    class Stop(Exception):
        pass

    def stop_after_first(metrics, saved):
        assert (saved / "checkpoint.pt").is_file()
        raise Stop  # the run dies after epoch 1's checkpoint
    with pytest.raises(Stop):
        train(config(name="esam"), stop_after_first, checkpoint_dir=tmp_path / "ck")
    resumed = []
    train(config(name="esam"), lambda m, c: resumed.append(m), checkpoint_dir=tmp_path / "ck",
          resume_from=tmp_path / "ck")
    assert [r["epoch"] for r in resumed] == [2]
    assert resumed[0]["train_loss"] == straight[1]["train_loss"]
    assert resumed[0]["test_acc"] == straight[1]["test_acc"]
    # the speed estimate continues too: epoch 1's pairs came back from the checkpoint
    assert resumed[0]["probe_pairs"] >= straight[0]["probe_pairs"] + QUICK["probe_steps"]


def test_a_skipping_method_keeps_its_blocks_shares_in_the_checkpoint(tmp_path):
    """RST's pairs carry each block's share of sharpness steps; the checkpoint keeps them (a third column)
    and the resumed run goes on with them. step_time_vs_sgd's interval is speed's turned over."""
    reports = []
    train(config(name="rst", rst_p=0.3), lambda m, c: reports.append(m), checkpoint_dir=tmp_path / "ck")
    pairs = torch.load(tmp_path / "ck" / "checkpoint.pt", weights_only=True)["speed_pairs"]
    assert pairs.shape == (1 + reports[-1]["probe_pairs"], 3)
    shares = pairs[1:, 2]
    assert ((shares >= 0) & (shares <= 1)).all() and torch.allclose(shares * 10, (shares * 10).round())  # blocks of 10
    final = reports[-1]
    assert final["step_time_vs_sgd_low"] == pytest.approx(1 / final["speed_vs_sgd_high"])
    assert final["step_time_vs_sgd_high"] == pytest.approx(1 / final["speed_vs_sgd_low"])
    assert final["speed_vs_sgd_low"] <= final["speed_vs_sgd"] <= final["speed_vs_sgd_high"]
    resumed = []
    train(dataclasses.replace(config(name="rst", rst_p=0.3), epochs=3), lambda m, c: resumed.append(m),
          checkpoint_dir=tmp_path / "ck", resume_from=tmp_path / "ck")
    assert resumed[0]["epoch"] == 3 and resumed[0]["probe_pairs"] > final["probe_pairs"]


def test_probing_off_reports_nan_speed():
    final = train(train_config_from_dict({**QUICK, "epochs": 1, "probe_steps": 0}, {"optimizer": {"name": "esam"}}))
    assert all(math.isnan(final[k]) for k in ("speed_vs_sgd", "speed_vs_sgd_low", "speed_vs_sgd_high",
                                              "step_time_vs_sgd", "epoch_speed_vs_sgd"))
    assert final["probe_pairs"] == 0


def test_diverging_loss_raises():
    with pytest.raises(FloatingPointError, match="training loss is"):
        train(config(name="sgd", lr=1e6))


def test_train_knows_nothing_of_ray():
    import esam.training.trainer
    source = open(esam.training.trainer.__file__).read()
    assert "import ray" not in source and "from ray" not in source and "mlflow" not in source


@pytest.mark.slow
def test_compiled_esam_keeps_its_graphs():
    """SWP's ascent runs eagerly, so a compiled ESAM run needs a handful of graphs, not one per SWP pattern."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    reports = []
    train(train_config_from_dict({**QUICK, "compile": True}, {"optimizer": {"name": "esam"}}),
          lambda m, c: reports.append(m))
    assert counters["stats"]["unique_graphs"] <= 4  # descent (k), scoring (no grad), evaluation
    assert reports[1]["train_loss"] < reports[0]["train_loss"]


@pytest.mark.slow
def test_compiled_esam_with_an_swp_pool_compiles_each_pattern_once():
    """With swp_patterns: 2 the ascent is compiled too: at most 2 ascent graphs + descent, scoring, evaluation."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    reports = []
    train(train_config_from_dict({**QUICK, "compile": True}, {"optimizer": {"name": "esam", "swp_patterns": 2}}),
          lambda m, c: reports.append(m))
    assert 4 <= counters["stats"]["unique_graphs"] <= 6
    assert reports[1]["train_loss"] < reports[0]["train_loss"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_train_an_esam_run_on_a_gpu():
    cfg = config(name="esam", swp_patterns=4)
    cfg = dataclasses.replace(cfg, device="cuda", cuda_graphs=True, epochs=2)
    history = []
    train(cfg, lambda m, _: history.append(m))
    assert len(history) == 2 and all(math.isfinite(m["train_loss"]) for m in history)
