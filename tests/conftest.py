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
import torch.nn.functional as F
import yaml
from torch import nn


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    torch.set_num_threads(1)  # two test processes on two cores, deterministic kernels
    yield


def pytest_configure(config):
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


# --- a small search: the quickstart, shrunk -----------------------------------------------------------------------

def small_search(directory: Path, name: str, *, trials: int = 2, concurrency: int = 1, references=("sgd",),
                 epochs: int = 1, train_limit: int = 256, test_limit: int = 128, seed: int = 0, sampler: str = "random",
                 **top) -> Path:
    """The quickstart config made small (random sampler unless named, 1 probe pair), written to directory/<name>.yaml."""
    from esam.cli import default_search_config
    config = yaml.safe_load(default_search_config().read_text())
    config.update(name=name, trials=trials, concurrency=concurrency, references=list(references),
                  sampler={"name": sampler, "seed": seed}, **top)
    config["train"].update(epochs=epochs, probe_steps=1)
    config["train"]["data"].update(train_limit=train_limit, test_limit=test_limit)
    path = Path(directory) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def search_in(directory: Path, path: Path) -> str:
    """`esam search path` run in `directory` (its default ./mlflow.db lands there); returns what it printed."""
    import contextlib
    import io

    from esam.cli import main
    here, out = os.getcwd(), io.StringIO()
    # Module fixtures run before the per-test isolation: a store an earlier search named (mlflow sets
    # $MLFLOW_TRACKING_URI) must not catch this one's runs.
    named = os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(directory)
    try:
        with contextlib.redirect_stdout(out):
            assert main(["search", str(path)]) == 0
    finally:
        os.chdir(here)
        if named is not None:
            os.environ["MLFLOW_TRACKING_URI"] = named
    return out.getvalue()


# --- tiny optimizer problems (test_optim.py, test_graphs.py) ------------------------------------------------------

def one_torch_thread():
    """For a module's autouse fixture: tiny kernels on one thread avoid OpenMP spin-waits on a busy
    2-core machine (20x faster here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


def make_batches(n: int, batch: int = 16, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 8, 8, generator=g), torch.randint(0, 4, (batch,), generator=g)) for _ in range(n)]


def closure_for(model: nn.Module, x: torch.Tensor, y: torch.Tensor, record: list | None = None):
    """Per-sample cross-entropy; `record` gets (indices, losses, grad enabled, requires_grad mask) per call."""
    def closure(indices=None):
        xb, yb = (x, y) if indices is None else (x[indices], y[indices])
        losses = F.cross_entropy(model(xb), yb, reduction="none")
        if record is not None:
            record.append((indices, losses.detach().clone(), torch.is_grad_enabled(),
                           [p.requires_grad for p in model.parameters()],
                           [p.detach().clone() for p in model.parameters()]))
        return losses
    return closure


def sgd(model: nn.Module, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 5e-4) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


class MlflowServer:
    """A real `mlflow server` over HTTP, artifacts served through it; stop() and start() keep port and store.

    `store`: a SQLite file (a search's mlflow.db, or a new root/server.db) or a database URL (postgresql://...).
    """

    def __init__(self, root: Path, store: Path | str | None = None):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.root, self.url, self.proc = root, f"http://127.0.0.1:{self.port}", None
        self.store = store or root / "server.db"  # an existing store (a search's mlflow.db) or a new one

    def start(self, timeout: float = 90) -> None:
        backend = self.store if "://" in str(self.store) else f"sqlite:///{self.store}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend, "--serve-artifacts",
             "--artifacts-destination", str(self.root / "art"), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"],  # one worker and no job runner: the server's default pool swamps 2 cores
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
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


# --- a headless Chromium driven by selenium (test_browser.py) -----------------------------------------------------

CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--window-size=1600,1000")


@pytest.fixture(scope="module")
def chrome(tmp_path_factory):
    """Debian's chromium + chromedriver through selenium; skipped where either is missing (CI installs them)."""
    import shutil
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("the browser test needs Debian's chromium and chromium-driver "
                    "(apt-get install -y chromium chromium-driver; .ci/run installs them)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("the browser test needs selenium (pip install -e '.[test]')")
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never try to download a driver or a browser
    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS + (f"--user-data-dir={profile}",):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=driver, log_output=str(profile.parent / "chromedriver.log"))
    session = webdriver.Chrome(options=options, service=service)
    session.set_page_load_timeout(60)
    try:
        yield session
    finally:
        session.quit()
