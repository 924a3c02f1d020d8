"""The Pareto front of a recorded search: table, tags and artifacts on the parent run.

Reads finished child runs from MLflow (so it works after the search, from any machine),
tags the front's runs `pareto=true` (the others `false`) and logs to the parent run:
pareto.csv, pareto.json (with the front's summary sentence), pareto.png (all trials, the front
labelled with its settings, the SGD/SAM references, ~95% error bars) and pareto.html (the same
plot in plotly, as wide as its window, plotly.js loaded as PAGE says: hover a point for its settings
and run id), best_configs.json. Labels are placed clear of each other (place_labels).
"""
from __future__ import annotations

import csv
import html
import io
import json
import math
import tempfile
from pathlib import Path

from esam.optim import METHODS
from esam.search.front.pareto import PICKS, error_band, indistinguishable, pareto_front, pick
from esam.search.front.rows import candidates, finished
from esam.search.front.summary import front_summary, trials_kind, trials_method
from esam.search.records.mlflow_runs import FEASIBLE_TAG, search_rows
from esam.search.space import shown_knobs

DEFAULT_OBJECTIVES = [("test_acc", "max"), ("speed_vs_sgd", "max")]
TABLE_COLUMNS = ("test_acc", "test_acc_se", "images_per_s", "speed_vs_sgd", "speed_vs_sgd_low", "speed_vs_sgd_high",
                 "relative_cost", "optimizer", "rho", "beta", "gamma", "score", *(k for k, _ in shown_knobs()), "run_id")
HOVER_KEYS = ("name", "optimizer", "rho", "beta", "gamma", "score", *(k for k, _ in shown_knobs()), "test_acc", "test_acc_se", "speed_vs_sgd",
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
    see esam.search.front.pareto.indistinguishable): those are not ranked against each other.
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
    """A method's own settings, short, as its record names them: "sharpness=sam k=5 alpha=0.7" ('' for ESAM)."""
    info = METHODS.get(r.get("optimizer", "esam"))
    own = {k.name for k in info.knobs} if info is not None else set()
    return " ".join(f"{short}={r[k]:.3g}" if _finite(r.get(k)) else f"{short}={r[k]}"
                    for k, short in shown_knobs() if k in own and r.get(k) is not None)


def settings_label(r: dict) -> str:
    """The short label drawn next to a front point: its method (unless ESAM) and settings."""
    parts = [f"{sym}={r[k]:.3g}" for k, sym in (("rho", "ρ"), ("beta", "β"), ("gamma", "γ")) if _finite(r.get(k))]
    method = r.get("optimizer", "esam")
    return " ".join(p for p in ("" if method == "esam" else method, ", ".join(parts), method_knobs(r)) if p)


def _errors(points: list[dict], metric: str) -> dict | None:
    """Plotly error bar arrays (asymmetric, from esam.search.front.pareto.error_band), or None when no point has any."""
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


# Labels drawn next to points, each at the first of these places where it covers no other label and no
# marker and stays inside the plot; a point with no such place keeps only its hover text (and the legend).
LABEL_PLACES = ("top center", "middle right", "middle left", "bottom center", "top right", "top left",
                "bottom right", "bottom left")
# pareto.html's plot area at its smallest (the page's min-width and min-height less the margins): a label
# clear of the others there stays clear in any larger window, since points only move apart as it grows.
HTML_AREA, HTML_MARGIN = (540.0, 350.0), {"l": 70, "r": 30, "t": 110, "b": 60}
HTML_FONT = (11, 6.6, 14.0)  # label font size, its mean character width and line height, in pixels
PNG_DPI = 120


def label_box(anchor: tuple[float, float], size: tuple[float, float], place: str, gap: float) -> tuple:
    """The box (x0, y0, x1, y1; pixels, y up) of a label of `size` drawn at `place` of a point at `anchor`."""
    (x, y), (w, h) = anchor, size
    vertical, horizontal = place.split()
    y0 = {"top": y + gap, "bottom": y - gap - h, "middle": y - h / 2}[vertical]
    x0 = {"center": x - w / 2, "right": x + gap, "left": x - gap - w}[horizontal]
    return x0, y0, x0 + w, y0 + h


def _overlap(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(anchors: list, sizes: list, obstacles: list, area: tuple[float, float],
                 gaps: list | None = None, budget: int = 20000) -> list[str | None]:
    """Each label's place in LABEL_PLACES (anchor and size in pixels), so that no label covers another or an
    obstacle (the markers' boxes) or leaves the area (0, 0)-(w, h); None for a label left out.

    As few labels left out as a search of `budget` steps finds (a greedy pass fails where an earlier label
    took the only free place of a later one); among those, earlier labels get the earlier places."""
    options = []
    for i, (anchor, size) in enumerate(zip(anchors, sizes)):
        boxes = [(place, label_box(anchor, size, place, gaps[i] if gaps else 6.0)) for place in LABEL_PLACES]
        options.append([(place, box) for place, box in boxes
                        if box[0] >= 0 and box[1] >= 0 and box[2] <= area[0] and box[3] <= area[1]
                        and not any(_overlap(box, other) for other in obstacles)])
    steps = [0]

    def search(i: int, placed: list, left_out: int) -> list | None:
        if i == len(options):
            return []
        steps[0] += 1
        if steps[0] > budget:
            return None
        for place, box in options[i]:
            if not any(_overlap(box, other) for other in placed):
                rest = search(i + 1, placed + [box], left_out)
                if rest is not None:
                    return [place] + rest
        if left_out > 0:
            rest = search(i + 1, placed, left_out - 1)
            if rest is not None:
                return [None] + rest
        return None
    for allowed in range(len(options) + 1):
        found = search(0, [], allowed)
        if found is not None:
            return found
        if steps[0] > budget:
            break
    return _greedy(options)


def _greedy(options: list) -> list[str | None]:
    """Each label at its first place clear of the earlier ones (the fallback when the search runs out)."""
    placed, places = [], []
    for choices in options:
        free = [(place, box) for place, box in choices if not any(_overlap(box, other) for other in placed)]
        places.append(free[0][0] if free else None)
        placed += [free[0][1]] if free else []
    return places


def axis_ranges(points: list[dict], xm: str, ym: str, pad: float = 0.1) -> tuple[list[float], list[float]]:
    """Both axes' ranges: every point with its error bars, plus `pad` of the span on each side."""
    def span(metric):
        lows, highs = [], []
        for r in points:
            band = error_band(r, metric) or (r[metric], r[metric])
            lows.append(min(band[0], r[metric]))
            highs.append(max(band[1], r[metric]))
        low, high = min(lows), max(highs)
        width = (high - low) or abs(high) * 0.1 or 1.0
        return [low - pad * width, high + pad * width]
    return span(xm), span(ym)


def _marker_box(anchor, size: float) -> tuple:
    return anchor[0] - size / 2, anchor[1] - size / 2, anchor[0] + size / 2, anchor[1] + size / 2


def _groups(rows: list[dict], front: list[dict], xm: str, ym: str):
    """(trials off the front, front points by x, references), each with finite x and y."""
    def plotted(rs):
        return [r for r in rs if _finite(r.get(xm)) and _finite(r.get(ym))]
    on_front = {r["run_id"] for r in front}
    others = plotted([r for r in finished(rows, "trial") if r["run_id"] not in on_front])
    return others, sorted(plotted(front), key=lambda r: r[xm]), plotted(finished(rows, "reference"))


def reference_label(r: dict) -> str:
    return str(r.get("optimizer") or r.get("name") or "reference").upper()


def pareto_figure(rows: list[dict], front: list[dict], objectives, summary: str = ""):
    """The interactive plot as a plotly Figure, one trace per group, named as TRACE_NAMES:
    "ESAM trials" (finished trials off the front, named by their method: trials_label), "Pareto front",
    "SGD", "SAM" (and any other reference by its name); x the second objective, y the first,
    ~95% error bars where the runs recorded their noise, hover text with settings and run id.
    It sizes itself to its page (autosize); labels are placed clear of each other (place_labels)."""
    import plotly.graph_objects as go

    (ym, ymode), (xm, xmode) = objectives
    others, fpts, refs = _groups(rows, front, xm, ym)
    fig = go.Figure()
    sizes = {"trial": 7, "front": 10, "reference": 13}
    xrange, yrange = axis_ranges(others + fpts + refs, xm, ym) if others + fpts + refs else (None, None)

    # References first (short, and the points people look for), then the front from left to right.
    labelled = [(r, reference_label(r), sizes["reference"]) for r in refs] + \
               [(r, settings_label(r), sizes["front"]) for r in fpts]
    places = {}
    if xrange:
        def pixel(r):
            return ((r[xm] - xrange[0]) / (xrange[1] - xrange[0]) * HTML_AREA[0],
                    (r[ym] - yrange[0]) / (yrange[1] - yrange[0]) * HTML_AREA[1])
        _, char, line = HTML_FONT
        markers = [_marker_box(pixel(r), sizes["trial"]) for r in others] + \
                  [_marker_box(pixel(r), size) for r, _, size in labelled]
        found = place_labels([pixel(r) for r, _, _ in labelled], [(len(t) * char, line) for _, t, _ in labelled],
                             markers, HTML_AREA, gaps=[size / 2 + 3 for _, _, size in labelled])
        places = {id(r): place for (r, _, _), place in zip(labelled, found)}

    def add(name, points, marker, mode="markers", text=None, line=None):
        if not points:
            return
        where = [places.get(id(r)) for r in points]
        fig.add_trace(go.Scatter(
            name=name, x=[r[xm] for r in points], y=[r[ym] for r in points], mode=mode, marker=marker,
            line=line, text=None if text is None else [t if p else "" for t, p in zip(text, where)],
            textposition=[p or "top center" for p in where], textfont={"size": HTML_FONT[0]}, cliponaxis=False,
            hovertext=[_hover(r) for r in points], hoverinfo="text",
            error_x=_errors(points, xm), error_y=_errors(points, ym)))
    add(trials_label(rows), others, {"color": "#9a9a9a", "size": sizes["trial"]})
    add("Pareto front", fpts, {"color": "crimson", "size": sizes["front"]}, mode="markers+lines+text",
        text=[settings_label(r) for r in fpts], line={"color": "crimson", "width": 1.5})
    styles = {"sgd": ("square", "royalblue"), "sam": ("diamond", "seagreen")}
    for r in refs:
        symbol, color = styles.get(r.get("optimizer"), ("triangle-up", "black"))
        add(reference_label(r), [r], {"symbol": symbol, "color": color, "size": sizes["reference"],
                                      "line": {"width": 1, "color": "white"}},
            mode="markers+text", text=[reference_label(r)])
    title = f"{trials_method(finished(rows, 'trial')) or 'Method'} search: accuracy vs speed"
    fig.update_layout(
        title={"text": title + f"<br><sup>{html.escape(ERROR_BARS)}; hover a point for its settings and run id</sup>",
               "x": 0.01, "xanchor": "left", "yref": "container", "y": 0.98, "yanchor": "top"},
        xaxis={"title": {"text": axis_title(xm, xmode)}, "showgrid": True, "zeroline": False, "ticks": "outside",
               **({"range": xrange} if xrange else {})},
        yaxis={"title": {"text": axis_title(ym, ymode)}, "showgrid": True, "zeroline": False, "ticks": "outside",
               **({"range": yrange} if yrange else {})},
        # above the plot, in a row: a narrow window keeps its width for the points
        legend={"orientation": "h", "x": 0, "xanchor": "left", "y": 1.02, "yanchor": "bottom"},
        template="plotly_white", autosize=True, margin={**HTML_MARGIN, "b": 150 if summary else HTML_MARGIN["b"]})
    if summary:  # below the x axis title at any height (pixels, not a share of the plot)
        fig.add_annotation(text="<br>".join(_wrap(summary, 100)), showarrow=False, xref="paper", yref="paper",
                           x=0, y=0, yshift=-55, xanchor="left", yanchor="top", align="left")
    return fig


def _wrap(text: str, width: int) -> list[str]:
    import textwrap
    return [html.escape(line) for line in textwrap.wrap(text, width)]


# pareto.html loads plotly.js from a plotly.min.js beside it (offline copies), else from plotly's CDN, the
# version this plotly writes, checked by its hash: the page is ~30 KB instead of 4.6 MB with plotly.js in it.
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ margin: 0; font-family: "Open Sans", Arial, sans-serif; }}
#pareto {{ min-width: 640px; min-height: 520px; }}
.summary {{ margin: 0.4em 1.2em 1.2em; max-width: 75em; line-height: 1.4; }}
</style>
<script charset="utf-8" src="plotly.min.js"></script>
<script>window.Plotly || document.write('<script charset="utf-8" src="{cdn}" integrity="{sri}" crossorigin="anonymous"><\\/script>');</script>
</head>
<body>
{plot}
<p class="summary">{summary}</p>
<script>
if (!window.Plotly) document.getElementById("pareto").textContent =
  "plotly.js could not be loaded: this page takes it from a plotly.min.js beside it, else from {cdn} (network).";
</script>
</body>
</html>
"""


def plotly_source() -> tuple[str, str]:
    """(the CDN address of the plotly.js this plotly writes, its subresource-integrity hash)."""
    import base64
    import hashlib

    from plotly.offline import get_plotlyjs, get_plotlyjs_version
    digest = hashlib.sha256(get_plotlyjs().encode("utf-8")).digest()
    return (f"https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js",
            "sha256-" + base64.b64encode(digest).decode("ascii"))


def write_plotlyjs(directory: Path) -> Path:
    """plotly.min.js in `directory` (once: kept when there), for pareto.html files there to work offline."""
    from plotly.offline import get_plotlyjs
    path = Path(directory) / "plotly.min.js"
    if not path.is_file():
        path.write_text(get_plotlyjs(), encoding="utf-8")
    return path


def _plot_html(path: Path, rows: list[dict], front: list[dict], objectives, summary: str = "") -> None:
    """pareto.html: the plotly figure filling the window's width (plotly.js loaded as PAGE says); the summary
    below it as text that wraps with the window."""
    fig = pareto_figure(rows, front, objectives)
    plot = fig.to_html(include_plotlyjs=False, full_html=False, div_id="pareto", default_width="100%",
                       default_height="85vh", config={"displaylogo": False, "responsive": True})
    cdn, sri = plotly_source()
    title = fig.layout.title.text.split("<br>")[0]
    path.write_text(PAGE.format(title=html.escape(title), cdn=cdn, sri=sri, plot=plot, summary=html.escape(summary)),
                    encoding="utf-8")


def _png_figure(rows: list[dict], front: list[dict], objectives, summary: str = ""):
    """pareto.png's figure (matplotlib): units and direction, error bars, front labels placed clear of each
    other and of the markers (place_labels, on the sizes the renderer measures)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (ym, ymode), (xm, xmode) = objectives
    others, fpts, refs = _groups(rows, front, xm, ym)
    fig, ax = plt.subplots(figsize=(8, 5.6), dpi=PNG_DPI)  # measured at the dpi it is saved with
    sizes = {"trial": 6, "front": 6, "reference": 9}  # marker sizes in points

    def draw(points, fmt, label, **kw):
        if not points:
            return
        xe, ye = _errors(points, xm), _errors(points, ym)
        ax.errorbar([r[xm] for r in points], [r[ym] for r in points], fmt=fmt, label=label, capsize=2, elinewidth=0.8,
                    xerr=[xe["arrayminus"], xe["array"]] if xe else None,
                    yerr=[ye["arrayminus"], ye["array"]] if ye else None, **kw)
    draw(others, "o", trials_label(rows), color="0.6", markersize=sizes["trial"])
    draw(fpts, "o-", "Pareto front", color="tab:red", markersize=sizes["front"])
    styles = {"sgd": ("s", "tab:blue"), "sam": ("D", "tab:green")}
    for r in refs:
        m, c = styles.get(r.get("optimizer"), ("^", "k"))
        draw([r], m, reference_label(r), color=c, markersize=sizes["reference"])
    ax.set_xlabel(axis_title(xm, xmode))
    ax.set_ylabel(axis_title(ym, ymode))
    if others + fpts + refs:
        xrange, yrange = axis_ranges(others + fpts + refs, xm, ym, pad=0.12)
        ax.set_xlim(*xrange)
        ax.set_ylim(*yrange)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title(f"{trials_method(finished(rows, 'trial')) or 'Method'} search: accuracy vs speed\n" + ERROR_BARS,
                 fontsize=10)
    if summary:
        import textwrap
        fig.text(0.01, 0.01, "\n".join(textwrap.wrap(summary, 130)), fontsize=7, va="bottom")
        fig.tight_layout(rect=(0, 0.08, 1, 1))
    else:
        fig.tight_layout()
    _label_png(fig, ax, [(r, reference_label(r), styles.get(r.get("optimizer"), ("^", "k"))[1], 8, sizes["reference"])
                         for r in refs] + [(r, settings_label(r), "tab:red", 7, sizes["front"]) for r in fpts],
               others, xm, ym, sizes["trial"])
    return fig


def _label_png(fig, ax, labelled: list, others: list, xm: str, ym: str, trial_size: float) -> None:
    """Annotate pareto.png's points where place_labels finds room, measuring each label as drawn."""
    renderer = fig.canvas.get_renderer()
    area = ax.get_window_extent(renderer)
    px = fig.dpi / 72  # pixels per point

    def pixel(r):
        x, y = ax.transData.transform((r[xm], r[ym]))
        return x - area.x0, y - area.y0
    measured = []
    for _, text, _, fontsize, _ in labelled:
        probe = fig.text(0, 0, text, fontsize=fontsize)
        box = probe.get_window_extent(renderer)
        measured.append((box.width, box.height))
        probe.remove()
    markers = [_marker_box(pixel(r), trial_size * px) for r in others] + \
              [_marker_box(pixel(r), size * px) for r, _, _, _, size in labelled]
    legend = ax.get_legend().get_window_extent(renderer)
    markers.append((legend.x0 - area.x0, legend.y0 - area.y0, legend.x1 - area.x0, legend.y1 - area.y0))
    gaps = [size * px / 2 + 3 for *_, size in labelled]
    places = place_labels([pixel(r) for r, *_ in labelled], measured, markers, (area.width, area.height), gaps)
    for (r, text, color, fontsize, _), place, gap in zip(labelled, places, gaps):
        if place is None:
            continue  # no room: the legend and pareto.html's hover text name it
        vertical, horizontal = place.split()
        dx = {"center": 0, "right": gap, "left": -gap}[horizontal]
        dy = {"middle": 0, "top": gap, "bottom": -gap}[vertical]
        ax.annotate(text, (r[xm], r[ym]), textcoords="offset points", xytext=(dx / px, dy / px), fontsize=fontsize,
                    color=color,
                    ha={"center": "center", "right": "left", "left": "right"}[horizontal],
                    va={"middle": "center", "top": "bottom", "bottom": "top"}[vertical])


def _plot_png(path: Path, rows: list[dict], front: list[dict], objectives, summary: str = "") -> None:
    """pareto.png: the same plot, static (matplotlib)."""
    import matplotlib.pyplot as plt
    fig = _png_figure(rows, front, objectives, summary)
    fig.savefig(path, dpi=PNG_DPI)
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
