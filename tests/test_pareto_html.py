"""The plots people keep: pareto.html small and fitting its window, labels that never cover each other.

A crowded front (SAM's reference on a front point, front points close together) drawn three ways:
place_labels' boxes, pareto.png's texts as matplotlib measures them, and pareto.html in headless
Chromium (slow: the rendered labels' boxes at two window widths).
"""
import base64
import hashlib
import itertools
import json
import re

import pytest

from esam.search.front.report import (
    LABEL_PLACES,
    _plot_html,
    _png_figure,
    front_of,
    label_box,
    pareto_figure,
    place_labels,
    write_plotlyjs,
)

OBJ = [("test_acc", "max"), ("speed_vs_sgd", "max")]
SUMMARY = "SGD (98.61%, 1.000x) dominates every ESAM trial (4 of 4): no ESAM setting is more accurate or faster."


def _run(i, acc, speed, kind="trial", se=0.6, ci=0.02, **extra):
    return {"run_id": f"run{i:02d}" + "x" * 20, "name": f"t{i}", "kind": kind, "status": "FINISHED",
            "test_acc": acc, "speed_vs_sgd": speed, "test_acc_se": se, "speed_vs_sgd_low": speed - ci,
            "speed_vs_sgd_high": speed + ci, "rho": round(0.05 * i, 3), "beta": 0.6, "gamma": 0.5,
            "score": "loss_rise", **extra}


# SAM sits on the first front point (the collision people saw), four front points within 0.07x of each other.
CROWDED = [_run(1, 98.61, 0.569), _run(2, 98.33, 0.60), _run(3, 98.05, 0.634), _run(4, 97.5, 0.64),
           _run(8, 95.0, 0.55), _run(9, 96.0, 0.52), _run(10, 97.9, 0.58),
           _run(5, 98.61, 1.0, kind="reference", optimizer="sgd"),
           _run(6, 98.61, 0.57, kind="reference", optimizer="sam")]


def _disjoint(boxes):
    """The pairs of (name, (x0, y0, x1, y1)) boxes that overlap (touching edges do not)."""
    return [(a, b) for (a, p), (b, q) in itertools.combinations(boxes, 2)
            if p[0] < q[2] - 0.5 and q[0] < p[2] - 0.5 and p[1] < q[3] - 0.5 and q[1] < p[3] - 0.5]


def test_place_labels_moves_a_label_off_another_and_gives_up_where_no_place_is_free():
    size, gap = (120.0, 14.0), 8.0
    # Two points 10 px apart: the second cannot take "top center" (the first's), and takes the next free place.
    places = place_labels([(200.0, 200.0), (210.0, 200.0)], [size, size], [], (600.0, 400.0), [gap, gap])
    assert places[0] == "top center" and places[1] not in (None, "top center")
    boxes = [(p, label_box(a, size, p, gap)) for a, p in zip([(200.0, 200.0), (210.0, 200.0)], places)]
    assert not _disjoint(boxes)
    # An obstacle over every place around the point (a marker box 400 px wide): no label, hover text only.
    assert place_labels([(200.0, 200.0)], [size], [(0.0, 0.0, 400.0, 400.0)], (600.0, 400.0)) == [None]
    # A label may not leave the plot: at the right edge only the left-hand places fit.
    (edge,) = place_labels([(590.0, 200.0)], [size], [], (600.0, 400.0), [gap])
    assert edge is not None and edge.endswith("left") and edge in LABEL_PLACES


def test_pareto_html_is_small_fills_its_window_and_loads_plotly_beside_it_or_from_the_cdn(tmp_path):
    from plotly.offline import get_plotlyjs, get_plotlyjs_version
    page = tmp_path / "pareto.html"
    _plot_html(page, CROWDED, front_of(CROWDED, OBJ), OBJ, SUMMARY)
    text = page.read_text()
    assert page.stat().st_size < 1_000_000, page.stat().st_size  # was 4.6 MB with plotly.js in every copy
    assert len(get_plotlyjs()) > 3_000_000 and get_plotlyjs()[:200] not in text  # plotly.js itself is not in it
    # no fixed size: the figure autosizes into a div as wide as the window (with a floor for the labels)
    layout = json.loads(pareto_figure(CROWDED, front_of(CROWDED, OBJ), OBJ).to_json())["layout"]
    assert layout["autosize"] is True and "width" not in layout and "height" not in layout
    assert re.search(r'<div style="height:85vh; width:100%;">\s*<div id="pareto"', text), text[:2000]
    assert '"responsive": true' in text and "min-width: 640px" in text
    # plotly.js: the copy beside the page first, else plotly's CDN at this plotly's version, checked by its hash
    sri = "sha256-" + base64.b64encode(hashlib.sha256(get_plotlyjs().encode()).digest()).decode()
    assert text.index('src="plotly.min.js"') < text.index(f"https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js")
    assert f'integrity="{sri}"' in text
    assert f"<p class=\"summary\">{SUMMARY}</p>" in text  # page text below the plot, wrapping with the window
    js = write_plotlyjs(tmp_path)
    assert js.read_text() == get_plotlyjs() and write_plotlyjs(tmp_path) == js  # written once, then kept


def test_html_labels_move_off_each_other_and_a_crowded_one_keeps_its_hover_text():
    figure = json.loads(pareto_figure(CROWDED, front_of(CROWDED, OBJ), OBJ).to_json())
    traces = {t["name"]: t for t in figure["data"]}
    front, sam = traces["Pareto front"], traces["SAM"]
    assert sam["text"] == ["SAM"] and sam["textposition"] == ["top center"]  # references are placed first
    # the first front point shares SAM's spot: its label goes beside it, not over SAM's
    assert front["text"][0] == "ρ=0.05, β=0.6, γ=0.5" and front["textposition"][0] != "top center"
    # four labels 130 px wide within 60 px: one has no free place in the smallest window and is left out,
    # its settings still in its hover text
    shown = [t for t in front["text"] if t]
    assert len(shown) == 3 and len(set(shown)) == 3, front["text"]
    for text, hover in zip(front["text"], front["hovertext"]):
        assert text or "rho: 0.1<br>" in hover
    assert all(t.get("cliponaxis") is False for t in figure["data"] if t.get("text"))  # labels at an edge stay whole


def test_png_labels_do_not_overlap_each_other(tmp_path):
    import matplotlib.pyplot as plt
    fig = _png_figure(CROWDED, front_of(CROWDED, OBJ), OBJ, SUMMARY)
    try:
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        texts = [(t.get_text(), t.get_window_extent(renderer)) for t in ax.texts]
        assert {"SGD", "SAM"} <= {name for name, _ in texts} and len(texts) >= 5, [n for n, _ in texts]
        assert not _disjoint([(name, (b.x0, b.y0, b.x1, b.y1)) for name, b in texts])
        legend = ax.get_legend().get_window_extent(renderer)
        assert not _disjoint([("legend", (legend.x0, legend.y0, legend.x1, legend.y1))]
                             + [(name, (b.x0, b.y0, b.x1, b.y1)) for name, b in texts])
        fig.savefig(tmp_path / "p.png")
        assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    finally:
        plt.close(fig)


# Each drawn label's box, the plot's width and the window's, as the page holds them.
RENDERED_JS = """
const gd = document.getElementById('pareto');
if (!gd || !gd._fullLayout || !gd.querySelector('.textpoint text')) return null;
return {plot: gd._fullLayout.width, window: document.documentElement.clientWidth,
        labels: Array.from(gd.querySelectorAll('.textpoint text')).filter(t => t.textContent)
                  .map(t => { const r = t.getBoundingClientRect(); return [t.textContent, [r.left, r.top, r.right, r.bottom]]; })};
"""


@pytest.mark.slow
def test_pareto_html_in_a_browser_fits_each_window_and_no_label_covers_another(chrome, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait
    page = tmp_path / "pareto.html"
    _plot_html(page, CROWDED, front_of(CROWDED, OBJ), OBJ, SUMMARY)
    write_plotlyjs(tmp_path)  # offline: no CDN on a test machine
    widths = []
    try:
        for width in (1600, 800):
            chrome.set_window_size(width, 1000)
            chrome.get(f"file://{page}")
            shown = WebDriverWait(chrome, 60, poll_frequency=0.3).until(lambda d: d.execute_script(RENDERED_JS))
            # the plot follows the window (never narrower than the page's floor of 640 px)
            assert abs(shown["plot"] - max(shown["window"], 640)) <= 2, shown
            names = sorted(name for name, _ in shown["labels"])
            assert {"SGD", "SAM"} <= set(names) and len(names) >= 5, names
            assert not _disjoint(shown["labels"]), f"labels overlap at {width} px: {_disjoint(shown['labels'])}"
            widths.append(shown["plot"])
        assert widths[0] > widths[1] + 500, widths
        errors = [e for e in chrome.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        chrome.set_window_size(1600, 1000)
