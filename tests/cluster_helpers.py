"""A real PostgreSQL for the cluster tests: Debian's server on 127.0.0.1, a throwaway data directory.

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

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

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


def read_stores(root: Path, name: str, optuna_url: str, tracking_uri: str):
    """faults_helpers.Stores of a search whose Optuna study and MLflow runs live behind URLs, not SQLite files."""
    import optuna
    from faults_helpers import Stores
    from mlflow.tracking import MlflowClient

    from esam.search import ray_state

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
