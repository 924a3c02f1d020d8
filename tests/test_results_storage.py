"""results_dir as an object-store URI: Ray's experiments go to S3 through pyarrow, the driver's files to state_dir.

The S3 server is moto's, on 127.0.0.1, reached over HTTP like any S3 endpoint (AWS_ENDPOINT_URL).
"""
import os
import subprocess
import sys

import boto3
import optuna
import pytest
import yaml
from conftest import small_search

from esam.errors import ConfigError
from esam.search.recovery.ray_state import read_trials
from esam.search.stores.results_dir import StoragePath, check_storage_writable

BUCKET = "esam-results"


@pytest.fixture(scope="module")
def s3_env():
    """An S3 server with one bucket; the environment that points pyarrow and Ray's workers at it."""
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "esam", "AWS_SECRET_ACCESS_KEY": "esam",
           "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    yield env
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    server.stop()


def _search(config, cwd, env) -> str:
    proc = subprocess.run([sys.executable, "-m", "esam.cli", "search", str(config)], cwd=cwd, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=400, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_a_search_with_an_s3_results_dir_runs_and_grows(tmp_path, s3_env):
    state = tmp_path / "driver_state"
    path = small_search(tmp_path, "s3", trials=2, references=(), epochs=1,
                        results_dir=f"s3://{BUCKET}/searches", state_dir=str(state))

    assert "2 ESAM trials" in _search(path, tmp_path, s3_env)
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="searches/s3/")["Contents"]]
    assert any(k.startswith("searches/s3/search/experiment_state-") for k in keys)
    assert any("/checkpoint_" in k for k in keys)  # the trials wrote their checkpoints to the store too
    assert (state / "s3/search.json").is_file() and (state / "s3/optuna.db").is_file()
    assert not (state / "s3/search").exists()  # Ray's experiment is only in the store

    path.write_text(yaml.safe_dump(yaml.safe_load(path.read_text()) | {"trials": 3}))
    assert "grows by 1 trials" in _search(path, tmp_path, s3_env)  # continued from its records: a new Ray experiment
    saved = read_trials(StoragePath.of(f"s3://{BUCKET}/searches/s3/search"))
    assert [t.status for t in saved] == ["TERMINATED"]  # this run's Ray experiment: the one trial it added
    study = optuna.load_study(study_name="s3", storage=f"sqlite:///{state / 's3/optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3


def test_a_missing_bucket_is_one_line(s3_env):
    with pytest.raises(ConfigError, match=r"results_dir s3://no-such-bucket/x is not writable \(Bucket"):
        check_storage_writable(StoragePath.of("s3://no-such-bucket/x") / "name")


def test_an_unwritable_path_uri_is_one_line(tmp_path):
    (tmp_path / "a_file").write_text("not a directory")  # (chmod would not stop root, which CI may be)
    with pytest.raises(ConfigError, match=r"results_dir file://.*/a_file is not writable"):
        check_storage_writable(StoragePath.of(f"file://{tmp_path / 'a_file'}") / "name")


def test_a_uris_options_stay_after_its_path():
    # s3's options (region, endpoint) come after the path: joined names go before them, or Ray
    # Train's storage (results_dir/<name>/train_runs) would be a different, broken URI
    options = "region=us-east-1&endpoint_override=127.0.0.1:1&scheme=http"
    root = StoragePath.of(f"s3://bucket/prefix?{options}")
    runs = root / "name" / "train_runs"
    assert (runs.path, runs.shown) == ("bucket/prefix/name/train_runs", f"s3://bucket/prefix/name/train_runs?{options}")
    assert runs.parent.parent.shown == root.shown and str(root.parent) == f"s3://bucket?{options}"
    assert str(StoragePath.of("s3://bucket/a?region=x") / "b") == "s3://bucket/a/b?region=x"
    local = StoragePath.of("/tmp/esam results")
    assert (str(local / "x"), str(local.parent)) == ("/tmp/esam results/x", "/tmp")


def test_a_key_in_a_results_dir_uri_goes_through_the_environment_not_to_ray(monkeypatch):
    from esam.search.records.mlflow_runs import shareable
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    root = StoragePath.of("s3://AKID:s3cr3t@bucket/searches?region=us-east-1&endpoint_override=127.0.0.1:1&scheme=http")
    trials = root / "name" / "train_runs"
    assert trials.shown.startswith("s3://bucket/searches/name/train_runs?")  # what Ray and Ray Train are given
    assert (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]) == ("AKID", "s3cr3t")
    assert "s3cr3t" not in f"{trials} {root.parent}" and str(trials).startswith("s3://AKID:***@bucket/")
    recorded = shareable({"results_dir": root.shown, "optuna_storage": None, "mlflow": {}})
    assert recorded["results_dir"].startswith("s3://bucket/searches?") and "s3cr3t" not in str(recorded)


def test_a_store_that_does_not_answer_is_one_line_not_a_hang(monkeypatch):
    # gs:// with no network (CI has none) waits minutes in the client's retries; with credentials and
    # a network it fails fast instead: either way one line, within the probe's time
    import time

    from esam.search.stores import results_dir as results_storage
    monkeypatch.setattr(results_storage, "PROBE_TIMEOUT_S", 3.0)
    start = time.monotonic()
    said = r"^results_dir gs://esam-no-such-bucket-4f2a/x (did not answer within 3 s|is not writable)"
    with pytest.raises(ConfigError, match=said):
        check_storage_writable(StoragePath.of("gs://esam-no-such-bucket-4f2a/x") / "name")
    assert time.monotonic() - start < 10
