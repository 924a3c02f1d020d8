"""What a search shows its user: no wasted trials, readable MLflow and Optuna records, progress, reruns.

One real tiny search (a space of a single choice, so every proposal after the first repeats it)
runs once for the module, then runs again; the fast tests check the pieces on their own.
"""
import contextlib
import io
import os
import re

import optuna
import pytest
from conftest import small_search
from mlflow.tracking import MlflowClient

from esam.cli import build_parser, main
from esam.errors import ConfigError
from esam.search.config import load_search_config
from esam.search.front import rows as front_rows
from esam.search.front.hypervolume import hypervolume
from esam.search.records import mlflow_runs
from esam.search.stores import mlflow_store
from esam.search.trials.trial import mean_over_repeats, trial_label, trial_params
from esam.search.tune.callbacks import duration
from esam.search.tune.optuna_searcher import setting_key

OBJECTIVES = [("test_acc", "max"), ("speed_vs_sgd", "max")]


# --- the real search ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """(directory, MLflow URI, first run's stdout, second run's stdout)."""
    directory = tmp_path_factory.mktemp("ux")
    path = small_search(directory, "ux", trials=3, concurrency=1, references=("sgd",), epochs=1,
                        train_limit=128, test_limit=64, space={"score": {"choices": ["loss_rise"]}})
    here = os.getcwd()
    os.chdir(directory)
    outs = []
    try:
        for _ in range(2):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                assert main(["search", str(path)]) == 0
            outs.append(out.getvalue())
    finally:
        os.chdir(here)
    return directory, f"sqlite:///{directory / 'mlflow.db'}", outs[0], outs[1]


@pytest.fixture(scope="module")
def stores(searched):
    directory, uri, _, _ = searched
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("esam")
    parent = client.search_runs([exp.experiment_id], "tags.`esam.kind` = 'search'")[0]
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    study = optuna.load_study(study_name="ux", storage=f"sqlite:///{directory / 'esam_results' / 'ux' / 'optuna.db'}")
    return client, exp, parent, children, study


@pytest.mark.slow
def test_a_repeated_proposal_is_reused_not_trained(stores):
    client, _, _, children, study = stores
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert "reused_from" not in trials[0].user_attrs
    runs = {r.data.tags["optuna_trial_number"]: r for r in children if r.data.tags["esam.kind"] == "trial"}
    original = runs["0"]
    for t in trials[1:]:
        assert t.user_attrs["reused_from"]["number"] == 0
        assert t.values == trials[0].values  # Optuna knows its values
        run = runs[str(t.number)]
        assert run.info.status == "FINISHED"
        assert run.info.run_name.startswith(f"#{t.number} esam score=loss_rise") and "reuses #0" in run.info.run_name
        assert run.data.tags["esam.reused_from"] == original.info.run_id
        # not trained again: a new training would time its epoch anew
        assert run.data.metrics["epoch_time_s"] == original.data.metrics["epoch_time_s"]
        assert len(client.get_metric_history(run.info.run_id, "test_acc")) == 1
    assert original.info.run_name.startswith("#0 esam")


@pytest.mark.slow
def test_optuna_names_its_metrics_and_links_each_trial_to_its_run(stores):
    _, _, _, children, study = stores
    assert study.metric_names == [m for m, _ in OBJECTIVES]
    by_trial_id = {r.data.tags["trial_id"]: r.info.run_id for r in children}
    for t in study.trials:
        assert t.user_attrs["mlflow_run_id"] == by_trial_id[t.user_attrs["ray_trial_id"]]


@pytest.mark.slow
def test_the_experiment_opens_on_its_runs_and_the_parent_summarizes(searched, stores):
    _, uri, out, _ = searched
    _, exp, parent, _, study = stores
    assert exp.tags[mlflow_store.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning" in out
    assert f"mlflow ui --backend-store-uri {uri}" in out and "optuna-dashboard sqlite:///" in out
    m = parent.data.metrics
    best = study.trials[0].values
    assert m["best_test_acc"] == pytest.approx(best[0]) and m["best_speed_vs_sgd"] == pytest.approx(best[1])
    assert m["front_size"] == 1 and m["reused_trials"] == 2 and m["finished_trials"] == 1
    assert m["hypervolume"] == pytest.approx(best[0] * best[1])  # one point, reference (0, 0)
    note = parent.data.tags["mlflow.note.content"]
    assert "hypervolume" in note and "| run |" in note and "#0 esam" in note
    params = parent.data.params
    assert "train.optimizer.score" not in params and "space.score.choices" in params  # the searched field's default is gone
    assert "train.optimizer.lr" in params


@pytest.mark.slow
def test_progress_lines_carry_time(searched):
    lines = [line for line in searched[2].splitlines() if line.startswith("[esam]")]
    assert len(lines) == 3 and all("elapsed" in line for line in lines)
    assert "left" in lines[0] and lines[-1].split("|")[0].rstrip().endswith("done")


@pytest.mark.slow
def test_running_a_finished_search_again_says_it_is_complete(searched):
    first, again = searched[2], searched[3]
    assert "already complete" not in first
    line = next(i for i, text in enumerate(again.splitlines()) if "is already complete" in text)
    table = next(i for i, text in enumerate(again.splitlines()) if text.startswith("Pareto front"))
    assert line < table and "[esam]" not in again  # nothing trained


# --- the pieces, fast ---------------------------------------------------------------------------------------------

def test_hypervolume_uses_a_stated_reference_point():
    rows = [{"run_id": str(i), "status": "FINISHED", "kind": "trial", "test_acc": a, "speed_vs_sgd": s}
            for i, (a, s) in enumerate([(90.0, 1.0), (80.0, 2.0), (70.0, 1.5)])]
    rows.append({"run_id": "r", "status": "FINISHED", "kind": "trial", "test_acc": 99.0, "speed_vs_sgd": 9.0,
                 "reused_from": "0"})  # a reuse is the same point as its original: left out
    rows.append({"run_id": "s", "status": "FINISHED", "kind": "trial", "test_acc": 95.0, "speed_vs_sgd": 8.0,
                 "stopped_early": 2})  # stopped early: its metrics are an earlier epoch's, no point of the front
    area, ref = hypervolume(front_rows.candidates(rows), OBJECTIVES)
    assert ref == {"test_acc": 0.0, "speed_vs_sgd": 0.0}
    assert area == pytest.approx(90 * 1.0 + 80 * 1.0)


def test_labels_carry_the_trial_number_and_the_reuse():
    config = {"rho": 0.05, "beta": 0.6, "_number": 3}
    assert trial_label(config) == "#3 esam rho=0.05 beta=0.6"
    assert trial_label({**config, "_reuse": {"number": 1}}).endswith("(reuses #1)")
    assert trial_label({"optimizer": "sgd"}) == "sgd"
    from esam.config import OptimizerConfig, to_dict
    params = trial_params(to_dict(OptimizerConfig(name="esam")), {**config, "_reuse": {"number": 1}})
    assert not any(k.startswith("_") for k in params)


def test_duplicates_compare_what_the_stores_keep():
    assert setting_key({"rho": 0.1, "score": "loss_rise"}) == setting_key({"score": "loss_rise", "rho": 0.1 + 1e-17})
    assert setting_key({"rho": 0.1}) != setting_key({"rho": 0.1000001})


def test_repeats_report_the_mean_and_spread():
    out = mean_over_repeats([{"epoch": 2, "test_acc": 90.0, "speed_vs_sgd": 1.0},
                             {"epoch": 2, "test_acc": 92.0, "speed_vs_sgd": 1.2}])
    assert out["test_acc"] == 91.0 and out["epoch"] == 2 and out["repeats"] == 2
    assert out["test_acc_std"] == pytest.approx(2 ** 0.5) and out["speed_vs_sgd"] == pytest.approx(1.1)


def test_repeats_are_validated(tmp_path):
    path = small_search(tmp_path, "r")
    assert load_search_config(path, ["repeats=3"]).repeats == 3
    with pytest.raises(ConfigError, match="repeats must be >= 1"):
        load_search_config(path, ["repeats=0"])


def test_parent_params_leave_out_searched_defaults():
    resolved = {"train": {"epochs": 2, "optimizer": {"lr": 0.1, "rho": 0.05, "beta": 0.6}},
                "space": {"rho": {"low": 0.01, "high": 0.5}}}
    params = mlflow_runs.fixed_params(resolved)
    assert params["train"]["optimizer"] == {"lr": 0.1, "beta": 0.6} and params["space"] == resolved["space"]


def test_runs_url_for_a_server_and_for_a_file_store():
    assert mlflow_store.runs_url("http://host:5000/", "7") == ("http://host:5000/#/experiments/7/runs?workflowType=machine_learning", None)
    url, serve = mlflow_store.runs_url("sqlite:////tmp/m.db", "1")
    assert url == "http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning" and serve == "mlflow ui --backend-store-uri sqlite:////tmp/m.db"


def test_durations_read_short():
    assert [duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]


def test_search_help_shows_an_override_a_search_accepts(tmp_path):
    search = build_parser()._subparsers._group_actions[0].choices["search"].format_help()
    example = re.search(r"e\.g\. --set (\S+=\S+)", search.replace("\n", " ")).group(1)
    assert example.startswith(("trials=", "train."))
    load_search_config(small_search(tmp_path, "h"), [example])  # accepted


def test_a_config_saved_before_new_keys_is_the_same_search():
    # A search saved by an older esam lacks keys added since (repeats, typed space entries): it continues.
    from esam.config import to_dict
    from esam.search.config import SearchConfig
    from esam.search.recovery.startup import same_config
    current = to_dict(SearchConfig())
    older = {k: v for k, v in current.items() if k != "repeats"}
    older["space"] = {name: {"low": p["low"], "high": p["high"], **({"log": True} if p["log"] else {})}
                      for name, p in current["space"].items()}
    assert same_config(older, current)
    assert not same_config({**older, "sampler": {**older["sampler"], "seed": 7}}, current)
    assert same_config({**older, "trials": current["trials"] - 1, "concurrency": 5}, current)  # a search may grow


def test_connecting_leaves_the_environment_alone(tmp_path, monkeypatch):
    # mlflow.set_tracking_uri exports the URI; a second search in this process must not inherit it.
    import os

    from esam.search.front import rows as front_rows
    from esam.search.records import mlflow_runs
    from esam.search.stores import mlflow_store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow_store.connect(f"sqlite:///{tmp_path / 'first.db'}")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert mlflow_store.tracking_uri(None) == f"sqlite:///{tmp_path / 'mlflow.db'}"  # the working dir's store again


def test_a_retried_trial_logs_each_epoch_once(tmp_path):
    """A trial retried from an earlier checkpoint reports epochs again: MLflow keeps the first of each."""
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from esam.search.records.trial_records import TrialRunWriter
    from esam.search.tune.callbacks import MlflowTrialRuns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    parent = client.create_run(client.create_experiment("x")).info.run_id
    writer = TrialRunWriter(uri, parent)  # what the callback's records go through, synchronously here
    runs = MlflowTrialRuns(uri, parent, "trial", str, dict)
    runs._put = lambda trial, op, **fields: writer({"op": op, "trial_id": trial.trial_id, **fields})
    trial = SimpleNamespace(trial_id="t1", config={})
    runs.on_trial_start(0, [], trial)
    for epoch, node in [(1, "a"), (2, "a"), (1, "b"), (2, "b"), (3, "b")]:  # node a died after epoch 2
        runs.on_trial_result(0, [], trial, {"epoch": epoch, "test_acc": 10.0 * epoch + (node == "b"), "node": node})
    run_id = writer._runs["t1"]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "test_acc")] == [(1, 10.0), (2, 20.0), (3, 31.0)]
    assert client.get_run(run_id).data.tags["esam.node"] == "b"  # the move is still tagged
