"""The Pareto front of a recorded search: table, tags and artifacts on the parent run.

Reads finished child runs from MLflow (so it works after the search, from any machine),
tags the front's runs `pareto=true` (the others `false`) and logs to the parent run:
pareto.csv, pareto.json, pareto.png (all trials, the front, the SGD/SAM references) and
pareto.html (the same plot as an SVG whose points show their settings on hover), best_configs.json.
"""
from __future__ import annotations

import csv
import html
import io
import json
import math
import tempfile
from pathlib import Path

from esam.search.pareto import PICKS, pareto_front, pick
from esam.search.tracking import finished, search_rows

TABLE_COLUMNS = ("test_acc", "images_per_s", "speed_vs_sgd", "relative_cost", "rho", "beta", "gamma", "score", "run_id")


def front_of(rows: list[dict], objectives: list[tuple[str, str]]) -> list[dict]:
    """Finished ESAM trials on the front, sorted by the first objective (best first)."""
    trials = finished(rows, "trial")
    members = [trials[i] for i in pareto_front(trials, objectives)]
    metric, mode = objectives[0]
    return sorted(members, key=lambda r: r[metric], reverse=(mode == "max"))


def best_configs(rows: list[dict], objectives: list[tuple[str, str]]) -> dict:
    trials = finished(rows, "trial")
    picks = {}
    for rule in ("max-accuracy", "max-throughput", "knee"):
        try:
            picks[rule] = trials[pick(trials, objectives, rule)]
        except ValueError:
            pass
    return picks


def format_table(front: list[dict], references: list[dict]) -> str:
    """A fixed-width terminal table: the front, then the references."""
    header = ("", "acc %", "img/s", "speed/SGD", "cost", "rho", "beta", "gamma", "score", "run id")
    lines = []

    def fmt(r: dict, label: str) -> tuple:
        def num(key, spec):
            v = r.get(key)
            return format(v, spec) if isinstance(v, (int, float)) and math.isfinite(v) else "-"
        return (label, num("test_acc", ".2f"), num("images_per_s", ".0f"), num("speed_vs_sgd", ".3f"),
                num("relative_cost", ".2f"), num("rho", ".4g"), num("beta", ".3f"), num("gamma", ".3f"),
                str(r.get("score", "-")) if label == "pareto" else "-", r["run_id"][:12])
    rows = [header] + [fmt(r, "pareto") for r in front] + [fmt(r, r.get("optimizer", "ref")) for r in references]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    for row in rows:
        lines.append("  ".join(str(c).rjust(w) for c, w in zip(row, widths)))
    return "\n".join(lines)


def _csv(front: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(TABLE_COLUMNS) + ["name"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(front)
    return buf.getvalue()


def _plot_png(path: Path, rows: list[dict], front: list[dict], objectives) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (ym, _), (xm, _) = objectives
    fig, ax = plt.subplots(figsize=(7, 5))
    trials = finished(rows, "trial")
    ax.scatter([r.get(xm) for r in trials], [r.get(ym) for r in trials], c="0.6", label="ESAM trials")
    fx = [r[xm] for r in sorted(front, key=lambda r: r[xm])]
    fy = [r[ym] for r in sorted(front, key=lambda r: r[xm])]
    ax.plot(fx, fy, "o-", c="tab:red", label="Pareto front")
    markers = {"sgd": ("s", "tab:blue"), "sam": ("D", "tab:green")}
    for r in finished(rows, "reference"):
        if xm in r and ym in r:
            m, c = markers.get(r.get("optimizer"), ("^", "k"))
            ax.scatter([r[xm]], [r[ym]], marker=m, c=c, s=80, label=str(r.get("optimizer", "")).upper())
    ax.set_xlabel(xm)
    ax.set_ylabel(ym)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("ESAM search: accuracy vs throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_html(path: Path, rows: list[dict], front: list[dict], objectives) -> None:
    """A dependency-free interactive plot: SVG points carry <title> tooltips with their settings."""
    (ym, _), (xm, _) = objectives
    done = [r for r in finished(rows) if isinstance(r.get(xm), (int, float)) and isinstance(r.get(ym), (int, float))]
    if not done:
        path.write_text("<html><body>No finished trials.</body></html>")
        return
    xs, ys = [r[xm] for r in done], [r[ym] for r in done]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    w, h, m = 720, 480, 60

    def sx(v): return m + (v - x0) / ((x1 - x0) or 1) * (w - 2 * m)
    def sy(v): return h - m - (v - y0) / ((y1 - y0) or 1) * (h - 2 * m)
    on_front = {r["run_id"] for r in front}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             f'<rect x="{m}" y="{m}" width="{w - 2 * m}" height="{h - 2 * m}" fill="none" stroke="#999"/>',
             f'<text x="{w / 2}" y="{h - 15}" text-anchor="middle">{html.escape(xm)} ({x0:.4g} .. {x1:.4g})</text>',
             f'<text x="15" y="{h / 2}" transform="rotate(-90 15 {h / 2})" text-anchor="middle">{html.escape(ym)} ({y0:.4g} .. {y1:.4g})</text>']
    fpts = sorted(front, key=lambda r: r[xm])
    if fpts:
        parts.append('<polyline fill="none" stroke="crimson" points="' +
                     " ".join(f"{sx(r[xm]):.1f},{sy(r[ym]):.1f}" for r in fpts) + '"/>')
    for r in done:
        if r["kind"] == "reference":
            color, size = ("royalblue" if r.get("optimizer") == "sgd" else "seagreen"), 8
        else:
            color, size = ("crimson" if r["run_id"] in on_front else "#888"), 5
        label = "\n".join(f"{k}: {r[k]}" for k in ("name", "optimizer", "rho", "beta", "gamma", "score",
                                                   "test_acc", "images_per_s", "speed_vs_sgd", "relative_cost", "run_id")
                          if k in r)
        parts.append(f'<circle cx="{sx(r[xm]):.1f}" cy="{sy(r[ym]):.1f}" r="{size}" fill="{color}">'
                     f'<title>{html.escape(label)}</title></circle>')
    parts.append("</svg>")
    legend = ("<p>Hover a point for its settings. <span style='color:crimson'>red</span>: Pareto front, "
              "grey: other ESAM trials, <span style='color:royalblue'>blue</span>: SGD, "
              "<span style='color:seagreen'>green</span>: SAM.</p>")
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>ESAM Pareto front</title></head>"
                    f"<body><h2>ESAM search: {html.escape(ym)} vs {html.escape(xm)}</h2>{legend}{''.join(parts)}</body></html>")


def tag_front_and_write_artifacts(client, parent_run_id: str,
                                  objectives: list[tuple[str, str]]) -> tuple[list[dict], list[dict], list[dict]]:
    """Recompute the front from MLflow, tag each trial run pareto=true/false, (re)write the parent's
    pareto/ artifacts. Returns (rows, front, references)."""
    rows = search_rows(client, parent_run_id)
    front = front_of(rows, objectives)
    on_front = {r["run_id"] for r in front}
    for r in rows:
        if r["kind"] == "trial":
            client.set_tag(r["run_id"], "pareto", "true" if r["run_id"] in on_front else "false")
    references = finished(rows, "reference")
    picks = best_configs(rows, objectives)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "pareto.csv").write_text(_csv(front))
        (d / "pareto.json").write_text(json.dumps({"objectives": objectives, "front": front,
                                                   "references": references}, indent=2, default=str))
        (d / "best_configs.json").write_text(json.dumps(picks, indent=2, default=str))
        _plot_png(d / "pareto.png", rows, front, objectives)
        _plot_html(d / "pareto.html", rows, front, objectives)
        client.log_artifacts(parent_run_id, str(d), artifact_path="pareto")
    client.set_tag(parent_run_id, "pareto_size", str(len(front)))
    return rows, front, references


__all__ = ["PICKS", "format_table", "front_of", "tag_front_and_write_artifacts"]
