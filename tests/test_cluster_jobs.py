"""A search submitted to the head as a Ray job, the way clusters are run: the README's job commands, for real.

A two-node cluster on loopback addresses (tests/cluster_helpers.py: JobCluster) whose head runs
Ray's dashboard and job API on its own address, with token authentication. From a directory that
holds nothing but the search's config (the laptop), `ray job submit --working-dir .` runs
`esam search` on the head; `ray job logs --follow` follows it, `ray job stop` stops it mid-search
(Ray sends the driver SIGTERM, so it stops as Ctrl-C does and says how to continue), and the same
submission again finishes it with nothing lost. The stores are SQLite files under one shared
directory, named by absolute paths: each job's driver runs in its own copy of the working
directory, so a relative path would name a new store each time.
"""
from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request

import optuna
import pytest
from cluster_helpers import trial_results, RAY, JobCluster, assert_values_agree, read_stores
from conftest import small_search
from faults_helpers import assert_agree, kill_hard, wait_for
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

NAME, TRIALS, EPOCHS = "jobs", 2, 3
STOP_LINE = f"search {NAME} stopped; run the same command again to continue it"
# As the README's step 4: a stopped job's driver gets this long after SIGTERM before Ray kills it (Ray's default: 3 s)
STOP_WAIT_S = "120"
UNBUFFERED = json.dumps({"env_vars": {"PYTHONUNBUFFERED": "1"}})  # `ray job logs --follow` sees each line as printed


@pytest.fixture(scope="module")
def cluster():
    nodes = JobCluster(head_cpus=1, head_env={"RAY_JOB_STOP_WAIT_TIME_S": STOP_WAIT_S})
    try:
        nodes.add_worker(1)
        yield nodes
    finally:
        nodes.close()


def _get(url: str, token: str | None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        return urllib.request.urlopen(request, timeout=30).status
    except urllib.error.HTTPError as err:
        return err.code


def test_the_job_api_listens_on_the_heads_address_and_wants_the_token(cluster, tmp_path):
    jobs = f"{cluster.dashboard_url}/api/jobs/"
    assert _get(jobs, None) == 401 and _get(jobs, "0" * 32) == 403 and _get(jobs, cluster.env["RAY_AUTH_TOKEN"]) == 200
    listening = subprocess.run(["ss", "-ltnH", f"sport = :{cluster.dashboard_port}"], capture_output=True, text=True,
                               check=True).stdout.split()
    assert f"{cluster.HEAD_IP}:{cluster.dashboard_port}" in listening, listening  # not 0.0.0.0 nor [::]
    refused = subprocess.run([str(RAY), "job", "list", "--address", cluster.dashboard_url], cwd=tmp_path,
                             env=cluster.client_env(RAY_AUTH_TOKEN="0" * 32), capture_output=True, text=True,
                             timeout=120, check=False)
    assert refused.returncode != 0 and "Invalid authentication token" in refused.stderr, refused.stderr[-2000:]


def test_a_search_run_as_a_job_stops_with_ray_job_stop_and_the_same_submission_finishes_it(cluster, tmp_path):
    laptop, shared = tmp_path / "laptop", tmp_path / "shared"
    laptop.mkdir()
    results = shared / "esam_results"
    tracking_uri = f"sqlite:///{shared / 'mlflow.db'}"
    # concurrency 1: the two trials one after the other, a window of several epochs to stop in
    small_search(laptop, NAME, trials=TRIALS, concurrency=1, references=(), epochs=EPOCHS,
                 results_dir=str(results), mlflow={"tracking_uri": tracking_uri})
    optuna_url = f"sqlite:///{results / NAME / 'optuna.db'}"

    rc, out = cluster.submit(laptop, "esam-jobs-1", f"{NAME}.yaml", wait=False, runtime_env=UNBUFFERED)
    assert rc == 0, out
    follow = subprocess.Popen([str(RAY), "job", "logs", "--address", cluster.dashboard_url, "--follow", "esam-jobs-1"],
                              cwd=laptop, env=cluster.client_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    try:
        def a_trial_mid_training() -> bool:
            return any(1 <= rows[-1]["epoch"] < EPOCHS for rows in trial_results(results / NAME).values())

        wait_for(a_trial_mid_training, follow, timeout=400, what="a trial mid-training")
        rc, stopped = cluster.ray_job("stop", "--address", cluster.dashboard_url, "esam-jobs-1", cwd=laptop)
        assert rc == 0, stopped
        followed, _ = follow.communicate(timeout=200)  # ends with the job
    finally:
        if follow.poll() is None:
            kill_hard(follow)
    print(followed)
    rc, logs = cluster.ray_job("logs", "--address", cluster.dashboard_url, "esam-jobs-1", cwd=laptop)
    lines = [line for line in logs.splitlines() if line.strip()]
    # Stopped as SIGTERM stops a search in a terminal: how to continue it, then the signal; no stack lines, not finished
    assert lines[-2:] == [STOP_LINE, "esam: stopped (SIGTERM)"] and STOP_LINE in followed, logs
    assert "Traceback" not in logs and "ESAM trials ended" not in logs, logs
    info = cluster.job_info("esam-jobs-1")
    print(info)
    assert info["status"] == "STOPPED" and info["ip"] == cluster.HEAD_IP, info  # the driver ran on the head
    client = MlflowClient(tracking_uri)
    stopped_stores = read_stores(shared, NAME, optuna_url, tracking_uri)
    assert [p.info.status for p in stopped_stores.parents] == ["KILLED"], stopped_stores.parents
    assert "RUNNING" not in stopped_stores.statuses("trial"), stopped_stores.statuses("trial")

    # the same submission again, followed to its end
    rc, out = cluster.submit(laptop, "esam-jobs-2", f"{NAME}.yaml", wait=True, runtime_env=UNBUFFERED)
    print(out)
    assert rc == 0 and f"search {NAME}: {TRIALS} ESAM trials ended: {TRIALS} finished" in out, out
    assert "Traceback" not in out, out
    info = cluster.job_info("esam-jobs-2")
    assert info["status"] == "SUCCEEDED" and info["exit"] == 0 and info["ip"] == cluster.HEAD_IP, info

    # Nothing lost, nothing twice: 2 COMPLETE Optuna trials, 2 FINISHED MLflow runs with every epoch once, parent FINISHED
    s = read_stores(shared, NAME, optuna_url, tracking_uri)
    assert_agree(s, epochs=EPOCHS, parent_status="FINISHED")
    assert [t.state.name for t in s.optuna] == ["COMPLETE"] * TRIALS and s.statuses("trial") == ["FINISHED"] * TRIALS
    assert sorted(s.history.values()) == [list(range(1, EPOCHS + 1))] * TRIALS, s.history
    assert_values_agree(optuna.load_study(study_name=NAME, storage=optuna_url), client, TRIALS)
    assert sorted(os.listdir(laptop)) == [f"{NAME}.yaml"]  # the laptop kept the config, and nothing was written there
