"""`esam ui`: a search's MLflow records in the browser, in MLflow's Model training mode.

Finds the search as `esam pareto` does (--tracking-uri, --experiment, a search name or run id, else the
newest), writes its saved view (esam.search.browse.saved_view), and serves the store behind
esam.search.browse.ui_proxy, which opens every page of MLflow's UI in Model training mode: a SQLite file or a
database through a local `mlflow server` on a free loopback port, a tracking server through itself.
With --optuna, optuna-dashboard serves the search's study on the next port, when it is installed.
Runs until Ctrl-C or SIGTERM, then stops what it started.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import webbrowser
from pathlib import Path

from esam.errors import ConfigError, EsamError, first_line
from esam.search.browse.saved_view import DEFAULT_KNOBS, write_view
from esam.search.browse.ui_proxy import start as start_proxy
from esam.search.records import mlflow_runs
from esam.search.stores import mlflow_store
from esam.search.stores.mlflow_store import sqlite_path

START_TIMEOUT = 120  # seconds for `mlflow server` to answer; a busy 2-core machine takes 10 to 30


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _alive(url: str) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=3) as answer:
            return answer.status == 200
    except OSError:
        return False


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def start_mlflow_server(uri: str, log: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow server` over the store on a free loopback port, in its own process group; (process, URL)."""
    port = free_port()
    database = sqlite_path(uri)
    # Beside a SQLite store, as `mlflow ui` run there: artifacts of runs created in the UI land next to it.
    cwd = database.resolve().parent if database is not None else Path.cwd()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION",
                                                                             "false")}  # no GenAI job runner
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"],
            cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    while not _alive(url):
        if process.poll() is not None:
            raise ConfigError(f"mlflow server over {uri} exited ({process.returncode}): {_last_line(log)}")
        if time.monotonic() > deadline:
            stop(process)
            raise ConfigError(f"mlflow server over {uri} did not answer within {START_TIMEOUT} s ({_last_line(log)})")
        time.sleep(0.3)
    return process, url


def stop(process: subprocess.Popen | None) -> None:
    """End a server this command started, with its workers (its process group)."""
    if process is None or process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def optuna_storage(config: dict, uri: str) -> str:
    """The search's Optuna storage: its optuna_storage, else <state_dir or results_dir>/<name>/optuna.db, a
    relative directory taken from here or from beside the SQLite store (where the search most likely ran)."""
    url = config.get("optuna_storage")
    if url:
        if "***" in url:
            raise ConfigError("--optuna: the records keep the study's storage URL without its password; run "
                              f"optuna-dashboard {url} with the password yourself")
        return url
    folder = Path(str(config.get("state_dir") or config.get("results_dir") or "esam_results")).expanduser()
    store = sqlite_path(uri)
    bases = [Path.cwd()] + ([store.resolve().parent] if store is not None else [])
    tried = [(folder if folder.is_absolute() else base / folder) / str(config.get("name")) / "optuna.db"
             for base in bases]
    for path in tried:
        if path.is_file():
            return f"sqlite:///{path.resolve()}"
    raise ConfigError(f"--optuna: no study at {' or '.join(map(str, dict.fromkeys(tried)))}")


def _dashboard(storage: str, host: str, port: int, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen([shutil.which("optuna-dashboard"), storage, "--host", host, "--port", str(port)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _say(text: str) -> None:
    print(text, flush=True)  # a pipe (a test, a log) sees each line as it is said



def _stop_on_sigterm() -> None:
    def handler(signum, frame):
        raise KeyboardInterrupt
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def serve(tracking_uri: str | None, experiment: str, search: str | None, *, host: str = "127.0.0.1", port: int = 5000,
          browser: bool = True, optuna: bool = False) -> int:
    """Serve until Ctrl-C or SIGTERM; 0 then. The URL to open is printed (and opened unless browser=False)."""

    if optuna and not shutil.which("optuna-dashboard"):
        raise ConfigError("--optuna: optuna-dashboard is not installed (pip install optuna-dashboard)")
    uri = mlflow_store.tracking_uri(tracking_uri)
    client = mlflow_store.open_store(uri)
    parent = mlflow_runs.resolve_search(client, experiment, search)
    run = client.get_run(parent)
    name, experiment_id = run.data.tags.get(mlflow_runs.SEARCH_TAG, parent), run.info.experiment_id
    try:
        config = mlflow_runs.search_config_of(client, parent)
    except ConfigError:
        config = {}  # a search stopped before it logged its config: the default objectives and knobs
    objectives = mlflow_runs.objectives_of(config) if config else [("test_acc", "max"), ("speed_vs_sgd", "max")]
    knobs = tuple(k for k in (config.get("space") or {}) if k not in ("optimizer", "method")) or DEFAULT_KNOBS
    storage = optuna_storage(config, uri) if optuna else None
    page = f"/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    try:
        page += f"&viewStateShareKey={write_view(client, experiment_id, parent, name, objectives, knobs)}"
    except Exception as err:  # noqa: BLE001 - a read-only store or account: the runs page without the view
        _say(f"esam ui: the saved view was not written ({first_line(err)}); MLflow's default view instead")

    logs = Path(tempfile.mkdtemp(prefix="esam-ui-"))
    mlflow_server = dashboard = proxy = None
    _stop_on_sigterm()
    try:
        if uri.startswith(("http://", "https://")):
            upstream, served = uri, f"the tracking server {mlflow_store.without_password(uri)}"
        else:
            mlflow_server, upstream = start_mlflow_server(uri, logs / "mlflow.log")
            served = f"mlflow server on {upstream} (pid {mlflow_server.pid}, log {logs / 'mlflow.log'})"
        proxy = start_proxy(host, port, upstream)
        address = f"http://{host if ':' not in host else f'[{host}]'}:{proxy.server_address[1]}"
        _say(f"search {name} (run {parent}) in {mlflow_store.without_password(uri)}, served by {served}")
        _say(f"open:    {address}{page}")
        _say("         (every page opens in MLflow's Model training mode; Views -> "
             f"'esam: {name}' is the search's runs with its objectives and their scatter chart)")
        if storage:
            dash_port = proxy.server_address[1] + 1
            dashboard = _dashboard(storage, host, dash_port, logs / "optuna.log")
            _say(f"optuna:  http://{host}:{dash_port} (optuna-dashboard {mlflow_store.without_password(storage)})")
        _say("Ctrl-C stops it.")
        if browser:
            webbrowser.open(address + page)
        while True:
            if mlflow_server is not None and mlflow_server.poll() is not None:
                raise EsamError(f"mlflow server exited ({mlflow_server.returncode}): {_last_line(logs / 'mlflow.log')}")
            time.sleep(1)
    except KeyboardInterrupt:
        _say("esam ui: stopped")
        return 0
    finally:
        if proxy is not None:
            proxy.shutdown()
            proxy.server_close()
        stop(dashboard)
        stop(mlflow_server)
