"""MLflow records of a search: its parent run, one nested child run per trial, provenance.

Only the driver writes (one writer per SQLite file avoids "database is locked"); for many
machines point `mlflow.tracking_uri` at an MLflow server. Knows nothing of Ray.
"""
from __future__ import annotations

import functools
import json
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from esam.config import brief
from esam.errors import ConfigError, first_line
from esam.search.config import NAME_PATTERN
from esam.search.stores.mlflow_store import experiment_id, without_password
from esam.suggestions import did_you_mean

PARENT_TAG = "mlflow.parentRunId"
SEARCH_TAG = "esam.search"
KIND_TAG = "esam.kind"  # search (parent), trial (Optuna's ESAM trials), reference (sgd/sam)
REFERENCE_TAG = "esam.reference"  # on a reference run: its optimizer (sgd, sam), the same across Ray trial ids
REUSED_TAG = "esam.reused_from"  # on a trial that repeated a finished trial's settings: that trial's run id
STOPPED_TAG = "esam.stopped_early"  # "true" on a trial the scheduler stopped before its last epoch
STOPPED_EPOCH_TAG = "esam.stopped_at_epoch"  # the last epoch such a trial trained
FEASIBLE_TAG = "esam.feasible"  # "true"/"false" on a trial of a search with constraints
NODE_TAG = "esam.node"  # on a trial: the Ray node it ran on last, "<node IP> <node id, 8 hex digits>"
WORKERS_TAG = "esam.workers"  # on a DDP trial: how many ranks trained it (resources.workers)
HYPERVOLUME_SERIES = "front_hypervolume"  # the parent run's series: the front's hypervolume after each ended trial
# on the parent run: the series' reference point ({metric: value}, JSON), fixed by its first points and kept by
# every later run of the search and by the final hypervolume, so that they all measure the same area
SERIES_REFERENCE_TAG = "esam.hypervolume_series_reference"
NOTE_TAG = "mlflow.note.content"  # a run's description in the MLflow UI (markdown)


@functools.lru_cache(maxsize=1)
def provenance() -> dict[str, str]:
    """Git commit of the esam checkout (when there is one) and the versions that shaped results."""
    info = {"python": platform.python_version(), "host": platform.node()}
    for pkg in ("esam", "torch", "torchvision", "ray", "optuna", "mlflow", "mlflow-skinny"):
        try:
            info[f"version.{pkg}"] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _log_params(client, run_id: str, params: dict) -> None:
    from mlflow.entities import Param
    items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def find_parent_run(client, experiment: str, search_name: str) -> str | None:
    """The newest parent run of search `search_name`, or None."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id],
                              filter_string=f"tags.`{SEARCH_TAG}` = '{search_name}' and tags.`{KIND_TAG}` = 'search'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def fixed_params(resolved_config: dict) -> dict:
    """The search config as the parent run's params: what the search really fixed.

    A searched optimizer field's default in `train.optimizer` was never used by a trial: it is
    left out (the field's range stays under `space.`). search_config.json keeps the whole config.
    """
    searched = set(resolved_config.get("space") or {})
    train = resolved_config.get("train") or {}
    optimizer = {k: v for k, v in (train.get("optimizer") or {}).items() if k not in searched}
    return {**resolved_config, "train": {**train, "optimizer": optimizer}} if train else dict(resolved_config)


def shareable(resolved_config: dict) -> dict:
    """The search config as MLflow and search.json record it: no store password (the command brings it)."""
    mlflow_section = resolved_config.get("mlflow") or {}
    return {**resolved_config, "optuna_storage": without_password(resolved_config.get("optuna_storage")),
            "results_dir": without_password(resolved_config.get("results_dir")),
            "mlflow": {**mlflow_section, "tracking_uri": without_password(mlflow_section.get("tracking_uri"))}}


def start_parent_run(client, experiment: str, search_name: str, resolved_config: dict,
                     existing_run_id: str | None = None) -> str:
    """Create (or reopen, when resuming) the parent run holding the config and provenance."""
    resolved_config = shareable(resolved_config)
    if existing_run_id is not None:
        experiment_id(client, experiment)  # a store from before the experiment kind was set gets it
        client.update_run(existing_run_id, status="RUNNING")
        return existing_run_id
    run = client.create_run(experiment_id(client, experiment), run_name=search_name,
                            tags={SEARCH_TAG: search_name, KIND_TAG: "search", **provenance()})
    _log_params(client, run.info.run_id, fixed_params(resolved_config))
    client.log_dict(run.info.run_id, resolved_config, "search_config.json")
    return run.info.run_id


def find_trial_run(client, parent_run_id: str, trial_id: str) -> str | None:
    """The child run of `parent_run_id` tagged with Ray's `trial_id`, or None."""
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.trial_id = '{trial_id}'",
                              order_by=["attributes.start_time ASC"], max_results=1)
    return runs[0].info.run_id if runs else None


def start_trial_run(client, parent_run_id: str, name: str, kind: str, params: dict, trial_id: str,
                    tags: dict | None = None, same: dict | None = None) -> str:
    """A child run nested under the search's parent (the UI groups by mlflow.parentRunId).

    Idempotent: a run already tagged with `trial_id` (a retry whose first answer was lost) is
    reopened, never duplicated; so is the run of the same trial under an earlier Ray trial id (a
    trial an earlier run did not finish), found by the tags in `same` (its Optuna trial number, or
    its reference's name) and re-tagged with the new id.
    """
    run_id = find_trial_run(client, parent_run_id, trial_id)
    if run_id is None and same:
        run_id = find_child(client, parent_run_id, same)
        if run_id is not None:
            client.set_tag(run_id, "trial_id", trial_id)
    if run_id is None:
        parent = client.get_run(parent_run_id)
        run_id = client.create_run(parent.info.experiment_id, run_name=name,
                                   tags={PARENT_TAG: parent_run_id, SEARCH_TAG: parent.data.tags.get(SEARCH_TAG, ""),
                                         KIND_TAG: kind, "trial_id": trial_id, **provenance(),
                                         **(same or {}), **(tags or {})}).info.run_id
    else:
        client.update_run(run_id, status="RUNNING")
        for key, value in (tags or {}).items():
            client.set_tag(run_id, key, value)
    _log_params(client, run_id, params)  # same values again are accepted: safe to repeat
    return run_id


def find_child(client, parent_run_id: str, tags: dict) -> str | None:
    """The earliest child run of `parent_run_id` carrying all of `tags`, or None."""
    parent = client.get_run(parent_run_id)
    where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs([parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and {where}",
                              order_by=["attributes.start_time ASC"], max_results=1)
    return runs[0].info.run_id if runs else None


def log_epoch(client, run_id: str, metrics: dict, step: int, timestamp_ms: int | None = None,
              tags: dict | None = None) -> None:
    """One epoch's metrics (and tags set with them); a delayed write passes the epoch's own time,
    so it reads as a timely one.

    Repeating the same batch (same values, step and time) adds no duplicate points.
    """
    from mlflow.entities import Metric, RunTag
    now = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)]
    client.log_batch(run_id, metrics=batch, tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])


def last_logged_step(client, run_id: str, key: str) -> int:
    """The highest step of metric `key` in the run (0 when it has none)."""
    return max((m.step for m in client.get_metric_history(run_id, key)), default=0)


def end_trial_run(client, run_id: str, error: str | None = None, tags: dict | None = None) -> None:
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)
    if error is not None:
        client.set_tag(run_id, "error", error[:5000])
    client.set_terminated(run_id, status="FAILED" if error is not None else "FINISHED")


def log_search_metrics(client, parent_run_id: str, metrics: dict, step: int, timestamp_ms: int,
                       tags: dict | None = None) -> None:
    """Metric points (and tags) on the search's parent run (e.g. the front's hypervolume after each trial)."""
    from mlflow.entities import Metric, RunTag
    client.log_batch(parent_run_id, metrics=[Metric(k, float(v), timestamp_ms, step) for k, v in metrics.items()],
                     tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])


def series_reference(client, parent_run_id: str, objectives: list[tuple[str, str]]) -> dict[str, float] | None:
    """The hypervolume series' reference point the search fixed (SERIES_REFERENCE_TAG), if it holds every
    objective; None when no run fixed one, or when every objective is maximized (its point is 0: MLflow
    is not asked)."""
    if all(mode == "max" for _, mode in objectives):
        return None
    text = client.get_run(parent_run_id).data.tags.get(SERIES_REFERENCE_TAG)
    try:
        point = json.loads(text) if text else None
        point = {str(k): float(v) for k, v in point.items()} if isinstance(point, dict) else None
    except (ValueError, TypeError, AttributeError):
        return None
    return point if point is not None and set(point) == {m for m, _ in objectives} else None


def trial_runs(client, parent_run_id: str) -> list:
    """All child runs of a search (any status), oldest first."""
    parent = client.get_run(parent_run_id)
    runs, token = [], None
    while True:
        page = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                                  order_by=["attributes.start_time ASC"], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def search_rows(client, parent_run_id: str) -> list[dict]:
    """Every child run of a search as a flat row (see run_summary), oldest first."""
    return [run_summary(r) for r in trial_runs(client, parent_run_id)]


def search_config_of(client, parent_run_id: str) -> dict:
    """The resolved search config stored on the parent run."""
    try:
        path = client.download_artifacts(parent_run_id, "search_config.json")
        config = json.loads(Path(path).read_text())
        objectives_of(config)
    except Exception as err:  # noqa: BLE001 - a search stopped before logging it, or lost artifacts
        raise ConfigError(f"search run {parent_run_id} has no readable search_config.json ({first_line(err)})") from None
    return config


def objectives_of(search_config: dict) -> list[tuple[str, str]]:
    """[(metric, mode), ...] of a stored search config."""
    return [(o["metric"], o["mode"]) for o in search_config["objectives"]]


def resolve_search(client, experiment: str, search: str | None) -> str:
    """A parent run id from a run id, a search name, or (None) the newest search."""
    if search:
        try:
            run = client.get_run(search)
            if run.data.tags.get(KIND_TAG) == "search":
                return run.info.run_id
        except Exception:  # noqa: BLE001 - not a run id: try it as a search name
            pass
        if not NAME_PATTERN.fullmatch(search):  # no search can have this name; keeps the filter string intact
            raise ConfigError(f"no search named {brief(search)}: search names are letters, digits, '_', '-', '.'")
        found = find_parent_run(client, experiment, search)
        if found is None:
            raise ConfigError(f"no search named {search!r} in MLflow experiment {brief(experiment)}"
                              + _known_searches(client, experiment, search))
        return found
    exp = client.get_experiment_by_name(experiment)
    runs = [] if exp is None else client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{KIND_TAG}` = 'search'",
        order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        missing = experiment_hint(client, experiment)
        raise ConfigError(f"no search recorded in MLflow experiment {brief(experiment)} at {client.tracking_uri}"
                          + (f": no such experiment {missing}" if missing else ""))
    return runs[0].info.run_id


def parent_runs(client, experiment: str) -> list:
    """Every search's parent run in `experiment`, newest first ([] when there is no such experiment)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], filter_string=f"tags.`{KIND_TAG}` = 'search'",
                                  order_by=["attributes.start_time DESC"], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _known_searches(client, experiment: str, wanted: str) -> str:
    """What an unknown search name's error adds: the searches there are (the newest 10), and the nearest one."""
    names = [n for n in dict.fromkeys(r.data.tags.get(SEARCH_TAG, "") for r in parent_runs(client, experiment)) if n]
    if not names:
        missing = experiment_hint(client, experiment)
        return f": no such experiment {missing}" if missing else "; it holds no search"
    more = f" and {len(names) - 10} more (esam ls)" if len(names) > 10 else ""
    return f" (searches: {', '.join(names[:10])}{more})" + did_you_mean(wanted, names, quote=True)


def experiment_hint(client, experiment: str) -> str:
    """"(experiments: ...); did you mean ...?" for an experiment the store lacks, or "" when it has it."""
    if client.get_experiment_by_name(experiment) is not None:
        return ""
    known = [e.name for e in client.search_experiments()]
    return f"(experiments: {', '.join(brief(n) for n in known[:10])})" + did_you_mean(experiment, known, quote=True)


def run_summary(run) -> dict:
    """A flat dict of a child run: ids, kind, status, params and last metric values."""
    row = {"run_id": run.info.run_id, "name": run.info.run_name, "status": run.info.status,
           "kind": run.data.tags.get(KIND_TAG, "")}
    if REUSED_TAG in run.data.tags:
        row["reused_from"] = run.data.tags[REUSED_TAG] or "unknown"
    if run.data.tags.get(STOPPED_TAG) == "true":
        row["stopped_early"] = _maybe_number(run.data.tags.get(STOPPED_EPOCH_TAG, "true"))
    row.update({k: _maybe_number(v) for k, v in run.data.params.items()})
    row.update(run.data.metrics)
    return row


def _maybe_number(value: str) -> Any:
    try:
        return json.loads(value)
    except (ValueError, TypeError):
        return value


def reference_runs(client, parent: str) -> dict[str, object]:
    """{optimizer: its MLflow run} of the search's references (the newest run of each)."""
    runs = {}
    for r in trial_runs(client, parent):
        if r.data.tags.get(KIND_TAG) == "reference":
            runs[r.data.tags.get(REFERENCE_TAG) or r.info.run_name] = r
    return runs


def references_left(client, parent: str, references: list[str]) -> list[str]:
    """The references no earlier run finished or failed (a failed reference is final, as a failed trial is)."""
    runs = reference_runs(client, parent)
    return [r for r in references if r not in runs or runs[r].info.status not in ("FINISHED", "FAILED")]


def reference_results(client, parent: str, epochs: int) -> dict[str, dict]:
    """{sgd|sam: final metrics} of the references that ran all their epochs (their MLflow runs)."""
    return {name: dict(r.data.metrics) for name, r in reference_runs(client, parent).items()
            if r.info.status == "FINISHED" and r.data.metrics.get("epoch", 0) >= epochs}
