"""The driver's MLflow writes for trial runs, kept in a RecordBuffer while the server is away.

Records (plain dicts, in order): {"op": "start", trial_id, name, kind, params},
{"op": "metrics", trial_id, step, timestamp, metrics[, tags]}, {"op": "end", trial_id, error, tags} and
{"op": "search_metrics", trial_id: "", step, timestamp, metrics[, tags]} (a point on the parent run).
Each is idempotent, so a retry after a lost answer, or a replay of the spill file by the next
run of the same search, neither duplicates a run nor a metric point.

One buffer per search run: run_search opens it (with its spill file), hands it to the Tune
callbacks of both experiments and to the searcher, and finishes it.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from esam.search.records import mlflow_runs
from esam.search.stores.paused import SearchPaused
from esam.search.stores.record_buffer import RecordBuffer, Rejected, backoff, outage_limit_s

SPILL_FILE = "mlflow_pending.jsonl"  # under <state_dir>/<name>/: what an outage kept from MLflow
# MLflow's answers that no retry can change (the server is up and says no).
_FINAL_ERRORS = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
                 "INVALID_STATE", "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED"}


class TrackingOutage(SearchPaused):
    """MLflow stayed away past the limit: the search stops the way an interrupt stops it."""


class TrialRunWriter:
    """Writes one record to MLflow; finds runs by their trial_id tag, so it creates them lazily."""

    def __init__(self, uri: str, parent_run_id: str):
        self.uri, self.parent_run_id = uri, parent_run_id
        self._client = None
        self._runs: dict[str, str] = {}
        self._last_step: dict[str, int] = {}  # run id -> the last epoch MLflow holds for it

    def run_of(self, trial_id: str) -> str | None:
        """The MLflow run this writer created or found for a Ray trial, if any yet."""
        return self._runs.get(trial_id)

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def __call__(self, record: dict) -> None:
        from mlflow.exceptions import MlflowException
        try:
            self._write(record)
        except MlflowException as err:
            if err.error_code in _FINAL_ERRORS:
                raise Rejected(str(err)) from None
            raise

    def _write(self, record: dict) -> None:
        op, trial_id = record["op"], record["trial_id"]
        if op == "search_metrics":
            mlflow_runs.log_search_metrics(self.client, self.parent_run_id, record["metrics"], record["step"],
                                           record["timestamp"], record.get("tags"))
            return
        if op == "start":
            self._last_step.pop(self._runs.get(trial_id, ""), None)  # a reopened run is read again
            self._runs[trial_id] = mlflow_runs.start_trial_run(self.client, self.parent_run_id, record["name"],
                                                            record["kind"], record["params"], trial_id,
                                                            record.get("tags"), record.get("same"))
            return
        run_id = self._runs.get(trial_id) or mlflow_runs.find_trial_run(self.client, self.parent_run_id, trial_id)
        if run_id is None:
            raise Rejected(f"no MLflow run for trial {trial_id}")
        self._runs[trial_id] = run_id
        if op == "metrics":
            metrics, step = record["metrics"], int(record["step"])
            if metrics and run_id not in self._last_step:  # a run this process did not start may hold epochs
                self._last_step[run_id] = mlflow_runs.last_logged_step(self.client, run_id, next(iter(metrics)))
            if metrics and step <= self._last_step[run_id]:
                # A trial retried or resumed from an earlier checkpoint (also after the driver itself
                # was killed) reports epochs the run holds: MLflow keeps the first attempt's points.
                metrics = {}
            if metrics or record.get("tags"):
                mlflow_runs.log_epoch(self.client, run_id, metrics, step, record["timestamp"], record.get("tags"))
            if metrics:  # only once written: a failed write is retried with the same record
                self._last_step[run_id] = step
        elif op == "end":
            mlflow_runs.end_trial_run(self.client, run_id, error=record.get("error"), tags=record.get("tags"))
        else:
            raise Rejected(f"unknown record {op!r}")


def open_records(uri: str, parent_run_id: str, directory: Path | None = None,
                 echo: Callable[[str], None] = print) -> RecordBuffer:
    """The buffer of this search; with `directory`, records a stopped run kept there are written first.

    Raises TrackingOutage when MLflow does not take them (they stay on disk).
    """
    spill = directory / SPILL_FILE if directory is not None else None
    buffer = RecordBuffer(TrialRunWriter(uri, parent_run_id), where=uri, spill=spill, echo=echo)
    if len(buffer):  # written before anything else reads the runs (start-up reconciliation does)
        echo(f"writing {len(buffer)} MLflow records kept by the last run")
        finish_records(buffer, wait=True)
        buffer = RecordBuffer(TrialRunWriter(uri, parent_run_id), where=uri, spill=spill, echo=echo)
    return buffer


def run_id_of(buffer: RecordBuffer, trial_id: str, wait_s: float = 0.0) -> str | None:
    """A trial's MLflow run id, once the search's record writer created it; `wait_s`: how long it may catch up."""
    if buffer.write.run_of(trial_id) is None and wait_s:
        buffer.drain(wait_s)
    return buffer.write.run_of(trial_id)


def finish_records(buffer: RecordBuffer, wait: bool) -> None:
    """Write what is waiting (with `wait`, for as long as an outage may last), then close the buffer.

    Raises TrackingOutage when records are left: they are spilled for the next run. A buffer already
    finished (the search's end, then its clean-up) is left as it is: nothing spilled or said twice.
    """
    if buffer.closed:
        return
    done = False
    try:  # an interrupt while waiting still closes (and spills) the buffer
        done = buffer.drain(buffer.max_outage_s + 60) if wait else buffer.drain(0)
    finally:
        left = buffer.close()
    if left:
        where = f" in {buffer.spill}" if buffer.spill else ""
        buffer.echo(f"MLflow at {buffer.where} {buffer.gave_up or 'did not take every record'}: "
                    f"{left} records kept{where}; they are written when the search continues")
    if wait and not done:
        raise TrackingOutage


def retry(call: Callable[[], object], what: str, limit_s: float | None = None,
          echo: Callable[[str], None] = print):
    """`call()` until it succeeds or MLflow stays away past `limit_s` (then TrackingOutage)."""
    limit_s = outage_limit_s() if limit_s is None else limit_s
    start, failures = time.monotonic(), 0
    while True:
        try:
            return call()
        except Exception as err:  # noqa: BLE001 - the store is away; try again later
            failures += 1
            if failures == 1:
                echo(f"warning: MLflow unreachable while writing {what}; retrying")
            if time.monotonic() - start > limit_s:
                echo(f"MLflow still unreachable after {limit_s:.0f} s: {what} not written "
                     f"({err.__class__.__name__}); run the same command again to finish")
                raise TrackingOutage from None
            time.sleep(backoff(failures))
