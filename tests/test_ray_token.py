"""A Ray cluster that refuses the driver's token is one line naming the token, not 20 warnings and a results_dir error.

The head is a real `ray start --head` with token authentication (cluster_helpers.RayCluster, on
127.0.0.2); each driver is a process of its own (Ray reads RAY_AUTH_MODE and the token once per
process) with HOME set to an empty directory, so a ~/.ray/auth_token a local Ray left on this machine
is not the driver's token.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
from cluster_helpers import RayCluster
from conftest import small_search
from faults_helpers import inherited_env

from esam.errors import ConfigError
from esam.search.tune import local_ray

REFUSED = "refused the token"
# Ray's own signs of a refused token on the terminal: its C++ warning (one a second for 20 s) and exceptions.
NOISE = ("InvalidAuthToken", "gcs_client.cc", "Traceback", "ConnectionError", "cannot write")
# init_ray in a driver of its own: its ConfigError (or True) on stdout, exit 2 as the CLI's.
INIT = ("import sys\nfrom esam.errors import ConfigError\nfrom esam.search.tune.local_ray import init_ray\n"
        "try:\n    print(init_ray(sys.argv[1]))\nexcept ConfigError as err:\n    print(err)\n    sys.exit(2)\n")


@pytest.fixture(scope="module")
def head():
    """A one-node cluster with a token of its own; only its own processes are killed after (no `ray stop`)."""
    cluster = RayCluster(head_cpus=1)
    try:
        yield cluster
    finally:
        cluster.close()


def _env(home, **auth) -> dict:
    env = {k: v for k, v in inherited_env().items()
           if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")}
    return {**env, "HOME": str(home), "PYTHONUNBUFFERED": "1", **auth}


def _start(argv, cwd, env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_a_refused_token_is_one_line(head, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    config = small_search(tmp_path, "notoken")
    cases = {  # all at once: each driver is mostly Ray's import time
        "cli, no token": (["-m", "esam.cli", "search", str(config), "--address", head.address], {},
                          "none sent: RAY_AUTH_MODE is not token"),
        "token mode, no token": (["-c", INIT, head.address], {"RAY_AUTH_MODE": "token"}, "none is set"),
        "wrong token": (["-c", INIT, head.address], {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 32},
                        "not the cluster's"),
        "right token": (["-c", INIT, head.address], head.env, None),
    }
    procs = {name: _start(argv, tmp_path, _env(home, **auth)) for name, (argv, auth, _) in cases.items()}
    outs = {name: (proc.communicate(timeout=300)[0], proc.returncode) for name, proc in procs.items()}

    for name, (_, _, why) in cases.items():
        out, code = outs[name]
        if why is None:
            assert (code, out.strip().splitlines()[-1:]) == (0, ["True"]), out  # the check refuses no good token
            continue
        assert code == 2, (name, out)
        line = out.strip().splitlines()[-1]
        assert f"Ray at {head.address} {REFUSED} ({why}" in line and "RAY_AUTH_TOKEN" in line, (name, out)
        assert not any(n in out for n in NOISE), (name, out)
        if name.startswith("cli"):
            assert line.startswith("esam: error: ") and out.count(REFUSED) == 1, out
            assert not (tmp_path / "esam_results").exists() and not (tmp_path / "mlflow.db").exists()  # nothing written
    assert not (home / ".ray").exists()  # the check made no token of its own


def test_refused_token_after_ray_init_retried_is_named(monkeypatch):
    """Where the check could not ask, Ray's ConnectionError (an OSError: "cannot write results_dir" before) is mapped."""
    import ray
    monkeypatch.setattr(local_ray, "check_ray_token", lambda address: None)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)

    def refused(**kwargs):  # what ray.init raises after its 20 tries: the GCS client's error as traceback text
        try:
            raise RuntimeError("Failed to connect to GCS. Last connection error: Traceback (most recent call last):\n"
                               "ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: Authentication "
                               "token is missing or incorrect")
        except RuntimeError as err:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.5:6379") from err

    monkeypatch.setattr(ray, "init", refused)
    with pytest.raises(ConfigError, match=f"^Ray at 10.0.0.5:6379 {REFUSED} "):
        local_ray.init_ray("10.0.0.5:6379")

    def away(**kwargs):
        raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.5:6379")

    monkeypatch.setattr(ray, "init", away)
    with pytest.raises(ConfigError, match=r"^cannot join Ray at 10.0.0.5:6379 \(Failed to connect") as err:
        local_ray.init_ray("10.0.0.5:6379")
    assert not isinstance(err.value, OSError) and len(str(err.value).splitlines()) == 1
