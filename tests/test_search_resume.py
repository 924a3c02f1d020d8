"""A search stopped with Ctrl-C continues where it was when the same command runs again."""
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient

from conftest import small_search
from esam.cli import main

pytestmark = pytest.mark.slow


def test_interrupted_search_resumes_without_repeating_trials(tmp_path):
    path = small_search(tmp_path, "resume", trials=3, references=(), epochs=4, train_limit=384, seed=1)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")

    def trial_runs():
        exp = client.get_experiment_by_name("esam")
        return [] if exp is None else client.search_runs([exp.experiment_id], "tags.`esam.kind` = 'trial'")

    proc = subprocess.Popen([sys.executable, "-m", "esam.cli", "search", str(path)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if any(r.info.status == "FINISHED" for r in trial_runs()):
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.stdout.read()
    proc.send_signal(signal.SIGINT)  # Ctrl-C after the first trial finished
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "run the same command again to continue it" in out
    done_before = {r.info.run_id for r in trial_runs() if r.info.status == "FINISHED"}
    assert 1 <= len(done_before) < 3

    assert main(["search", str(path)]) == 0
    runs = trial_runs()
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
    assert done_before <= {r.info.run_id for r in runs}  # finished trials kept, not repeated
    for r in runs:
        assert [m.step for m in client.get_metric_history(r.info.run_id, "test_acc")] == [1, 2, 3, 4]
    study = optuna.load_study(study_name="resume", storage=f"sqlite:///{tmp_path / 'esam_results/resume/optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
