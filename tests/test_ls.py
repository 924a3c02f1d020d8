"""`esam ls` lists a store's searches; a mistyped search or experiment name is one line naming what exists."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from esam.cli import main
from esam.search.records import mlflow_runs
from esam.search.stores import mlflow_store


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A real MLflow SQLite store: 'cifar_esam' (finished, summarized, pareto.png logged) and 'digits_methods'
    (still running: 2 trials ended, one failed, one stopped early; one running)."""
    base = tmp_path_factory.mktemp("ls")
    client = mlflow_store.connect(f"sqlite:///{base / 'mlflow.db'}")
    exp = client.create_experiment("esam", artifact_location=(base / "artifacts").as_uri())

    def parent(name, params):
        run = client.create_run(exp, run_name=name, tags={mlflow_runs.SEARCH_TAG: name, mlflow_runs.KIND_TAG: "search"})
        for key, value in params.items():
            client.log_param(run.info.run_id, key, value)
        return run.info.run_id

    def child(parent_id, name, method, status, kind="trial", tags=None):
        run = client.create_run(exp, run_name=name, tags={mlflow_runs.PARENT_TAG: parent_id, mlflow_runs.SEARCH_TAG: name,
                                                          mlflow_runs.KIND_TAG: kind, **(tags or {})})
        client.log_param(run.info.run_id, "optimizer", method)
        if status != "RUNNING":
            client.set_terminated(run.info.run_id, status)

    done = parent("cifar_esam", {"train.optimizer.name": "esam"})
    for i in range(3):
        child(done, f"#{i} esam", "esam", "FINISHED", tags={"pareto": "true" if i else "false"})
    child(done, "sgd", "sgd", "FINISHED", kind="reference")  # a reference is no trial: not counted
    client.log_metric(done, "front_size", 2.0)
    client.log_metric(done, "hypervolume", 61.23456)
    plot = base / "pareto.png"
    plot.write_bytes(b"\x89PNG not really")
    client.log_artifact(done, str(plot), "pareto")
    client.set_terminated(done, "FINISHED")

    running = parent("digits_methods", {"space.method.choices": "['esam', 'looksam', 'rst']",
                                        "train.optimizer.name": "esam"})
    child(running, "#0 rst", "rst", "FINISHED", tags={mlflow_runs.STOPPED_TAG: "true"})
    child(running, "#1 looksam", "looksam", "FAILED")
    child(running, "#2 esam", "esam", "RUNNING")
    client.log_metric(running, mlflow_runs.HYPERVOLUME_SERIES, 40.0, step=1)
    client.create_experiment("other")  # an experiment without searches
    return base


def _uri(store: Path, tmp_path: Path) -> str:
    shutil.copy(store / "mlflow.db", tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_ls_lists_each_search_newest_first(store, tmp_path, capsys):
    assert main(["ls", "--tracking-uri", _uri(store, tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["search", "methods", "ended", "failed", "stopped", "front", "hypervolume",
                                "started", "state", "pareto.png"]
    assert len(lines) == 3
    running, done = lines[1].split(), lines[2].split()
    # name, methods (what the trials ran), ended, failed, stopped, front, hypervolume, date, time, state, plot
    assert running[:7] == ["digits_methods", "esam,looksam,rst", "2", "1", "1", "-", "40"]
    assert running[9] == "RUNNING" and running[10].endswith("/artifacts/")  # no plot yet: its folder
    assert done[:7] == ["cifar_esam", "esam", "3", "0", "0", "2", "61.23"]
    assert done[9] == "FINISHED" and Path(done[10]).name == "pareto.png" and Path(done[10]).is_file()
    assert lines[0].index("state") == lines[1].index("RUNNING") == lines[2].index("FINISHED")  # aligned


def test_ls_of_an_empty_or_mistyped_experiment(store, tmp_path, capsys):
    uri = _uri(store, tmp_path)
    assert main(["ls", "--tracking-uri", uri, "--experiment", "other"]) == 0
    assert "no search recorded in MLflow experiment 'other'" in capsys.readouterr().out
    assert main(["ls", "--tracking-uri", uri, "--experiment", "esma"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no such experiment" in err and err.endswith("did you mean 'esam'?"), err


def test_ls_creates_no_store(tmp_path, capsys):
    assert main(["ls"]) == 2  # the default ./mlflow.db, absent
    assert "no MLflow store at" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("command", ["export", "pareto"])
def test_an_unknown_search_name_names_the_searches_there(store, tmp_path, capsys, command):
    uri = _uri(store, tmp_path)
    extra = ["--out", str(tmp_path / "x.yaml")] if command == "export" else []
    assert main([command, "cifar_esma", "--tracking-uri", uri, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "(searches: digits_methods, cifar_esam)" in err and err.endswith("did you mean 'cifar_esam'?"), err
    assert main([command, "zzz", "--tracking-uri", uri, *extra]) == 2
    assert "did you mean" not in capsys.readouterr().err  # nothing near it: the list alone
    assert not (tmp_path / "x.yaml").exists()
