"""The MLflow store a search records into: which URIs esam accepts, opening one, and the UI's address.

SQLite by default (one writer: only the driver writes); an MLflow server (http(s)://) for many
machines, with its users when it runs MLflow's basic-auth app. Knows nothing of runs or of Ray.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path

from esam.errors import ConfigError, first_line
from esam.search.stores.creation_lock import store_creation_lock

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
    from mlflow.tracking import MlflowClient

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


def without_password(url: str | None) -> str | None:
    """A database or server URL as it may be shown or recorded: its password replaced by ***."""
    if not url or "@" not in str(url):  # a local results_dir may be a Path
        return url
    return re.sub(r"^([A-Za-z][\w+.-]*://[^:/@]*:)[^@]*@", r"\1***@", str(url))


# MLflow's client reads these from the environment only. esam's commands set them, where the user has
# not, for their own duration (the environment is as it was afterwards): a server that is away fails in
# seconds, not after minutes of retries; MLflow's two "View run" lines per ended run would bury the
# progress lines (the search prints the runs page once); no progress bars in a search's output.
CLIENT_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                   "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


@contextlib.contextmanager
def client_settings():
    """CLIENT_SETTINGS in the environment while the block runs; the user's own values win."""
    added = {k: v for k, v in CLIENT_SETTINGS.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)
