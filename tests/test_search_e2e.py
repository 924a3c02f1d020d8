"""A real search end to end: local Ray, a real Optuna study, a real MLflow SQLite store."""
import json
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from esam import ESAM
from esam.cli import default_search_config, main
from esam.config import load_train_config
from esam.search.pareto import dominates

pytestmark = pytest.mark.slow


def small_search(tmp_path: Path) -> Path:
    config = yaml.safe_load(default_search_config().read_text())
    config.update(name="e2e", trials=4, concurrency=2, sampler={"name": "random", "seed": 3})
    config["train"]["epochs"] = 2
    config["train"]["probe_steps"] = 1
    config["train"]["data"].update(train_limit=384, test_limit=192)
    # lr spans a range where the largest values diverge: those trials must be recorded as failed.
    config["space"] = {"rho": {"low": 0.01, "high": 0.3, "log": True}, "beta": {"low": 0.4, "high": 1.0},
                       "gamma": {"low": 0.4, "high": 1.0}, "lr": {"low": 0.01, "high": 1.0e12, "log": True}}
    path = tmp_path / "e2e.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_search_records_front_exports_and_resumes(tmp_path, capsys):
    path = small_search(tmp_path)
    assert main(["search", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Pareto front" in out and "mlflow ui --backend-store-uri" in out

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("esam")
    parents = client.search_runs([exp.experiment_id], "tags.`esam.kind` = 'search'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert "git_commit" in parent.data.tags and "version.torch" in parent.data.tags
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    kinds = sorted(r.data.tags["esam.kind"] for r in children)
    assert kinds == ["reference", "reference", "trial", "trial", "trial", "trial"]
    assert sorted(r.data.params["optimizer"] for r in children if r.data.tags["esam.kind"] == "reference") == ["sam", "sgd"]

    trials = [r for r in children if r.data.tags["esam.kind"] == "trial"]
    finished = [r for r in trials if r.info.status == "FINISHED"]
    failed = [r for r in trials if r.info.status == "FAILED"]
    assert finished and failed, [(r.data.params["lr"], r.info.status) for r in trials]
    assert all(float(r.data.params["lr"]) > 100 for r in failed)
    assert all("FloatingPointError" in r.data.tags["error"] for r in failed), [r.data.tags["error"] for r in failed]
    for r in finished:  # per-epoch history of every objective
        history = client.get_metric_history(r.info.run_id, "test_acc")
        assert [m.step for m in history] == [1, 2]
        assert {"images_per_s", "speed_vs_sgd", "relative_cost", "train_loss"} <= set(r.data.metrics)

    # The Pareto tags mark exactly the non-dominated finished trials.
    objectives = [("test_acc", "max"), ("speed_vs_sgd", "max")]
    tagged = {r.info.run_id for r in finished if r.data.tags.get("pareto") == "true"}
    expected = {r.info.run_id for r in finished
                if not any(dominates(o.data.metrics, r.data.metrics, objectives) for o in finished if o is not r)}
    assert tagged == expected and tagged
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "pareto")}
    assert {"pareto/pareto.csv", "pareto/pareto.json", "pareto/pareto.png", "pareto/pareto.html",
            "pareto/best_configs.json"} <= artifacts
    front = json.loads(Path(client.download_artifacts(parent.info.run_id, "pareto/pareto.json")).read_text())
    assert {r["run_id"] for r in front["front"]} == tagged
    assert {r["optimizer"] for r in front["references"]} == {"sgd", "sam"}

    # The Optuna study holds the ESAM trials only, the diverged ones as FAIL.
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{tmp_path / 'esam_results/e2e/optuna.db'}")
    states = sorted(t.state.name for t in study.trials)
    assert states.count("COMPLETE") == len(finished) and states.count("FAIL") == len(failed)

    # Export the most accurate front point and load it back both ways.
    assert main(["export", "e2e", "--pick", "max-accuracy", "--out", "best.yaml"]) == 0
    best = max((r for r in finished if r.info.run_id in tagged), key=lambda r: r.data.metrics["test_acc"])
    exported = yaml.safe_load(Path("best.yaml").read_text())
    assert exported["exported"]["mlflow_run_id"] == best.info.run_id
    assert exported["optimizer"]["rho"] == pytest.approx(float(best.data.params["rho"]))
    cfg = load_train_config("best.yaml")
    assert cfg.optimizer.beta == pytest.approx(float(best.data.params["beta"]))
    model = torch.nn.Linear(2, 2)
    opt = ESAM.from_config(model.parameters(), torch.optim.SGD(model.parameters(), lr=0.1), "best.yaml")
    assert (opt.rho, opt.beta, opt.gamma) == pytest.approx((cfg.optimizer.rho, cfg.optimizer.beta, cfg.optimizer.gamma))

    # `esam pareto` prints the front; running the search again repeats no finished trial.
    assert main(["pareto", "e2e"]) == 0
    assert best.info.run_id[:12] in capsys.readouterr().out
    assert main(["search", str(path)]) == 0
    again = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(again) == len(children)
    assert len(optuna.load_study(study_name="e2e", storage=f"sqlite:///{tmp_path / 'esam_results/e2e/optuna.db'}").trials) == 4
