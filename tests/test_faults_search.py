"""Fault injection on real searches (Ray, Optuna, MLflow; no mocks): signals, two searches at
once, killed workers and drivers, damaged state, a read-only results_dir, leftovers.

Every test checks the end state of all three stores (tests/faults_helpers.py), not only the
exit code. Searches are tiny: CI runs these on two cores.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from faults_helpers import Stores, assert_agree, kill_hard, run, start, wait_for, write_config

pytestmark = pytest.mark.slow
STOP_LINE = "run the same command again to continue it"


def _runs(root: Path, name: str, kind: str, status: str | None = None) -> list:
    s = Stores.read(root, name)
    return [r for r in s.runs if r.data.tags.get("esam.kind") == kind and (status is None or r.info.status == status)]


def _assert_one_line_error(rc: int, out: str, *words: str) -> None:
    assert rc == 2, out
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("esam: error:")]
    assert len(errors) == 1 and all(w in errors[0] for w in words), out


# -- point 4: any stop ends as a stop -------------------------------------------------------

MOMENTS = {
    "startup": lambda root, name, proc: True,
    "references": lambda root, name, proc: bool(_runs(root, name, "reference")),
    "trial_end": lambda root, name, proc: bool(_runs(root, name, "trial", "FINISHED")),
}


@pytest.mark.parametrize("sig,moment", [(signal.SIGINT, "trial_end"), (signal.SIGTERM, "trial_end"),
                                        (signal.SIGTERM, "references"), (signal.SIGINT, "startup")])
def test_a_signal_stops_the_search_as_stopped(tmp_path, sig, moment):
    name = f"stop{moment}"
    config = write_config(tmp_path, name, trials=3, epochs=3, concurrency=1)
    proc = start(config, tmp_path)
    if moment == "startup":
        wait_for(lambda: Stores.read(tmp_path, name).parents, proc, what="the parent run")
    else:
        wait_for(lambda: MOMENTS[moment](tmp_path, name, proc), proc, what=moment)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 128 + sig, out
    assert STOP_LINE in out and "Traceback" not in out and "File \"" not in out, out
    s = Stores.read(tmp_path, name)
    assert_agree(s, epochs=3, parent_status="KILLED")
    assert len([t for t in s.optuna if t.state.name == "COMPLETE"]) < 3


def test_stopped_search_resumes_to_the_same_end_as_an_unstopped_one(tmp_path):
    """SIGINT right after a trial ends, then the same command: every trial once, all stores agree.

    Also point 10: a resumed trial leaves no checkpoint_tmp_* copy, and a dead process's
    esam-trial-* scratch directory is swept.
    """
    scratch = Path(tempfile.mkdtemp(prefix="esamt", dir="/tmp"))  # short: Ray's socket paths live here
    stale = scratch / "esam-trial-999999-dead"
    stale.mkdir()
    env = {"TMPDIR": str(scratch)}
    config = write_config(tmp_path, "again", trials=3, epochs=4, references=(), concurrency=1)
    proc = start(config, tmp_path, env)
    wait_for(lambda: _runs(tmp_path, "again", "trial", "FINISHED"), proc, what="a finished trial")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130 and STOP_LINE in out, out
    done_before = {r.info.run_id for r in _runs(tmp_path, "again", "trial", "FINISHED")}

    rc, out = run(config, tmp_path, env)
    assert rc == 0, out
    s = Stores.read(tmp_path, "again")
    assert_agree(s, epochs=4, parent_status="FINISHED")
    assert s.statuses("trial") == ["FINISHED"] * 3
    assert [t.state.name for t in s.optuna] == ["COMPLETE"] * 3
    assert done_before <= {r.info.run_id for r in s.runs}
    leftovers = [p.name for p in scratch.iterdir() if p.name.startswith(("checkpoint_tmp_", "esam-trial-"))]
    assert leftovers == [], leftovers
    shutil.rmtree(scratch, ignore_errors=True)


# -- point 5: two searches at once ----------------------------------------------------------

def test_a_second_search_with_the_same_name_is_refused(tmp_path):
    config = write_config(tmp_path, "twin", trials=2, epochs=2)
    first = start(config, tmp_path)
    wait_for(lambda: Stores.read(tmp_path, "twin").parents, first, what="the first search's parent run")
    rc, out = run(config, tmp_path, timeout=120)
    _assert_one_line_error(rc, out, "already running", f"pid {first.pid}")
    out, _ = first.communicate(timeout=400)
    assert first.returncode == 0, out
    s = Stores.read(tmp_path, "twin")
    assert_agree(s, epochs=2, parent_status="FINISHED")
    assert len(s.optuna) == 2 and s.statuses("trial") == ["FINISHED"] * 2 and s.statuses("reference") == ["FINISHED"]


def test_two_different_searches_start_together_in_a_fresh_directory(tmp_path):
    configs = [write_config(tmp_path, name, trials=1, epochs=1, references=()) for name in ("left", "right")]
    procs = [start(c, tmp_path) for c in configs]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    for name in ("left", "right"):
        s = Stores.read(tmp_path, name)
        assert_agree(s, epochs=1, parent_status="FINISHED")
        assert s.statuses("trial") == ["FINISHED"]


# -- point 6: three stores that disagree ----------------------------------------------------

def _worker_pid(root: Path, name: str) -> int | None:
    for result in (root / "esam_results" / name / "search").glob("esam_*/result.json"):
        lines = result.read_text().splitlines()
        if lines:
            return json.loads(lines[-1])["pid"]
    return None


def test_a_killed_worker_stays_failed_in_every_store_and_is_retried(tmp_path):
    """Worker SIGKILLed, the driver killed before Ray saved the failure, then the same command:
    the failed trial stays failed in every store, and a new trial trains its setting again
    (a lost worker is not the setting's failure; retry_failed: 1)."""
    config = write_config(tmp_path, "worker", trials=2, epochs=25, references=(), concurrency=1)
    # Ray saves its state rarely here, so its snapshot still says RUNNING when the driver dies.
    proc = start(config, tmp_path, {"TUNE_GLOBAL_CHECKPOINT_S": "600"})
    wait_for(lambda: _worker_pid(tmp_path, "worker"), proc, what="a trial's first epoch")
    os.kill(_worker_pid(tmp_path, "worker"), signal.SIGKILL)
    wait_for(lambda: _runs(tmp_path, "worker", "trial", "FAILED"), proc, what="the trial recorded FAILED")
    kill_hard(proc)
    failed = _runs(tmp_path, "worker", "trial", "FAILED")[0]

    rc, out = run(config, tmp_path)
    assert rc == 0, out
    s = Stores.read(tmp_path, "worker")
    assert_agree(s, epochs=25, parent_status="FINISHED")
    again = next(r for r in s.runs if r.info.run_id == failed.info.run_id)
    assert again.info.status == "FAILED" and again.data.tags.get("error")
    assert sorted(t.state.name for t in s.optuna) == ["COMPLETE", "COMPLETE", "FAIL"]
    lost = next(t for t in s.optuna if t.state.name == "FAIL")
    retry = next(t for t in s.optuna if t.user_attrs.get("retry_of") == lost.number)
    assert retry.state.name == "COMPLETE" and retry.params == lost.params


def test_a_finished_trial_saved_running_is_not_rerun_even_without_its_checkpoint(tmp_path):
    """Ray's snapshot says RUNNING for a trial Optuna and MLflow saw finish; its checkpoint is gone."""
    config = write_config(tmp_path, "lagging", trials=2, epochs=2, references=(), concurrency=1)
    proc = start(config, tmp_path, {"TUNE_GLOBAL_CHECKPOINT_S": "600"})
    wait_for(lambda: _runs(tmp_path, "lagging", "trial", "FINISHED"), proc, what="a finished trial")
    kill_hard(proc)
    finished = _runs(tmp_path, "lagging", "trial", "FINISHED")[0]
    trial_dir = next((tmp_path / "esam_results/lagging/search").glob(f"esam_{finished.data.tags['trial_id']}"))
    for ckpt in trial_dir.glob("checkpoint_*"):
        shutil.rmtree(ckpt)

    rc, out = run(config, tmp_path)
    assert rc == 0, out
    s = Stores.read(tmp_path, "lagging")
    assert_agree(s, epochs=2, parent_status="FINISHED")
    assert len(s.optuna) == 2 and [t.state.name for t in s.optuna] == ["COMPLETE"] * 2
    assert s.statuses("trial") == ["FINISHED"] * 2


def test_a_killed_driver_leaves_no_orphan_trial(tmp_path):
    """SIGKILL of the driver during ESAM trials, then the same command: 2 trials for 2, no copies."""
    config = write_config(tmp_path, "orphan", trials=2, epochs=6, references=(), concurrency=2)
    proc = start(config, tmp_path)
    wait_for(lambda: len(_runs(tmp_path, "orphan", "trial")) == 2 and _worker_pid(tmp_path, "orphan"), proc,
             what="two running trials")
    kill_hard(proc)

    rc, out = run(config, tmp_path)
    assert rc == 0, out
    assert "Token authentication" not in out  # Ray's notice at every local start stays off the terminal
    s = Stores.read(tmp_path, "orphan")
    assert_agree(s, epochs=6, parent_status="FINISHED")
    assert [t.state.name for t in s.optuna] == ["COMPLETE"] * 2
    params = [tuple(sorted(t.params.items())) for t in s.optuna]
    assert len(set(params)) == 2, params
    assert s.statuses("trial") == ["FINISHED"] * 2


# -- point 8: damaged or missing state ------------------------------------------------------

@pytest.fixture(scope="module")
def finished_search(tmp_path_factory) -> Path:
    """One finished tiny search, copied by each test that damages it."""
    root = tmp_path_factory.mktemp("finished")
    rc, out = run(write_config(root, "done", trials=1, epochs=1, references=()), root)
    assert rc == 0, out
    return root


DAMAGE = {  # what is damaged (a file below results_dir/<name>), how much of it is kept, what the line says
    "search.json empty": ("search.json", 0.0, ["search.json", "unreadable"]),
    "search.json half": ("search.json", 0.5, ["search.json", "unreadable"]),
    "search.json deleted": ("search.json", None, ["search.json", "missing"]),
    "optuna.db emptied": ("optuna.db", 0.0, ["optuna.db", "no study"]),
    "mlflow.db cut": ("../../mlflow.db", 0.5, ["mlflow.db"]),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_state_is_one_line_naming_the_file(finished_search, tmp_path, damage):
    """One line naming the file; and with the file restored, the stores are as they were."""
    root = tmp_path / "copy"
    shutil.copytree(finished_search, root)
    before = Stores.read(root, "done")
    pattern, keep, words = DAMAGE[damage]
    target = next((root / "esam_results" / "done").glob(pattern)).resolve()
    original = target.read_bytes()
    if keep is None:
        target.unlink()
    else:
        target.write_bytes(original[:int(len(original) * keep)])
    damaged = target.read_bytes() if target.exists() else None
    rc, out = run(root / "done.yaml", root, timeout=120)
    _assert_one_line_error(rc, out, *words)
    assert (target.read_bytes() if target.exists() else None) == damaged, "written before the refusal"
    target.write_bytes(original)
    after = Stores.read(root, "done")
    assert [p.info.run_id for p in after.parents] == [p.info.run_id for p in before.parents]
    assert [(r.info.run_id, r.info.status) for r in after.runs] == [(r.info.run_id, r.info.status) for r in before.runs]
    assert [t.state for t in after.optuna] == [t.state for t in before.optuna]
    assert_agree(after, epochs=1, parent_status="FINISHED")


def test_a_moved_working_directory_continues_the_same_search(finished_search, tmp_path):
    root = tmp_path / "moved"
    shutil.copytree(finished_search, root)
    before = Stores.read(root, "done")
    rc, out = run(root / "done.yaml", root, timeout=200)
    assert rc == 0, out
    after = Stores.read(root, "done")
    assert [p.info.run_id for p in after.parents] == [p.info.run_id for p in before.parents]
    assert len(after.runs) == len(before.runs) == 1 and len(after.optuna) == 1
    assert after.runs[0].info.run_id[:12] in out  # the front is printed, not empty
    assert_agree(after, epochs=1, parent_status="FINISHED")


# -- point 9: a read-only results_dir -------------------------------------------------------

def _read_only(directory: Path):
    """A read-only view of `directory` (a bind mount as root, where chmod does not bind)."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        return lambda: directory.chmod(0o755)
    if subprocess.run(["mount", "--bind", "-o", "ro", str(directory), str(directory)], capture_output=True).returncode:
        pytest.skip("cannot make a read-only bind mount here")
    return lambda: subprocess.run(["umount", str(directory)], check=True)


def test_a_read_only_results_dir_is_one_line_and_leaves_nothing_running(finished_search, tmp_path):
    root = tmp_path / "ro"
    shutil.copytree(finished_search, root)
    before = Stores.read(root, "done")
    undo = _read_only(root / "esam_results")
    try:
        rc, out = run(root / "done.yaml", root, timeout=120)
    finally:
        undo()
    _assert_one_line_error(rc, out, "cannot write", "esam_results")
    after = Stores.read(root, "done")
    assert [(r.info.run_id, r.info.status) for r in after.runs] == [(r.info.run_id, r.info.status) for r in before.runs]
    assert_agree(after, epochs=1, parent_status="FINISHED")
