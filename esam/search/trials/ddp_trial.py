"""The Ray Tune trainable of a multi-worker trial (`resources.workers` > 1): one trial, N DDP ranks.

Ray Train V2's way of running inside Tune: the trial's function is a driver that builds a
`TorchTrainer` and waits in `fit()`; the trainer's controller starts `workers` Ray Train workers
(each `resources.cpu` CPUs and `resources.gpu` GPUs, in a placement group of their own: the Tune
trial reserves only `DRIVER_CPU` for the driver, and `concurrency` bounds how many trainers wait
for workers), starts the torch process group (gloo on CPUs, NCCL on GPUs) and runs
`_train_loop` on every rank. Each rank calls `train()`, which runs as one DDP rank when it finds
the process group (esam/training/trainer.py).

The rest of the search sees a trial like any other (esam/search/trials/trial.py): rank 0 sends each
epoch's metrics and checkpoint files to the driver through a Ray queue, and the driver reports
them with `tune.report` from its own scratch directory, so MLflow, Optuna, the scheduler and
Ray's checkpoint/resume work unchanged (Ray Train's own reporting would keep the checkpoints in
its run, out of Tune's reach). A resumed trial's driver hands its checkpoint's files to every
rank through the object store: no rank needs the driver's disk. Every result says on which nodes
the ranks ran (`node`, rank order, one entry per node) and how many ranks trained (`workers`).
A rank's error ends the trial with that error (as a single-process trial's would).
"""
from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

from ray import tune

from esam.config import train_config_from_dict
from esam.search.trials.checkpoints import mark_epoch
from esam.search.trials.scratch import trial_scratch
from esam.search.trials.trial import (
    NODE_KEY,
    REPEATS_FILE,
    WORKERS_KEY,
    mean_over_repeats,
    node_label,
    resume_checkpoint,
    resume_copy,
    trial_overrides,
)
from esam.training.trainer import train

DRIVER_CPU = 0.01  # the Tune trial's own share: its driver only waits; the workers reserve their own
_POLL_S = 1.0  # how often the driver looks whether the trainer ended without a last result


def _files(directory: Path | None) -> dict[str, bytes]:
    """A checkpoint directory's files by name (a checkpoint is a few flat files)."""
    if directory is None or not Path(directory).is_dir():
        return {}
    return {p.name: p.read_bytes() for p in sorted(Path(directory).iterdir()) if p.is_file()}


def _write(files: dict[str, bytes], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


def _train_loop(loop: dict) -> None:
    """One rank: train() under the process group Ray Train started; rank 0 sends each epoch to the driver."""
    import ray
    import ray.train
    import torch.distributed as dist

    context = ray.train.get_context()
    rank = context.get_world_rank()
    config = train_config_from_dict(loop["base_train"], trial_overrides(loop["trial_config"]))
    if config.threads is None and loop["threads"]:
        config = dataclasses.replace(config, threads=loop["threads"])
    if loop["gpu"] and config.device != "cpu":  # Ray Train shares the node's GPUs among its ranks: this rank's own
        import ray.train.torch
        config = dataclasses.replace(config, device=str(ray.train.torch.get_device()))
    nodes: list[str | None] = [None] * context.get_world_size()
    dist.all_gather_object(nodes, node_label())
    node = ", ".join(dict.fromkeys(nodes))  # rank order, each node once
    results = loop["results"]
    with trial_scratch() as tmp:
        resume_from = None
        if loop["resume"] is not None:
            resume_from = _write(ray.get(loop["resume"]), tmp / "resume")

        def report(metrics: dict, saved: Path | None) -> None:  # train() calls it on rank 0 only
            results.put({"metrics": {**metrics, NODE_KEY: node, WORKERS_KEY: context.get_world_size()},
                         "files": _files(saved)})

        if loop["repeats"] <= 1:
            train(config, report, checkpoint_dir=tmp / "checkpoint", resume_from=resume_from)
            return
        _train_repeats(config, loop["repeats"], report, tmp, resume_from, rank)


def _train_repeats(config, repeats: int, report, tmp: Path, resume_from: Path | None, rank: int) -> None:
    """esam/search/trials/trial.py's repeats on every rank: seeds seed + 0, 1, ...; the last repeat reports the means."""
    finals: list[dict] = []
    if resume_from is not None and (resume_from / REPEATS_FILE).is_file():
        finals = json.loads((resume_from / REPEATS_FILE).read_text())
    else:
        resume_from = None
    for r in range(len(finals), repeats - 1):
        final = train(dataclasses.replace(config, seed=config.seed + r))
        finals.append({k: v for k, v in final.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})

    def last(metrics: dict, saved: Path | None) -> None:
        if int(metrics.get("epoch", 0)) >= config.epochs:
            metrics = mean_over_repeats(finals + [metrics])
        if saved:
            (Path(saved) / REPEATS_FILE).write_text(json.dumps(finals))
        report(metrics, saved)

    train(dataclasses.replace(config, seed=config.seed + repeats - 1), last, checkpoint_dir=tmp / "checkpoint",
          resume_from=resume_from)


def _rank_error(error: BaseException) -> BaseException:
    """The first failing rank's own exception, where Ray Train's error carries it (its message lists them all).

    Ray Train V2 wraps each rank's exception with its traceback text (`_base_exc`); a task error keeps it as `cause`."""
    failures = getattr(error, "worker_failures", None)
    if not isinstance(failures, dict) or not failures:
        return error
    first = failures[min(failures)]
    for attribute in ("_base_exc", "cause"):
        inner = getattr(first, attribute, None)
        if isinstance(inner, BaseException):
            return inner
    return first if isinstance(first, BaseException) else error


def run_ddp_trial(trial_config: dict, base_train: dict, threads: int | None, repeats: int = 1, *,
                  workers: int, cpu: float, gpu: float, storage: str) -> None:
    """A Tune trial trained by `workers` DDP ranks; reports what rank 0 reports, epoch by epoch.

    `storage`: where Ray Train keeps its runs (a path every node reaches, as results_dir is)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Empty, Queue

    reuse = trial_config.get("_reuse")
    if isinstance(reuse, dict):  # the searcher's duplicate: the original's result, nothing trained
        config = train_config_from_dict(base_train, trial_overrides(trial_config))
        tune.report({"epoch": config.epochs, **reuse.get("metrics", {}), "reused": 1.0, NODE_KEY: node_label()})
        return
    results = Queue(maxsize=1, actor_options={"num_cpus": 0})  # rank 0 waits while the driver reports
    with trial_scratch() as tmp:
        resume = None
        checkpoint = resume_checkpoint(trial_config)
        if checkpoint is not None:  # a retried or continued trial goes on from its last epoch, on every rank
            local = resume_copy(checkpoint, tmp / "resume")
            resume = _put(_files(local)) if local is not None else None
        per_worker = {"CPU": cpu, **({"GPU": gpu} if gpu else {})}
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config={"trial_config": trial_config, "base_train": base_train, "threads": threads,
                               "repeats": repeats, "gpu": gpu, "results": results, "resume": resume},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu > 0, resources_per_worker=per_worker),
            run_config=RunConfig(name=f"ddp_{tune.get_context().get_trial_id()}", storage_path=storage))
        outcome: dict = {}

        def fit() -> None:
            try:
                trainer.fit()
            except BaseException as error:  # noqa: BLE001 - raised again in the trial's own thread
                outcome["error"] = error

        fitting = threading.Thread(target=fit, name="esam-ddp-fit", daemon=True)
        fitting.start()
        saved = tmp / "checkpoint"
        while True:
            try:
                item = results.get(timeout=_POLL_S)
            except Empty:
                if fitting.is_alive() or not results.empty():
                    continue
                break  # the trainer ended and rank 0 sent everything it had
            files = item["files"]
            checkpoint_dir = _write(files, saved) if files else None
            if checkpoint_dir:  # its epoch, for a later run's choice of checkpoint (esam/search/trials/checkpoints.py)
                mark_epoch(checkpoint_dir, item["metrics"])
            tune.report(item["metrics"],
                        checkpoint=tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)
        fitting.join()
        if "error" in outcome:
            error = outcome["error"]
            own = _rank_error(error)
            if own is error:
                raise error
            raise own from error  # the trial's error line (the traceback's last) is the rank's own


def _put(files: dict[str, bytes]):
    import ray
    return ray.put(files) if files else None
