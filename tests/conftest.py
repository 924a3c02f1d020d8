"""Shared fixtures: every test works in its own directory so stores never leak between tests."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    torch.set_num_threads(1)  # two test processes on two cores, deterministic kernels
    yield


def pytest_configure(config):
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class MlflowServer:
    """A real `mlflow server` over HTTP with a SQLite store; stop() and start() keep port and store."""

    def __init__(self, root: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.root, self.url, self.proc = root, f"http://127.0.0.1:{self.port}", None

    def start(self, timeout: float = 90) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
             "--artifacts-destination", str(self.root / "art"), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(self.url + "/health", timeout=2).read() == b"OK":
                    return
            except OSError:
                time.sleep(0.3)
        self.stop()
        pytest.fail(f"mlflow server did not start within {timeout:.0f} s")

    def stop(self) -> None:
        """Terminate the server and its workers (its own process group); kill them if they linger."""
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 30)):  # uvicorn may wait on open connections
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self.proc = None


@pytest.fixture
def mlflow_service(tmp_path):
    server = MlflowServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mlflow_server(mlflow_service):
    """The URL of a running MLflow server."""
    return mlflow_service.url
