"""examples/own_model on a two-node Ray cluster of this machine: the worker node imports the user's code from the shipped folder.

A head (`ray start --head`, 1 CPU, at 127.0.0.2) and a worker node (2 CPUs, at 127.0.0.3), each started
in an empty directory of its own, with no PYTHONPATH naming the example: the only way `tiny_mlp`
imports on them is the copy the search ships (Ray's job-level working_dir). `esam search` runs from
the user's project folder (a copy of the example in a temporary directory), as a user runs it; its
two ESAM trials run at once, so at least one lands on the worker node (the head has 1 CPU), and each
trial's MLflow run says on which node it ran (`esam.node`). The copy's builder refuses to run from
anywhere but the folder Ray unpacked (SHIPPED_COPY_ONLY), so a trial that finished imported the shipped code.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from cluster_helpers import RayCluster
from faults_helpers import run
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "own_model"
# Appended to the copy's tiny_mlp/nets.py. On a cluster the driver only imports the builder; the trials
# call it, and here only from a module Ray unpacked (its runtime_resources/), never from the project
# folder: on this one machine a worker could otherwise read the folder itself (without a working_dir
# Ray puts the driver's directory on every worker's sys.path).
SHIPPED_COPY_ONLY = """

_build = build


def build(num_classes, in_channels):
    assert "/runtime_resources/" in __file__, f"tiny_mlp imported from {__file__}, not from the shipped copy"
    return _build(num_classes, in_channels)
"""


def test_the_example_runs_on_a_cluster_whose_nodes_only_get_the_shipped_copy(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the nodes inherit this process's environment
    elsewhere = tmp_path / "nodes"
    elsewhere.mkdir()
    project = tmp_path / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    with (project / "tiny_mlp" / "nets.py").open("a") as nets:  # trials fail unless they build from the shipped copy
        nets.write(SHIPPED_COPY_ONLY)
    config = yaml.safe_load((project / "search.yaml").read_text())
    config.update(results_dir=str(tmp_path / "shared" / "esam_results"))  # one path every node reaches
    (project / "cluster.yaml").write_text(yaml.safe_dump(config))
    cluster = RayCluster(head_cpus=1, cwd=elsewhere)
    try:
        worker = cluster.add_worker(2)
        rc, out = run(project / "cluster.yaml", project, cluster.env, args=("--address", cluster.address))
        print(out)
        assert rc == 0 and "search own_model: 2 ESAM trials ended: 2 finished" in out, out
        assert f"shipping {project} to every Ray worker" in out, out
        # The nodes unpacked the shipped folder (the example's package in it, its stores left out)
        shipped = list(cluster.temp_dir.glob("session_*/runtime_resources/working_dir_files/*/tiny_mlp/nets.py"))
        assert shipped, sorted(str(p) for p in cluster.temp_dir.glob("session_*/runtime_resources/*/*"))
        assert not (shipped[0].parent.parent / "mlflow.db").exists()
        assert not any(str(project) in p for p in sys.path + os.environ.get("PYTHONPATH", "").split(os.pathsep))
        client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("esam").experiment_id],
                                  "tags.`esam.search` = 'own_model' and tags.`esam.kind` = 'trial'")
        nodes = {r.info.run_name: r.data.tags.get("esam.node", "").split()[0] for r in runs}
        assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs), nodes
        assert cluster.ip(worker) in nodes.values(), nodes  # a trial imported tiny_mlp on the worker node
    finally:
        cluster.close()
