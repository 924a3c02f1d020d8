"""Shared fixtures: every test works in its own directory so stores never leak between tests."""
from __future__ import annotations

import os

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
