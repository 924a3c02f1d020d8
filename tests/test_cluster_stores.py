"""The cluster's stores for real: Optuna on PostgreSQL, MLflow as a server on PostgreSQL, artifacts over HTTP.

A search talks to PostgreSQL (its Optuna study) and to the MLflow server (everything else, artifacts
included: `--serve-artifacts`), never to a local store. Then PostgreSQL is restarted while a trial
runs: the search carries on (Optuna's storage waits the outage out: esam/search/stores/optuna_outage.py),
or stops with the one-line stop message and continues when run again; either way every store ends
with every trial once. One PostgreSQL and one MLflow server (tests/cluster_helpers.py) serve the
module; each search has its own Optuna database.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import optuna
import pytest
from cluster_helpers import (  # noqa: F401 - mlflow_on_postgres and postgres are fixtures
    PASSWORD,
    assert_values_agree,
    mlflow_on_postgres,
    postgres,
    read_stores,
    served_artifact,
)
from conftest import MlflowServer, search_in, small_search
from faults_helpers import assert_agree, run, start, wait_for
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

STOP_LINE = "run the same command again to continue it"


def _config(directory: Path, name: str, optuna_url: str, server: MlflowServer, **kwargs) -> Path:
    return small_search(directory, name, optuna_storage=optuna_url, mlflow={"tracking_uri": server.url}, **kwargs)


# --- a search on PostgreSQL and the MLflow server ------------------------------------------------------------------

@pytest.fixture(scope="module")
def searched(postgres, mlflow_on_postgres, tmp_path_factory):  # noqa: F811
    """(the driver's directory, Optuna's URL, what the search printed)."""
    driver = tmp_path_factory.mktemp("driver")
    optuna_url = postgres.database("optuna_pg")
    out = search_in(driver, _config(driver, "pg", optuna_url, mlflow_on_postgres, trials=3, concurrency=2))
    return driver, optuna_url, out


def test_a_search_keeps_its_study_in_postgresql_and_everything_else_in_the_mlflow_server(
        searched, mlflow_on_postgres):  # noqa: F811
    driver, optuna_url, _ = searched
    server = mlflow_on_postgres
    s = read_stores(driver, "pg", optuna_url, server.url)
    assert_agree(s, epochs=1, parent_status="FINISHED")
    assert s.statuses("trial") == ["FINISHED"] * 3 and s.statuses("reference") == ["FINISHED"]
    assert_values_agree(optuna.load_study(study_name="pg", storage=optuna_url), MlflowClient(server.url), trials=3)
    # The front went through the server: served over HTTP, kept in the server's artifact destination.
    front = json.loads(served_artifact(server.url, s.parents[0], "pareto/pareto.json"))
    assert front["front"] and list(front["objectives"][0]) == ["test_acc", "max"]
    assert list((server.root / "art").rglob("pareto.json"))
    # Nothing local: no SQLite store, no artifact directory, no Optuna file beside Ray's results.
    local = [p.relative_to(driver) for p in driver.rglob("*")
             if p.name in ("mlflow.db", "mlruns", "mlartifacts", "optuna.db")]
    assert local == [], local


def test_the_database_password_is_shown_nowhere(searched, mlflow_on_postgres):  # noqa: F811
    driver, optuna_url, out = searched
    client = MlflowClient(tracking_uri=mlflow_on_postgres.url)
    parent = read_stores(driver, "pg", optuna_url, mlflow_on_postgres.url).parents[0]
    recorded = json.dumps([parent.data.params, parent.data.tags, client.get_experiment(
        parent.info.experiment_id).tags])
    config = Path(client.download_artifacts(parent.info.run_id, "search_config.json", str(driver))).read_text()
    state = (driver / "esam_results/pg/search.json").read_text()  # results_dir is often a shared filesystem
    again = search_in(driver, driver / "pg.yaml")  # the saved config, password masked, still matches the command's
    assert "already complete" in again
    leaks = [where for where, text in (("stdout", out + again), ("MLflow params and tags", recorded),
                                      ("search_config.json", config), ("search.json", state)) if PASSWORD in text]
    assert leaks == [], leaks


# --- PostgreSQL restarted while a trial trains ---------------------------------------------------------------------

def test_a_postgresql_restart_during_a_trial_loses_nothing(postgres, mlflow_on_postgres, tmp_path):  # noqa: F811
    server = mlflow_on_postgres
    optuna_url = postgres.database("optuna_restart")
    path = _config(tmp_path, "restart", optuna_url, server, trials=2, concurrency=1, references=(), epochs=3)
    client = MlflowClient(tracking_uri=server.url)

    def a_trial_mid_training() -> bool:
        exp = client.get_experiment_by_name("esam")
        return any(r.info.status == "RUNNING" and "epoch" in r.data.metrics
                   for r in client.search_runs([exp.experiment_id], "tags.`esam.search` = 'restart' and "
                                                                    "tags.`esam.kind` = 'trial'"))

    proc = start(path, tmp_path)
    try:
        wait_for(a_trial_mid_training, proc, what="a trial's first epoch in MLflow")
        postgres.stop("fast")  # every session of Optuna's and MLflow's ends, as an operator's restart does
        time.sleep(3)
        postgres.start()
        first, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    print(first)
    # Carried on, with one line as the outage starts and one as it ends; or stopped as Ctrl-C stops.
    assert "Traceback" not in first and PASSWORD not in first, first[-3000:]
    outage = [line for line in first.splitlines() if "Optuna's database at" in line]
    if proc.returncode == 0:
        assert len(outage) == 2 and outage[0].startswith("warning: ") and " back after " in outage[1], outage
    else:
        assert proc.returncode == 75 and STOP_LINE in first, first[-3000:]  # stopped by the outage, not a signal
        rc, out = run(path, tmp_path)
        print(out)
        assert rc == 0 and "Traceback" not in out, out

    # Nothing lost, nothing twice: two trials, one Optuna trial and one MLflow run each, every epoch once.
    s = read_stores(tmp_path, "restart", optuna_url, server.url)
    assert_agree(s, epochs=3, parent_status="FINISHED")
    assert s.statuses("trial") == ["FINISHED"] * 2 and len(s.optuna) == 2
    assert all(steps == [1, 2, 3] for steps in s.history.values()) and len(s.history) == 2
    assert_values_agree(optuna.load_study(study_name="restart", storage=optuna_url), client, trials=2)


def test_a_database_away_past_the_limit_stops_cleanly_and_the_rerun_loses_nothing(postgres, tmp_path):  # noqa: F811
    """ESAM_OPTUNA_MAX_OUTAGE_S short, PostgreSQL down longer: a stop as Ctrl-C's, then the same command finishes.

    MLflow is a local store here, so that only Optuna's database goes away. The limit passes in Ray's
    loop (the searcher asks Ray to stop), or after it when the trial's last epoch came first (the
    check that every trial ended stops); tests/test_storage_outage.py checks the searcher on its own.
    """
    optuna_url = postgres.database("optuna_away")
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = small_search(tmp_path, "away", trials=1, concurrency=1, references=(), epochs=3,
                        optuna_storage=optuna_url, mlflow={"tracking_uri": tracking_uri})
    client = MlflowClient(tracking_uri=tracking_uri)

    def a_trial_mid_training() -> bool:
        exp = client.get_experiment_by_name("esam")
        return any(r.info.status == "RUNNING" and "epoch" in r.data.metrics
                   for r in client.search_runs([exp.experiment_id], "tags.`esam.kind` = 'trial'"))

    proc = start(path, tmp_path, env={"ESAM_OPTUNA_MAX_OUTAGE_S": "4"})
    try:
        wait_for(a_trial_mid_training, proc, what="a trial's first epoch in MLflow")
        postgres.stop("fast")
        try:
            first, _ = proc.communicate(timeout=120)
        finally:
            postgres.start()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    print(first)
    assert proc.returncode == 75 and STOP_LINE in first and "Traceback" not in first, first[-3000:]  # no signal: 75
    assert "still unreachable after 4 s (ESAM_OPTUNA_MAX_OUTAGE_S): stopping the search" in first
    rc, out = run(path, tmp_path)
    print(out)
    assert rc == 0 and "Traceback" not in out, out

    s = read_stores(tmp_path, "away", optuna_url, tracking_uri)
    assert_agree(s, epochs=3, parent_status="FINISHED")
    assert s.statuses("trial") == ["FINISHED"] and len(s.optuna) == 1 and list(s.history.values()) == [[1, 2, 3]]
    assert_values_agree(optuna.load_study(study_name="away", storage=optuna_url), client, trials=1)
