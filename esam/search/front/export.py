"""Export one Pareto-front config (ESAM's, or LookSAM's, RST's, AE-SAM's) as a self-contained, runnable YAML file.

The file is a training config (`esam train FILE.yaml` runs it; `ESAM.from_config(params, base,
FILE.yaml)`, or the chosen method's class, builds the optimizer from its `optimizer:` section)
plus an `exported:` section with the measured metrics and the MLflow run ids it came from. Its
`optimizer:` section holds what the chosen method reads and nothing else, sampled values rounded
(see SIGNIFICANT_DIGITS).
"""
from __future__ import annotations

import datetime as dt
import math
import os
from pathlib import Path

import yaml

from esam.config import deep_merge, to_dict, train_config_from_dict
from esam.errors import ConfigError
from esam.optim import OPTIMIZERS
from esam.search.config import searchable
from esam.search.front import rows as front_rows
from esam.search.front.pareto import pick
from esam.search.front.summary import neighbours_within_noise, value_text
from esam.search.records import mlflow_runs
from esam.search.space import BASE_FIELDS, used_fields
from esam.training.metrics import METRICS


def export_config(client, parent_run_id: str, rule: str, out: str | Path) -> dict:
    """Write the front point chosen by `rule` (see esam.search.front.pareto.pick) to `out`; return the document."""
    search_config = mlflow_runs.search_config_of(client, parent_run_id)
    objectives = mlflow_runs.objectives_of(search_config)
    # only trials that ran all their epochs and meet the search's constraints (front_rows.candidates)
    constraints = front_rows.constraints_of(search_config)
    rows = mlflow_runs.search_rows(client, parent_run_id)
    trials = front_rows.candidates(rows, constraints)
    if constraints and front_rows.finished(rows, "trial") and not trials:
        raise ConfigError(f"no trial of search {search_config['name']!r} meets its constraints "
                          f"({'; '.join(c.text for c in constraints)}): nothing to export")
    try:
        index = pick(trials, objectives, rule)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    chosen = trials[index]
    # front points the measurements cannot tell apart from the chosen one (esam.search.front.pareto.indistinguishable)
    ties = [{"mlflow_run_id": trials[i]["run_id"],
             **{k: significant(trials[i][k]) for k in searchable() if k in trials[i]},
             **{m: trials[i][m] for m, _ in objectives}} for i in neighbours_within_noise(trials, index, objectives)]
    method = str(chosen.get("optimizer") or "esam")  # the trial's method, as its MLflow params say
    optimizer = {"name": method, **{k: significant(chosen[k]) for k in searchable() if k in chosen and k != "method"}}
    train = to_dict(train_config_from_dict(deep_merge(search_config["train"], {"optimizer": optimizer})))
    train["optimizer"] = used_settings(train["optimizer"])
    document = {
        **train,
        "exported": {
            "pick": rule,
            "chosen_from": (f"{len(trials)} trials that ran all their epochs"
                            + (f" and meet the constraints: {'; '.join(c.text for c in constraints)}" if constraints else "")
                            + " (trials stopped early are no candidates)"),
            "search": search_config["name"],
            "mlflow_run_id": chosen["run_id"],
            "mlflow_parent_run_id": parent_run_id,
            "tracking_uri": client.tracking_uri,
            "objectives": [list(o) for o in objectives],
            "metrics": {k: chosen[k] for k in (*METRICS, *NOISE_METRICS) if k in chosen},
            "within_noise_of": ties,
            "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            **{k: v for k, v in mlflow_runs.provenance().items() if k == "git_commit"},
        },
    }
    out = check_output(out)
    cls = OPTIMIZERS[method].__name__
    header = (f"# {cls} config exported from search {search_config['name']!r} (pick: {rule}).\n"
              f"# Run it: esam train {out.name}\n"
              f"# Use it: {cls}.from_config(model.parameters(), base_optimizer, '{out.name}')\n")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(header + yaml.safe_dump(document, sort_keys=False))
    except OSError as err:
        raise ConfigError(f"--out {out}: cannot write ({err.strerror or type(err).__name__})") from None
    return document


NOISE_METRICS = ("test_acc_se", "speed_vs_sgd_low", "speed_vs_sgd_high")
# A sampled float goes out with 4 significant digits: the search cannot tell settings that close apart
# (two trials' accuracies differ by a standard error of a few tenths of a point, their speeds by
# percents, while a change in the 5th digit moves rho or beta by under 0.01%), and 0.1251 reads
# better than 0.12508734216. The MLflow run named in `exported` keeps the exact values.
SIGNIFICANT_DIGITS = 4


def significant(value):
    """A float rounded to SIGNIFICANT_DIGITS significant digits; anything else unchanged."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{SIGNIFICANT_DIGITS}g}")
    return value


def used_settings(optimizer: dict) -> dict:
    """The optimizer section a run of this method reads: its name, the base SGD's settings and the method's own
    knobs (esam.search.space.used_fields). Other methods' knobs, and ESAM's beta/gamma/score under a
    skipping method with SAM's sharpness step, would change nothing and read as if they did."""
    used = ("name", *BASE_FIELDS, "nesterov", *used_fields(optimizer["name"], optimizer.get("sharpness", "sam")))
    return {k: optimizer[k] for k in used if k in optimizer}


def noise_note(document: dict) -> str | None:
    """The one line `esam export` adds when the chosen point is not distinguishable from other front points."""
    ties = document["exported"].get("within_noise_of") or []
    if not ties:
        return None
    objectives = [m for m, _ in document["exported"]["objectives"]]
    shown = "; ".join(f"run {t['mlflow_run_id'][:12]}: " + ", ".join(value_text(t, m) for m in objectives) + " ("
                      + ", ".join(f"{k} {t[k]:.3g}" for k in ("rho", "beta", "gamma") if isinstance(t.get(k), (int, float)))
                      + ")" for t in ties[:3])
    more = f" and {len(ties) - 3} more" if len(ties) > 3 else ""
    return (f"note: the measurements cannot tell this point from {len(ties)} other front point"
            f"{'s' if len(ties) > 1 else ''} ({shown}{more}): the pick ranks them inside the noise")


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
