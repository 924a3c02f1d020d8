"""Multi-worker trials: `resources.workers`, train() as one DDP rank, and a search whose trial trains on 2 gloo ranks.

The search test runs a real local Ray: the trial's driver starts Ray Train's TorchTrainer, whose
two workers train under DDP on the CPU; MLflow and Optuna see one trial as for a single process.
"""
from __future__ import annotations

import datetime
import json
import re
import shutil
import socket

import optuna
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import search_in, small_search
from mlflow.tracking import MlflowClient

from esam.config import train_config_from_dict
from esam.data import DeviceLoader, Normalize, StreamLoader
from esam.errors import ConfigError
from esam.search.config import load_search_config
from esam.training import distributed
from esam.training.trainer import train

# --- the config -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (["resources.workers=0"], "resources.workers must be an integer >= 1, got 0"),
    (["resources.workers=-2"], "resources.workers must be an integer >= 1, got -2"),
    (["resources.workers=2.5"], "resources.workers must be int"),
    (["resources.workers=true"], "resources.workers must be int"),
    (["resources.workers=3"], "train.batch_size 64 does not split evenly over resources.workers 3"),
])
def test_bad_workers_are_one_line(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        load_search_config(small_search(tmp_path, "bad"), overrides)
    assert "\n" not in str(err.value)


def test_workers_default_to_one_and_count_per_worker_resources(tmp_path):
    assert load_search_config(small_search(tmp_path, "one")).resources.workers == 1
    cfg = load_search_config(small_search(tmp_path, "two"), ["resources={workers: 2, cpu: 0.5}"])
    assert (cfg.resources.workers, cfg.resources.cpu) == (2, 0.5)


# --- each rank's share of the data ------------------------------------------------------------------------------------

def _images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 1, 4, 4), generator=g, dtype=torch.uint8), torch.arange(n)


class _Samples(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.x, self.y = _images(n)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


@pytest.mark.parametrize("kind", ["device", "stream"])
def test_ranks_share_each_global_batch_and_split_the_test_set(kind):
    n, batch, world = 22, 8, 2
    normalize = Normalize((0.5,), (0.25,), torch.device("cpu"))

    def loader(train: bool, bs: int):
        if kind == "device":
            x, y = _images(n)
            return DeviceLoader(x, y, bs, normalize, train=train, seed=5)
        return StreamLoader(_Samples(n), bs, normalize, torch.device("cpu"), train=train, seed=5)

    whole = [y for _, y in loader(True, batch).epoch(3)]
    shares = [[y for _, y in distributed.RankShare(loader(True, batch), r, world).epoch(3)] for r in range(world)]
    assert len(whole) == 2 and all(len(s) == 2 for s in shares)
    for b, y in enumerate(whole):  # rank 0 the first half of every global batch, rank 1 the second
        assert torch.equal(torch.cat([shares[0][b], shares[1][b]]), y)
    tests = [[y for _, y in distributed.RankShare(loader(False, 5), r, world).epoch(0)] for r in range(world)]
    assert sorted(torch.cat([y for part in tests for y in part]).tolist()) == list(range(n))  # each test sample once


# --- train() as one of 2 DDP ranks ------------------------------------------------------------------------------------

TRAIN = {"model": "small_cnn", "epochs": 2, "batch_size": 64, "probe_steps": 1, "timing_warmup_steps": 1,
         "threads": 1, "data": {"name": "digits", "train_limit": 256, "test_limit": 100, "augment": False},
         "optimizer": {"name": "esam", "rho": 0.05, "beta": 0.6, "gamma": 0.5}}


def _rank(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=120))
    try:
        reports = []

        def report(metrics: dict, saved) -> None:
            reports.append((metrics, saved))
            if metrics["epoch"] == 1:  # every rank resumes from this copy below (rank 1 reaches it after epoch 2)
                shutil.copytree(saved, f"{out}/epoch1")
        final = train(train_config_from_dict(TRAIN), report, checkpoint_dir=f"{out}/ckpt{rank}")
        resumed = train(train_config_from_dict(TRAIN), resume_from=f"{out}/epoch1")
        torch.save({"final": final, "reports": reports, "resumed": resumed}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_train_runs_as_one_rank_only_rank_0_reports_and_every_rank_resumes(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [m["epoch"] for m, _ in ranks[0]["reports"]] == [1, 2] and ranks[1]["reports"] == []
    assert (tmp_path / "ckpt0" / "checkpoint.pt").is_file() and not (tmp_path / "ckpt1").exists()
    for key in ("train_loss", "test_acc", "test_loss", "relative_cost"):  # means and sums over the ranks: one value
        assert ranks[0]["final"][key] == pytest.approx(ranks[1]["final"][key], rel=1e-9), key
    # A single process on the same global batches: the same run but for BatchNorm's statistics (per rank's half)
    # and SDS's picks (per rank), so close, not equal.
    single = train(train_config_from_dict(TRAIN))
    assert ranks[0]["final"]["train_loss"] == pytest.approx(single["train_loss"], abs=0.1)
    for r in range(2):  # every rank resumed rank 0's checkpoint of epoch 1 and trained epoch 2 again, alike
        assert ranks[r]["resumed"]["train_loss"] == pytest.approx(ranks[0]["final"]["train_loss"], rel=1e-6)
        assert ranks[r]["resumed"]["test_acc"] == ranks[0]["final"]["test_acc"]
    state = torch.load(tmp_path / "ckpt0" / "checkpoint.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state["model"])  # the module's keys: a single process resumes it


# --- a search whose trials train on 2 workers -------------------------------------------------------------------------

@pytest.mark.slow
def test_a_two_worker_trial_reaches_mlflow_and_optuna(tmp_path):
    path = small_search(tmp_path, "ddp", trials=1, references=(), epochs=2, resources={"workers": 2, "cpu": 0.5})
    search_in(tmp_path, path)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("esam")
    trials = client.search_runs([exp.experiment_id], "tags.`esam.kind` = 'trial'")
    assert len(trials) == 1 and trials[0].info.status == "FINISHED"
    run = trials[0]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test_acc")] == [1, 2]  # each epoch once
    assert run.data.tags["esam.workers"] == "2"
    (results,) = (tmp_path / "esam_results" / "ddp" / "search").glob("esam_*/result.json")
    reported = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["epoch"] for r in reported] == [1, 2] and all(r["workers"] == 2 for r in reported)  # 2 ranks trained
    assert all(r["checkpoint_dir_name"] for r in reported)  # rank 0's checkpoints reached Tune
    study = optuna.load_study(study_name="ddp", storage=f"sqlite:///{tmp_path / 'esam_results' / 'ddp' / 'optuna.db'}")
    (done,) = study.get_trials(deepcopy=False)
    assert done.state == optuna.trial.TrialState.COMPLETE
    assert done.values[0] == pytest.approx(run.data.metrics["test_acc"])


def test_a_failing_rank_fails_the_trial_with_its_own_error():
    from ray.train import WorkerGroupError
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

    from esam.search.trials.ddp_trial import _rank_error
    nan = FloatingPointError("training loss is nan at epoch 1")
    error = WorkerGroupError("[Rank 0] ...", {1: UserExceptionWithTraceback(ValueError("later"), "tb 1"),
                                              0: UserExceptionWithTraceback(nan, "tb 0")})
    assert _rank_error(error) is nan
    other = RuntimeError("the controller died")
    assert _rank_error(other) is other


@pytest.mark.slow
def test_a_two_worker_trial_whose_driver_dies_goes_on_from_its_checkpoint(tmp_path):
    """The trial's actor is killed after epoch 1's checkpoint (as when its node dies): Tune retries it, the new
    driver hands that checkpoint to both ranks, and they train epochs 2 and 3 only.

    Ray gets 4 logical CPUs: with this machine's 2, the retried trainer's workers never started here (its
    placement group's readiness check timed out every 60 s, and Ray Train retries that for ever)."""
    import ray
    from ray import tune

    from esam.config import to_dict
    from esam.search.trials.ddp_trial import DRIVER_CPU, run_ddp_trial
    from esam.search.tune.local_ray import _loopback_only

    class KillAfterFirstCheckpoint(tune.Callback):
        killed = False

        def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
            if not self.killed:
                self.killed = True
                ray.kill(trial.temporary_state.ray_actor, no_restart=True)

    base = to_dict(train_config_from_dict({**TRAIN, "epochs": 3}))
    _loopback_only()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        trainable = tune.with_resources(tune.with_parameters(
            run_ddp_trial, base_train=base, threads=1, workers=2, cpu=0.5, gpu=0.0, storage=str(tmp_path / "runs")),
            {"cpu": DRIVER_CPU})
        tuner = tune.Tuner(trainable, param_space={"rho": 0.05, "beta": 0.6, "gamma": 0.5},
                           run_config=tune.RunConfig(name="kill", storage_path=str(tmp_path), verbose=0,
                                                     callbacks=[KillAfterFirstCheckpoint()],
                                                     failure_config=tune.FailureConfig(max_failures=1)))
        (result,) = tuner.fit()
    finally:
        ray.shutdown()
    assert result.error is None and result.metrics["epoch"] == 3
    (results,) = (tmp_path / "kill").glob("*/result.json")
    assert [json.loads(line)["epoch"] for line in results.read_text().splitlines()] == [1, 2, 3]  # epoch 1 once
