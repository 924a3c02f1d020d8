"""A method of one's own: its class and its record (esam/optim/methods.py), registered, and nothing else edited.

ToySAM is SAM whose neighbourhood is rho * toy_scale: a method with one knob of its own, which has no
OptimizerConfig field (it lives in `optimizer.knobs`, written like a field). The fast tests check that
the space, the search config's check, the cost model, the step builder, the speed probe and the trials'
overrides all see it; the slow one runs a real search of it (Ray, Optuna, MLflow) and exports it.
"""
import pytest
import torch
import yaml
from conftest import search_in, small_search
from mlflow.tracking import MlflowClient

from esam.cli import main
from esam.config import load_train_config, to_dict, train_config_from_dict
from esam.errors import ConfigError
from esam.optim import METHODS, OPTIMIZERS, SAM, Knob, MethodInfo, predicted_relative_cost, register_optimizer
from esam.optim.sam import BN_UPDATE, RHO
from esam.search.config import choice_params, search_config_from_dict, searchable
from esam.search.space import paper_point, reference_methods, shown_knobs, uses
from esam.search.trials.trial import trial_overrides, trial_params
from esam.search.trials.user_code import check_user_code, passed_builders, register_passed, trained_methods
from esam.training.speed_probe import cycle_steps
from esam.training.step import PassMode, build_step_optimizer


def make_toy():
    """ToySAM and its record. Built in a function, so that Ray pickles the class by value to its workers,
    as it does a method defined in a user's script (tests/ is on no worker's path to import it by name)."""

    class ToySAM(SAM):
        """SAM with the neighbourhood rho * toy_scale."""

        method = "toysam"
        hyperparameters = SAM.hyperparameters + ("toy_scale",)

        def __init__(self, params, base_optimizer, rho=0.05, toy_scale=1.0, adaptive=False, max_grad_norm=None,
                     model=None, bn_update="all"):
            if not 0.5 <= toy_scale <= 2.0:
                raise ValueError(f"toy_scale must be in [0.5, 2], got {toy_scale}")
            super().__init__(params, base_optimizer, rho * toy_scale, adaptive, max_grad_norm, model, bn_update)
            self.defaults.update(toy_scale=toy_scale)

    scale = Knob("toy_scale", 0.5, 2.0, short="scale", paper=1.0)
    return ToySAM, MethodInfo("toysam", "ToySAM", knobs=(RHO, BN_UPDATE, scale), sharpness="sam")


@pytest.fixture
def toy():
    cls, info = make_toy()
    register_optimizer("toysam", cls, info)
    yield cls
    OPTIMIZERS.pop("toysam")  # the registries are this process's: later tests must not see it
    METHODS.pop("toysam")


SPACE = {"method": {"choices": ["toysam"]}, "rho": {"low": 0.02, "high": 0.2, "log": True},
         "toy_scale": {"low": 0.5, "high": 2.0}}


def test_the_space_and_the_search_check_read_the_record(toy):
    cfg = search_config_from_dict({"name": "toy", "space": SPACE, "references": ["sgd", "toysam"]})
    assert "toysam" in choice_params()["method"] and "toysam" in reference_methods()
    assert "toy_scale" in searchable() and ("toy_scale", "scale") in shown_knobs()
    assert uses("toysam", "toy_scale", "sam") and not uses("esam", "toy_scale", "sam")
    assert paper_point(cfg.space, cfg.train.optimizer) == {"method": "toysam", "rho": 0.05, "toy_scale": 1.0}
    with pytest.raises(ConfigError, match=r"space.toy_scale: range \[0.1, 2.0\] leaves the valid interval \[0.5, 2"):
        search_config_from_dict({"name": "toy", "space": {**SPACE, "toy_scale": {"low": 0.1, "high": 2.0}}})
    with pytest.raises(ConfigError, match="space.toy_scale is not used by esam"):
        search_config_from_dict({"name": "toy", "space": {"toy_scale": {"low": 0.5, "high": 2.0}}})


def test_the_training_config_the_cost_model_and_the_step_builder_read_the_record(toy):
    config = train_config_from_dict({"optimizer": {"name": "toysam", "toy_scale": 1.5}})
    assert config.optimizer.knobs == {"toy_scale": 1.5} and to_dict(config)["optimizer"]["toy_scale"] == 1.5
    assert train_config_from_dict(to_dict(config)) == config  # written flat, read back into knobs
    with pytest.raises(ConfigError, match=r"optimizer.toy_scale must be a number in \[0.5, 2\], got 3"):
        train_config_from_dict({"optimizer": {"name": "toysam", "toy_scale": 3}})
    assert predicted_relative_cost("toysam") == 2.0  # its record's sharpness step: SAM's
    model = torch.nn.Linear(3, 2)
    opt = build_step_optimizer(model, config.optimizer, seed=0)
    assert type(opt) is toy and opt.rho == pytest.approx(0.05 * 1.5)
    assert build_step_optimizer(model, train_config_from_dict({"optimizer": {"name": "toysam"}}).optimizer,
                                seed=0).rho == pytest.approx(0.05)  # unset: the record's paper value
    assert not PassMode.of(config).fresh_swp and cycle_steps(config.optimizer) == 1


def test_a_trial_of_the_method_trains_it_and_its_class_reaches_the_trials(toy):
    trial = {"method": "toysam", "rho": 0.1, "toy_scale": 1.2, "_number": 3}
    config = train_config_from_dict(to_dict(train_config_from_dict({})), trial_overrides(trial))
    assert config.optimizer.name == "toysam" and config.optimizer.setting("toy_scale") == 1.2
    params = trial_params(to_dict(train_config_from_dict({}))["optimizer"], trial)
    assert params["optimizer"] == "toysam" and params["toy_scale"] == 1.2 and "beta" not in params
    cfg = search_config_from_dict({"name": "toy", "space": SPACE})
    passed = passed_builders(cfg.train, trained_methods(cfg))
    assert passed == {"method": {"toysam": (toy, METHODS["toysam"])}}  # esam's own methods are not passed
    info = METHODS.pop("toysam")
    OPTIMIZERS.pop("toysam")  # a trial's process: the registration comes with the trainable's parameters
    register_passed(passed)
    assert OPTIMIZERS["toysam"] is toy and METHODS["toysam"] is info
    multi_worker = search_config_from_dict({"name": "toy", "space": SPACE, "resources": {"workers": 2}})
    with pytest.raises(ConfigError, match="the methods toysam, registered in this process, do not reach"):
        check_user_code(multi_worker, local=False)


@pytest.mark.slow
def test_a_registered_method_is_searched_end_to_end(toy, tmp_path):
    directory = tmp_path / "search"
    directory.mkdir()
    path = small_search(directory, "toy", trials=2, concurrency=1, references=("sgd",), epochs=1, train_limit=256,
                        test_limit=128, space=SPACE)
    out = search_in(directory, path)
    assert "2 finished" in out, out[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{directory / 'mlflow.db'}")
    exp = client.get_experiment_by_name("esam")
    trials = client.search_runs([exp.experiment_id], "tags.`esam.kind` = 'trial'")
    assert len(trials) == 2 and all(r.data.params["optimizer"] == "toysam" for r in trials)
    assert 1.0 in {float(r.data.params["toy_scale"]) for r in trials}  # the warm start: the paper's value
    assert all(r.info.status == "FINISHED" for r in trials)
    exported = tmp_path / "best.yaml"
    assert main(["export", "toy", "--tracking-uri", client.tracking_uri, "--out", str(exported)]) == 0
    document = yaml.safe_load(exported.read_text())
    assert document["optimizer"]["name"] == "toysam" and "toy_scale" in document["optimizer"]
    assert load_train_config(exported).optimizer.knobs == {"toy_scale": document["optimizer"]["toy_scale"]}
