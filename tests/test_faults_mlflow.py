"""MLflow going away during a search: trials go on, records wait, nothing is lost.

The buffer's own rules are checked with a tiny fake writer; the searches run against a real
`mlflow server` (HTTP, SQLite store) that the test stops and restarts on the same port and store.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from esam.cli import default_search_config
from esam.search.records.trial_records import SPILL_FILE, TrialRunWriter
from esam.search.stores.record_buffer import RecordBuffer, Rejected, backoff


class FlakyWriter:
    """Fails while `down` is set (or for records in `refused`), else appends to `written`."""

    def __init__(self):
        self.down, self.written, self.attempts, self.refused = threading.Event(), [], 0, set()

    def __call__(self, record):
        self.attempts += 1
        if record["n"] in self.refused:
            raise Rejected("no")
        if self.down.is_set():
            raise ConnectionError("connection refused")
        self.written.append(record["n"])


def test_records_are_written_in_order_once_the_store_is_back():
    writer, lines = FlakyWriter(), []
    writer.down.set()
    buffer = RecordBuffer(writer, where="http://x", echo=lines.append, first_backoff_s=0.01, max_backoff_s=0.05)
    for n in range(50):
        buffer.put({"n": n})
    time.sleep(0.3)
    assert writer.written == [] and len(buffer) == 50 and writer.attempts > 3  # retried, kept everything
    writer.down.clear()
    assert buffer.drain(5)
    assert writer.written == list(range(50))
    assert buffer.close() == 0
    assert len(lines) == 2, lines  # one line when it went away, one when it came back
    assert lines[0].startswith("warning: MLflow at http://x unreachable") and "keeping 50 records" in lines[0]
    assert lines[1].startswith("MLflow back") and "wrote 50 records" in lines[1]


def test_backoff_doubles_up_to_a_cap():
    assert [backoff(n, 0.5, 8.0) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_a_refused_record_is_reported_and_skipped():
    writer, lines = FlakyWriter(), []
    writer.refused.add(1)
    buffer = RecordBuffer(writer, where="u", echo=lines.append)
    for n in range(3):
        buffer.put({"n": n, "op": "metrics"})
    assert buffer.drain(5) and writer.written == [0, 2]
    buffer.close()
    assert len(lines) == 1 and "refused a record (metrics)" in lines[0]


def test_past_the_bounds_the_buffer_gives_up_and_spills_for_the_next_run(tmp_path):
    spill = tmp_path / "pending.jsonl"
    writer = FlakyWriter()
    writer.down.set()
    buffer = RecordBuffer(writer, where="u", spill=spill, max_records=3, echo=lambda _: None)
    for n in range(4):
        buffer.put({"n": n})
    assert buffer.gave_up == "more than 3 records waiting"
    assert not buffer.drain(1)
    assert buffer.close() == 4
    assert [json.loads(line)["n"] for line in spill.read_text().splitlines()] == [0, 1, 2, 3]

    slow = RecordBuffer(FlakyWriter(), where="u", max_outage_s=0.2, first_backoff_s=0.01, echo=lambda _: None)
    slow.write.down.set()
    slow.put({"n": 0})
    assert not slow.drain(5) and slow.gave_up.startswith("unreachable for more than")
    slow.close()

    writer = FlakyWriter()  # the next run: spilled records go first, then the new ones
    buffer = RecordBuffer(writer, where="u", spill=spill, echo=lambda _: None)
    buffer.put({"n": 4})
    assert buffer.drain(5) and buffer.close() == 0
    assert writer.written == [0, 1, 2, 3, 4] and not spill.exists()


def test_a_search_s_records_are_finished_once(tmp_path):
    """The search finishes its record writer at its end and again in its clean-up: the second is a no-op
    (the records left are spilled and said once)."""
    from esam.search.records.trial_records import TrackingOutage, finish_records
    spill, lines = tmp_path / "pending.jsonl", []
    writer = FlakyWriter()
    writer.down.set()
    buffer = RecordBuffer(writer, where="u", spill=spill, max_outage_s=0.2, first_backoff_s=0.01, echo=lines.append)
    buffer.put({"n": 0})
    with pytest.raises(TrackingOutage):
        finish_records(buffer, wait=True)
    finish_records(buffer, wait=False)
    assert buffer.closed and sum("records kept" in line for line in lines) == 1, lines
    assert [json.loads(line)["n"] for line in spill.read_text().splitlines()] == [0]


def test_a_killed_process_leaves_what_mlflow_had_not_taken_in_the_journal(tmp_path):
    """SIGKILL runs no close(): the spill file, appended on every put, already holds the pending records."""
    spill = tmp_path / "pending.jsonl"
    writer = FlakyWriter()
    buffer = RecordBuffer(writer, where="u", spill=spill, echo=lambda _: None)
    buffer.put({"n": 0})
    assert buffer.drain(5) and spill.read_text() == ""  # written: nothing left to replay
    writer.down.set()
    buffer.put({"n": 1})
    buffer.put({"n": 2})
    assert [json.loads(line)["n"] for line in spill.read_text().splitlines()] == [1, 2]  # "killed" here
    writer = FlakyWriter()
    again = RecordBuffer(writer, where="u", spill=spill, echo=lambda _: None)  # the next run replays them
    assert again.drain(5) and writer.written == [1, 2] and again.close() == 0 and not spill.exists()


def test_a_new_driver_keeps_the_epochs_a_run_already_holds(tmp_path):
    """A trial resumed from an earlier checkpoint after the driver died reports epoch 2 again: the
    next driver's writer (which never saw epoch 2) keeps MLflow's first point and adds epoch 3."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    parent = client.create_run(client.create_experiment("x")).info.run_id
    start = {"op": "start", "trial_id": "t1", "name": "esam", "kind": "search", "params": {}}
    first = TrialRunWriter(uri, parent)
    for record in (start, *({"op": "metrics", "trial_id": "t1", "step": e, "timestamp": 1000 + e,
                             "metrics": {"test_acc": 10.0 * e}} for e in (1, 2))):
        first(record)
    second = TrialRunWriter(uri, parent)  # the rerun's writer: only MLflow knows what was logged
    for e, acc, tags in ((2, 99.0, {"esam.node": "n2"}), (3, 30.0, None)):
        second({"op": "metrics", "trial_id": "t1", "step": e, "timestamp": 5000 + e, "metrics": {"test_acc": acc},
                "tags": tags})
    run_id = first._runs["t1"]
    history = [(m.step, m.value) for m in client.get_metric_history(run_id, "test_acc")]
    assert sorted(history) == [(1, 10.0), (2, 20.0), (3, 30.0)]
    assert client.get_run(run_id).data.tags["esam.node"] == "n2"  # the tag of a repeated epoch is kept


# End to end: a real server, real Ray and Optuna.

EPOCHS = 4


def _search_config(tmp_path, name: str, trials: int, references: list[str]):
    config = yaml.safe_load(default_search_config().read_text())
    config.update(name=name, trials=trials, concurrency=1, references=references,
                  sampler={"name": "random", "seed": 3})
    config["train"].update(epochs=EPOCHS, probe_steps=1)
    config["train"]["data"].update(train_limit=512, test_limit=128)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def searches():
    """Search processes started by a test; killed if the test fails before they end."""
    started = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def _start_search(searches, tmp_path, path, url: str, **env):
    proc = subprocess.Popen([sys.executable, "-m", "esam.cli", "search", str(path)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_TRACKING_URI": url, **env})
    searches.append(proc)
    return proc


def _wait_for_first_result(client: MlflowClient, proc, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        exp = client.get_experiment_by_name("esam")
        if exp is not None and any("epoch" in r.data.metrics for r in client.search_runs([exp.experiment_id])):
            return
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"no trial result reached MLflow in time:\n{proc.communicate()[0]}")


def _check_stores(tmp_path, client: MlflowClient, name: str, kinds: list[str]) -> None:
    """Every run FINISHED once with epochs 1..EPOCHS, Optuna agrees with MLflow, the front is logged."""
    exp = client.get_experiment_by_name("esam")
    runs = client.search_runs([exp.experiment_id], f"tags.`esam.search` = '{name}'")
    assert sorted(r.data.tags["esam.kind"] for r in runs) == sorted(kinds + ["search"])
    parent = next(r for r in runs if r.data.tags["esam.kind"] == "search")
    children = [r for r in runs if r is not parent]
    assert parent.info.status == "FINISHED"
    assert "pareto/pareto.html" in {a.path for a in client.list_artifacts(parent.info.run_id, "pareto")}
    assert len({r.data.tags["trial_id"] for r in children}) == len(children)  # no duplicate runs
    for r in children:
        assert r.info.status == "FINISHED", (r.info.run_name, r.info.status)
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        for key in ("test_acc", "train_loss", "speed_vs_sgd"):
            assert [m.step for m in client.get_metric_history(r.info.run_id, key)] == list(range(1, EPOCHS + 1)), key
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'esam_results' / name / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * kinds.count("trial")
    by_rho = {r.data.params["rho"]: r for r in children if r.data.tags["esam.kind"] == "trial"}
    for t in study.trials:
        run = by_rho[str(t.params["rho"])]
        assert t.values == [run.data.metrics["test_acc"], run.data.metrics["speed_vs_sgd"]]


@pytest.mark.slow
def test_a_short_outage_loses_nothing(tmp_path, mlflow_service, searches):
    path = _search_config(tmp_path, "outage", trials=2, references=["sgd"])
    client = MlflowClient(tracking_uri=mlflow_service.url)
    proc = _start_search(searches, tmp_path, path, mlflow_service.url)
    _wait_for_first_result(client, proc)
    mlflow_service.stop()
    down_at = time.time()
    time.sleep(12)  # with the restart (~10-25 s on two busy cores): down ~25-40 s
    mlflow_service.start()
    print(f"server down {time.time() - down_at:.0f} s; search still running: {proc.poll() is None}")
    out, _ = proc.communicate(timeout=400)
    print(out)
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    assert len([line for line in out.splitlines() if "unreachable" in line]) == 1, out
    assert len([line for line in out.splitlines() if line.startswith("MLflow back")]) == 1, out
    _check_stores(tmp_path, client, "outage", ["reference", "trial", "trial"])


@pytest.mark.slow
def test_an_outage_past_the_limit_stops_cleanly_and_the_rerun_loses_nothing(tmp_path, mlflow_service, searches):
    path = _search_config(tmp_path, "longout", trials=2, references=[])
    client = MlflowClient(tracking_uri=mlflow_service.url)
    proc = _start_search(searches, tmp_path, path, mlflow_service.url, ESAM_MLFLOW_MAX_OUTAGE_S="3")
    _wait_for_first_result(client, proc)
    mlflow_service.stop()
    out, _ = proc.communicate(timeout=240)
    print(out)
    assert proc.returncode == 75, out  # stopped by the outage, not by a signal (130/143)
    assert "run the same command again to continue it" in out
    assert "Traceback" not in out
    spill = tmp_path / "esam_results" / "longout" / SPILL_FILE
    assert spill.is_file() and spill.read_text().strip(), out  # kept on disk, not dropped

    mlflow_service.start()
    proc = _start_search(searches, tmp_path, path, mlflow_service.url)
    out, _ = proc.communicate(timeout=400)
    print(out)
    assert proc.returncode == 0, out
    assert not spill.exists()
    _check_stores(tmp_path, client, "longout", ["trial", "trial"])


def test_an_epoch_whose_write_failed_is_written_on_the_retry(tmp_path):
    """The writer remembers an epoch as logged only once MLflow took it: the buffer's retry writes it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    parent = client.create_run(client.create_experiment("x")).info.run_id
    writer = TrialRunWriter(uri, parent)
    writer({"op": "start", "trial_id": "t1", "name": "esam", "kind": "trial", "params": {}})
    record = {"op": "metrics", "trial_id": "t1", "step": 1, "timestamp": 1001, "metrics": {"test_acc": 10.0}}
    real = writer.client

    class LosesWrites:  # the server goes away between the writer's read of the run and its write
        def __getattr__(self, name):
            return getattr(real, name)

        def log_batch(self, *args, **kwargs):
            raise ConnectionError("server away")

    writer._client = LosesWrites()
    with pytest.raises(ConnectionError):
        writer(record)
    writer._client = real  # ... and the retry of the same record lands
    writer(record)
    assert [m.step for m in client.get_metric_history(writer._runs["t1"], "test_acc")] == [1]
