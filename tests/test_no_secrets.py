"""No secret in any file a search writes: neither the database password nor the S3 key.

A real search on a cluster's stores, on one machine: Optuna on PostgreSQL (a role of its own, its
password a marker), Ray's experiments in moto's S3 server on 127.0.0.1 through a key given in the
results_dir URI (s3://KEY:SECRET@bucket/...), the only credentials the search has. Its trials train
on 2 DDP workers, so that Ray Train's runs (the trial's own storage URI) are written too. Then every
file the search could have written is read as bytes: the bucket's objects, its working directory
(state_dir, MLflow's store), and its temp directory (TMPDIR: Ray's session folder, the trials'
scratch directories). The config file, the user's own, lies outside them.
"""
from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import boto3
import pytest
from cluster_helpers import postgres  # noqa: F401 - a fixture
from conftest import small_search
from faults_helpers import inherited_env

from esam.errors import ConfigError
from esam.search.stores.results_dir import StoragePath

BUCKET = "esam-secrets"
ACCESS_KEY, SECRET_KEY = "AKIDESAMMARK3R", "s3-secret-9c41e7"
DB_PASSWORD, MLFLOW_PASSWORD = "pg-password-5e8d1b", "pg-mlflow-password-2a7f"  # Optuna's, MLflow's database


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server with one bucket: host:port. Nothing of it goes in the environment."""
    import logging

    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    _bucket(f"{host}:{port}").create_bucket(Bucket=BUCKET)
    yield f"{host}:{port}"
    server.stop()


def _bucket(endpoint: str):
    return boto3.client("s3", endpoint_url=f"http://{endpoint}", aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=SECRET_KEY, region_name="us-east-1")


def _databases(postgres) -> tuple[str, str]:  # noqa: F811
    """Optuna's and MLflow's databases, each owned by a role of its own whose password is a marker: their URLs."""
    import psycopg
    urls = []
    with psycopg.connect(postgres.url(), connect_timeout=10, autocommit=True) as conn:
        for role, password in (("searcher", DB_PASSWORD), ("tracker", MLFLOW_PASSWORD)):
            conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
            conn.execute(f'CREATE DATABASE "{role}" OWNER {role}')
            urls.append(f"postgresql://{role}:{password}@127.0.0.1:{postgres.port}/{role}")
    return urls[0], urls[1]


def _hits(files: dict[str, bytes]) -> list[str]:
    return [f"{where}: {secret.decode()}" for where, data in files.items()
            for secret in (SECRET_KEY.encode(), DB_PASSWORD.encode(), MLFLOW_PASSWORD.encode()) if secret in data]


def _files_under(root: Path) -> dict[str, bytes]:
    found = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():  # sockets and pipes are no files
            found[str(path)] = path.read_bytes()
    return found


@pytest.mark.slow
def test_no_password_or_key_in_any_file_a_search_writes(tmp_path, postgres, s3_endpoint):  # noqa: F811
    work, configs = tmp_path / "work", tmp_path / "configs"
    work.mkdir()
    configs.mkdir()
    scratch = Path(tempfile.mkdtemp(prefix="esn", dir="/tmp"))  # TMPDIR, short: Ray's socket paths live there
    results_dir = (f"s3://{ACCESS_KEY}:{SECRET_KEY}@{BUCKET}/searches"
                   f"?region=us-east-1&endpoint_override={s3_endpoint}&scheme=http")
    optuna_url, mlflow_url = _databases(postgres)
    config = small_search(configs, "nosecret", trials=2, references=("sgd",), epochs=1,
                          resources={"workers": 2, "cpu": 0.5}, results_dir=results_dir, state_dir=str(work / "state"),
                          optuna_storage=optuna_url, mlflow={"tracking_uri": mlflow_url})
    env = {k: v for k, v in inherited_env().items() if not k.startswith("AWS_") and k != "MLFLOW_TRACKING_URI"}
    try:
        proc = subprocess.run([sys.executable, "-m", "esam.cli", "search", str(config)], cwd=work,
                              env={**env, "TMPDIR": str(scratch), "PYTHONUNBUFFERED": "1"},
                              capture_output=True, text=True, timeout=500, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "2 ESAM trials" in proc.stdout
        sessions = list((scratch / "ray").glob("session_2*"))
        assert len(sessions) == 1, sessions  # this search's Ray, and only it, kept its session here

        s3 = _bucket(s3_endpoint)
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
        assert any(k.endswith("tuner.pkl") for k in keys) and any("/train_runs/" in k for k in keys), keys
        files = {f"s3://{BUCKET}/{k}": s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}
        files |= _files_under(work) | _files_under(scratch)
        assert any(name.endswith("search.json") for name in files) and any("/logs/" in name for name in files)
        leaks = _hits(files)
        assert leaks == [], "\n".join(leaks)
        printed = proc.stdout + proc.stderr
        assert SECRET_KEY not in printed and DB_PASSWORD not in printed, printed
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --- the key of a results_dir URI --------------------------------------------------------------------------------------

def test_an_s3_key_moves_from_the_uri_to_the_environment_and_out_of_what_ray_pickles(monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "another")  # restored after the test, as the search's environment is not
    root = StoragePath.of("s3://AKID:s3%2Fcr3t@bucket/searches?region=us-east-1&endpoint_override=127.0.0.1:1&scheme=http")
    runs = root / "name" / "train_runs"
    assert runs.shown == "s3://bucket/searches/name/train_runs?region=us-east-1&endpoint_override=127.0.0.1:1&scheme=http"
    assert (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]) == ("AKID", "s3/cr3t")
    assert "AWS_SESSION_TOKEN" not in os.environ  # it belonged to the environment's key
    assert b"cr3t" not in pickle.dumps(runs.fs) + pickle.dumps(runs.shown)  # what Ray gets
    assert str(runs).startswith("s3://AKID:***@bucket/searches/name/train_runs?") and str(root.parent) == (
        "s3://AKID:***@bucket?region=us-east-1&endpoint_override=127.0.0.1:1&scheme=http")


@pytest.mark.parametrize("uri", ["gs://user:s3cr3t@bucket/p", "abfs://account:s3cr3t@container/p",
                                 "abfs://container@account.dfs.core.windows.net/p?sv=2024&sig=s3cr3t",
                                 "abfs://container/p?tenant_id=t&client_id=c&client_secret=s3cr3t"])
def test_a_secret_in_another_stores_uri_is_refused_in_one_line(uri):
    with pytest.raises(ConfigError, match="carries a secret in its URI") as err:
        StoragePath.of(uri)
    assert "s3cr3t" not in str(err.value) and "\n" not in str(err.value)
