"""Your own model and data: import paths in the config, the project shipped to Ray's workers, the Python API.

The fast tests write a small package of their own into the test's directory (the working directory,
where import paths are resolved) and check the one-line refusals, the dataset-pair contract and what
is shipped. The slow ones run examples/own_model from a copy in a temporary directory (its only
copy on any path: PYTHONPATH does not name it), export a setting and train it with `esam train` and
in the example's own loop; and run a search through `esam.search.run` with callables.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from esam.cli import main
from esam.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "own_model"

PACKAGE = {
    "__init__.py": "",
    "nets.py": ("from torch import nn\n"
                "SIZE = 3\n"
                "def build(num_classes, in_channels):\n"
                "    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, num_classes))\n"
                "def as_list(num_classes, in_channels):\n"
                "    return [nn.Linear(in_channels, num_classes)]\n"
                "def raises(num_classes, in_channels):\n"
                "    raise ValueError(f'no net for {num_classes} classes')\n"),
    "broken.py": "raise RuntimeError('boom')\n",
    "data.py": ("import torch\n"
                "from torch.utils.data import Dataset, TensorDataset\n"
                "def as_dict(cfg):\n"
                "    return {'train': None}\n"
                "def pair(cfg):\n"
                "    g = torch.Generator().manual_seed(0)\n"
                "    make = lambda n: TensorDataset(torch.randn(n, 5, generator=g), torch.arange(n) % 4)\n"
                "    return make(40), make(12)\n"
                "class Items(Dataset):\n"
                "    num_classes = 7\n"
                "    def __init__(self, n): self.n = n\n"
                "    def __len__(self): return self.n\n"
                "    def __getitem__(self, i): return [float(i), 2.0 * i], i % 3\n"
                "def items(cfg):\n"
                "    return Items(16), Items(4)\n"
                "def negative(cfg):\n"
                "    return TensorDataset(torch.zeros(4, 2), torch.tensor([0, 1, -1, 0])), TensorDataset(torch.zeros(2, 2), torch.tensor([0, 1]))\n"),
}


@pytest.fixture
def mine(tmp_path, monkeypatch):
    """The package `mine` in the working directory; imported fresh by each test, forgotten after it."""
    (tmp_path / "mine").mkdir()
    for name, text in PACKAGE.items():
        (tmp_path / "mine" / name).write_text(text)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the working directory esam adds goes with the test
    yield tmp_path
    for name in [m for m in sys.modules if m == "mine" or m.startswith("mine.")]:
        del sys.modules[name]


def _search_config(directory: Path, **train) -> Path:
    config = {"name": "mine", "trials": 1, "references": [], "train": {"epochs": 1, "probe_steps": 1, **train}}
    path = directory / "mine.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("train, message", [
    ({"model": "nowhere.nets:build"},
     "train.model 'nowhere.nets:build': no module named 'nowhere' (run from the directory that holds nowhere, or install it)"),
    ({"model": "mine.nets:missing"}, "train.model 'mine.nets:missing': mine.nets has no attribute 'missing'"),
    ({"model": "mine.nets:SIZE"}, "train.model 'mine.nets:SIZE': SIZE is a int, not a callable"),
    ({"model": "mine.nets:as_list"}, "train.model 'mine.nets:as_list' returned list, not a torch.nn.Module"),
    ({"model": "mine.nets:raises"}, "train.model 'mine.nets:raises' failed: ValueError: no net for 10 classes"),
    ({"data": {"name": "mine.data:as_dict"}},
     "train.data.name 'mine.data:as_dict' returned dict, not InMemory, Streamed or a (train, test) pair of torch Datasets"),
    ({"data": {"name": "mine.data:negative"}},
     "train.data.name 'mine.data:negative': labels must be 0, 1, ..., num_classes - 1, found -1"),
    ({"model": "mine.broken:build"}, "train.model 'mine.broken:build': importing mine.broken failed: RuntimeError: boom"),
    ({"data": {"name": "mine.data:pair"}},  # feature vectors, and channels_last left on: NHWC on CUDA would fail
     "train.channels_last is true, but train.data.name 'mine.data:pair' gives inputs of shape [5], not images: "
     "set train.channels_last: false"),
])
def test_a_bad_import_path_or_builder_is_one_line_before_anything_starts(mine, capsys, train, message):
    code = main(["search", str(_search_config(mine, **train))])
    err = capsys.readouterr().err
    assert code == 2 and err == f"esam: error: {message}\n", err
    # refused before the search made anything: no results directory, no MLflow store
    assert not (mine / "esam_results").exists() and not (mine / "mlflow.db").exists()


def test_esam_train_names_a_bad_import_path_in_one_line(mine, capsys):
    code = main(["train", "--set", "model=mine.nets:nothing", "--set", "epochs=1"])
    err = capsys.readouterr().err
    assert code == 2 and err == "esam: error: model 'mine.nets:nothing': mine.nets has no attribute 'nothing'\n", err


def test_a_dataset_pair_is_used_as_given(mine):
    from esam.config import DataConfig
    from esam.data import build_data
    data = build_data(DataConfig(name="mine.data:pair"), "cpu", seed=0, batch_size=8, eval_batch_size=100)
    assert (data.num_classes, data.in_channels, data.image_size, data.train_size, data.test_size) == (4, 5, (), 40, 12)
    x, y = next(iter(data.test.epoch(0)))
    g = torch.Generator().manual_seed(0)
    given = torch.randn(40, 5, generator=g), torch.randn(12, 5, generator=g)
    assert torch.equal(x, given[1]) and torch.equal(y, torch.arange(12) % 4)  # no normalization
    batches = list(data.train.epoch(0))
    assert len(batches) == 5 and sorted(torch.cat([b[1] for b in batches]).tolist()) == sorted((torch.arange(40) % 4).tolist())
    # a Dataset read item by item, its num_classes attribute taken over the largest label
    items = build_data(DataConfig(name="mine.data:items"), "cpu", seed=0, batch_size=4, eval_batch_size=4)
    assert (items.num_classes, items.in_channels) == (7, 2)
    assert next(iter(items.test.epoch(0)))[0].tolist() == [[0.0, 0.0], [1.0, 2.0], [2.0, 4.0], [3.0, 6.0]]


def test_a_registered_name_wins_and_paths_pass_validation_without_importing(mine):
    from esam.config import load_train_config
    from esam.models import MODELS, build_model
    config = load_train_config(None, ["model=not_imported.nets:build", "data.name=not_imported.data:load"])
    assert config.model == "not_imported.nets:build" and "not_imported" not in sys.modules
    with pytest.raises(ConfigError, match="unknown model 'vgg' .*or an import path such as my_project.nets:build"):
        load_train_config(None, ["model=vgg"])
    model = build_model("mine.nets:build", num_classes=3, in_channels=1)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    assert "mine.nets:build" not in MODELS  # an import path is imported where it is used, never registered


def test_only_code_that_lives_in_the_project_is_shipped(mine):
    from esam.search.config import search_config_from_dict
    from esam.search.trials.shipping import runtime_env
    from esam.search.trials.user_code import check_user_code, users_modules
    cfg = search_config_from_dict({"name": "mine", "results_dir": "out/results", "train": {
        "model": "mine.nets:build", "data": {"name": "digits", "root": str(mine / "datasets")}}})
    check_user_code(cfg, local=True)  # imports mine.nets and builds it on digits once
    env = runtime_env(cfg, users_modules(cfg.train))
    assert env["working_dir"] == str(mine.resolve())
    assert {"/out/results", "/datasets", "/mlflow.db", ".git/", "/.venv/"} <= set(env["excludes"]), env["excludes"]
    assert runtime_env(cfg, ["yaml"]) is None  # an installed package: the nodes install it too
    assert runtime_env(cfg, users_modules(search_config_from_dict({}).train)) is None  # esam's own names only


def _copy_example(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    return project


def _env() -> dict:
    """The environment of a user's shell: no PYTHONPATH that could name the example."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}


def _esam(project: Path, *args: str, timeout: float = 400) -> str:
    done = subprocess.run([sys.executable, "-m", "esam.cli", *args], cwd=project, env=_env(), capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_the_example_searches_exports_and_trains_from_its_own_folder(tmp_path):
    """examples/own_model, run from a copy no path names: the trials import it from the shipped folder."""
    project = _copy_example(tmp_path)
    assert not any(str(project) in p for p in sys.path)
    out = _esam(project, "search", "search.yaml")
    assert f"shipping {project} to every Ray worker" in out, out
    assert "search own_model: 2 ESAM trials ended: 2 finished" in out, out
    _esam(project, "export", "own_model", "--pick", "max-accuracy", "--out", "best.yaml")
    exported = yaml.safe_load((project / "best.yaml").read_text())
    assert (exported["model"], exported["data"]["name"]) == ("tiny_mlp.nets:build", "tiny_mlp.data:load")
    trained = _esam(project, "train", "best.yaml")  # the import paths resolve from the user's folder
    accuracy = exported["exported"]["metrics"]["test_acc"]
    assert f"done: test acc {accuracy:.2f}%" in trained, trained  # the same run as the search's trial, bit for bit
    loop = subprocess.run([sys.executable, "own_loop.py", "best.yaml"], cwd=project, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert loop.returncode == 0 and loop.stdout.startswith("test accuracy "), loop.stderr[-2000:]
    assert float(loop.stdout.split()[2].rstrip("%")) > 50  # 3 classes: the loop learned something


@pytest.mark.slow
def test_the_python_api_takes_callables(tmp_path):
    """`esam.search.run` with a model and a dataset given as nested functions: shipped by value to the trials."""
    from torch import nn
    from torch.utils.data import TensorDataset

    from esam.search import SearchResult, run
    from esam.search.front.report import TABLE_COLUMNS

    def build(num_classes, in_channels):
        return nn.Sequential(nn.Linear(in_channels, 16), nn.ReLU(), nn.Linear(16, num_classes))

    def load(cfg):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(256, 6, generator=g)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()  # three classes a linear model can almost learn
        return TensorDataset(x[:192], y[:192]), TensorDataset(x[192:], y[192:])

    lines = []
    result = run({"name": "api", "trials": 2, "concurrency": 2, "references": ["sgd"], "train": {
        "epochs": 1, "batch_size": 32, "probe_steps": 1, "channels_last": False}},
        model=build, data=load, overrides=["sampler.name=random"], echo=lines.append)
    assert isinstance(result, SearchResult) and result.config.train.model.endswith(":test_the_python_api_takes_callables.build")
    assert result.front and all(set(r) == {*TABLE_COLUMNS, "name"} for r in result.front), result.front
    assert {r["kind"] for r in result.rows} == {"trial", "reference"} and all(r["status"] == "FINISHED" for r in result.rows)
    assert not any("shipping" in line for line in lines), lines  # nothing of the working directory is needed
    from mlflow.tracking import MlflowClient
    parent = MlflowClient(result.tracking_uri).get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["esam.search"] == "api"
