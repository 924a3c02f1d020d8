"""The pieces of early stopping, constraints, growth and warm start, without a search (fast)."""
from __future__ import annotations

import dataclasses

import optuna
import pytest

from esam.errors import ConfigError
from esam.search.config import OBJECTIVE_METRICS, SearchConfig, load_search_config
from esam.search.constraints import UNMEASURED, OptunaConstraints, is_feasible, parse, parse_all, reference_values
from esam.search.front.hypervolume import hypervolume
from esam.search.recovery.startup import check_growth
from esam.search.runner import _warm_start

REFS = {"sgd": {"test_acc": 95.0, "speed_vs_sgd": 1.0, "relative_cost": 1.0},
        "sam": {"test_acc": 96.0, "speed_vs_sgd": 0.5, "relative_cost": 2.0}}


def _parse(text, references=("sgd", "sam")):
    return parse(text, OBJECTIVE_METRICS, list(references))


@pytest.mark.parametrize("text, metrics, violation", [
    ("speed_vs_sgd >= sam", {"speed_vs_sgd": 0.6}, 0.5 - 0.6),
    ("test_acc >= sam - 0.5", {"test_acc": 95.0}, 95.5 - 95.0),
    ("speed_vs_sgd >= 1.2 * sam", {"speed_vs_sgd": 0.5}, 0.6 - 0.5),
    ("test_acc>=90", {"test_acc": 91.0}, -1.0),
    ("relative_cost <= sgd + 0.7", {"relative_cost": 1.5}, 1.5 - 1.7),
    ("test_acc >= 1e1", {"test_acc": 9.0}, 1.0),
])
def test_a_constraint_reads_as_written(text, metrics, violation):
    c = _parse(text)
    assert c.violation(metrics, REFS) == pytest.approx(violation)


@pytest.mark.parametrize("text, message", [
    ("speed >= sam", "names no metric"),
    ("test_acc > sam", "is not a constraint"),
    ("test_acc >= adam", "neither a number nor a reference"),
    ("test_acc >= 2 * 90", "takes no scale or offset"),
    (42, "is not a constraint"),
])
def test_a_bad_constraint_is_one_line(text, message):
    with pytest.raises(ConfigError, match=message) as err:
        _parse(text)
    assert "\n" not in str(err.value)


def test_a_constraint_on_an_untrained_reference_is_refused():
    with pytest.raises(ConfigError, match="needs the sam reference, which `references` does not train"):
        _parse("test_acc >= sam", references=("sgd",))
    with pytest.raises(ConfigError, match="must be a list"):
        parse_all("test_acc >= sam", OBJECTIVE_METRICS, ["sam"])


def test_a_missing_metric_is_infeasible_and_a_missing_reference_is_one_line():
    c = _parse("speed_vs_sgd >= sam")
    assert c.violation({}, REFS) == UNMEASURED and c.violation({"speed_vs_sgd": float("nan")}, REFS) == UNMEASURED
    with pytest.raises(ConfigError, match="needs the sam reference's speed_vs_sgd, which did not finish"):
        c.violation({"speed_vs_sgd": 1.0}, {"sgd": REFS["sgd"]})


def test_feasibility_uses_the_reference_rows():
    rows = [{"kind": "reference", "status": "FINISHED", "optimizer": "sam", "speed_vs_sgd": 0.5},
            {"kind": "reference", "status": "FAILED", "optimizer": "sgd", "speed_vs_sgd": 1.0}]
    refs = reference_values(rows)
    assert set(refs) == {"sam"}
    constraints = parse_all(["speed_vs_sgd >= sam"], OBJECTIVE_METRICS, ["sam"])
    assert is_feasible(constraints, {"speed_vs_sgd": 0.5}, refs)
    assert not is_feasible(constraints, {"speed_vs_sgd": 0.49}, refs)


def test_optuna_gets_each_constraint_by_name_before_the_result():
    constraints = parse_all(["speed_vs_sgd >= sam", "test_acc >= 90"], OBJECTIVE_METRICS, ["sgd", "sam"])
    told = OptunaConstraints(constraints, REFS)
    assert set(told.references["sam"]) == {"speed_vs_sgd", "test_acc"}  # only what the constraints read
    study = optuna.create_study(directions=["maximize", "maximize"])
    trial = study.ask()
    told.set_on(trial, {"speed_vs_sgd": 0.7, "test_acc": 85.0})
    study.tell(trial, [85.0, 0.7])
    assert study.trials[0].constraints == pytest.approx({"speed_vs_sgd >= sam": 0.5 - 0.7, "test_acc >= 90": 5.0})
    assert told.violations({"speed_vs_sgd": 0.4}) == pytest.approx([0.1, UNMEASURED])
    assert OptunaConstraints(constraints, {}).violations({"speed_vs_sgd": 9.0, "test_acc": 99.0}) == [UNMEASURED] * 2


def test_the_study_front_holds_feasible_trials_only():
    constraints = parse_all(["speed_vs_sgd >= 1.0"], OBJECTIVE_METRICS, [])
    told = OptunaConstraints(constraints, {})
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=optuna.samplers.NSGAIISampler(seed=0))
    for acc, speed in [(99.0, 0.5), (90.0, 1.2), (80.0, 1.5)]:
        t = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        told.set_on(t, {"test_acc": acc, "speed_vs_sgd": speed})
        study.tell(t, [acc, speed])
    assert sorted(t.values[0] for t in study.best_trials) == [80.0, 90.0]  # 99 % at 0.5x misses the bound
    study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # the sampler runs with constraints set


def test_hypervolume_of_a_minimized_objective_uses_the_worst_point():
    points = [{"test_acc": 90.0, "epoch_time_s": 2.0}, {"test_acc": 80.0, "epoch_time_s": 1.0},
              {"test_acc": 70.0, "epoch_time_s": 3.0}]
    area, ref = hypervolume(points, [("test_acc", "max"), ("epoch_time_s", "min")])
    assert ref == {"test_acc": 0.0, "epoch_time_s": 3.0}
    assert area == pytest.approx(90 * 1.0 + 80 * 1.0)


def _config(tmp_path, *overrides):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\ntrain: {epochs: 6}\n")
    return load_search_config(path, list(overrides))


@pytest.mark.parametrize("override, message", [
    ("scheduler.name=asha", "unknown scheduler 'asha'"),
    ("scheduler.grace_epochs=6", r"grace_epochs \(6\) must be below train.epochs \(6\)"),
    ("scheduler.grace_epochs=0", "must be an integer >= 1"),
    ("scheduler.reduction_factor=1", "reduction_factor must be > 1"),
    ("scheduler.max_epochs=5", r"max_epochs \(5\) must equal train.epochs \(6\)"),
    ("repeats=2", "repeats > 1"),
])
def test_bad_scheduler_settings_are_one_line(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message) as err:
        _config(tmp_path, "scheduler.name=moasha", override)
    assert "\n" not in str(err.value)


def test_scheduler_shorthand_and_defaults(tmp_path):
    assert _config(tmp_path, "scheduler=moasha").scheduler.name == "moasha"
    assert _config(tmp_path).scheduler.name == "none" and _config(tmp_path).warm_start


def test_a_search_may_grow_but_not_shrink():
    cfg = SearchConfig(trials=10)
    assert check_growth({"trials": 8}, cfg) == 2 and check_growth({"trials": 10}, cfg) == 0
    with pytest.raises(ConfigError, match="can grow but not shrink"):
        check_growth({"trials": 12}, cfg)


def test_the_warm_start_is_the_papers_setting_inside_the_space(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}")
    cfg = SearchConfig(name="w")
    assert _warm_start(cfg, storage) == [{"rho": 0.05, "beta": 0.6, "gamma": 0.5}]
    narrow = dataclasses.replace(cfg, space={**cfg.space, "rho": dataclasses.replace(cfg.space["rho"], low=0.1)})
    assert _warm_start(narrow, storage) == [{"beta": 0.6, "gamma": 0.5}]  # rho 0.05 lies outside: sampled
    assert _warm_start(dataclasses.replace(cfg, warm_start=False), storage) == []
    optuna.create_study(study_name="w", storage=storage, directions=["maximize", "maximize"]).ask()
    assert _warm_start(cfg, storage) == []  # a continued search proposed it already


def test_a_trial_the_reconciliation_completes_gets_its_constraints(tmp_path):
    """After a hard stop the start-up reconciliation tells Optuna a finished trial's values; its
    violations go with them, as the searcher would have sent them."""
    from mlflow.tracking import MlflowClient

    from esam.search.recovery.reconcile import FINISHED, Experiment, _Reconciler
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.create_run(client.create_experiment("x")).info.run_id
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(directions=["maximize", "maximize"], storage=storage, study_name="c")
    study.ask({"rho": optuna.distributions.FloatDistribution(0.01, 0.5)})  # left RUNNING by a killed driver
    constraints = parse_all(["speed_vs_sgd >= sam"], OBJECTIVE_METRICS, ["sgd", "sam"])
    exp = Experiment("trial", [("test_acc", "max"), ("speed_vs_sgd", "max")], study,
                     constraints=OptunaConstraints(constraints, REFS), storage=storage)
    trial_run = client.create_run(client.get_run(parent).info.experiment_id).info.run_id  # MLflow saw it finish
    for key, value in {"test_acc": 95.0, "speed_vs_sgd": 0.4, "epoch": 3}.items():
        client.log_metric(trial_run, key, value)
    _Reconciler(exp, client, parent)._tell_optuna(study.trials[0], FINISHED, client.get_run(trial_run))
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.values == [95.0, 0.4]
    assert trial.constraints == pytest.approx({"speed_vs_sgd >= sam": 0.5 - 0.4})  # infeasible: SAM ran at 0.5
