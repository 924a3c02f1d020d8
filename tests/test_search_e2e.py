"""A real search end to end: local Ray, a real Optuna study, a real MLflow SQLite store.

The search runs once for the module; each test checks one behaviour of what it left behind.
"""
import json
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from conftest import search_in, small_search
from mlflow.tracking import MlflowClient

from esam import ESAM
from esam.cli import main
from esam.config import load_train_config
from esam.search.front.pareto import dominates

pytestmark = pytest.mark.slow
OBJECTIVES = [("test_acc", "max"), ("speed_vs_sgd", "max")]


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """The search, run once in its own directory: (directory, config path, MLflow URI, captured stdout)."""
    directory = tmp_path_factory.mktemp("e2e")
    # lr spans a range where the largest values diverge: those trials must be recorded as failed.
    space = {"rho": {"low": 0.01, "high": 0.3, "log": True}, "beta": {"low": 0.4, "high": 1.0},
             "gamma": {"low": 0.4, "high": 1.0}, "lr": {"low": 0.01, "high": 1.0e12, "log": True}}
    path = small_search(directory, "e2e", trials=4, concurrency=2, references=("sgd", "sam"), epochs=2,
                        train_limit=384, test_limit=192, seed=3, space=space)
    return directory, path, f"sqlite:///{directory / 'mlflow.db'}", search_in(directory, path)


@pytest.fixture(scope="module")
def runs(search):
    """(client, experiment, parent run, child runs) as MLflow holds them after the search."""
    _, _, uri, _ = search
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("esam")
    parents = client.search_runs([exp.experiment_id], "tags.`esam.kind` = 'search'")
    assert len(parents) == 1
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    return client, exp, parents[0], children


def _trials(children, status=None):
    return [r for r in children if r.data.tags["esam.kind"] == "trial" and (status is None or r.info.status == status)]


def test_the_command_prints_the_front_and_where_results_went(search):
    out = search[3]
    assert "Pareto front" in out and "mlflow ui --backend-store-uri" in out


def test_parent_and_children_are_recorded(runs):
    _, _, parent, children = runs
    assert parent.info.status == "FINISHED"
    assert "git_commit" in parent.data.tags and "version.torch" in parent.data.tags
    kinds = sorted(r.data.tags["esam.kind"] for r in children)
    assert kinds == ["reference", "reference", "trial", "trial", "trial", "trial"]
    assert sorted(r.data.params["optimizer"] for r in children if r.data.tags["esam.kind"] == "reference") == ["sam", "sgd"]


def test_diverged_trials_are_recorded_as_failed(runs):
    children = runs[3]
    finished, failed = _trials(children, "FINISHED"), _trials(children, "FAILED")
    assert finished and failed, [(r.data.params["lr"], r.info.status) for r in _trials(children)]
    assert all(float(r.data.params["lr"]) > 100 for r in failed)
    assert all("FloatingPointError" in r.data.tags["error"] for r in failed), [r.data.tags["error"] for r in failed]


def test_finished_trials_have_per_epoch_metrics(runs):
    client, children = runs[0], runs[3]
    for r in _trials(children, "FINISHED"):  # per-epoch history of every objective
        history = client.get_metric_history(r.info.run_id, "test_acc")
        assert [m.step for m in history] == [1, 2]
        assert {"images_per_s", "speed_vs_sgd", "relative_cost", "train_loss"} <= set(r.data.metrics)


def test_pareto_tags_and_artifacts_mark_the_non_dominated_trials(runs):
    client, _, parent, children = runs
    finished = _trials(children, "FINISHED")
    tagged = {r.info.run_id for r in finished if r.data.tags.get("pareto") == "true"}
    expected = {r.info.run_id for r in finished
                if not any(dominates(o.data.metrics, r.data.metrics, OBJECTIVES) for o in finished if o is not r)}
    assert tagged == expected and tagged
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "pareto")}
    assert {"pareto/pareto.csv", "pareto/pareto.json", "pareto/pareto.png", "pareto/pareto.html",
            "pareto/best_configs.json"} <= artifacts
    front = json.loads(Path(client.download_artifacts(parent.info.run_id, "pareto/pareto.json")).read_text())
    assert {r["run_id"] for r in front["front"]} == tagged
    assert {r["optimizer"] for r in front["references"]} == {"sgd", "sam"}


def test_the_optuna_study_holds_the_esam_trials_only(search, runs):
    children = runs[3]
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{search[0] / 'esam_results/e2e/optuna.db'}")
    states = sorted(t.state.name for t in study.trials)  # the diverged ones as FAIL
    assert states.count("COMPLETE") == len(_trials(children, "FINISHED"))
    assert states.count("FAIL") == len(_trials(children, "FAILED"))


def test_export_writes_the_most_accurate_front_point_loadable_both_ways(search, runs):
    children = runs[3]
    assert main(["export", "e2e", "--tracking-uri", search[2], "--pick", "max-accuracy", "--out", "best.yaml"]) == 0
    tagged = [r for r in _trials(children, "FINISHED") if r.data.tags.get("pareto") == "true"]
    best = max(tagged, key=lambda r: r.data.metrics["test_acc"])
    exported = yaml.safe_load(Path("best.yaml").read_text())
    assert exported["exported"]["mlflow_run_id"] == best.info.run_id
    # 4 significant digits (esam.search.front.export.SIGNIFICANT_DIGITS): within 5e-4 of the trial's value
    assert exported["optimizer"]["rho"] == pytest.approx(float(best.data.params["rho"]), rel=5e-4)
    cfg = load_train_config("best.yaml")
    assert cfg.optimizer.beta == pytest.approx(float(best.data.params["beta"]), rel=5e-4)
    model = torch.nn.Linear(2, 2)
    opt = ESAM.from_config(model.parameters(), torch.optim.SGD(model.parameters(), lr=0.1), "best.yaml")
    assert (opt.rho, opt.beta, opt.gamma) == pytest.approx((cfg.optimizer.rho, cfg.optimizer.beta, cfg.optimizer.gamma))


def test_pareto_prints_the_front_and_a_rerun_repeats_no_trial(search, runs, capsys, monkeypatch):
    # Last in the module: it runs the search command again.
    client, exp, parent, children = runs
    best = max((r for r in _trials(children, "FINISHED") if r.data.tags.get("pareto") == "true"),
               key=lambda r: r.data.metrics["test_acc"])
    assert main(["pareto", "e2e", "--tracking-uri", search[2]]) == 0
    assert best.info.run_id[:12] in capsys.readouterr().out
    monkeypatch.chdir(search[0])
    assert main(["search", str(search[1])]) == 0
    again = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(again) == len(children)
    storage = f"sqlite:///{search[0] / 'esam_results/e2e/optuna.db'}"
    assert len(optuna.load_study(study_name="e2e", storage=storage).trials) == 4


def test_diverged_trials_are_counted_in_the_last_line_and_never_retried(search, runs):
    """A nan loss is the setting's own failure: the run ends 0 with it counted, and the same
    command finds the search complete (nothing retried). Last in the file: it runs the command again."""
    directory, path, _, out = search
    failed = len(_trials(runs[3], "FAILED"))
    last = [line for line in out.splitlines() if line.strip()][-1]
    assert f"{failed} failed (none to retry)" in last, last
    again = search_in(directory, path)
    assert "already complete" in again and "retrying" not in again, again

