"""What Ray pickles with an experiment pickles on every sampler and scheduler, and holds no store URL.

Optuna 5.1.0's NSGA-II sampler holds a lock that cannot be pickled: a searcher that kept a live
sampler crashed the default search. The searcher keeps the sampler's spec instead; these tests
pickle each object Ray pickles (searcher, scheduler, callbacks, trainable) with Ray's cloudpickle.
"""
import optuna
import pytest
import ray.cloudpickle as cloudpickle
from optuna.distributions import CategoricalDistribution, FloatDistribution

from esam.search.config import ParamSpace
from esam.search.space import DefineByRun
from esam.search.trials.trial import run_trial, trial_label
from esam.search.tune.callbacks import FrontProgress, MlflowTrialRuns, Progress
from esam.search.tune.moasha import MOASHA
from esam.search.tune.optuna_searcher import RAY_TRIAL_ATTR, EsamSearcher
from esam.search.tune.samplers import SAMPLERS, SamplerSpec

OBJECTIVES = [("test_acc", "max"), ("speed_vs_sgd", "max")]
SPACE = {"rho": FloatDistribution(0.01, 0.5, log=True), "beta": FloatDistribution(0.3, 1.0),
         "score": CategoricalDistribution(["loss_rise", "clean_loss"])}
SECRET = "s3cr3t-in-the-path"


def _storage(tmp_path):
    from esam.search.stores.optuna_outage import open_optuna_storage
    folder = tmp_path / SECRET  # stands for a password in a PostgreSQL URL: it must not reach a pickle
    folder.mkdir()
    return open_optuna_storage(f"sqlite:///{folder / 'optuna.db'}")


def _searcher(sampler: str, storage, space=SPACE, max_trials=4):
    return EsamSearcher(space, OBJECTIVES, "s", SamplerSpec(sampler, 0), max_trials=max_trials,
                        max_concurrent=2, epochs=3).attach(storage)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_the_searcher_pickles_on_every_sampler_with_no_store_in_it(tmp_path, sampler):
    searcher = _searcher(sampler, _storage(tmp_path))
    assert isinstance(searcher.suggest("a"), dict)  # a live study, a trial handed out: still pickles
    data = cloudpickle.dumps(searcher)
    assert SECRET.encode() not in data and b"optuna.db" not in data
    again = cloudpickle.loads(data)
    assert again.sampler == SamplerSpec(sampler, 0) and again.max_trials == 4 and again.study is None
    with pytest.raises(RuntimeError, match="not attached"):
        again.suggest("b")
    # attached again (as the driver does on every run), it takes up the study where it was
    again.attach(_storage_again(tmp_path), saved_ray_trials={"a"})
    assert again.suggest("b")["_number"] == 1


def _storage_again(tmp_path):
    from esam.search.stores.optuna_outage import open_optuna_storage
    return open_optuna_storage(f"sqlite:///{tmp_path / SECRET / 'optuna.db'}")


@pytest.mark.parametrize("scheduler", ["none", "moasha"])
def test_scheduler_callbacks_and_trainable_pickle(tmp_path, scheduler):
    objects = [MlflowTrialRuns(f"postgresql://u:{SECRET}@127.0.0.1/m", "p", "trial", trial_label, dict),
               Progress("esam", 4, OBJECTIVES), run_trial,
               FrontProgress(f"http://u:{SECRET}@127.0.0.1:5000", "p", OBJECTIVES, 3)]
    if scheduler == "moasha":
        objects.append(MOASHA(OBJECTIVES, grace_epochs=1, reduction_factor=3, max_epochs=3,
                              rungs_file=tmp_path / "rungs.json"))
    for obj in objects:
        data = cloudpickle.dumps(obj)
        assert SECRET.encode() not in data, type(obj).__name__
        assert type(cloudpickle.loads(data)) is type(obj)


def test_a_conditional_space_pickles_too(tmp_path):
    space = DefineByRun({"method": ParamSpace(choices=["esam", "sam"]), "rho": ParamSpace(low=0.01, high=0.5)},
                        "esam", "sam")
    searcher = _searcher("tpe", _storage(tmp_path), space=space)
    params = searcher.suggest("a")
    assert {"method", "rho"} <= set(params)
    assert cloudpickle.loads(cloudpickle.dumps(searcher)).space == space


def test_an_orphan_goes_on_with_its_own_values_and_gets_those_it_lacks(tmp_path):
    """A driver killed while Optuna drew a trial's fields left it RUNNING with some of them."""
    storage = _storage(tmp_path)
    study = optuna.create_study(study_name="s", storage=storage, directions=["maximize", "maximize"])
    orphan = study.ask()
    rho = orphan.suggest_float("rho", 0.01, 0.5, log=True)
    searcher = _searcher("nsga2", storage)
    params = searcher.suggest("r1")
    assert params["_number"] == 0 and params["rho"] == rho and set(SPACE) <= set(params)
    [frozen] = searcher.study.get_trials()
    assert frozen.state.name == "RUNNING" and frozen.user_attrs[RAY_TRIAL_ATTR] == "r1"
    assert searcher.suggest("r2")["_number"] == 1  # the orphan is taken: a new trial


def test_the_study_caps_the_trials_and_tells_every_ending(tmp_path):
    searcher = _searcher("nsga2", _storage(tmp_path), max_trials=2)
    a, b = searcher.suggest("a"), searcher.suggest("b")
    assert searcher.suggest("c") is None  # two live, concurrency 2
    searcher.on_trial_complete("a", {"test_acc": 90.0, "speed_vs_sgd": 0.6, "epoch": 3})
    searcher.on_trial_complete("b", {"test_acc": 50.0, "speed_vs_sgd": 0.5, "epoch": 1})  # stopped early
    assert searcher.suggest("c") == "FINISHED"
    states = {t.number: t.state.name for t in searcher.study.get_trials()}
    assert states == {a["_number"]: "COMPLETE", b["_number"]: "PRUNED"}


def test_an_unpicklable_part_is_refused_in_one_line_before_ray_writes(tmp_path):
    import threading

    from ray import tune

    from esam.errors import ConfigError
    from esam.search.runner import _check_picklable

    class Locked:  # as Optuna 5.1.0's NSGA-II sampler was
        def __init__(self):
            self.lock = threading.Lock()
    with pytest.raises(ConfigError, match="callback Locked cannot be pickled for Ray"):
        _check_picklable(tune.TuneConfig(), [Locked()])
    _check_picklable(tune.TuneConfig(search_alg=_searcher("nsga2", _storage(tmp_path))), [])


def test_an_unexpected_error_is_one_line_with_the_traceback_in_a_file(monkeypatch, capsys, tmp_path):
    import tempfile

    from esam import cli
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the crash log goes here, not to /tmp
    def broken(args):
        raise TypeError("cannot pickle '_thread.lock' object")
    monkeypatch.delenv("ESAM_TRACEBACK", raising=False)
    monkeypatch.setattr(cli, "cmd_export", broken)
    assert cli.main(["export", "x", "--out", "x.yaml"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unexpected TypeError: cannot pickle" in err
    log = err.split("the traceback is in ")[1].split(" ")[0]
    assert "Traceback" in open(log).read()
