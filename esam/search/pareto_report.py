"""The Pareto front of a recorded search: table, tags and artifacts on the parent run.

Reads finished child runs from MLflow (so it works after the search, from any machine),
tags the front's runs `pareto=true` (the others `false`) and logs to the parent run:
pareto.csv, pareto.json (with the front's summary sentence), pareto.png (all trials, the front
labelled with its settings, the SGD/SAM references, ~95% error bars) and pareto.html (the same
plot in plotly, self-contained: hover a point for its settings and run id), best_configs.json.
"""
from __future__ import annotations

import csv
import html
import io
import json
import math
import tempfile
from pathlib import Path

from esam.search.front_summary import front_summary, trials_kind, trials_method
from esam.search.space import METHOD_KNOBS
from esam.search.pareto import PICKS, error_band, indistinguishable, pareto_front, pick
from esam.search.tracking import FEASIBLE_TAG, candidates, finished, search_rows

DEFAULT_OBJECTIVES = [("test_acc", "max"), ("speed_vs_sgd", "max")]
TABLE_COLUMNS = ("test_acc", "test_acc_se", "images_per_s", "speed_vs_sgd", "speed_vs_sgd_low", "speed_vs_sgd_high",
                 "relative_cost", "optimizer", "rho", "beta", "gamma", "score", *(k for k, _ in METHOD_KNOBS), "run_id")
HOVER_KEYS = ("name", "optimizer", "rho", "beta", "gamma", "score", *(k for k, _ in METHOD_KNOBS), "test_acc", "test_acc_se", "speed_vs_sgd",
              "speed_vs_sgd_low", "speed_vs_sgd_high", "images_per_s", "relative_cost", "run_id")
# axis titles: unit and direction (a metric not listed gets its name and its mode's direction)
AXIS_TITLES = {
    "test_acc": "test accuracy (%, higher is better)",
    "speed_vs_sgd": "speed vs SGD (x, higher is faster)",
    "images_per_s": "training images per second (own device share, higher is faster)",
    "step_time_vs_sgd": "step time vs SGD (x, lower is faster)",
    "relative_cost": "relative cost (SGD = 1, lower is cheaper)",
    "test_loss": "test loss (lower is better)",
}
TRACE_NAMES = ("ESAM trials", "Pareto front", "SGD", "SAM")  # "LookSAM trials", "trials": see trials_label
ERROR_BARS = "error bars: ~95% (accuracy ± 2 binomial SE, speed's 95% interval)"


def axis_title(metric: str, mode: str) -> str:
    return AXIS_TITLES.get(metric, f"{metric} ({'higher' if mode == 'max' else 'lower'} is better)")


def front_of(rows: list[dict], objectives: list[tuple[str, str]], constraints: list | tuple = ()) -> list[dict]:
    """The front of the finished, feasible ESAM trials, sorted by the first objective (best first)."""
    trials = candidates(rows, constraints)
    members = [trials[i] for i in pareto_front(trials, objectives)]
    metric, mode = objectives[0]
    return sorted(members, key=lambda r: r[metric], reverse=(mode == "max"))


def best_configs(rows: list[dict], objectives: list[tuple[str, str]], constraints: list | tuple = ()) -> dict:
    trials = candidates(rows, constraints)
    picks = {}
    for rule in ("max-accuracy", "max-throughput", "knee"):
        try:
            picks[rule] = trials[pick(trials, objectives, rule)]
        except ValueError:
            pass
    return picks


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def format_table(front: list[dict], references: list[dict],
                 objectives: list[tuple[str, str]] = DEFAULT_OBJECTIVES) -> str:
    """A fixed-width terminal table: the front (numbered), then the references, then footnotes.

    Accuracy shows its binomial SE (± SE), speed vs SGD its 95% interval, when the runs recorded
    them; the last column lists the front points a row is indistinguishable from (within the noise,
    see esam.search.pareto.indistinguishable): those are not ranked against each other.
    """
    header = ("", "acc % ± SE", "img/s (own)", "speed/SGD [95%]", "cost", "method", "rho", "beta", "gamma", "score",
              "knobs", "run id", "#", "≈ #")

    def num(r, key, spec):
        v = r.get(key)
        return format(v, spec) if _finite(v) else "-"

    def acc(r):
        text, se = num(r, "test_acc", ".2f"), r.get("test_acc_se")
        return f"{text} ± {se:.2f}" if text != "-" and _finite(se) else text

    def speed(r):
        text, lo, hi = num(r, "speed_vs_sgd", ".3f"), r.get("speed_vs_sgd_low"), r.get("speed_vs_sgd_high")
        return f"{text} [{lo:.3f}, {hi:.3f}]" if text != "-" and _finite(lo) and _finite(hi) else text

    def ties(r):
        same = [str(k + 1) for k, f in enumerate(front) if f is not r and _usable(r, f, objectives)
                and indistinguishable(r, f, objectives)]
        return ",".join(same) or "-"

    def fmt(r: dict, label: str, number: str) -> tuple:
        return (label, acc(r), num(r, "images_per_s", ".0f"), speed(r), num(r, "relative_cost", ".2f"),
                str(r.get("optimizer", "esam")) if label == "pareto" else "-",
                num(r, "rho", ".4g"), num(r, "beta", ".3f"), num(r, "gamma", ".3f"),
                str(r.get("score", "-")) if label == "pareto" else "-", method_knobs(r) or "-", r["run_id"][:12],
                number, ties(r))
    rows = ([header] + [fmt(r, "pareto", str(k + 1)) for k, r in enumerate(front)]
            + [fmt(r, r.get("optimizer", "ref"), "-") for r in references])
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(row, widths)) for row in rows]
    lines.append("img/s (own): each run's own rate; runs sharing a device slow each other: compare speed/SGD, not img/s.")
    lines.append("≈ #: front points within this row's noise (accuracy within 2 combined SE, speed intervals overlap): "
                 "not ranked.")
    return "\n".join(lines)


def _usable(a: dict, b: dict, objectives) -> bool:
    return all(_finite(a.get(m)) and _finite(b.get(m)) for m, _ in objectives)


def _csv(front: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(TABLE_COLUMNS) + ["name"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(front)
    return buf.getvalue()


def method_knobs(r: dict) -> str:
    """A pass-skipping method's own settings, short: "sharpness=sam k=5 alpha=0.7" ('' for ESAM)."""
    if r.get("optimizer", "esam") in ("esam", "sgd", "sam"):
        return ""
    return " ".join(f"{short}={r[k]:.3g}" if _finite(r.get(k)) else f"{short}={r[k]}"
                    for k, short in METHOD_KNOBS if r.get(k) is not None)


def settings_label(r: dict) -> str:
    """The short label drawn next to a front point: its method (unless ESAM) and settings."""
    parts = [f"{sym}={r[k]:.3g}" for k, sym in (("rho", "ρ"), ("beta", "β"), ("gamma", "γ")) if _finite(r.get(k))]
    method = r.get("optimizer", "esam")
    return " ".join(p for p in ("" if method == "esam" else method, ", ".join(parts), method_knobs(r)) if p)


def _errors(points: list[dict], metric: str) -> dict | None:
    """Plotly error bar arrays (asymmetric, from esam.search.pareto.error_band), or None when no point has any."""
    bands = [(error_band(r, metric), r[metric]) for r in points]
    if not any(b for b, _ in bands):
        return None
    return {"type": "data", "symmetric": False, "thickness": 1,
            "array": [b[1] - v if b else 0.0 for b, v in bands],
            "arrayminus": [v - b[0] if b else 0.0 for b, v in bands]}


def _hover(r: dict) -> str:
    return "<br>".join(f"{k}: {html.escape(format(r[k], '.4g') if isinstance(r[k], float) else str(r[k]))}"
                       for k in HOVER_KEYS if k in r and r[k] is not None)


def trials_label(rows: list[dict]) -> str:
    """"ESAM trials", "LookSAM trials", ...; "trials" when the method was searched."""
    return f"{trials_kind(finished(rows, 'trial'))}trials"


def pareto_figure(rows: list[dict], front: list[dict], objectives, summary: str = ""):
    """The interactive plot as a plotly Figure, one trace per group, named as TRACE_NAMES:
    "ESAM trials" (finished trials off the front, named by their method: trials_label), "Pareto front",
    "SGD", "SAM" (and any other reference by its name); x the second objective, y the first,
    ~95% error bars where the runs recorded their noise, hover text with settings and run id."""
    import plotly.graph_objects as go

    (ym, ymode), (xm, xmode) = objectives
    on_front = {r["run_id"] for r in front}

    def plotted(rs):
        return [r for r in rs if _finite(r.get(xm)) and _finite(r.get(ym))]
    fig = go.Figure()

    def add(name, points, marker, mode="markers", text=None, line=None):
        if not points:
            return
        fig.add_trace(go.Scatter(
            name=name, x=[r[xm] for r in points], y=[r[ym] for r in points], mode=mode, marker=marker,
            line=line, text=text, textposition="top center", hovertext=[_hover(r) for r in points],
            hoverinfo="text", error_x=_errors(points, xm), error_y=_errors(points, ym)))
    add(trials_label(rows), plotted([r for r in finished(rows, "trial") if r["run_id"] not in on_front]),
        {"color": "#9a9a9a", "size": 7})
    fpts = sorted(plotted(front), key=lambda r: r[xm])
    add("Pareto front", fpts, {"color": "crimson", "size": 10}, mode="markers+lines+text",
        text=[settings_label(r) for r in fpts], line={"color": "crimson", "width": 1.5})
    styles = {"sgd": ("square", "royalblue"), "sam": ("diamond", "seagreen")}
    for r in plotted(finished(rows, "reference")):
        symbol, color = styles.get(r.get("optimizer"), ("triangle-up", "black"))
        label = str(r.get("optimizer") or r.get("name") or "reference").upper()
        add(label, [r], {"symbol": symbol, "color": color, "size": 13, "line": {"width": 1, "color": "white"}},
            mode="markers+text", text=[label])
    title = f"{trials_method(finished(rows, 'trial')) or 'Method'} search: accuracy vs speed"
    fig.update_layout(
        title={"text": title + f"<br><sup>{html.escape(ERROR_BARS)}; hover a point for its settings and run id</sup>"},
        xaxis={"title": {"text": axis_title(xm, xmode)}, "showgrid": True, "zeroline": False, "ticks": "outside"},
        yaxis={"title": {"text": axis_title(ym, ymode)}, "showgrid": True, "zeroline": False, "ticks": "outside"},
        legend={"title": {"text": "runs"}}, template="plotly_white", width=900, height=620,
        margin={"b": 130 if summary else 80})
    if summary:
        fig.add_annotation(text="<br>".join(_wrap(summary, 120)), showarrow=False, xref="paper", yref="paper",
                           x=0, y=-0.16, xanchor="left", yanchor="top", align="left")
    return fig


def _wrap(text: str, width: int) -> list[str]:
    import textwrap
    return [html.escape(line) for line in textwrap.wrap(text, width)]


def _plot_html(path: Path, rows: list[dict], front: list[dict], objectives, summary: str = "") -> None:
    """pareto.html: the plotly figure in one self-contained file (plotly.js embedded: works offline)."""
    fig = pareto_figure(rows, front, objectives, summary)
    fig.write_html(str(path), include_plotlyjs=True, full_html=True, div_id="pareto",
                   config={"displaylogo": False, "responsive": True})


def _plot_png(path: Path, rows: list[dict], front: list[dict], objectives, summary: str = "") -> None:
    """pareto.png: the same plot, static (matplotlib): units and direction, error bars, front labels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (ym, ymode), (xm, xmode) = objectives
    on_front = {r["run_id"] for r in front}
    fig, ax = plt.subplots(figsize=(8, 5.6))

    def draw(points, fmt, label, **kw):
        points = [r for r in points if _finite(r.get(xm)) and _finite(r.get(ym))]
        if not points:
            return
        xe, ye = _errors(points, xm), _errors(points, ym)
        ax.errorbar([r[xm] for r in points], [r[ym] for r in points], fmt=fmt, label=label, capsize=2, elinewidth=0.8,
                    xerr=[xe["arrayminus"], xe["array"]] if xe else None,
                    yerr=[ye["arrayminus"], ye["array"]] if ye else None, **kw)
    draw([r for r in finished(rows, "trial") if r["run_id"] not in on_front], "o", trials_label(rows), color="0.6")
    fpts = sorted([r for r in front if _finite(r.get(xm)) and _finite(r.get(ym))], key=lambda r: r[xm])
    draw(fpts, "o-", "Pareto front", color="tab:red")
    for r in fpts:
        ax.annotate(settings_label(r), (r[xm], r[ym]), textcoords="offset points", xytext=(5, 6), fontsize=7,
                    color="tab:red")
    styles = {"sgd": ("s", "tab:blue"), "sam": ("D", "tab:green")}
    for r in finished(rows, "reference"):
        m, c = styles.get(r.get("optimizer"), ("^", "k"))
        label = str(r.get("optimizer") or r.get("name") or "reference").upper()
        draw([r], m, label, color=c, markersize=9)
        if _finite(r.get(xm)) and _finite(r.get(ym)):
            ax.annotate(label, (r[xm], r[ym]), textcoords="offset points", xytext=(7, -12), fontsize=8, color=c)
    ax.set_xlabel(axis_title(xm, xmode))
    ax.set_ylabel(axis_title(ym, ymode))
    ax.margins(0.12)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title("ESAM search: accuracy vs speed\n" + ERROR_BARS, fontsize=10)
    if summary:
        import textwrap
        fig.text(0.01, 0.01, "\n".join(textwrap.wrap(summary, 130)), fontsize=7, va="bottom")
        fig.tight_layout(rect=(0, 0.08, 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def front_note(rows: list[dict], front: list[dict], constraints: list | tuple = ()) -> str:
    """What the front is made of, in one line: the trials it chose from, and those it left out."""
    trials = [r for r in rows if r.get("kind") == "trial"]
    done = finished(rows, "trial")
    stopped = sum(bool(r.get("stopped_early")) for r in trials)
    line = (f"Pareto front (accuracy vs throughput): {len(front)} of {len(done)} {trials_kind(done)}trials that ran all "
            f"their epochs")
    if stopped:
        line += f" ({stopped} stopped early by the scheduler: their metrics are from an earlier epoch, not on the front)"
    if constraints:
        feasible = candidates(rows, constraints)
        rules = "; ".join(c.text for c in constraints)
        if done and not feasible:
            return line + f"; no trial meets the constraints ({rules}), so the front is empty"
        line += f"; {len(done) - len(feasible)} miss the constraints ({rules})"
    return line


def tag_front_and_write_artifacts(client, parent_run_id: str, objectives: list[tuple[str, str]],
                                  constraints: list | tuple = ()) -> tuple[list[dict], list[dict], list[dict]]:
    """Recompute the front from MLflow, tag each trial run pareto=true/false (and feasible=true/false
    under constraints), (re)write the parent's pareto/ artifacts. Returns (rows, front, references)."""
    rows = search_rows(client, parent_run_id)
    front = front_of(rows, objectives, constraints)
    on_front = {r["run_id"] for r in front}
    feasible = {r["run_id"] for r in candidates(rows, constraints)}
    for r in rows:
        if r["kind"] == "trial":
            client.set_tag(r["run_id"], "pareto", "true" if r["run_id"] in on_front else "false")
            if constraints and r in finished(rows, "trial"):
                client.set_tag(r["run_id"], FEASIBLE_TAG, "true" if r["run_id"] in feasible else "false")
    references = finished(rows, "reference")
    picks = best_configs(rows, objectives, constraints)
    summary = front_summary(rows, objectives)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "pareto.csv").write_text(_csv(front))
        (d / "pareto.json").write_text(json.dumps({"objectives": objectives, "summary": summary, "front": front,
                                                   "made_of": front_note(rows, front, constraints),
                                                   "constraints": [c.text for c in constraints],
                                                   "references": references}, indent=2, default=str))
        (d / "best_configs.json").write_text(json.dumps(picks, indent=2, default=str))
        _plot_png(d / "pareto.png", rows, front, objectives, summary)
        _plot_html(d / "pareto.html", rows, front, objectives, summary)
        client.log_artifacts(parent_run_id, str(d), artifact_path="pareto")
    client.set_tag(parent_run_id, "pareto_size", str(len(front)))
    return rows, front, references


__all__ = ["PICKS", "format_table", "front_note", "front_of", "front_summary", "pareto_figure", "tag_front_and_write_artifacts"]
