"""`esam ls`: the searches an MLflow store holds, one line each, as an aligned text table.

Everything comes from the parent runs and one query for all trial runs of the experiment, so a
store with many searches answers in a few queries, not one per search.
"""
from __future__ import annotations

import ast
import datetime as dt
from pathlib import Path
from urllib.parse import unquote, urlparse

from esam.search.records import mlflow_runs

COLUMNS = ("search", "methods", "ended", "failed", "stopped", "front", "hypervolume", "started", "state", "pareto.png")
_ENDED = ("FINISHED", "FAILED", "KILLED")


def search_table(client, experiment: str) -> list[dict]:
    """One row per search (newest first): its name, methods, trial counts, front, hypervolume, start, state, plot."""
    parents = mlflow_runs.parent_runs(client, experiment)
    trials = _trials_by_parent(client, experiment) if parents else {}
    return [_row(run, trials.get(run.info.run_id, [])) for run in parents]


def _trials_by_parent(client, experiment: str) -> dict[str, list]:
    """Every proposed trial's run in the experiment (references left out), grouped by its parent run."""
    exp = client.get_experiment_by_name(experiment)
    grouped: dict[str, list] = {}
    token = None
    while True:
        page = client.search_runs([exp.experiment_id], filter_string=f"tags.`{mlflow_runs.KIND_TAG}` = 'trial'",
                                  max_results=1000, page_token=token)
        for run in page:
            grouped.setdefault(run.data.tags.get(mlflow_runs.PARENT_TAG, ""), []).append(run)
        token = page.token
        if not token:
            return grouped


def _row(parent, trials: list) -> dict:
    metrics, tags = parent.data.metrics, parent.data.tags
    tried = {r.data.params.get("optimizer") for r in trials} - {None}
    front = metrics.get("front_size")
    if front is None and any("pareto" in r.data.tags for r in trials):  # tagged by `esam pareto`, not summarized
        front = sum(r.data.tags.get("pareto") == "true" for r in trials)
    # the final figure when the search summarized its front, else the last point of the running series
    area = metrics.get("hypervolume", metrics.get(mlflow_runs.HYPERVOLUME_SERIES))
    return {
        "search": tags.get(mlflow_runs.SEARCH_TAG) or parent.info.run_name or parent.info.run_id,
        "methods": ",".join(sorted(tried)) if tried else ",".join(configured_methods(parent.data.params)),
        "ended": sum(r.info.status in _ENDED for r in trials),
        "failed": sum(r.info.status == "FAILED" for r in trials),
        "stopped": sum(r.data.tags.get(mlflow_runs.STOPPED_TAG) == "true" for r in trials),
        "front": "-" if front is None else int(front),
        "hypervolume": "-" if area is None else f"{area:.4g}",
        "started": _local_time(parent.info.start_time),
        "state": parent.info.status,
        "pareto.png": pareto_plot(parent.info.artifact_uri),
        "run_id": parent.info.run_id,
    }


def configured_methods(params: dict) -> list[str]:
    """The methods a search's parent run says it searches: space.method's choices, else train.optimizer.name."""
    choices = params.get("space.method.choices")
    if choices:
        try:
            return [str(m) for m in ast.literal_eval(choices)]
        except (ValueError, SyntaxError):  # a value MLflow cut at its length limit
            pass
    return [params.get("train.optimizer.name", "esam")]


def pareto_plot(artifact_uri: str | None) -> str:
    """Where the search's pareto.png lies: a local path when the artifacts are on this filesystem, else its URI.

    A local plot not written yet (a search before its first front) shows the artifact folder it will be in.
    """
    if not artifact_uri:
        return "-"
    parsed = urlparse(artifact_uri)
    if parsed.scheme in ("", "file"):
        folder = Path(unquote(parsed.path) if parsed.scheme == "file" else artifact_uri)
        plot = folder / "pareto" / "pareto.png"
        return str(plot) if plot.is_file() else f"{folder}/ (no plot yet)"
    return artifact_uri.rstrip("/") + "/pareto/pareto.png"


def _local_time(ms: int | None) -> str:
    if not ms:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M")


def format_table(rows: list[dict]) -> str:
    """The rows as a plain text table: numbers right-aligned, text left-aligned, the plot's path last."""
    cells = [[str(r[c]) for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(COLUMNS)]
    numeric = {"ended", "failed", "stopped", "front", "hypervolume"}

    def line(values):
        parts = [v.rjust(w) if c in numeric else v.ljust(w) for c, v, w in zip(COLUMNS, values, widths)]
        return "  ".join(parts).rstrip()
    return "\n".join([line(list(COLUMNS)), *(line(row) for row in cells)])
