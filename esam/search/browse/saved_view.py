"""A search's saved view on MLflow's runs page: its runs, its objectives as columns, their scatter chart.

MLflow keeps the columns and charts of the runs page per browser; the one default it reads from
the store is a saved view ("Views" menu, the runs page's `viewStateShareKey=<key>` parameter), held in
the experiment tag `mlflow.sharedViewState.<key>`: an envelope {name, createdAt, updatedAt, state}
whose `state` is the page's state as JSON (MLflow 3.17's runs page; older UIs ignore the envelope).
The state may be partial: MLflow fills the rest with its defaults.
"""
from __future__ import annotations

import json
import time

TAG_PREFIX = "mlflow.sharedViewState."
SECTION, CHART = "esam-objectives", "esam-objectives-scatter"
DEFAULT_KNOBS = ("rho", "beta", "gamma")


def view_key(parent_run_id: str) -> str:
    return f"esam-{parent_run_id}"


def view_state(parent_run_id: str, objectives: list[tuple[str, str]], knobs=DEFAULT_KNOBS) -> dict:
    """The page state: the search's child runs (its trials and references) best first by the first
    objective, every run shown in the charts, and a scatter of the first objective (y) against the
    second (x), the plot of the Pareto front."""
    (first, mode), (second, _) = objectives[0], objectives[-1]
    columns = [f"metrics.`{m}`" for m, _ in objectives]
    columns += [f"params.`{p}`" for p in ("optimizer", *knobs)] + ["tags.`pareto`"]
    return {
        "searchFilter": f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
        "orderByKey": f"metrics.`{first}`", "orderByAsc": mode == "min",
        "startTime": "ALL", "lifecycleFilter": "Active", "modelVersionFilter": "All Runs", "datasetsFilter": [],
        "selectedColumns": columns,
        "runsHiddenMode": "SHOW_ALL",  # MLflow charts the first 10 runs otherwise, which can leave out SGD and SAM
        "compareRunSections": [{"uuid": SECTION, "name": "esam: objectives", "display": True, "isReordered": False,
                                "deleted": False, "isGenerated": False}],
        "compareRunCharts": [{"uuid": CHART, "type": "SCATTER", "runsCountToCompare": 100, "metricSectionId": SECTION,
                              "deleted": False, "isGenerated": False, "displayName": f"{first} vs {second}",
                              "xaxis": {"key": second, "type": "METRIC"}, "yaxis": {"key": first, "type": "METRIC"}}],
        "isAccordionReordered": True,  # our section stays first, above the ones MLflow generates
        "hideEmptyCharts": True,
    }


def write_view(client, experiment_id: str, parent_run_id: str, name: str, objectives, knobs=DEFAULT_KNOBS) -> str:
    """Tag the experiment with the search's view (rewritten only when it changed); returns its key."""
    key = view_key(parent_run_id)
    state = json.dumps(view_state(parent_run_id, objectives, knobs), sort_keys=True)
    tag = TAG_PREFIX + key
    try:
        old = json.loads(client.get_experiment(experiment_id).tags.get(tag) or "{}")
    except ValueError:
        old = {}
    if old.get("state") == state:
        return key
    now = int(time.time() * 1000)
    created = old.get("createdAt") if isinstance(old.get("createdAt"), int) else now
    envelope = {"name": f"esam: {name}", "createdAt": created, "updatedAt": now, "state": state}
    client.set_experiment_tag(experiment_id, tag, json.dumps(envelope))
    return key
