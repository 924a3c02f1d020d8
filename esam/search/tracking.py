"""MLflow records: the search's parent run, one nested child run per trial, provenance.

Only the driver writes (one writer per SQLite file avoids "database is locked"); for many
machines point `mlflow.tracking_uri` at an MLflow server. Knows nothing of Ray.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import re
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from esam.errors import ConfigError, first_line
from esam.search.store_lock import store_creation_lock

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
NOTE_TAG = "mlflow.note.content"  # a run's description in the MLflow UI (markdown)
# MLflow 3 opens an experiment on its GenAI overview unless the experiment's kind says otherwise
# (mlflow/server/js: ExperimentKind.CUSTOM_MODEL_DEVELOPMENT); with this kind it opens on the runs.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


# MLflow's database stores and its server; plain paths and file: URIs are the deprecated file store.
_URI_FORMS = re.compile(r"sqlite:///[^?\n\r]+(\?.*)?|https?://[^/\s]+.*|(postgresql|mysql|mssql)(\+\w+)?://\S+")
URI_HELP = "sqlite:///PATH, http(s)://HOST:PORT, postgresql://..., mysql://... or mssql://..."


def tracking_uri(configured: str | None) -> str:
    """Config value, else $MLFLOW_TRACKING_URI, else a SQLite store mlflow.db in the working dir."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    check_uri(uri, "" if configured else " (from $MLFLOW_TRACKING_URI)")
    return uri


def check_uri(uri: str, source: str = "") -> None:
    """ConfigError unless `uri` names a store esam can use (see URI_HELP)."""
    if not isinstance(uri, str) or not _URI_FORMS.fullmatch(uri):
        shown = repr(uri) if len(repr(uri)) <= 80 else repr(uri)[:80] + "..."
        raise ConfigError(f"MLflow tracking URI {shown}{source} is not supported; use {URI_HELP}")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (query arguments dropped), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0])


def open_store(uri: str):
    """A client on an existing store, for commands that only read it (export, pareto).

    connect() lets MLflow create a missing SQLite file, its tables and parent directories; a
    mistyped URI here must create nothing, and a cut or foreign file must be one line.
    """
    path = sqlite_path(uri)
    if path is not None:
        _check_sqlite_store(path)
    try:
        return connect(uri)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - MLflow/SQLAlchemy reject a damaged store in many ways
        raise ConfigError(f"MLflow store {uri} cannot be read: {first_line(err)}") from None


def _check_sqlite_store(path: Path) -> None:
    """ConfigError unless `path` is an intact SQLite file holding MLflow's tables; opened read-only."""
    import sqlite3

    if not path.is_file():
        raise ConfigError(f"no MLflow store at {path}")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in db.execute("select name from sqlite_master where type = 'table'")}
            damaged = db.execute("pragma quick_check").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error as err:
        raise ConfigError(f"MLflow store {path} is not a readable SQLite database ({first_line(err)})") from None
    if damaged != "ok":
        raise ConfigError(f"MLflow store {path} is damaged (sqlite quick_check: {first_line(damaged)})")
    if not {"experiments", "runs"} <= tables:
        raise ConfigError(f"{path} is a SQLite database but no MLflow store (no experiments/runs tables)")



def connect(uri: str):
    """An MlflowClient that has answered once; an unreachable server is a ConfigError."""
    import mlflow
    from mlflow.tracking import MlflowClient

    if uri.startswith(("http://", "https://")):
        # Fail in seconds, not after MLflow's default minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        # MLflow prints two "View run" lines per ended run with a server: one per trial would bury the
        # progress lines; the search prints the runs page once at its end.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    import logging
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial tables"
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        with store_creation_lock(uri):  # two searches creating one SQLite store race in its migrations
            client = MlflowClient(tracking_uri=uri)  # a SQLite store is created (or read) right here
            client.search_experiments(max_results=1)
    except Exception as err:  # noqa: BLE001 - any failure here means "cannot record"
        refused = _refused_login(err)
        if refused == 401:  # a server with users (mlflow server --app-name basic-auth): it answered, and said no
            raise ConfigError(f"MLflow tracking server {without_password(uri)} refused the login (HTTP 401); "
                              f"{_login_hint()}") from None
        if refused == 403:
            raise ConfigError(f"MLflow tracking server {without_password(uri)} refused user "
                              f"{os.environ.get('MLFLOW_TRACKING_USERNAME', '')!r} (HTTP 403): "
                              f"ask its admin for a permission") from None
        raise ConfigError(f"MLflow tracking store {uri} is unreachable: {first_line(err)}") from None
    exported = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    # mlflow also exports the URI to this process's environment; only the driver writes, and a
    # later search in the same process must read its own config, not inherit this store.
    if exported is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = exported
    return client


def _refused_login(err: Exception) -> int | None:
    """401 or 403 when an MLflow server refused the request's login (or its user), else None."""
    status = getattr(err, "get_http_status_code", None)
    status = status() if callable(status) else None
    return status if status in (401, 403) else None


def _login_hint() -> str:
    """What to set, naming the variables MLflow's client reads and never their values."""
    unset = [v for v in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD") if not os.environ.get(v)]
    if unset:
        return f"{' and '.join(unset)} {'is' if len(unset) == 1 else 'are'} not set: set both to a user of that server"
    return "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (a user of that server, its password)"


def experiment_id(client, name: str) -> str:
    """The experiment's id, created when missing; marked a model-training experiment (see EXPERIMENT_KIND)."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    if exp.lifecycle_stage == "deleted":
        raise ConfigError(f"MLflow experiment {name!r} is deleted; restore it or choose another mlflow.experiment")
    kind = exp.tags.get(EXPERIMENT_KIND_TAG, "")
    if not kind or kind.endswith("_inferred") or kind == "no_inferred_type":  # a user's explicit choice stays
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def runs_url(uri: str, experiment: str) -> tuple[str, str | None]:
    """(the experiment's runs page, the command that serves it or None when a server already does)."""
    from urllib.parse import quote
    # MLflow 3's UI picks "Model training" or GenAI from the URL (else a toggle it keeps in the
    # browser, GenAI by default); the experimentKind tag alone does not decide it.
    page = f"/#/experiments/{quote(str(experiment))}/runs?workflowType=machine_learning"
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/") + page, None
    return "http://127.0.0.1:5000" + page, f"mlflow ui --backend-store-uri {uri}"


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


def without_password(url: str | None) -> str | None:
    """A database or server URL as it may be shown or recorded: its password replaced by ***."""
    if not url or "@" not in str(url):  # a local results_dir may be a Path
        return url
    return re.sub(r"^([A-Za-z][\w+.-]*://[^:/@]*:)[^@]*@", r"\1***@", str(url))


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


def log_search_metrics(client, parent_run_id: str, metrics: dict, step: int, timestamp_ms: int) -> None:
    """Metric points on the search's parent run (e.g. the front's hypervolume after each trial)."""
    from mlflow.entities import Metric
    client.log_batch(parent_run_id, metrics=[Metric(k, float(v), timestamp_ms, step) for k, v in metrics.items()])


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


def finished(rows: list[dict], kind: str | None = None) -> list[dict]:
    """The rows of runs that ran to their last epoch (FINISHED), optionally only one kind: trial | reference.

    Left out: a trial the scheduler stopped early (its metrics are from an earlier epoch, so it
    is no point of the front), and a trial that reused a finished trial's result (same settings,
    see optuna_searcher.py: it is the same point, and the front, plots and picks show it once).
    """
    return [r for r in rows if r.get("status") == "FINISHED" and (kind is None or r.get("kind") == kind)
            and not r.get("reused_from") and not r.get("stopped_early")]


def candidates(rows: list[dict], constraints: list | tuple = ()) -> list[dict]:
    """The trials the front, the picks and the export choose from: finished, and feasible.

    `constraints` (esam.search.constraints.Constraint) are judged against the reference rows.
    """
    from esam.search.constraints import is_feasible, reference_values
    trials = finished(rows, "trial")
    if not constraints:
        return trials
    references = reference_values(rows)
    return [r for r in trials if is_feasible(list(constraints), r, references)]


def constraints_of(search_config: dict) -> list:
    """The parsed constraints of a stored search config (none for a search made before they existed)."""
    from esam.search.config import OBJECTIVE_METRICS
    from esam.search.constraints import parse_all
    return parse_all(search_config.get("constraints") or [], OBJECTIVE_METRICS,
                     search_config.get("references") or [])


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
    from esam.config import brief
    from esam.search.config import NAME_PATTERN
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
    from esam.suggestions import did_you_mean
    names = [n for n in dict.fromkeys(r.data.tags.get(SEARCH_TAG, "") for r in parent_runs(client, experiment)) if n]
    if not names:
        missing = experiment_hint(client, experiment)
        return f": no such experiment {missing}" if missing else "; it holds no search"
    more = f" and {len(names) - 10} more (esam ls)" if len(names) > 10 else ""
    return f" (searches: {', '.join(names[:10])}{more})" + did_you_mean(wanted, names, quote=True)


def experiment_hint(client, experiment: str) -> str:
    """"(experiments: ...); did you mean ...?" for an experiment the store lacks, or "" when it has it."""
    from esam.config import brief
    from esam.suggestions import did_you_mean
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


def _markdown_table(front: list[dict], references: list[dict], objectives: list[tuple[str, str]]) -> str:
    from esam.search.space import METHOD_KNOBS
    known = ("optimizer", "rho", "beta", "gamma", "score", *(k for k, _ in METHOD_KNOBS), "lr")
    settings = [k for k in known if any(k in r for r in front)]
    columns = [m for m, _ in objectives] + settings
    lines = ["| run | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]

    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else ("-" if v is None else str(v))
    for r in list(front) + list(references):
        lines.append(f"| {r.get('name') or r['run_id'][:12]} | " + " | ".join(cell(r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _front_sentence(rows: list[dict], objectives: list[tuple[str, str]]) -> str:
    """The noise-aware sentence on which reference dominates which ESAM points, when that module is there."""
    for module in ("esam.search.front_summary", "esam.search.pareto_report"):
        try:
            summary = getattr(__import__(module, fromlist=["front_summary"]), "front_summary")
        except (ImportError, AttributeError):
            continue
        try:
            return str(summary(rows, objectives))
        except Exception:  # noqa: BLE001 - a description is no reason to fail a finished search
            return ""
    return ""


def summarize_parent(client, parent_run_id: str, rows: list[dict], front: list[dict], references: list[dict],
                     objectives: list[tuple[str, str]], constraints: list | tuple = ()) -> dict[str, float]:
    """The parent run's summary metrics and description (the front as a table, and what it says)."""
    from mlflow.entities import Metric, RunTag

    from esam.search.front_summary import trials_method
    from esam.search.hypervolume import hypervolume
    trials = [r for r in rows if r["kind"] == "trial"]
    done = finished(rows, "trial")
    feasible = candidates(rows, constraints)
    metrics: dict[str, float] = {}
    for m, mode in objectives:
        values = [float(r[m]) for r in feasible if isinstance(r.get(m), (int, float)) and r[m] == r[m]]
        if values:
            metrics[f"best_{m}"] = max(values) if mode == "max" else min(values)
    area, reference = hypervolume(feasible, objectives)
    metrics.update(front_size=float(len(front)), hypervolume=area, finished_trials=float(len(done)),
                   failed_trials=float(sum(r["status"] == "FAILED" for r in trials)),
                   reused_trials=float(sum(bool(r.get("reused_from")) for r in trials)),
                   stopped_trials=float(sum(bool(r.get("stopped_early")) for r in trials)))
    if constraints:
        metrics["infeasible_trials"] = float(len(done) - len(feasible))
    point = ", ".join(f"{m} {v:g}" for m, v in reference.items())
    sentence = _front_sentence(rows, objectives)
    stopped = f", {int(metrics['stopped_trials'])} stopped early" if metrics["stopped_trials"] else ""
    infeasible = (f"; {int(metrics['infeasible_trials'])} of them miss the constraints "
                  f"({'; '.join(c.text for c in constraints)})" if constraints else "")
    method = trials_method(done)  # "ESAM", "LookSAM", ...; None when the method was searched
    note = (f"**{method or 'Method'} search**: {len(done)} {method + ' ' if method else ''}trials ran all their "
            f"epochs ({int(metrics['failed_trials'])} failed, "
            f"{int(metrics['reused_trials'])} reused an earlier trial's result{stopped}){infeasible}; "
            f"{len(front)} on the Pareto front; hypervolume {area:.4g} over the reference point ({point}).\n\n"
            + (sentence + "\n\n" if sentence else "")
            + "Pareto front, then the references:\n\n" + _markdown_table(front, references, objectives))
    now = int(time.time() * 1000)
    client.log_batch(parent_run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                     tags=[RunTag(NOTE_TAG, note[:5000]), RunTag("esam.hypervolume_reference", point)])
    return metrics
