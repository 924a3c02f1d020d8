"""The cluster setup's tracking path: a search recording to a real MLflow server over HTTP."""
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from esam.cli import default_search_config, main

pytestmark = pytest.mark.slow


@pytest.fixture
def mlflow_server(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                             f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(tmp_path / "art"),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(url + "/health", timeout=2).read() == b"OK":
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start within 90 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_search_records_to_an_mlflow_server(tmp_path, mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    config = yaml.safe_load(default_search_config().read_text())
    config.update(name="served", trials=2, references=["sgd"], sampler={"name": "random", "seed": 0})
    config["train"].update(epochs=1, probe_steps=1)
    config["train"]["data"].update(train_limit=256, test_limit=128)
    path = tmp_path / "served.yaml"
    path.write_text(yaml.safe_dump(config))

    assert main(["search", str(path)]) == 0
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
