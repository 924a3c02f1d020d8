"""Bad input ends with one clear line and a non-zero exit, before any trial starts."""
from pathlib import Path

import pytest
import torch
import yaml

from esam.cli import default_search_config, main

QUICKSTART = yaml.safe_load(default_search_config().read_text())


def search_file(tmp_path, **changes):
    config = {**QUICKSTART, **changes}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def run_cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("changes, message", [
    ({"trails": 3}, "unknown key trails"),
    ({"trials": "many"}, "trials must be int"),
    ({"space": {"rho": {"low": 0.5, "high": 0.1}}}, "space.rho: empty or inverted range"),
    ({"space": {"rho": {"low": 0.1, "high": 0.1}}}, "space.rho: empty or inverted range"),
    ({"space": {"beta": {"low": 0.0, "high": 1.0}}}, "space.beta: range [0.0, 1.0] leaves the valid interval (0, 1]"),
    ({"space": {"rho": {"low": 0.0, "high": 1.0, "log": True}}}, "log scale needs low > 0"),
    ({"space": {"nesterov": {"low": 0, "high": 1}}}, "space.nesterov is not searchable"),
    ({"results_dir": "s3://bucket/esam"}, "is a URI: set state_dir to a filesystem path"),
    ({"results_dir": "s3://bucket/esam", "state_dir": "gs://b/s"}, "state_dir must be a filesystem path"),
    ({"results_dir": "nosuchscheme://x/y", "state_dir": "state"}, "results_dir nosuchscheme://x/y cannot be opened"),
    ({"space": {"score": {"choices": ["loss_rise", "random"]}}}, "space.score.choices"),
    ({"space": {}}, "space must be a non-empty mapping"),
    ({"objectives": [{"metric": "accuracy", "mode": "max"}, {"metric": "speed_vs_sgd", "mode": "max"}]},
     "objectives[0].metric 'accuracy' names no metric"),
    ({"objectives": [{"metric": "test_acc", "mode": "max"}]}, "exactly two"),
    ({"sampler": {"name": "cmaes"}}, "unknown sampler 'cmaes'"),
    ({"references": ["adam"]}, "references must be a list from sgd, sam"),
    ({"train": {"optimizer": {"beta": 2.0}}}, "train: optimizer.beta must be in (0, 1]"),
    ({"train": {"model": "vgg"}}, "train.model: unknown model 'vgg'"),
    ({"concurrency": 0}, "concurrency must be >= 1"),
    ({"train": {"probe_steps": 0}}, "train.probe_steps is 0, so speed_vs_sgd is not measured"),
    ({"train": {"data": {"name": "cifar10", "root": "nowhere"}}}, "train.data.root 'nowhere' is not a directory"),
    ({"mlflow": {"tracking_uri": "http://127.0.0.1:9", "experiment": "esam"}}, "MLflow tracking store http://127.0.0.1:9 is unreachable"),
])
def test_bad_search_configs_fail_before_any_trial(tmp_path, capsys, changes, message):
    code, err = run_cli(capsys, "search", search_file(tmp_path, **changes))
    assert code == 2
    assert err.startswith("esam: error: ") and message in err, err
    assert len(err.splitlines()) == 1
    assert not Path("esam_results").exists()  # nothing started


def test_unknown_config_file_and_override(tmp_path, capsys):
    code, err = run_cli(capsys, "search", "missing.yaml")
    assert code == 2 and "config file not found: missing.yaml" in err
    code, err = run_cli(capsys, "search", "--set", "trials")
    assert code == 2 and "--set expects key=value" in err


@pytest.mark.parametrize("overrides, message", [
    (["model=vgg"], "unknown model 'vgg'"),
    (["optimizer.lr=-1"], "optimizer.lr must be >= 0"),
    (["data.name=digits", "batch_size=5000"], "larger than"),
    (["data.name=cifar10", "data.root=nowhere"], "nowhere"),
    (["data.name=imagefolder", "data.root=nowhere"], "nowhere"),
    (["cuda_graphs=true", "compile=true"], "cuda_graphs and compile are both true"),
    (["cuda_graphs=true", "device=cpu"], "cuda_graphs: true needs a CUDA device"),
    (["optimizer.swp_patterns=0"], "optimizer.swp_patterns must be positive or null"),
] + ([] if torch.cuda.is_available() else [(["cuda_graphs=true"], "needs a CUDA device, but this run is on cpu")]))
def test_bad_train_input(capsys, overrides, message):
    args = ["train"] + [a for o in overrides for a in ("--set", o)]
    code, err = run_cli(capsys, *args)
    assert code == 2 and message in err, err
    assert len(err.splitlines()) == 1


def test_corrupt_image_names_the_file(tmp_path, capsys):
    from PIL import Image
    for split in ("train", "test"):
        for cls in ("a", "b"):
            d = tmp_path / "imgs" / split / cls
            d.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(d / f"{i}.png")
    (tmp_path / "imgs" / "train" / "a" / "broken.png").write_bytes(b"not an image")
    code, err = run_cli(capsys, "train", "--set", "data.name=imagefolder", "--set", f"data.root={tmp_path / 'imgs'}",
                        "--set", "batch_size=2")
    assert code == 2 and "broken.png" in err, err


def test_export_without_search(capsys):
    code, err = run_cli(capsys, "export", "--out", "x.yaml")
    assert code == 2 and "no MLflow store at" in err  # export only reads: a missing store stays missing
    assert not Path("mlflow.db").exists()
    from esam.search.stores import mlflow_store
    mlflow_store.connect(mlflow_store.tracking_uri(None))  # an empty store, as a search would create it
    code, err = run_cli(capsys, "export", "--out", "x.yaml")
    assert code == 2 and "no search recorded" in err


def test_train_cli_checkpoints_and_resumes(capsys):
    args = ["train", "--set", "epochs=2", "--set", "data.train_limit=256", "--set", "data.test_limit=64",
            "--set", "optimizer.name=sam", "--checkpoint-dir", "ck"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "epoch   2" in out and "done: test acc" in out
    assert main(args + ["--resume"]) == 0
    assert "already finished every epoch" in capsys.readouterr().out
    code, err = run_cli(capsys, "train", "--resume", "--checkpoint-dir", "empty")
    assert code == 2 and "no checkpoint.pt" in err


def test_an_exception_with_an_empty_message_still_gives_one_line():
    from esam.errors import first_line
    assert first_line(RuntimeError()) == "RuntimeError"
    assert first_line(OSError("  \n")) == "OSError"
    assert first_line(ValueError("first\nsecond"), 3) == "fir"
