"""What a search's front means, in plain words (pure functions over the flat rows of its runs).

`front_summary(rows, objectives)` says, one sentence per reference (SGD, then SAM), whether the
reference dominates ESAM trials or ESAM trials beat it on every objective. `esam search` and
`esam pareto` print it after the table; the search also writes it into the parent run's description.
Dominance is on the recorded values; a win inside the noise (see esam.search.front.pareto.indistinguishable)
is said to be one.
"""
from __future__ import annotations

import math
import time
from typing import Sequence

from esam.optim import METHODS
from esam.search.front.hypervolume import hypervolume
from esam.search.front.pareto import Objective, dominates, indistinguishable, noise_of, pareto_front
from esam.search.front.rows import candidates, finished
from esam.search.records.mlflow_runs import NOTE_TAG, series_reference
from esam.search.space import shown_knobs

# metric -> (number format, how a value reads, "better" when the mode is max, and when it is min)
_WORDS: dict[str, tuple[str, str, str, str]] = {
    "test_acc": (".2f", "{}%", "more accurate", "less accurate"),
    "speed_vs_sgd": (".3f", "{}x", "faster", "slower"),
    "images_per_s": (".0f", "{} img/s", "faster", "slower"),
    "step_time_vs_sgd": (".3f", "{}x SGD's step time", "slower", "faster"),
    "relative_cost": (".2f", "cost {}", "costlier", "cheaper"),
    "test_loss": (".4f", "test loss {}", "higher in test loss", "lower in test loss"),
}


def value_text(row: dict, metric: str, noise: bool = False) -> str:
    """`row[metric]` as a reader expects it (98.33%, 1.000x); with `noise`, its SE or interval when recorded
    (98.33 ± 0.67%, 0.569x [0.551, 0.588])."""
    value = row.get(metric)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    spec, template = _WORDS.get(metric, (".4g", "{}"))[:2]
    number = format(value, spec)
    spread = noise_of(row, metric) if noise else None
    if spread and spread[0] == "se":
        return template.format(f"{number} ± {format(spread[1], spec)}")
    text = template.format(number)
    return text + f" [{format(spread[1], spec)}, {format(spread[2], spec)}]" if spread else text


def _better(objectives: Sequence[Objective]) -> str:
    """'more accurate or faster': what beating a point on some objective means."""
    words = []
    for metric, mode in objectives:
        w = _WORDS.get(metric)
        words.append((w[2] if mode == "max" else w[3]) if w else f"better in {metric}")
    return " or ".join(words)


def _usable(row: dict, objectives: Sequence[Objective]) -> bool:
    return all(isinstance(row.get(m), (int, float)) and math.isfinite(row[m]) for m, _ in objectives)


def _name(row: dict) -> str:
    return str(row.get("optimizer") or row.get("name") or "reference").upper()


def _of(count: int, total: int) -> str:
    if count == total:
        return {1: "the only", 2: "both"}.get(total, f"all {total}")
    return f"{count} of {total}"


def trials_method(trials: list[dict]) -> str | None:
    """The trials' one method by its record's label ("ESAM", "LookSAM", ...); None when they mix methods."""
    methods = {t.get("optimizer") or "esam" for t in trials} or {"esam"}
    only = methods.pop() if len(methods) == 1 else None
    return METHODS[only].label if only in METHODS else None


def trials_kind(trials: list[dict]) -> str:
    """The word before "trials": "ESAM ", "RST ", ...; "" for a method search (its trials mix methods)."""
    method = trials_method(trials)
    return f"{method} " if method else ""


def _trials(n: int, kind: str) -> str:
    return f"{kind}trial" if n == 1 else f"{kind}trials"


def reference_sentence(reference: dict, trials: list[dict], front: list[dict], objectives: Sequence[Objective]) -> str:
    """One sentence: what `reference` dominates among `trials` (the finished trials), or what beats it."""
    name, kind = _name(reference), trials_kind(trials)
    shown = f"{name} ({', '.join(value_text(reference, m) for m, _ in objectives)})"
    n = len(trials)
    beaten = [t for t in trials if dominates(reference, t, objectives)]
    beating = [t for t in trials if dominates(t, reference, objectives)]
    on_front = {id(t) for t in front}
    front_beaten = sum(id(t) in on_front for t in beaten)
    if beating:
        noisy = sum(indistinguishable(t, reference, objectives) for t in beating)
        text = f"{_of(len(beating), n)} {_trials(n, kind)} {'beats' if n == 1 else 'beat'} {shown} on both axes"
        if noisy == len(beating):
            text += ", but only within the noise"
        elif noisy:
            text += f" ({noisy} of them only within the noise)"
        if beaten:
            text += f"; {name} dominates {len(beaten)} other{'s' if len(beaten) > 1 else ''}"
        return text[0].upper() + text[1:] + "."
    if len(beaten) == n:
        what = f"the only {kind}trial" if n == 1 else f"every {kind}trial ({n} of {n})"
        return f"{shown} dominates {what}: no {kind}setting is {_better(objectives)} than {name}."
    if beaten:
        where = ("the whole front included" if front_beaten == len(front) else
                 f"{front_beaten} of the {len(front)} on the front" if front_beaten else "none on the front")
        return (f"{shown} dominates {len(beaten)} of {n} {_trials(n, kind)} ({where}); "
                f"no {kind}setting beats {name} on both axes.")
    return f"No {kind}setting beats {shown} on both axes, and {name} dominates none: they trade one axis for the other."


def front_summary(rows: list[dict], objectives: Sequence[Objective]) -> str:
    """What the front means, in one sentence per finished reference (SGD first, then SAM).

    Cases: a reference dominates every ESAM trial ("SGD (98.33%, 1.000x) dominates every ESAM trial
    (12 of 12): ..."); dominates some of them (and how many on the front); some ESAM trials beat it
    on both axes (said when only within the noise); neither. Rows are flat run rows (kind: trial |
    reference, status); only FINISHED runs with finite objective values count, a reused result once.
    """
    done = [r for r in finished(rows) if _usable(r, objectives)]
    trials = [r for r in done if r.get("kind") == "trial"]
    order = list(METHODS)  # references in the order their methods were registered: SGD, SAM, ESAM, ...
    references = sorted((r for r in done if r.get("kind") == "reference"),
                        key=lambda r: (order.index(r.get("optimizer")) if r.get("optimizer") in order else len(order),
                                       str(r.get("optimizer"))))
    if not trials:
        kind = trials_kind([r for r in rows if r.get("kind") == "trial"])
        return f"No {kind}trial finished, so there is no front to compare with the references."
    if not references:
        return "No reference (SGD, SAM) finished, so the front is not compared with them."
    front = [trials[i] for i in pareto_front(trials, objectives)]
    return " ".join(reference_sentence(r, trials, front, objectives) for r in references)


def neighbours_within_noise(points: Sequence[dict], index: int, objectives: Sequence[Objective]) -> list[int]:
    """Indices of the other front points of `points` that `points[index]` cannot be told apart from."""
    front = pareto_front(points, objectives)
    return [i for i in front if i != index and indistinguishable(points[i], points[index], objectives)]


def _markdown_table(front: list[dict], references: list[dict], objectives: list[tuple[str, str]]) -> str:
    known = ("optimizer", "rho", "beta", "gamma", "score", *(k for k, _ in shown_knobs()), "lr")
    settings = [k for k in known if any(k in r for r in front)]
    columns = [m for m, _ in objectives] + settings
    lines = ["| run | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]

    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else ("-" if v is None else str(v))
    for r in list(front) + list(references):
        lines.append(f"| {r.get('name') or r['run_id'][:12]} | " + " | ".join(cell(r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def summarize_parent(client, parent_run_id: str, rows: list[dict], front: list[dict], references: list[dict],
                     objectives: list[tuple[str, str]], constraints: list | tuple = ()) -> dict[str, float]:
    """The parent run's summary metrics and description (the front as a table, and what it says)."""
    from mlflow.entities import Metric, RunTag  # deferred: the sentences above are used without MLflow loaded
    trials = [r for r in rows if r["kind"] == "trial"]
    done = finished(rows, "trial")
    feasible = candidates(rows, constraints)
    metrics: dict[str, float] = {}
    for m, mode in objectives:
        values = [float(r[m]) for r in feasible if isinstance(r.get(m), (int, float)) and r[m] == r[m]]
        if values:
            metrics[f"best_{m}"] = max(values) if mode == "max" else min(values)
    # over the series' reference point, so that the final area is the series' last value
    area, reference = hypervolume(feasible, objectives, series_reference(client, parent_run_id, objectives))
    metrics.update(front_size=float(len(front)), hypervolume=area, finished_trials=float(len(done)),
                   failed_trials=float(sum(r["status"] == "FAILED" for r in trials)),
                   reused_trials=float(sum(bool(r.get("reused_from")) for r in trials)),
                   stopped_trials=float(sum(bool(r.get("stopped_early")) for r in trials)))
    if constraints:
        metrics["infeasible_trials"] = float(len(done) - len(feasible))
    point = ", ".join(f"{m} {v:g}" for m, v in reference.items())
    sentence = front_summary(rows, objectives)
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
