"""Hostile or broken inputs end in one short line and exit 2, and change nothing on disk.

Faults from bad input: a checkpoint that runs code on load, YAML alias bombs and oversized configs, values
that slipped past validation (nan/inf, negative seeds, quotes in names), and export/pareto
creating an empty MLflow store from a mistyped URI.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from esam.cli import default_search_config, main
from esam.config import MAX_CONFIG_BYTES, MAX_YAML_NODES, load_train_config, parse_overrides, to_dict
from esam.errors import ConfigError, DataError
from esam.search.config import load_search_config
from esam.search.front.pareto import pick
from esam.training.checkpoint import load_checkpoint
from esam.training.trainer import train

QUICK = ["--set", "model=small_cnn", "--set", "epochs=2", "--set", "batch_size=64", "--set", "probe_steps=0",
         "--set", "timing_warmup_steps=1", "--set", "data.train_limit=128", "--set", "data.test_limit=64"]
QUICKSTART = yaml.safe_load(default_search_config().read_text())


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


def assert_one_line(code: int, err: str, *fragments: str, limit: int = 400) -> None:
    """Exit 2 and one bounded stderr line (the longest honest ones list a config's valid keys)."""
    assert code == 2, err
    assert err.startswith("esam: error: ") and len(err.splitlines()) == 1, err[:limit + 100]
    assert len(err) < limit, err[:limit + 100]
    for fragment in fragments:
        assert fragment in err, err


# --- 1. checkpoints never run code -------------------------------------------------------------------

class _RunsCode:
    """Unpickling this calls os.system: a crafted checkpoint on shared storage."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _malicious_checkpoint(directory: Path, marker: Path, kind: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "checkpoint.pt"
    state = {"model": _RunsCode(marker), "optimizer": {}, "scheduler": {}, "rng_cpu": None, "epoch": 0}
    if kind == "zip":
        torch.save(state, path)  # torch's zip format, as a real checkpoint
    else:
        with path.open("wb") as f:
            pickle.dump(state, f)  # a bare pickle, torch's legacy format
    return path


@pytest.mark.parametrize("kind", ["zip", "pickle"])
def test_malicious_checkpoint_is_refused_by_train_resume(tmp_path, capsys, kind):
    marker = tmp_path / "pwned"
    _malicious_checkpoint(tmp_path / "ck", marker, kind)
    code, err = run_cli(capsys, "train", *QUICK, "--checkpoint-dir", tmp_path / "ck", "--resume")
    assert_one_line(code, err, "checkpoint.pt", "refused")
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["zip", "pickle"])
def test_malicious_checkpoint_is_refused_by_the_train_function(tmp_path, kind):
    # A search worker resuming a trial calls train(resume_from=...) directly.
    marker = tmp_path / "pwned"
    _malicious_checkpoint(tmp_path / "ck", marker, kind)
    config = load_train_config(None, QUICK[1::2])
    with pytest.raises(DataError, match="refused"):
        train(config, checkpoint_dir=tmp_path / "ck", resume_from=tmp_path / "ck")
    assert not marker.exists()


@pytest.mark.slow
def test_malicious_checkpoint_in_a_fresh_process_prints_one_line(tmp_path):
    # The real command, with torch's own warnings on stderr: still one line, no marker.
    marker = tmp_path / "pwned"
    _malicious_checkpoint(tmp_path / "ck", marker, "pickle")
    done = subprocess.run([sys.executable, "-m", "esam.cli", "train", *QUICK, "--checkpoint-dir", str(tmp_path / "ck"),
                           "--resume"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().startswith("esam: error: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not marker.exists()


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory) -> Path:
    """One epoch of a quick ESAM run (with an SWP pool), checkpointed."""
    directory = tmp_path_factory.mktemp("ck")
    config = load_train_config(None, [*QUICK[1::2], "epochs=1", "optimizer.swp_patterns=4"])
    train(config, checkpoint_dir=directory)
    return directory / "checkpoint.pt"


def test_a_real_checkpoint_holds_only_plain_types(real_checkpoint):
    state = torch.load(real_checkpoint, map_location="cpu", weights_only=True)
    assert state["epoch"] == 0 and state["rng_cpu"].dtype == torch.uint8
    assert state["optimizer"]["generator"].dtype == torch.uint8  # ESAM's SWP generator state
    assert load_checkpoint(real_checkpoint)["epoch"] == 0


@pytest.mark.parametrize("name", ["sgd", "sam"])
def test_sgd_and_sam_checkpoints_resume_under_weights_only(tmp_path, name):
    config = load_train_config(None, [*QUICK[1::2], f"optimizer.name={name}"])

    class Stop(Exception):
        pass

    def stop(metrics, saved):
        raise Stop
    with pytest.raises(Stop):
        train(config, stop, checkpoint_dir=tmp_path)
    epochs = []
    train(config, lambda m, c: epochs.append(m["epoch"]), checkpoint_dir=tmp_path, resume_from=tmp_path)
    assert epochs == [2]


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "not_a_dict"])
def test_cut_or_corrupt_checkpoint_is_one_line(tmp_path, capsys, real_checkpoint, damage):
    ck = tmp_path / "ck"
    ck.mkdir()
    data = real_checkpoint.read_bytes()
    payload = {"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"not a checkpoint " * 40}.get(damage)
    if payload is None:
        torch.save([1, 2, 3], ck / "checkpoint.pt")
    else:
        (ck / "checkpoint.pt").write_bytes(payload)
    code, err = run_cli(capsys, "train", *QUICK, "--checkpoint-dir", ck, "--resume")
    assert_one_line(code, err, str(ck / "checkpoint.pt"))


def test_checkpoint_of_another_model_is_one_line(tmp_path, capsys, real_checkpoint):
    shutil.copy(real_checkpoint, tmp_path / "checkpoint.pt")
    code, err = run_cli(capsys, "train", *QUICK, "--set", "model=resnet18", "--checkpoint-dir", tmp_path, "--resume")
    assert_one_line(code, err, "does not fit this config")


# --- 3. unbounded inputs -------------------------------------------------------------------------------

def _alias_bomb(levels: int, flow: bool = False) -> str:
    """The billion-laughs document: each level lists the previous one nine times."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]")
    return "{" + ", ".join(lines) + "}" if flow else "\n".join(lines) + "\n"


@pytest.mark.parametrize("command", ["train", "search"])
@pytest.mark.parametrize("levels", [6, 9])
def test_yaml_alias_bomb_is_refused_in_under_a_second(tmp_path, capsys, command, levels):
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(levels))
    assert len(path.read_bytes()) < 1000
    import esam.search.runner  # noqa: F401 - the command's own imports (Ray, Optuna) are not what is timed
    start = time.perf_counter()
    code, err = run_cli(capsys, command, path)
    assert time.perf_counter() - start < 1.0
    assert_one_line(code, err, "bomb.yaml", f"more than {MAX_YAML_NODES}", limit=300)
    assert not Path("esam_results").exists()


def test_alias_bomb_in_a_set_value_is_refused(capsys):
    start = time.perf_counter()
    code, err = run_cli(capsys, "train", "--set", f"data={_alias_bomb(9, flow=True)}")
    assert time.perf_counter() - start < 1.0
    assert_one_line(code, err, "--set data", "aliases expand", limit=300)


def test_recursive_alias_is_refused(tmp_path, capsys):
    path = tmp_path / "loop.yaml"
    path.write_text("space: &s {rho: *s}\n")
    code, err = run_cli(capsys, "search", path)
    assert_one_line(code, err, "recursive")


def test_modest_anchors_still_work(tmp_path):
    path = tmp_path / "shared.yaml"
    path.write_text("optimizer: {rho: &r 0.07, lr: *r}\n")
    cfg = load_train_config(path)
    assert cfg.optimizer.rho == cfg.optimizer.lr == 0.07


def test_oversized_config_is_refused_quickly(tmp_path, capsys):
    path = tmp_path / "big.yaml"
    path.write_text("epochs: 2\n" + "# padding\n" * (2 * MAX_CONFIG_BYTES // 10))
    assert path.stat().st_size > 2_000_000
    import esam.search.runner  # noqa: F401 - the command's own imports (Ray, Optuna) are not what is timed
    start = time.perf_counter()
    code, err = run_cli(capsys, "search", path)
    assert time.perf_counter() - start < 1.0
    assert_one_line(code, err, "big.yaml", "larger than")


def test_deep_nesting_is_one_line(tmp_path, capsys):
    path = tmp_path / "deep.yaml"
    path.write_text("data: " + "[" * 200_000 + "]" * 200_000 + "\n")
    code, err = run_cli(capsys, "train", path)
    assert_one_line(code, err, "deep.yaml")


@pytest.mark.parametrize("text, fragment", [
    ("model: " + "x" * 500_000 + "\n", "model: unknown model 'xxx"),
    ("? " + "y" * 500_000 + "\n: 1\n", "unknown key yyy"),  # an explicit key: implicit ones stop at 1024
    ("optimizer: {lr: " + "9" * 4000 + "}\n", "optimizer.lr must be a finite number"),
    ("epochs: " + "9" * 5000 + "\n", "not a valid config value"),
    ("data: {synthetic_shape: [" + ", ".join(["1"] * 9000) + "]}\n", "data.synthetic_shape must be a list of 3"),
    ("\"a\\nb\": 1\n", "unknown key a\\nb"),
])
def test_huge_values_give_short_messages(tmp_path, capsys, text, fragment):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    code, err = run_cli(capsys, "train", path)
    assert_one_line(code, err, fragment)


# --- 9. values that slipped through -------------------------------------------------------------------

@pytest.mark.parametrize("field", ["optimizer.lr", "optimizer.momentum", "optimizer.weight_decay", "warmup_epochs",
                                   "optimizer.rho", "label_smoothing", "optimizer.max_grad_norm"])
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_non_finite_training_values_are_refused(capsys, field, value):
    code, err = run_cli(capsys, "train", "--set", f"{field}={value}")
    assert_one_line(code, err, f"{field} must be a finite number")


def _search_file(tmp_path, **changes) -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({**QUICKSTART, **changes}))
    return path


@pytest.mark.parametrize("changes, fragment", [
    ({"space": {"rho": {"low": 0.01, "high": float("inf")}}}, "space.rho.high must be a finite number"),
    ({"space": {"beta": {"low": float("nan"), "high": 1.0}}}, "space.beta.low must be a finite number"),
    ({"resources": {"cpu": float("inf"), "gpu": 0}}, "resources.cpu must be a finite number"),
    ({"resources": {"cpu": 1, "gpu": float("nan")}}, "resources.gpu must be a finite number"),
    ({"sampler": {"name": "nsga2", "seed": -1}}, "sampler.seed must be in [0, 4294967295], got -1"),
    ({"sampler": {"name": "nsga2", "seed": 2**40}}, "sampler.seed must be in"),
    ({"objectives": [1, 2]}, "objectives[0] must be a mapping {metric: ..., mode: max|min}, got 1"),
    ({"objectives": [{"metric": "test_acc", "mode": "max"}, "speed_vs_sgd"]}, "objectives[1] must be a mapping"),
    ({"train": {"optimizer": {"lr": float("nan")}}}, "train: optimizer.lr must be a finite number"),
    ({"train": {"seed": -3}}, "train: seed must be in"),
    ({"name": "it's"}, "name must be letters"),
    ({"name": "n" * 300}, "name must be at most 100 characters (it names files), got 300"),
    ({"retry_failed": -1}, "retry_failed must be an integer >= 0, got -1"),
    ({"mlflow": {"tracking_uri": "ftp://example.org/db", "experiment": "esam"}}, "'ftp://example.org/db' (mlflow.tracking_uri) is not supported"),
    ({"mlflow": {"tracking_uri": "file:///proc/self/mlruns", "experiment": "esam"}}, "is not supported; use sqlite:///PATH"),
    ({"mlflow": {"tracking_uri": "mlruns", "experiment": "esam"}}, "is not supported"),
])
def test_bad_search_values_fail_before_anything_starts(tmp_path, capsys, changes, fragment):
    code, err = run_cli(capsys, "search", _search_file(tmp_path, **changes))
    assert_one_line(code, err, fragment)
    assert not Path("esam_results").exists() and not Path("mlflow.db").exists()


def test_tracking_uri_from_the_environment_is_checked(capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "ftp://example.org/x")
    code, err = run_cli(capsys, "pareto")
    assert_one_line(code, err, "(from $MLFLOW_TRACKING_URI) is not supported")


def test_non_utf8_config_names_the_file(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    for command in ("train", "search"):
        code, err = run_cli(capsys, command, path)
        assert_one_line(code, err, "latin1.yaml: not UTF-8")


def test_pick_rejects_non_finite_and_negative_margins():
    points = [{"acc": 90.0, "speed": 1.0}, {"acc": 95.0, "speed": 0.5}]
    objectives = [("acc", "max"), ("speed", "max")]
    for rule in ("fastest-within=nan", "fastest-within=inf", "fastest-within=-1", "fastest-within="):
        with pytest.raises(ValueError, match="margin must be"):
            pick(points, objectives, rule)
    with pytest.raises(ValueError, match="margin must be"):  # named even with nothing to pick from
        pick([], objectives, "fastest-within=nan")


@pytest.mark.parametrize("rule", ["fastest-within=nan", "fastest-within=-0.5", "fastest-within=lots", "fastest"])
def test_export_refuses_a_bad_pick_before_connecting(capsys, rule):
    code, err = run_cli(capsys, "export", "--pick", rule, "--out", "x.yaml")
    assert_one_line(code, err, "pick")
    assert not Path("mlflow.db").exists() and not Path("x.yaml").exists()


def test_export_out_must_be_a_writable_file(tmp_path, capsys):
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("")
    for out, fragment in ((tmp_path / "adir", "is a directory"), (f"{tmp_path}/new/", "is a directory"),
                          (tmp_path / "afile" / "x.yaml", "is not a directory")):
        code, err = run_cli(capsys, "export", "--out", out)
        assert_one_line(code, err, "--out", fragment)
    assert not Path("mlflow.db").exists()


@pytest.mark.parametrize("uri", ["ftp://example.org/db", "file:///proc/self/mlruns", "mlruns", "/tmp/mlruns",
                                 "sqlite://", "http://"])
@pytest.mark.parametrize("command", ["export", "pareto"])
def test_unsupported_tracking_uris_are_one_line(capsys, uri, command):
    extra = ["--out", "x.yaml"] if command == "export" else []
    code, err = run_cli(capsys, command, "--tracking-uri", uri, *extra)
    assert_one_line(code, err, "is not supported; use sqlite:///PATH, http(s)://")


@pytest.mark.parametrize("command", ["export", "pareto"])
def test_missing_store_is_not_created(tmp_path, capsys, command):
    extra = ["--out", "x.yaml"] if command == "export" else []
    for uri, path in ((f"sqlite:///{tmp_path}/typo/deeper/mlflow.db", tmp_path / "typo"),
                      ("sqlite:///mlflow.db", Path("mlflow.db"))):
        code, err = run_cli(capsys, command, "--tracking-uri", uri, *extra)
        assert_one_line(code, err, "no MLflow store at")
        assert not path.exists()  # neither the file nor its parent directories
    code, err = run_cli(capsys, command, *extra)  # the default store, absent
    assert_one_line(code, err, "no MLflow store at")
    assert not Path("mlflow.db").exists()


# --- a small recorded search, for export and pareto against real (and damaged) stores ------------------

@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """An MLflow SQLite store holding one search 'demo' with three finished trials."""
    from esam.search.records import mlflow_runs
    from esam.search.stores import mlflow_store
    base = tmp_path_factory.mktemp("store")
    client = mlflow_store.connect(f"sqlite:///{base / 'mlflow.db'}")
    exp = client.create_experiment("esam", artifact_location=(base / "artifacts").as_uri())
    cfg = dataclasses.replace(load_search_config(default_search_config()), name="demo")
    parent = client.create_run(exp, run_name="demo", tags={mlflow_runs.SEARCH_TAG: "demo", mlflow_runs.KIND_TAG: "search"})
    client.log_dict(parent.info.run_id, to_dict(cfg), "search_config.json")
    for i, (acc, speed) in enumerate([(90.0, 0.9), (92.0, 0.7), (85.0, 0.6)]):
        run = client.create_run(exp, run_name=f"t{i}", tags={mlflow_runs.PARENT_TAG: parent.info.run_id,
                                                              mlflow_runs.SEARCH_TAG: "demo", mlflow_runs.KIND_TAG: "trial"})
        # rho as a sampler draws it, with more digits than any measurement could tell apart
        drawn = {"rho": 0.05 + i / 100 + 1.2345678e-5, "beta": 0.6, "gamma": 0.5, "score": "loss_rise"}
        for key, value in drawn.items():
            client.log_param(run.info.run_id, key, json.dumps(value) if key != "score" else value)
        for key, value in {"test_acc": acc, "speed_vs_sgd": speed, "images_per_s": 1000 * speed}.items():
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id, "FINISHED")
    client.set_terminated(parent.info.run_id, "FINISHED")
    return base / "mlflow.db"


def _copy_store(recorded: Path, tmp_path: Path) -> str:
    shutil.copy(recorded, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_export_reads_an_existing_store(tmp_path, capsys, recorded):
    uri = _copy_store(recorded, tmp_path)
    code = main(["export", "demo", "--tracking-uri", uri, "--pick", "max-accuracy", "--out", str(tmp_path / "o" / "x.yaml")])
    assert code == 0, capsys.readouterr().err
    exported = yaml.safe_load((tmp_path / "o" / "x.yaml").read_text())
    assert exported["exported"]["metrics"]["test_acc"] == 92.0
    # ESAM's own knobs and the base SGD's, nothing of LookSAM, RST, AE-SAM (nor their sharpness step)
    assert set(exported["optimizer"]) == {"name", "lr", "momentum", "weight_decay", "nesterov", "max_grad_norm", "rho",
                                          "adaptive", "bn_update", "beta", "gamma", "score", "swp_patterns"}
    assert exported["optimizer"]["rho"] == 0.06001  # 0.0600123457 to 4 significant digits
    config = load_train_config(tmp_path / "o" / "x.yaml")  # what `esam train` reads
    assert (config.optimizer.name, config.optimizer.rho, config.optimizer.beta) == ("esam", 0.06001, 0.6)
    from esam.optim import ESAM
    model = torch.nn.Linear(2, 2)
    opt = ESAM.from_config(model.parameters(), torch.optim.SGD(model.parameters(), lr=0.1), tmp_path / "o" / "x.yaml")
    assert (opt.defaults["rho"], opt.beta, opt.gamma) == (0.06001, 0.6, 0.5)


@pytest.mark.parametrize("name", ["it's", "a' or '1'='1", "x\ny"])
@pytest.mark.parametrize("command", ["export", "pareto"])
def test_search_name_with_a_quote_is_one_line(tmp_path, capsys, recorded, command, name):
    uri = _copy_store(recorded, tmp_path)
    extra = ["--out", str(tmp_path / "x.yaml")] if command == "export" else []
    code, err = run_cli(capsys, command, name, "--tracking-uri", uri, *extra)
    assert_one_line(code, err, "no search named")
    assert not (tmp_path / "x.yaml").exists()


def test_export_whose_file_cannot_be_written_is_one_line(tmp_path, capsys, recorded):
    uri = _copy_store(recorded, tmp_path)
    out = tmp_path / "ro" / "x.yaml"
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    try:
        if os.access(tmp_path / "ro", os.W_OK):  # root writes anyway: /proc refuses new files even to root
            out = Path("/proc/esam_export_test.yaml")
        code, err = run_cli(capsys, "export", "demo", "--tracking-uri", uri, "--out", out)
    finally:
        (tmp_path / "ro").chmod(0o700)
    assert_one_line(code, err, "--out", "writ")
    assert not out.exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "foreign"])
@pytest.mark.parametrize("command", ["export", "pareto"])
def test_cut_or_corrupt_store_is_one_line(tmp_path, capsys, recorded, command, damage):
    db = tmp_path / "mlflow.db"
    data = recorded.read_bytes()
    if damage == "foreign":  # an intact SQLite file that is no MLflow store
        import sqlite3
        with sqlite3.connect(db) as con:
            con.execute("create table t (x)")
        con.close()
    else:
        db.write_bytes({"truncated": data[: len(data) // 3], "garbage": b"\0junk" * 500, "empty": b""}[damage])
    before = db.read_bytes()
    extra = ["--out", str(tmp_path / "x.yaml")] if command == "export" else []
    code, err = run_cli(capsys, command, "--tracking-uri", f"sqlite:///{db}", *extra)
    assert_one_line(code, err, str(db))
    assert db.read_bytes() == before  # read-only: no tables created, nothing migrated


def test_parse_overrides_keep_non_yaml_values_as_strings():
    assert parse_overrides(["name=" + "9" * 5000]) == {"name": "9" * 5000}  # past int's digit limit
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse_overrides(["data=" + "[" * 100_000])
