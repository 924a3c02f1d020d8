"""Fault-injection helpers: tiny searches driven as subprocesses, and one reader of the three stores.

`Stores.read` takes Ray's saved experiment state, the Optuna study and the MLflow runs of one
search; `assert_agree` checks that they tell the same story about every trial.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import yaml
from mlflow.tracking import MlflowClient

from esam.cli import default_search_config
from esam.search.recovery import ray_state
from esam.search.stores.creation_lock import store_creation_lock
from esam.search.tune.optuna_searcher import RAY_TRIAL_ATTR

RAY_DONE = {"COMPLETE": "TERMINATED", "FAIL": "ERROR"}
MLFLOW_DONE = {"COMPLETE": "FINISHED", "FAIL": "FAILED"}


def write_config(root: Path, name: str, *, trials: int = 2, epochs: int = 2, references=("sgd",),
                 concurrency: int = 2, train_limit: int = 256) -> Path:
    config = yaml.safe_load(default_search_config().read_text())
    config.update(name=name, trials=trials, concurrency=concurrency, references=list(references),
                  sampler={"name": "random", "seed": 1})
    config["train"].update(epochs=epochs, probe_steps=1)
    config["train"]["data"].update(train_limit=train_limit, test_limit=128)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def inherited_env() -> dict:
    """This process's environment for a child, without what an in-process search left in it: the
    loopback switch esam/search/tune/local_ray.py sets makes `ray start` refuse worker nodes."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}


def start(config: Path, cwd: Path, env: dict | None = None, args: tuple[str, ...] = ()) -> subprocess.Popen:
    """`esam search config [args]` in its own session, so that signals reach the driver only."""
    return subprocess.Popen([sys.executable, "-m", "esam.cli", "search", str(config), *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**inherited_env(), "PYTHONUNBUFFERED": "1", **(env or {})})


def run(config: Path, cwd: Path, env: dict | None = None, timeout: float = 400,
        args: tuple[str, ...] = ()) -> tuple[int, str]:
    proc = start(config, cwd, env, args)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def wait_for(condition, proc: subprocess.Popen, timeout: float = 300, what: str = "") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"search ended (rc {proc.returncode}) before {what}:\n{proc.stdout.read()}")
        try:
            if condition():
                return
        except Exception:  # noqa: BLE001 - a store being created
            pass
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def descendants(pid: int) -> list[int]:
    """All processes below `pid` (from /proc: no psutil needed)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_hard(proc: subprocess.Popen) -> None:
    """SIGKILL the driver, then what it started (Ray's processes), as a crash leaves them."""
    below = descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    for pid in below:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class Stores:
    ray: dict[str, dict[str, ray_state.SavedTrial]]  # experiment -> trial id -> saved trial
    optuna: list  # the study's FrozenTrials ([] when no study)
    parents: list  # MLflow parent runs of the search
    runs: list  # MLflow child runs
    history: dict[str, list[int]] = field(default_factory=dict)  # run id -> test_acc steps

    @classmethod
    def read(cls, root: Path, name: str) -> "Stores":
        directory = root / "esam_results" / name
        ray = {e: {t.trial_id: t for t in ray_state.read_trials(directory / e) or []}
               for e in ("references", "search")}
        storage = f"sqlite:///{directory / 'optuna.db'}"
        with store_creation_lock(storage):  # never race the search that creates the tables
            study = (optuna.load_study(study_name=name, storage=storage)
                     if (directory / "optuna.db").exists() and name in optuna.get_all_study_names(storage) else None)
        with store_creation_lock(f"sqlite:///{root / 'mlflow.db'}"):
            client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
        exp = client.get_experiment_by_name("esam")
        parents = runs = []
        if exp is not None:
            parents = client.search_runs([exp.experiment_id], f"tags.`esam.search` = '{name}' and tags.`esam.kind` = 'search'")
            ids = {p.info.run_id for p in parents}
            runs = [r for r in client.search_runs([exp.experiment_id], f"tags.`esam.search` = '{name}'")
                    if r.data.tags.get("mlflow.parentRunId") in ids]
        history = {r.info.run_id: [m.step for m in client.get_metric_history(r.info.run_id, "test_acc")] for r in runs}
        return cls(ray, study.trials if study else [], parents, runs, history)

    def statuses(self, kind: str) -> list[str]:
        return sorted(r.info.status for r in self.runs if r.data.tags.get("esam.kind") == kind)


def assert_agree(s: Stores, epochs: int, parent_status: str | None = None) -> None:
    """The three stores tell one story about every trial (see esam/reconcile.py)."""
    assert len(s.parents) <= 1, [p.info.run_id for p in s.parents]
    if parent_status:
        assert s.parents and s.parents[0].info.status == parent_status, s.parents[0].info.status
    assert not [r for r in s.runs if r.info.status == "RUNNING"], "a child run was left RUNNING"
    by_trial: dict[str, list] = {}
    for r in s.runs:
        by_trial.setdefault(r.data.tags["trial_id"], []).append(r)
    assert all(len(v) == 1 for v in by_trial.values()), "two MLflow runs for one trial"
    for run_id, steps in s.history.items():  # no epoch logged twice, none skipped
        assert steps == list(range(1, len(steps) + 1)), (run_id, steps)
    optuna_by_ray = {t.user_attrs.get(RAY_TRIAL_ATTR): t for t in s.optuna}
    assert len(optuna_by_ray) == len(s.optuna), "two Optuna trials for one Ray trial"
    for experiment, trials in s.ray.items():
        for trial_id, saved in trials.items():
            run = by_trial.get(trial_id, [None])[0]
            ot = optuna_by_ray.get(trial_id) if experiment == "search" else None
            if experiment == "search":
                assert ot is not None, f"Ray trial {trial_id} has no Optuna trial"
            _assert_one_trial(saved, ot, run, s.history.get(run.info.run_id) if run else None, epochs)
    for t in s.optuna:  # Optuna trials unknown to Ray must have ended and be recorded in MLflow
        if t.user_attrs.get(RAY_TRIAL_ATTR) not in s.ray["search"]:
            assert t.state.name in MLFLOW_DONE and t.user_attrs.get(RAY_TRIAL_ATTR) in by_trial, t


def _assert_one_trial(saved, ot, run, steps, epochs: int) -> None:
    where = f"trial {saved.trial_id}: Ray {saved.status}, Optuna {ot.state.name if ot else '-'}, " \
            f"MLflow {run.info.status if run else '-'}"
    if ot is not None and ot.state.name in RAY_DONE:
        assert saved.status == RAY_DONE[ot.state.name], where
        assert run is not None and run.info.status == MLFLOW_DONE[ot.state.name], where
    if saved.status == "TERMINATED":
        assert run is not None and run.info.status == "FINISHED" and steps == list(range(1, epochs + 1)), where
        assert "error" not in run.data.tags, where
        assert ot is None or ot.state.name == "COMPLETE", where
    elif saved.status == "ERROR":
        assert run is not None and run.info.status == "FAILED" and run.data.tags.get("error"), where
        assert ot is None or ot.state.name == "FAIL", where
    else:  # unfinished: resumed by the next run
        assert run is None or run.info.status == "KILLED", where
        assert ot is None or ot.state.name == "RUNNING", where
