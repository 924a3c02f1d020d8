"""Export one Pareto-front ESAM config as a self-contained, runnable YAML file.

The file is a training config (`esam train FILE.yaml` runs it; `ESAM.from_config(params, base,
FILE.yaml)` builds the optimizer from its `optimizer:` section) plus an `exported:` section with
the measured metrics and the MLflow run ids it came from.
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import yaml

from esam.search import tracking
from esam.config import deep_merge, to_dict, train_config_from_dict
from esam.errors import ConfigError
from esam.training.metrics import METRICS
from esam.search.pareto import pick
from esam.search.config import SEARCHABLE



def export_config(client, parent_run_id: str, rule: str, out: str | Path) -> dict:
    """Write the front point chosen by `rule` (see esam.search.pareto.pick) to `out`; return the document."""
    search_config = tracking.search_config_of(client, parent_run_id)
    objectives = tracking.objectives_of(search_config)
    trials = tracking.finished(tracking.search_rows(client, parent_run_id), "trial")
    try:
        chosen = trials[pick(trials, objectives, rule)]
    except ValueError as err:
        raise ConfigError(str(err)) from None
    optimizer = {"name": "esam", **{k: chosen[k] for k in SEARCHABLE if k in chosen}}
    train = to_dict(train_config_from_dict(deep_merge(search_config["train"], {"optimizer": optimizer})))
    document = {
        **train,
        "exported": {
            "pick": rule,
            "search": search_config["name"],
            "mlflow_run_id": chosen["run_id"],
            "mlflow_parent_run_id": parent_run_id,
            "tracking_uri": client.tracking_uri,
            "objectives": [list(o) for o in objectives],
            "metrics": {k: chosen[k] for k in METRICS if k in chosen},
            "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            **{k: v for k, v in tracking.provenance().items() if k == "git_commit"},
        },
    }
    out = check_output(out)
    header = (f"# ESAM config exported from search {search_config['name']!r} (pick: {rule}).\n"
              f"# Run it: esam train {out.name}\n"
              f"# Use it: ESAM.from_config(model.parameters(), base_optimizer, '{out.name}')\n")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(header + yaml.safe_dump(document, sort_keys=False))
    except OSError as err:
        raise ConfigError(f"--out {out}: cannot write ({err.strerror or type(err).__name__})") from None
    return document


def check_output(out: str | Path) -> Path:
    """`out` as a Path, or ConfigError when it cannot become a file (checked before any work)."""
    text, out = str(out), Path(out)
    if out.is_dir() or text.endswith(("/", os.sep)):  # Path() drops a trailing slash
        raise ConfigError(f"--out {out}: is a directory; give a file name such as {out / 'esam_knee.yaml'}")
    parent = next((p for p in (out.parent, *out.parent.parents) if p.exists()), Path("."))
    if not parent.is_dir():
        raise ConfigError(f"--out {out}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ConfigError(f"--out {out}: {out if out.exists() else parent} is not writable")
    return out
