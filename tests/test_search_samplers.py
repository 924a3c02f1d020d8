"""Each shipped sampler runs a real search end to end, and the default command runs as the README gives it.

The suite once searched with the random sampler only, so the default (NSGA-II) broke on a new
Optuna release while CI stayed green.
"""
import os
import subprocess
import sys

import optuna
import pytest
import yaml
from conftest import search_in, small_search

from esam.search.tune.samplers import SAMPLERS

pytestmark = pytest.mark.slow


def _study(directory, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{directory / 'esam_results' / name / 'optuna.db'}")


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_each_sampler_runs_a_search_and_a_continued_one(tmp_path, sampler):
    path = small_search(tmp_path, f"s_{sampler}", trials=2, references=(), sampler=sampler)
    assert "Pareto front" in search_in(tmp_path, path)
    if sampler == "nsga2":  # the default sampler also continues: Ray restores the experiment, the study grows
        config = yaml.safe_load(path.read_text())
        path.write_text(yaml.safe_dump({**config, "trials": 3}))
        assert "grows by 1 trials" in search_in(tmp_path, path)
    trials = _study(tmp_path, f"s_{sampler}").get_trials()
    assert len(trials) == (3 if sampler == "nsga2" else 2)
    assert all(t.state.name == "COMPLETE" and {"rho", "beta", "gamma"} <= set(t.params) for t in trials)


def test_the_default_command_runs_to_the_end(tmp_path):
    """`esam search` as the README's first command runs it (CPU-sized by --set), in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    esam = os.path.join(os.path.dirname(sys.executable), "esam")
    done = subprocess.run([esam, "search", "--set", "trials=3", "--set", "train.epochs=1"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "Pareto front" in out and "Traceback" not in out
    study = _study(tmp_path, "quickstart")
    assert study.metric_names == ["test_acc", "speed_vs_sgd"]
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"] * 3
