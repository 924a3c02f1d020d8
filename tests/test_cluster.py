"""A search on a real cluster of this machine: two Ray nodes, PostgreSQL and an MLflow server.

The setup is the README's "On a cluster" commands, in the same order: PostgreSQL on 127.0.0.1
(Optuna's study, and the MLflow server's backend store), `mlflow server --serve-artifacts` on
127.0.0.1, a Ray head (`ray start --head`, 1 CPU, at 127.0.0.2) and a worker node (`ray start
--address`, 2 CPUs, at 127.0.0.3) as separate processes, then `esam search CONFIG --address
127.0.0.2:PORT` from a directory of its own. `results_dir` is an absolute path every node reaches (one
machine: a shared filesystem). Ray's token authentication is on, with a token of the cluster's own.

The faults: the worker node killed (SIGKILL of all its processes) while a trial trains on it, then a
worker node started again; and the driver killed, then the same command run again. Either way the
search ends with exactly its trials, one MLflow run each with every epoch once, Optuna's values equal
to MLflow's final metrics, the front served over HTTP, and each run tagged with the node it ran on.
"""
from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from cluster_helpers import (  # noqa: F401 - mlflow_on_postgres and postgres are fixtures
    RayCluster,
    trial_results,
    assert_values_agree,
    mlflow_on_postgres,
    postgres,
    read_stores,
    served_artifact,
)
from conftest import small_search
from faults_helpers import assert_agree, kill_hard, run, start, wait_for
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

TRIALS, EPOCHS = 6, 8  # 8 short epochs: a wide window to catch a trial mid-training
HEAD_CPUS, WORKER_CPUS = 1, 2  # 1 CPU per trial: 3 trials at a time, 1 on the head and 2 on the worker


@pytest.fixture(scope="module")
def cluster():
    nodes = RayCluster(head_cpus=HEAD_CPUS)
    try:
        nodes.add_worker(WORKER_CPUS)
        yield nodes
    finally:
        nodes.close()


def _search(root: Path, name: str, optuna_url: str, server, cluster: RayCluster):
    """(the config, the driver's directory, results_dir/<name>): the driver's files apart from the shared ones."""
    driver, results = root / "driver", root / "shared" / "esam_results"
    driver.mkdir()
    config = small_search(driver, name, trials=TRIALS, concurrency=HEAD_CPUS + WORKER_CPUS, references=(),
                          epochs=EPOCHS, optuna_storage=optuna_url, mlflow={"tracking_uri": server.url},
                          results_dir=str(results), max_failures=2)
    return config, driver, results / name


def _esam_search(config: Path, driver: Path, cluster: RayCluster):
    return start(config, driver, cluster.env, ("--address", cluster.address))




def _assert_ended_well(root: Path, name: str, optuna_url: str, server, out: str) -> dict[str, str]:
    """The end state of a search of TRIALS trials; returns {trial id: the IP in its run's esam.node tag}."""
    s = read_stores(root / "shared", name, optuna_url, server.url)
    assert_agree(s, epochs=EPOCHS, parent_status="FINISHED")  # one run per trial, every epoch once, stores agree
    assert len(s.optuna) == TRIALS and s.statuses("trial") == ["FINISHED"] * TRIALS, out
    assert_values_agree(optuna.load_study(study_name=name, storage=optuna_url), MlflowClient(server.url), TRIALS)
    front = json.loads(served_artifact(server.url, s.parents[0], "pareto/pareto.json"))
    assert front["front"], front
    for artifact in ("pareto/pareto.png", "pareto/pareto.html", "pareto/pareto.csv"):
        assert served_artifact(server.url, s.parents[0], artifact)
    tags = {r.data.tags["trial_id"]: r.data.tags.get("esam.node", "").split() for r in s.runs}
    assert all(len(t) == 2 and len(t[1]) == 8 for t in tags.values()), tags  # "<node IP> <node id prefix>"
    return {trial_id: t[0] for trial_id, t in tags.items()}


def test_a_worker_node_killed_mid_trial(postgres, mlflow_on_postgres, cluster, tmp_path):  # noqa: F811
    """The trials on the dead node go on elsewhere from their last checkpoint; then a new worker joins."""
    server = mlflow_on_postgres
    optuna_url = postgres.database("optuna_node_lost")
    config, driver, directory = _search(tmp_path, "nodelost", optuna_url, server, cluster)
    worker = cluster.workers[-1]
    victim: dict = {}

    def a_trial_mid_training_on_the_worker() -> bool:
        for trial_id, rows in trial_results(directory).items():
            last = rows[-1]
            if last["node"].split()[0] == cluster.ip(worker) and 1 <= last["epoch"] < EPOCHS - 1:
                victim.update(trial_id=trial_id, node=last["node"])
                return True
        return False

    proc = _esam_search(config, driver, cluster)
    try:
        wait_for(a_trial_mid_training_on_the_worker, proc, what="a trial training on the worker node")
        cluster.kill(worker)
        cluster.add_worker(WORKER_CPUS)  # the search needs no new node to finish, but it may use one
        out, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            kill_hard(proc)
    print(out)
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out
    nodes = _assert_ended_well(tmp_path, "nodelost", optuna_url, server, out)
    assert cluster.ip(cluster.head) in nodes.values() and len(set(nodes.values())) >= 2, nodes  # head and a worker
    # The killed trial went on on another node from its last checkpoint: the first epoch there is
    # the one after the last its first node reported, and MLflow's tag names the new node.
    rows = trial_results(directory)[victim["trial_id"]]
    before = [r["epoch"] for r in rows if r["node"] == victim["node"]]
    after = [r["epoch"] for r in rows if r["node"] != victim["node"]]
    assert after and after[0] == before[-1] + 1 and after[-1] == EPOCHS, (victim, before, after)
    assert nodes[victim["trial_id"]] != cluster.ip(worker), (victim, nodes)
    assert f"retry 1 of 2, from epoch {before[-1] + 1}" in out, out


def test_a_killed_driver_continues_on_the_same_cluster(postgres, mlflow_on_postgres, cluster, tmp_path):  # noqa: F811
    """SIGKILL of `esam search` mid-search; the same command again continues it to the same end."""
    server = mlflow_on_postgres
    if all(w.poll() is not None for w in cluster.workers):  # the previous test died without its new worker
        cluster.add_worker(WORKER_CPUS)
    optuna_url = postgres.database("optuna_driver_lost")
    config, driver, directory = _search(tmp_path, "driverlost", optuna_url, server, cluster)

    def one_trial_ended_and_one_mid_training() -> bool:
        epochs = [rows[-1]["epoch"] for rows in trial_results(directory).values()]
        return EPOCHS in epochs and any(1 <= e < EPOCHS for e in epochs)

    proc = _esam_search(config, driver, cluster)
    try:
        wait_for(one_trial_ended_and_one_mid_training, proc, what="a finished trial and one mid-training")
    finally:
        kill_hard(proc)
    rc, out = run(config, driver, cluster.env, args=("--address", cluster.address))
    print(out)
    assert rc == 0, out
    nodes = _assert_ended_well(tmp_path, "driverlost", optuna_url, server, out)
    assert cluster.ip(cluster.head) in nodes.values() and len(set(nodes.values())) >= 2, nodes  # head and a worker
