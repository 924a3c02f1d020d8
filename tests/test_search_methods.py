"""Searching the method: ESAM beside LookSAM, RST and AE-SAM on one front (esam/search/space.py).

Unit tests of the conditional space on a real Optuna study, the config's one-line errors, and one
real search (Ray, Optuna, MLflow) whose export reloads in `esam train` and the optimizer's from_config.
"""
import dataclasses

import optuna
import pytest
import torch
import yaml
from conftest import search_in, small_search
from mlflow.tracking import MlflowClient

from esam.cli import main
from esam.config import OptimizerConfig, load_train_config
from esam.errors import ConfigError
from esam.optim import OPTIMIZERS
from esam.search.config import load_search_config
from esam.search.space import DefineByRun, optuna_space, paper_point, used_fields, uses
from esam.search.trials.trial import trial_label, trial_overrides, trial_params

METHODS_SPACE = {"method": {"choices": ["esam", "looksam", "rst", "aesam"]},
                 "rho": {"low": 0.02, "high": 0.2, "log": True}, "beta": {"low": 0.4, "high": 1.0},
                 "gamma": {"low": 0.4, "high": 1.0}, "sharpness": {"choices": ["sam", "esam"]},
                 "looksam_k": {"low": 2, "high": 8}, "rst_p": {"low": 0.2, "high": 0.8},
                 "aesam_c_start": {"low": 0.0, "high": 2.0}}


def _config(tmp_path, space=None, overrides=()):
    text = yaml.safe_dump({"name": "m", "space": space or METHODS_SPACE})
    path = tmp_path / "m.yaml"
    path.write_text(text)
    return load_search_config(path, overrides)


def test_which_fields_a_method_uses():
    assert uses("esam", "beta", "sam") and uses("rst", "beta", "esam") and not uses("rst", "beta", "sam")
    assert uses("looksam", "looksam_k", "sam") and not uses("rst", "looksam_k", "sam")
    assert not uses("esam", "sharpness", "sam") and uses("aesam", "sharpness", "sam")
    assert "rst_p" in used_fields("rst", "sam") and "gamma" not in used_fields("rst", "sam")
    assert used_fields("sgd", "sam") == ("max_grad_norm",)
    assert uses("rst", "lr", "sam") and uses("esam", "weight_decay", "sam")  # the base SGD's, every method's


def test_each_trial_samples_only_what_its_method_uses(tmp_path):
    cfg = _config(tmp_path)
    space = optuna_space(cfg.space, cfg.train.optimizer)
    assert isinstance(space, DefineByRun)
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=1))
    methods = set()
    for _ in range(40):
        trial = study.ask()
        space(trial)
        p = trial.params
        method, sharpness = p["method"], p.get("sharpness", "sam")
        methods.add(method)
        expected = {"method"} | {f for f in cfg.space if f != "method" and uses(method, f, sharpness)}
        assert set(p) == expected, p
        if method == "looksam":
            assert isinstance(p["looksam_k"], int) and 2 <= p["looksam_k"] <= 8
        study.tell(trial, [0.0, 0.0])
    assert methods == {"esam", "looksam", "rst", "aesam"}


def test_a_fixed_method_makes_a_fixed_space(tmp_path):
    cfg = _config(tmp_path, {"rho": {"low": 0.02, "high": 0.2}, "looksam_k": {"low": 2, "high": 8}},
                  ["train.optimizer.name=looksam"])
    space = optuna_space(cfg.space, cfg.train.optimizer)
    assert isinstance(space["looksam_k"], optuna.distributions.IntDistribution)
    assert paper_point(cfg.space, cfg.train.optimizer) == {"rho": 0.05, "looksam_k": 5}


def test_the_warm_start_is_esam_at_the_papers_setting_when_the_method_is_searched(tmp_path):
    cfg = _config(tmp_path)
    assert paper_point(cfg.space, cfg.train.optimizer) == {"method": "esam", "rho": 0.05, "beta": 0.6, "gamma": 0.5}
    rst_only = {**cfg.space, "method": dataclasses.replace(cfg.space["method"], choices=["rst"])}
    assert paper_point(rst_only, cfg.train.optimizer) == {"method": "rst", "rho": 0.05, "sharpness": "sam",
                                                           "rst_p": 0.5}


@pytest.mark.parametrize("space, overrides, message", [
    ({"method": {"choices": ["esam", "adam"]}}, (), "space.method.choices must be a non-empty list from esam"),
    ({"looksam_k": {"low": 1.5, "high": 4}}, ["train.optimizer.name=looksam"], "space.looksam_k takes integers"),
    ({"rst_p": {"low": 0.0, "high": 1.5}}, ["train.optimizer.name=rst"], r"space.rst_p: range \[0.0, 1.5\] leaves"),
    ({"aesam_momentum": {"low": 0.5, "high": 1.0}}, ["train.optimizer.name=aesam"], r"leaves the valid interval \[0, 1\)"),
    ({"beta": {"low": 0.4, "high": 1.0}}, ["train.optimizer.name=rst"],
     "space.beta is not used by rst with sharpness sam"),
    ({"rst_p": {"low": 0.2, "high": 0.8}}, (), "space.rst_p is not used by esam"),
    ({"sharpness": {"choices": ["sam", "esam"]}}, (), "space.sharpness is not used by esam"),
    ({"rho": {"low": 0.01, "high": 0.1}}, ["train.optimizer.name=sam"], "train.optimizer.name must be one of esam"),
    ({"rho": {"low": 0.01, "high": 0.1}}, ["constraints=[test_acc >= rst]"], "needs the rst reference"),
])
def test_a_bad_method_space_is_one_line(tmp_path, space, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, space, overrides)


def test_any_method_may_be_a_reference(tmp_path):
    cfg = _config(tmp_path, None, ["references=[sgd, sam, looksam, rst]", "constraints=[test_acc >= looksam - 1]"])
    assert cfg.references == ["sgd", "sam", "looksam", "rst"]


def test_a_trial_of_another_method_trains_and_records_that_method():
    trial = {"method": "rst", "rho": 0.1, "rst_p": 0.3, "_number": 4}
    assert trial_overrides(trial) == {"optimizer": {"name": "rst", "rho": 0.1, "rst_p": 0.3}}
    assert trial_label(trial) == "#4 rst rho=0.1 rst_p=0.3"
    params = trial_params(dataclasses.asdict(OptimizerConfig()), trial)
    assert params["optimizer"] == "rst" and params["rst_p"] == 0.3 and "beta" not in params  # sharpness sam
    assert trial_label({"rho": 0.1, "_number": 1}) == "#1 esam rho=0.1"  # a search made before methods


@pytest.fixture(scope="module")
def methods_search(tmp_path_factory):
    directory = tmp_path_factory.mktemp("methods")
    space = {"method": {"choices": ["esam", "looksam", "rst"]}, "rho": {"low": 0.02, "high": 0.2, "log": True},
             "gamma": {"low": 0.4, "high": 1.0}, "looksam_k": {"low": 2, "high": 4}, "rst_p": {"low": 0.3, "high": 0.7}}
    path = small_search(directory, "methods", trials=5, concurrency=2, references=("sgd", "looksam"), epochs=1,
                        train_limit=256, test_limit=128, seed=5, space=space)
    return directory, search_in(directory, path), MlflowClient(tracking_uri=f"sqlite:///{directory / 'mlflow.db'}")


@pytest.mark.slow
def test_a_method_search_records_each_trials_method_and_exports_a_reloadable_config(methods_search, tmp_path):
    directory, out, client = methods_search
    exp = client.get_experiment_by_name("esam")
    runs = client.search_runs([exp.experiment_id], "tags.`esam.kind` != 'search'")
    references = sorted(r.data.params["optimizer"] for r in runs if r.data.tags["esam.kind"] == "reference")
    assert references == ["looksam", "sgd"]
    trials = [r for r in runs if r.data.tags["esam.kind"] == "trial"]
    assert len(trials) == 5
    parent = client.search_runs([exp.experiment_id], "tags.`esam.kind` = 'search'")[0]
    note = parent.data.tags["mlflow.note.content"]  # the summary names the trials' method, not "ESAM"
    assert note.startswith("**Method search**: ") and "ESAM trials" not in note, note[:200]
    for r in trials:  # the params say the method and only the knobs it uses
        method = r.data.params["optimizer"]
        assert r.info.run_name.split(" ")[1] == method, r.info.run_name
        assert ("looksam_k" in r.data.params) == (method == "looksam") and ("rst_p" in r.data.params) == (method == "rst")
    first = min(trials, key=lambda r: int(r.data.tags.get("optuna_trial_number", r.info.start_time)))
    assert first.data.params["optimizer"] == "esam" and float(first.data.params["rho"]) == 0.05  # the warm start

    exported = tmp_path / "best.yaml"
    assert main(["export", "methods", "--tracking-uri", client.tracking_uri, "--out", str(exported),
                 "--pick", "max-throughput"]) == 0
    document = yaml.safe_load(exported.read_text())
    chosen = client.get_run(document["exported"]["mlflow_run_id"])
    method = chosen.data.params["optimizer"]
    assert document["optimizer"]["name"] == method
    assert f"{OPTIMIZERS[method].__name__}.from_config" in exported.read_text()
    config = load_train_config(exported)  # what `esam train` reads
    assert config.optimizer.name == method
    model = torch.nn.Linear(3, 2)
    opt = OPTIMIZERS[method].from_config(model.parameters(), torch.optim.SGD(model.parameters(), lr=0.1), exported)
    assert type(opt) is OPTIMIZERS[method]
    assert opt.defaults["rho"] == pytest.approx(float(chosen.data.params["rho"]), rel=5e-4)  # 4 significant digits
    used = used_fields(method, document["optimizer"].get("sharpness", "sam"))
    assert set(document["optimizer"]) == {"name", "lr", "momentum", "weight_decay", "nesterov", *used}  # no others'


@pytest.mark.parametrize("method, sharpness, expected, foreign", [
    ("esam", "sam", {"beta", "gamma", "score", "swp_patterns"}, {"sharpness", "looksam_k", "rst_p", "aesam_c_start"}),
    ("looksam", "sam", {"sharpness", "looksam_k", "looksam_alpha"}, {"beta", "gamma", "score", "rst_p"}),
    ("looksam", "esam", {"sharpness", "looksam_k", "beta", "gamma", "score"}, {"rst_p", "aesam_c_end"}),
    ("rst", "sam", {"rst_p"}, {"looksam_k", "beta", "aesam_momentum"}),
    ("aesam", "sam", {"aesam_c_start", "aesam_c_end", "aesam_momentum"}, {"looksam_alpha", "rst_p", "gamma"}),
])
def test_an_export_keeps_the_knobs_its_method_reads(method, sharpness, expected, foreign):
    from esam.config import to_dict, train_config_from_dict
    from esam.search.front.export import significant, used_settings
    every_field = to_dict(train_config_from_dict({"optimizer": {"name": method, "sharpness": sharpness}}))["optimizer"]
    kept = used_settings(every_field)
    assert expected | {"name", "lr", "momentum", "weight_decay", "nesterov", "rho"} <= set(kept)
    assert not foreign & set(kept), foreign & set(kept)
    assert (significant(0.123456789), significant(1234567.0)) == (0.1235, 1235000.0)
    assert (significant(5), significant("sam"), significant(float("inf"))) == (5, "sam", float("inf"))


def test_the_front_table_and_labels_name_each_points_method():
    from esam.search.front.report import format_table, settings_label
    looksam = {"run_id": "a" * 32, "optimizer": "looksam", "rho": 0.05, "sharpness": "sam", "looksam_k": 5,
               "looksam_alpha": 0.7, "test_acc": 98.0, "speed_vs_sgd": 0.8}
    esam = {"run_id": "b" * 32, "optimizer": "esam", "rho": 0.1, "beta": 0.6, "gamma": 0.5, "score": "loss_rise",
            "test_acc": 99.0, "speed_vs_sgd": 0.6}
    table = format_table([esam, looksam], [])
    row = next(line for line in table.splitlines() if "aaaaaaaaaaaa" in line)
    assert "looksam" in row and "k=5" in row and "alpha=0.7" in row and "sharpness=sam" in row
    assert settings_label(looksam) == "looksam ρ=0.05 sharpness=sam k=5 alpha=0.7"
    assert settings_label(esam) == "ρ=0.1, β=0.6, γ=0.5"


def test_the_warm_start_leaves_the_base_optimizer_to_the_sampler(tmp_path):
    cfg = _config(tmp_path, {"rho": {"low": 0.01, "high": 0.5}, "lr": {"low": 0.01, "high": 1.0}})
    assert paper_point(cfg.space, cfg.train.optimizer) == {"rho": 0.05}  # lr is the user's, not the paper's


def test_a_method_search_is_not_called_esam_trials(tmp_path):
    from esam.search.front.summary import front_summary
    from esam.search.runner import _progress_label, _trials_noun
    rows = [{"run_id": "s", "kind": "reference", "status": "FINISHED", "optimizer": "sgd", "test_acc": 99.0,
             "speed_vs_sgd": 1.0},
            {"run_id": "a", "kind": "trial", "status": "FINISHED", "optimizer": "looksam", "test_acc": 98.0,
             "speed_vs_sgd": 0.8}]
    text = front_summary(rows, [("test_acc", "max"), ("speed_vs_sgd", "max")])
    assert "ESAM" not in text and "the only LookSAM trial" in text, text
    assert "ESAM trial" in front_summary([rows[0], {**rows[1], "optimizer": "esam"}],
                                         [("test_acc", "max"), ("speed_vs_sgd", "max")])
    cfg = _config(tmp_path)
    assert _progress_label(cfg) == "trials" and _trials_noun(cfg) == "trials (esam, looksam, rst, aesam)"
    rst = _config(tmp_path, {"rst_p": {"low": 0.2, "high": 0.8}}, ["train.optimizer.name=rst"])
    assert _progress_label(rst) == "rst" and _trials_noun(rst) == "RST trials"
