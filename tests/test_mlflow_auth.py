"""An MLflow server with users and its artifacts in S3, as the README's cluster steps start it.

`mlflow server --app-name basic-auth` (MLflow's basic-auth app: an admin made from
MLFLOW_AUTH_ADMIN_PASSWORD when it first starts, users in a database of their own), its runs and its
users in PostgreSQL (the password read from a pgpass file, never in a URL), `--serve-artifacts
--artifacts-destination s3://...` with MLFLOW_S3_ENDPOINT_URL pointing at moto's S3 server on
127.0.0.1. The admin creates the search's user with MLflow's own client; `esam search` logs in
with MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD from its environment, and needs no S3
key: the server writes the artifacts. A wrong or missing password is one line, exit 2.
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import boto3
import pytest
from cluster_helpers import PASSWORD, USER, JobCluster, free_port, postgres  # noqa: F401 - postgres is a fixture
from conftest import small_search
from faults_helpers import inherited_env
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

BUCKET = "esam-mlflow"
ADMIN_PASSWORD, SEARCH_PASSWORD = "admin-pw-" + secrets.token_hex(8), "search-pw-" + secrets.token_hex(8)
SEARCH_USER = "esam"
# The README's command that creates the search's user (run by the admin, the password read from a file)
CREATE_USER = ('from mlflow.server import get_app_client; get_app_client("basic-auth", tracking_uri="{url}")'
               '.create_user("{user}", open("mlflow-search-password").read().strip())')


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 with one bucket: its endpoint URL."""
    import logging

    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    _bucket(endpoint).create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


def _bucket(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="esam", aws_secret_access_key="esam",
                        region_name="us-east-1")


@pytest.fixture(scope="module")
def server(postgres, s3, tmp_path_factory):  # noqa: F811
    """The README's step 2: `mlflow server --app-name basic-auth`, runs and users in PostgreSQL, artifacts in S3."""
    import psycopg
    root = tmp_path_factory.mktemp("mlflow-auth")
    with psycopg.connect(postgres.url(), connect_timeout=10, autocommit=True) as conn:
        for database in ("mlflow", "mlflow_auth"):
            conn.execute(f'CREATE DATABASE "{database}"')
    pgpass = root / "pgpass"  # what ~/.pgpass is in the README: no password in any URL
    pgpass.write_text(f"127.0.0.1:{postgres.port}:*:{USER}:{PASSWORD}\n")
    pgpass.chmod(0o600)
    (root / "mlflow-auth.ini").write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = postgresql://{USER}@127.0.0.1:{postgres.port}/mlflow_auth\n"
        "admin_username = admin\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**inherited_env(), "PGPASSFILE": str(pgpass), "MLFLOW_AUTH_CONFIG_PATH": str(root / "mlflow-auth.ini"),
           "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD, "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
           "MLFLOW_BACKEND_STORE_URI": f"postgresql://{USER}@127.0.0.1:{postgres.port}/mlflow",
           "MLFLOW_S3_ENDPOINT_URL": s3, "AWS_ACCESS_KEY_ID": "esam", "AWS_SECRET_ACCESS_KEY": "esam",
           "AWS_DEFAULT_REGION": "us-east-1",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner: its worker pool swamps 2 cores
    with open(root / "server.log", "w") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--serve-artifacts",
                                 "--artifacts-destination", f"s3://{BUCKET}/artifacts", "--host", "127.0.0.1",
                                 "--port", str(port), "--workers", "1"],
                                cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                if urllib.request.urlopen(url + "/health", timeout=2).read() == b"OK":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"mlflow server --app-name basic-auth did not start:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        # The README's next step: the admin makes the search's user
        (root / "mlflow-search-password").write_text(SEARCH_PASSWORD + "\n")
        made = subprocess.run([sys.executable, "-c", CREATE_USER.format(url=url, user=SEARCH_USER)], cwd=root,
                              env={**inherited_env(), "MLFLOW_TRACKING_USERNAME": "admin",
                                   "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD},
                              capture_output=True, text=True, timeout=120, check=False)
        assert made.returncode == 0, made.stderr[-3000:]
        yield url
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=30)


def _search(config: Path, cwd: Path, **env) -> subprocess.CompletedProcess:
    """`esam search` with the login in its environment and no S3 key (the server writes the artifacts)."""
    clean = {k: v for k, v in inherited_env().items() if not k.startswith(("AWS_", "MLFLOW_TRACKING_"))}
    return subprocess.run([sys.executable, "-m", "esam.cli", "search", str(config)], cwd=cwd,
                          env={**clean, "PYTHONUNBUFFERED": "1", **env}, capture_output=True, text=True,
                          timeout=500, check=False)


def _files_under(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def test_a_search_logs_in_and_its_artifacts_land_in_the_bucket(server, s3, tmp_path):
    configs, work = tmp_path / "configs", tmp_path / "work"
    configs.mkdir()
    work.mkdir()
    scratch = Path(tempfile.mkdtemp(prefix="esa", dir="/tmp"))  # TMPDIR, short: Ray's session folder lands here
    config = small_search(configs, "authed", trials=2, references=(), epochs=1, mlflow={"tracking_uri": server})
    try:
        done = _search(config, work, MLFLOW_TRACKING_USERNAME=SEARCH_USER, MLFLOW_TRACKING_PASSWORD=SEARCH_PASSWORD,
                       TMPDIR=str(scratch))
        printed = done.stdout + done.stderr
        print(printed)
        assert done.returncode == 0 and "2 ESAM trials ended: 2 finished" in printed, printed[-3000:]
        # never printed, never in a file the search wrote (its results, Ray's session folder)
        files = _files_under(work) | _files_under(scratch)
        assert any(name.endswith("search.json") for name in files) and any("/logs/" in name for name in files)
        leaks = [name for name, data in files.items() if SEARCH_PASSWORD.encode() in data]
        assert SEARCH_PASSWORD not in printed and leaks == [], leaks
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    _recorded_and_in_the_bucket(server, s3, "authed")


def _recorded_and_in_the_bucket(server: str, s3: str, name: str) -> None:
    """The runs, read back as the search's user: the parent and both trials FINISHED; its artifacts in S3."""
    os.environ.update(MLFLOW_TRACKING_USERNAME=SEARCH_USER, MLFLOW_TRACKING_PASSWORD=SEARCH_PASSWORD)
    try:
        client = MlflowClient(server)
        exp = client.get_experiment_by_name("esam")
        runs = client.search_runs([exp.experiment_id], f"tags.`esam.search` = '{name}'")
    finally:
        for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(variable, None)
    kinds = sorted((r.data.tags["esam.kind"], r.info.status) for r in runs)
    assert kinds == [("search", "FINISHED"), ("trial", "FINISHED"), ("trial", "FINISHED")], kinds
    parent = next(r for r in runs if r.data.tags["esam.kind"] == "search")
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:/"), parent.info.artifact_uri  # through the server
    # ... which put them in the bucket
    keys = [o["Key"] for o in _bucket(s3).list_objects_v2(Bucket=BUCKET, Prefix="artifacts/")["Contents"]]
    mine = [k for k in keys if f"/{parent.info.run_id}/" in k]
    for artifact in ("pareto/pareto.json", "pareto/pareto.html", "pareto/pareto.png", "search_config.json"):
        assert any(k.endswith(artifact) for k in mine), (artifact, mine)
    recorded = str([parent.data.params, parent.data.tags])
    assert SEARCH_PASSWORD not in recorded and ADMIN_PASSWORD not in recorded


def test_a_search_submitted_to_the_two_node_cluster_logs_in_and_its_artifacts_land_in_the_bucket(server, s3, tmp_path):
    """The README's cluster path whole: a Ray job on a head and a worker node (token auth, the job API on the
    head's address), the driver's MLflow login in the head's environment only (never in the submission or its
    logs), the authenticated server writing the artifacts to S3. Its own subnet (127.0.3.x): the other
    cluster tests' nodes may run beside it."""
    laptop, shared = tmp_path / "laptop", tmp_path / "shared"
    laptop.mkdir()
    small_search(laptop, "jobauth", trials=2, references=(), epochs=1, results_dir=str(shared / "esam_results"),
                 mlflow={"tracking_uri": server})
    runtime_env = '{"env_vars": {"PYTHONUNBUFFERED": "1"}}'
    cluster = JobCluster(head_cpus=1, subnet="127.0.3",
                         head_env={"MLFLOW_TRACKING_USERNAME": SEARCH_USER, "MLFLOW_TRACKING_PASSWORD": SEARCH_PASSWORD})
    try:
        cluster.add_worker(1)
        rc, out = cluster.submit(laptop, "esam-jobauth", "jobauth.yaml", wait=True, runtime_env=runtime_env)
        print(out)
        assert rc == 0 and "search jobauth: 2 ESAM trials ended: 2 finished" in out, out[-3000:]
        info = cluster.job_info("esam-jobauth")
        assert info["status"] == "SUCCEEDED" and info["ip"] == cluster.HEAD_IP, info  # the driver ran on the head
        _, logs = cluster.ray_job("logs", "--address", cluster.dashboard_url, "esam-jobauth", cwd=laptop)
        assert SEARCH_PASSWORD not in out + logs and "Traceback" not in logs
    finally:
        cluster.close()
    _recorded_and_in_the_bucket(server, s3, "jobauth")
    assert sorted(os.listdir(laptop)) == ["jobauth.yaml"]  # the laptop kept the config, and nothing was written there


@pytest.mark.parametrize("login", ["wrong password", "none"])
def test_a_refused_login_is_one_line(server, tmp_path, login):
    configs, work = tmp_path / "configs", tmp_path / "work"
    configs.mkdir()
    work.mkdir()
    config = small_search(configs, "refused", trials=1, references=(), mlflow={"tracking_uri": server})
    wrong = "not-" + SEARCH_PASSWORD
    env = {"MLFLOW_TRACKING_USERNAME": SEARCH_USER, "MLFLOW_TRACKING_PASSWORD": wrong} if login != "none" else {}
    done = _search(config, work, **env)
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, lines
    said = f"esam: error: MLflow tracking server {server} refused the login (HTTP 401); "
    assert lines[0].startswith(said), lines
    assert ("check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" if login != "none" else
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD are not set") in lines[0], lines
    assert wrong not in lines[0] and os.listdir(work) == []  # refused before anything was written
