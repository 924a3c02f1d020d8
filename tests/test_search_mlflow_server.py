"""The cluster setup's tracking path: a search recording to a real MLflow server over HTTP."""
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import small_search
from esam.cli import main

pytestmark = pytest.mark.slow


def test_search_records_to_an_mlflow_server(tmp_path, mlflow_server, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    path = small_search(tmp_path, "served", trials=2, concurrency=2)

    assert main(["search", str(path)]) == 0
    out = capsys.readouterr().out
    assert "View run" not in out and out.count(mlflow_server) >= 1, out  # the runs page once, not a line per run
    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("esam")
    runs = client.search_runs([exp.experiment_id])
    kinds = sorted(r.data.tags["esam.kind"] for r in runs)
    assert kinds == ["reference", "search", "trial", "trial"]
    parent = next(r for r in runs if r.data.tags["esam.kind"] == "search")
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in runs if r is not parent)
    assert "pareto/pareto.html" in {a.path for a in client.list_artifacts(parent.info.run_id, "pareto")}
    assert not Path("mlflow.db").exists()  # nothing went to the default local store
    assert main(["export", "served", "--pick", "max-throughput", "--out", "fast.yaml"]) == 0
    assert yaml.safe_load(Path("fast.yaml").read_text())["exported"]["tracking_uri"] == mlflow_server
