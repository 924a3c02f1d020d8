"""The cluster tests' real servers: PostgreSQL, an MLflow server on it, and a Ray cluster of several nodes.

`RayCluster` (at the end) starts a head and worker nodes as separate `ray start` processes on
loopback addresses and kills one as a crash would.

A real PostgreSQL: Debian's server on 127.0.0.1, a throwaway data directory.

`Postgres(root)` finds Debian's `postgresql` binaries (installing the package with apt-get when they
are missing: `apt-get update` once, then `apt-get install -y postgresql`), runs initdb and pg_ctl,
and hands out one database per store (`database("optuna")` -> a `postgresql://` URL): Optuna and
MLflow each keep an `alembic_version` table, so they must not share one. `stop()` and `start()`
keep the port and the data, as a restart of the server would.

PostgreSQL refuses to run as root. As root (CI, containers) every server command runs as the
`postgres` system user that Debian's package creates, through `runuser -u postgres --`, and the data
directory lives in a fresh directory of the system's temp dir owned by that user (pytest's tmp
dirs are 0700 root: the server could not enter them); it is removed on close(). As any other user
the server runs as that user in `root/postgres`.

The server listens on 127.0.0.1 only, TCP only, with a password (scram-sha-256) and no fsync
(throwaway data: the tests need speed, not durability across a machine crash). The URLs are plain
`postgresql://`, which SQLAlchemy 2.1 (Optuna's and MLflow's) opens with psycopg 3 (the test extra).
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from faults_helpers import inherited_env

USER, PASSWORD = "esam", "esam-test"
SERVER_SETTINGS = ("-c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
_installed = False


def postgres_bin() -> Path:
    """The directory holding initdb and pg_ctl (Debian keeps them out of PATH), installing the package if needed."""
    global _installed
    found = _find_bin()
    if found is None and not _installed:
        _installed = True
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "postgresql"]):
            try:
                done = subprocess.run(sudo + cmd, check=False, env=env, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as err:
                pytest.fail(f"PostgreSQL is missing and `{' '.join(cmd)}` could not run ({err}): "
                            "install Debian's postgresql package")
            if done.returncode != 0:
                pytest.fail(f"PostgreSQL is missing and `{' '.join(sudo + cmd)}` failed (exit {done.returncode}): "
                            f"{done.stderr.strip()[-300:]}")
        found = _find_bin()
    if found is None:
        pytest.fail("PostgreSQL's initdb and pg_ctl are not in /usr/lib/postgresql/*/bin or PATH "
                    "even after apt-get install postgresql")
    return found


def _find_bin() -> Path | None:
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if versions:
        return Path(versions[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).resolve().parent if pg_ctl and shutil.which("initdb") else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """A PostgreSQL server of its own: init() once, then start()/stop() as often as a test needs."""

    def __init__(self, root: Path):
        self.bin = postgres_bin()
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            self.home = Path(tempfile.mkdtemp(prefix="esam-pg-"))
            shutil.chown(self.home, "postgres", "postgres")
        else:
            self.home = Path(root) / "postgres"
            self.home.mkdir()
        self.data, self.log = self.home / "data", self.home / "server.log"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = (["runuser", "-u", "postgres", "--"] if self.as_root else []) + list(args)
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, cwd=self.home)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed (exit {done.returncode}): {done.stderr.strip()}\n"
                               f"{self.server_log()}")
        return done

    def init(self) -> Postgres:
        pwfile = self.home / "password"
        pwfile.write_text(PASSWORD + "\n")
        if self.as_root:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}",
                  "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale")
        pwfile.unlink()
        return self

    def start(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "-o", f"-p {self.port} {SERVER_SETTINGS}", "start")

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop: "fast" ends every session (a restart as an operator does it), "immediate" is a crash."""
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def database(self, name: str) -> str:
        """A new, empty database; its URL."""
        import psycopg
        with psycopg.connect(self.url(), connect_timeout=10, autocommit=True) as conn:  # no transaction
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def server_log(self) -> str:
        try:
            return self.log.read_text()[-2000:]
        except OSError:
            return ""

    def close(self) -> None:
        """Stop the server (killing it if pg_ctl cannot) and remove its data."""
        try:
            self.stop("fast")
        except (RuntimeError, subprocess.TimeoutExpired):
            pid_file = self.data / "postmaster.pid"
            if pid_file.exists():
                try:  # the postmaster; its backends notice and exit
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
                time.sleep(1)
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A running PostgreSQL on 127.0.0.1 (a fresh data directory) for a test module, stopped and removed after it."""
    pytest.importorskip("psycopg", reason="the PostgreSQL tests need psycopg (pip install -e '.[test]')")
    server = Postgres(tmp_path_factory.mktemp("postgres")).init()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def mlflow_on_postgres(postgres, tmp_path_factory):
    """An MLflow server for a test module, its backend store a PostgreSQL database, its artifacts served through it."""
    from conftest import MlflowServer
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), postgres.database("mlflow"))
    server.start()
    yield server
    server.stop()


def read_stores(root: Path, name: str, optuna_url: str, tracking_uri: str):
    """faults_helpers.Stores of a search whose Optuna study and MLflow runs live behind URLs, not SQLite files."""
    import optuna
    from faults_helpers import Stores
    from mlflow.tracking import MlflowClient

    from esam.search.recovery import ray_state

    directory = Path(root) / "esam_results" / name
    ray = {e: {t.trial_id: t for t in ray_state.read_trials(directory / e) or []} for e in ("references", "search")}
    study = optuna.load_study(study_name=name, storage=optuna_url) \
        if name in optuna.get_all_study_names(optuna_url) else None
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name("esam")
    parents = runs = []
    if exp is not None:
        parents = client.search_runs([exp.experiment_id],
                                     f"tags.`esam.search` = '{name}' and tags.`esam.kind` = 'search'")
        ids = {p.info.run_id for p in parents}
        runs = [r for r in client.search_runs([exp.experiment_id], f"tags.`esam.search` = '{name}'")
                if r.data.tags.get("mlflow.parentRunId") in ids]
    history = {r.info.run_id: [m.step for m in client.get_metric_history(r.info.run_id, "test_acc")] for r in runs}
    return Stores(ray, study.trials if study else [], parents, runs, history)


def assert_values_agree(study, client, trials: int, objectives=("test_acc", "speed_vs_sgd")) -> None:
    """Every Optuna trial ended COMPLETE, and its values are its MLflow run's final metrics."""
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * trials
    for t in study.trials:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["esam.kind"] == "trial"
        assert t.values == [run.data.metrics[m] for m in objectives], (t.number, run.info.run_name)


def served_artifact(server_url: str, run, path: str) -> bytes:
    """A run's artifact as the MLflow server serves it over HTTP (`--serve-artifacts`)."""
    import urllib.request
    where = run.info.artifact_uri
    assert where.startswith("mlflow-artifacts:/"), where
    url = f"{server_url}/api/2.0/mlflow-artifacts/artifacts/{where.split(':', 1)[1].lstrip('/')}/{path}"
    return urllib.request.urlopen(url, timeout=30).read()


# --- a Ray cluster of separate nodes on this machine ---------------------------------------------------------------

# The CLI of this environment (every node runs the same Ray and esam); PATH's where Python's folder has none.
RAY = Path(sys.executable).with_name("ray") if Path(sys.executable).with_name("ray").exists() \
    else Path(shutil.which("ray") or "ray")
# GCS health checks every second, a node dead after 3 misses (Ray's defaults: 3 s and 5), so a killed
# node's trials are retried within seconds.
HEALTH_CHECKS = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
                 "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}


class RayCluster:
    """A head and worker nodes, each its own `ray start --block` process in its own session, on loopback addresses.

    Ray replaces 127.0.0.1 and localhost, in `--node-ip-address` and in `--address` alike, by the
    machine's outward address (ray._private.services.resolve_ip_for_localhost); only its switch for
    desktop systems keeps them (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, esam's local Ray), and that switch
    refuses worker nodes. Every other 127.x.y.z address is loopback on Linux too and is kept as given:
    the head is 127.0.0.2 (`HEAD_IP`), the n-th worker node 127.0.0.(2 + n), so the node IP alone tells
    the nodes apart. As on any cluster, each node's GCS and raylet then listen on every interface (Ray
    binds them to 127.0.0.1 only for a node whose address is exactly that); the rest on the node's address.

    Token authentication stays on (`RAY_AUTH_MODE=token`, Ray 2.60's default for a local cluster),
    with a token of this cluster's own in `RAY_AUTH_TOKEN`: `env` is what the driver needs to join.
    Nothing reads or writes ~/.ray/auth_token.

    `kill(node)` is a node's crash: SIGKILL to its `ray start` process, its process group and every
    descendant (raylet, workers, the trial actors on it); the other nodes live on. `ray stop` is never
    used: it stops every Ray of this machine, other users' included.
    """

    HEAD_IP = "127.0.0.2"

    def __init__(self, head_cpus: int = 1, cwd: Path | None = None):
        import secrets
        self.cwd = cwd  # where each `ray start` runs (None: this process's directory)
        self.port = free_port()
        self.address = f"{self.HEAD_IP}:{self.port}"
        self.temp_dir = Path(tempfile.mkdtemp(prefix="esr", dir="/tmp"))  # short: Ray's socket paths live here
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
        self.nodes: list[subprocess.Popen] = []
        self.ips: dict[int, str] = {}  # `ray start` pid -> the node's address
        self.head = self._start(self.HEAD_IP, ["--head", "--port", str(self.port), "--include-dashboard", "false"],
                                head_cpus, HEALTH_CHECKS)

    @property
    def workers(self) -> list[subprocess.Popen]:
        return self.nodes[1:]

    def add_worker(self, cpus: int) -> subprocess.Popen:
        """A new worker node, at the next loopback address (127.0.0.3, then .4, ...)."""
        return self._start(f"127.0.0.{2 + len(self.nodes)}", ["--address", self.address], cpus, {})

    def ip(self, node: subprocess.Popen) -> str:
        return self.ips[node.pid]

    def _start(self, ip: str, args: list[str], cpus: int, env: dict, timeout: float = 120) -> subprocess.Popen:
        log = self.temp_dir / f"node-{len(self.nodes)}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([str(RAY), "start", "--block", "--node-ip-address", ip, "--num-cpus", str(cpus),
                                     "--disable-usage-stats", "--temp-dir", str(self.temp_dir), *args],
                                    env={**inherited_env(), **self.env, **env}, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=self.cwd)
        self.nodes.append(proc)
        self.ips[proc.pid] = ip
        deadline = time.time() + timeout
        while "Ray runtime started" not in log.read_text():
            if proc.poll() is not None or time.time() > deadline:
                self.kill(proc)
                raise RuntimeError(f"`ray start {' '.join(args)}` did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        return proc

    def kill(self, node: subprocess.Popen) -> None:
        """SIGKILL a node: its `ray start`, its process group and all their descendants."""
        from faults_helpers import descendants
        below = descendants(node.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGKILL)
        for pid in [node.pid, *below]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        node.wait(timeout=30)

    def close(self) -> None:
        """Kill every node (a throwaway cluster: nothing to shut down gracefully) and remove its files."""
        for node in reversed(self.nodes):
            self.kill(node)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class JobCluster(RayCluster):
    """A RayCluster whose head also runs Ray's dashboard, and with it the job API, as the README's recipe starts it.

    The dashboard listens on the head's private address only (`--dashboard-host HEAD_IP`), behind the
    cluster's token: `ray job ...` sends RAY_AUTH_TOKEN from the client's environment as a bearer header.
    The head's environment holds `head_env` (e.g. RAY_JOB_STOP_WAIT_TIME_S), which a job's driver inherits.

    Each node has a temp dir of its own, as each machine of a cluster has its own /tmp: every node
    unpacks a job's working_dir under its temp dir, and nodes sharing one would unpack it again over
    the directory the driver runs in (its cwd gone mid-search). Its addresses are 127.0.1.x and every
    port is a free one, so that it never meets a RayCluster (127.0.0.x) of another test file running
    at the same time: Ray's fixed defaults (the dashboard agent's 52365, Ray Client's 10001) would.
    Two test files with a JobCluster each give them different subnets (127.0.1, 127.0.2, ...).

    `ray_job`, `submit` and `job_info` are the README's `ray job` commands and Ray's job SDK, run
    with the cluster's token in the environment.
    """

    def __init__(self, head_cpus: int = 1, head_env: dict | None = None, subnet: str = "127.0.1"):
        import secrets
        self.cwd, self.subnet = None, subnet
        self.HEAD_IP = f"{subnet}.2"
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"{self.HEAD_IP}:{self.port}"
        self.dashboard_url = f"http://{self.HEAD_IP}:{self.dashboard_port}"
        self.temp_dir = Path(tempfile.mkdtemp(prefix="esj", dir="/tmp"))  # short: Ray's socket paths live here
        # `esam` on PATH for a job's entrypoint: the Python that runs the tests is the one the nodes run
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16), "PATH": path}
        self.nodes, self.ips = [], {}
        self.head = self._start(self.HEAD_IP, ["--head", "--port", str(self.port), "--dashboard-host", self.HEAD_IP,
                                               "--dashboard-port", str(self.dashboard_port),
                                               "--ray-client-server-port", str(free_port())],
                                head_cpus, {**HEALTH_CHECKS, **(head_env or {})})

    def add_worker(self, cpus: int) -> subprocess.Popen:
        return self._start(f"{self.subnet}.{2 + len(self.nodes)}", ["--address", self.address], cpus, {})

    def client_env(self, **changes) -> dict:
        """The environment of a `ray job` client: the token, and `esam` on PATH."""
        return {**inherited_env(), **self.env, **changes}

    def ray_job(self, *args: str, cwd: Path, timeout: float = 120) -> tuple[int, str]:
        done = subprocess.run([str(RAY), "job", *args], cwd=cwd, env=self.client_env(), capture_output=True,
                              text=True, timeout=timeout, check=False)
        return done.returncode, done.stdout + done.stderr

    def submit(self, laptop: Path, submission: str, config: str, *, wait: bool, runtime_env: str) -> tuple[int, str]:
        """The README's submission of `esam search CONFIG`, from the directory that holds the config."""
        for _ in range(3):
            rc, out = self.ray_job("submit", "--address", self.dashboard_url, "--submission-id", submission,
                                   *(() if wait else ("--no-wait",)), "--working-dir", ".", "--runtime-env-json",
                                   runtime_env, "--", "esam", "search", config, cwd=laptop, timeout=600)
            if "No available agent to submit job" not in out:  # the head's job agent registers seconds after it starts
                return rc, out
            time.sleep(10)
        return rc, out

    def job_info(self, submission: str) -> dict:
        """Status, the driver's exit code and the node it ran on, through Ray's job SDK (token from the environment)."""
        code = ("import json, sys; from ray.job_submission import JobSubmissionClient\n"
                "info = JobSubmissionClient(sys.argv[1]).get_job_info(sys.argv[2])\n"
                "print(json.dumps({'status': str(info.status.value), 'exit': info.driver_exit_code,\n"
                "                  'ip': info.driver_info.node_ip_address if info.driver_info else None}))")
        done = subprocess.run([sys.executable, "-c", code, self.dashboard_url, submission], env=self.client_env(),
                              capture_output=True, text=True, timeout=120, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    def _start(self, ip: str, args: list[str], cpus: int, env: dict, timeout: float = 180) -> subprocess.Popen:
        node_dir = self.temp_dir / f"n{len(self.nodes)}"
        node_dir.mkdir()
        # after RayCluster's shared --temp-dir: click takes an option's last value
        return super()._start(ip, [*args, "--temp-dir", str(node_dir),
                                   "--dashboard-agent-listen-port", str(free_port())], cpus, env, timeout)


def trial_results(directory: Path) -> dict[str, list[dict]]:
    """Each ESAM trial's results so far ({trial id: [result, ...]}), as Ray saved them in results_dir."""
    found = {}
    for path in (directory / "search").glob("esam_*/result.json"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if lines:
            found[lines[0]["trial_id"]] = lines
    return found
