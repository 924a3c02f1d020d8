"""Early stopping, constraints, growth and warm start in a real search (Ray, Optuna, MLflow on SQLite).

One search of 6 ESAM trials over 3 epochs under MO-ASHA (rung at epoch 1, reduction factor 3)
with a constraint, then grown to 8 trials; one more search whose constraint no trial can meet.
"""
from __future__ import annotations

import contextlib
import io

import optuna
import pytest
import yaml
from conftest import search_in, small_search
from mlflow.tracking import MlflowClient

from esam.cli import main
from esam.search.config import OBJECTIVE_METRICS
from esam.search.constraints import is_feasible, parse_all, reference_values
from esam.search.front import rows as front_rows
from esam.search.records import mlflow_runs
from esam.search.tune.moasha import MOASHA, RUNGS_FILE

pytestmark = pytest.mark.slow
CONSTRAINT = "speed_vs_sgd >= 0.9 * sam"
OBJECTIVES = [("test_acc", "max"), ("speed_vs_sgd", "max")]


def _trials(client, parent: str) -> list:
    return [r for r in mlflow_runs.trial_runs(client, parent) if r.data.tags.get(mlflow_runs.KIND_TAG) == "trial"]


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    d = tmp_path_factory.mktemp("scheduled")
    path = small_search(d, "sched", trials=6, concurrency=2, references=("sgd", "sam"), epochs=3,
                        scheduler={"name": "moasha", "grace_epochs": 1, "reduction_factor": 3},
                        constraints=[CONSTRAINT])
    first = search_in(d, path)
    client = MlflowClient(f"sqlite:///{d / 'mlflow.db'}")
    parent = mlflow_runs.find_parent_run(client, "esam", "sched")
    before = {r.data.tags["trial_id"]: r.info.start_time for r in _trials(client, parent)}
    config = yaml.safe_load(path.read_text())
    config.update(trials=8, concurrency=1)
    path.write_text(yaml.safe_dump(config))
    second = search_in(d, path)
    return d, client, parent, first, second, before


def test_stopped_trials_are_recorded_as_stopped_and_kept_off_the_front(grown):
    d, client, parent, first, second, _ = grown
    assert "MO-ASHA: a rung at epoch 1; about 2 of 6 trials will train all 3 epochs" in first  # said at start
    assert "about 2.7 of 8 trials" in second  # and again for the grown search
    runs = _trials(client, parent)
    stopped = [r for r in runs if r.data.tags.get(mlflow_runs.STOPPED_TAG) == "true"]
    assert stopped, "MO-ASHA stopped no trial at its rung"
    study = optuna.load_study(study_name="sched", storage=f"sqlite:///{d / 'esam_results/sched/optuna.db'}")
    by_ray_id = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    scheduler = MOASHA(OBJECTIVES, 1, 3, 3, rungs_file=d / "esam_results/sched" / RUNGS_FILE)
    for r in runs:
        trial = by_ray_id[r.data.tags["trial_id"]]
        if r in stopped:
            assert r.info.status == "FINISHED" and r.data.tags[mlflow_runs.STOPPED_EPOCH_TAG] == "1"
            assert trial.state == optuna.trial.TrialState.PRUNED and trial.values is None
            assert trial.user_attrs["stopped_at_epoch"] == 1
            assert f"#{trial.number}" in scheduler.stopped  # rungs are kept by Optuna trial number
            assert r.data.tags["pareto"] == "false"
        else:
            assert trial.state == optuna.trial.TrialState.COMPLETE
            assert len(client.get_metric_history(r.info.run_id, "test_acc")) == 3
    assert all(t.state != optuna.trial.TrialState.PRUNED for t in study.best_trials)
    assert "stopped early by the scheduler" in first


def test_the_front_holds_only_complete_feasible_trials_and_constraints_are_tagged(grown, capsys):
    _, client, parent, _, _, _ = grown
    rows = mlflow_runs.search_rows(client, parent)
    constraints = parse_all([CONSTRAINT], OBJECTIVE_METRICS, ["sgd", "sam"])
    references = reference_values(rows)
    assert set(references) == {"sgd", "sam"}
    for r in front_rows.finished(rows, "trial"):
        run = client.get_run(r["run_id"])
        feasible = is_feasible(constraints, r, references)
        seen = (r["name"], r.get("speed_vs_sgd"), references["sam"].get("speed_vs_sgd"), run.data.tags)
        assert run.data.tags.get(mlflow_runs.FEASIBLE_TAG) == str(feasible).lower(), seen
        if run.data.tags["pareto"] == "true":
            assert feasible and not r.get("stopped_early"), seen
    out = grown[0] / "knee.yaml"
    assert main(["export", "sched", "--tracking-uri", client.tracking_uri, "--out", str(out)]) == 0, capsys.readouterr()
    exported = yaml.safe_load(out.read_text())["exported"]
    chosen = client.get_run(exported["mlflow_run_id"])
    assert chosen.data.tags["pareto"] == "true" and chosen.data.tags[mlflow_runs.FEASIBLE_TAG] == "true"
    assert f"meet the constraints: {CONSTRAINT}" in exported["chosen_from"]


def test_the_first_proposal_is_the_papers_setting(grown):
    d = grown[0]
    study = optuna.load_study(study_name="sched", storage=f"sqlite:///{d / 'esam_results/sched/optuna.db'}")
    first = min(study.trials, key=lambda t: t.number)
    assert first.params == {"rho": 0.05, "beta": 0.6, "gamma": 0.5, "score": "loss_rise"}  # Du et al.
    assert set(first.params) == {"rho", "beta", "gamma", "score"}


def test_raising_trials_runs_exactly_the_extra_trials(grown):
    d, client, parent, _, second, before = grown
    runs = _trials(client, parent)
    assert len(runs) == 8 and len({r.data.tags["trial_id"] for r in runs}) == 8
    after = {r.data.tags["trial_id"]: r.info.start_time for r in runs}
    assert all(after[t] == start for t, start in before.items())  # the first six did not run again
    study = optuna.load_study(study_name="sched", storage=f"sqlite:///{d / 'esam_results/sched/optuna.db'}")
    assert len(study.trials) == 8 and all(t.state.is_finished() for t in study.trials)
    assert "grows by 2 trials" in second


def test_the_hypervolume_series_rises_trial_by_trial(grown):
    _, client, parent, _, _, _ = grown
    history = sorted(client.get_metric_history(parent, mlflow_runs.HYPERVOLUME_SERIES), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(1, 9))
    values = [m.value for m in history]
    assert values == sorted(values) and values[-1] > 0
    final = client.get_run(parent).data.metrics
    assert final["hypervolume"] == pytest.approx(values[-1])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["pareto", "sched", "--tracking-uri", client.tracking_uri]) == 0
    assert "after each ended trial: 1:" in out.getvalue()


def test_another_change_than_trials_is_still_refused(grown, capsys):
    d = grown[0]
    path = d / "sched.yaml"
    config = yaml.safe_load(path.read_text())
    config["scheduler"]["reduction_factor"] = 2
    path.write_text(yaml.safe_dump(config))
    with contextlib.chdir(d):
        assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different config" in err[0]
    config["scheduler"]["reduction_factor"] = 3
    config["trials"] = 7
    path.write_text(yaml.safe_dump(config))
    with contextlib.chdir(d):
        assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "can grow but not shrink" in err[0]


def test_a_search_no_trial_can_satisfy_says_so(tmp_path, capsys):
    path = small_search(tmp_path, "never", trials=2, references=("sgd",), constraints=["test_acc >= 101"])
    out = search_in(tmp_path, path)
    assert "no trial meets the constraints (test_acc >= 101), so the front is empty" in out
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    capsys.readouterr()
    assert main(["export", "never", "--tracking-uri", uri, "--out", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "meets its constraints" in err[0]
    assert not (tmp_path / "x.yaml").exists()
