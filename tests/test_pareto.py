import itertools
import random

import pytest

from esam.search.front.pareto import dominates, pareto_front, pick

OBJ = [("acc", "max"), ("speed", "max")]


def brute_force_front(points, objectives):
    return [i for i, p in enumerate(points)
            if not any(dominates(q, p, objectives) for j, q in enumerate(points) if j != i)]


def test_hand_made_front():
    points = [{"acc": 90, "speed": 1.0}, {"acc": 95, "speed": 0.5}, {"acc": 93, "speed": 0.8},
              {"acc": 92, "speed": 0.7},  # dominated by (93, 0.8)
              {"acc": 89, "speed": 1.0},  # dominated by (90, 1.0)
              {"acc": 96, "speed": 0.4}]
    assert pareto_front(points, OBJ) == [0, 1, 2, 5]


def test_front_is_non_dominated_and_complete_on_random_points():
    rng = random.Random(0)
    for _ in range(50):
        points = [{"acc": rng.randint(0, 10), "speed": rng.randint(0, 10)} for _ in range(30)]
        front = pareto_front(points, OBJ)
        assert front == brute_force_front(points, OBJ)
        for i, j in itertools.product(front, front):
            assert not dominates(points[i], points[j], OBJ)
        for k in set(range(len(points))) - set(front):
            assert any(dominates(points[i], points[k], OBJ) for i in front)


def test_min_mode_and_missing_values():
    points = [{"acc": 90, "cost": 2.0}, {"acc": 90, "cost": 1.5}, {"acc": float("nan"), "cost": 0.1}, {"acc": 91}]
    assert pareto_front(points, [("acc", "max"), ("cost", "min")]) == [1]


def test_picks():
    points = [{"acc": 90.0, "speed": 1.0}, {"acc": 95.0, "speed": 0.5}, {"acc": 94.9, "speed": 0.8},
              {"acc": 94.0, "speed": 0.9}, {"acc": 50.0, "speed": 0.1}]
    assert pick(points, OBJ, "max-accuracy") == 1
    assert pick(points, OBJ, "max-throughput") == 0
    assert pick(points, OBJ, "fastest-within=0.2") == 2
    assert pick(points, OBJ, "fastest-within=1.0") == 3
    # Scaled over the front (acc 90..95, speed 0.5..1.0), point 2 sits at (0.98, 0.6), 0.400 from the
    # utopia point (1, 1), and point 3 at (0.8, 0.8), 0.283 from it: the knee is point 3.
    assert pick(points, OBJ, "knee") == 3
    with pytest.raises(ValueError, match="unknown pick"):
        pick(points, OBJ, "best")
    with pytest.raises(ValueError, match="margin"):
        pick(points, OBJ, "fastest-within=abc")
    with pytest.raises(ValueError, match="no finished trial"):
        pick([], OBJ, "knee")


def test_report_table_and_plots(tmp_path):
    from esam.search.front.report import _plot_html, _plot_png, format_table, front_of

    def run(i, acc, speed, kind="trial", status="FINISHED", **extra):
        return {"run_id": f"run{i:02d}" + "x" * 20, "name": f"t{i}", "kind": kind, "status": status,
                "test_acc": acc, "speed_vs_sgd": speed, "images_per_s": 1000 * speed, "relative_cost": 1.7,
                "rho": 0.05, "beta": 0.6, "gamma": 0.5, "score": "loss_rise", **extra}
    rows = [run(1, 90.0, 0.6), run(2, 92.0, 0.5), run(3, 89.0, 0.55), run(4, 99.0, 0.9, status="FAILED"),
            run(5, 91.0, 1.0, kind="reference", optimizer="sgd"), run(6, 92.5, 0.5, kind="reference", optimizer="sam")]
    objectives = [("test_acc", "max"), ("speed_vs_sgd", "max")]
    front = front_of(rows, objectives)
    assert [r["name"] for r in front] == ["t2", "t1"]  # failed runs and references never join the front
    table = format_table(front, [r for r in rows if r["kind"] == "reference"])
    assert table.splitlines()[1].split()[:2] == ["pareto", "92.00"] and "sam" in table
    _plot_html(tmp_path / "p.html", rows, front, objectives)
    html = (tmp_path / "p.html").read_text()
    # every finished run in a named plotly trace, with hover text; plotly.js embedded (no network)
    assert all(f'"name":"{n}"' in html for n in ("ESAM trials", "Pareto front", "SGD", "SAM"))
    assert "rho: 0.05" in html and "crimson" in html and "<script src=" not in html
    _plot_png(tmp_path / "p.png", rows, front, objectives)
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def _noisy(i, acc, speed, se=None, ci=None, kind="trial", **extra):
    r = {"run_id": f"run{i:02d}" + "x" * 20, "name": f"t{i}", "kind": kind, "status": "FINISHED",
         "test_acc": acc, "speed_vs_sgd": speed, "images_per_s": 1000 * speed, "relative_cost": 1.7,
         "rho": 0.05 * i, "beta": 0.6, "gamma": 0.5, "score": "loss_rise", **extra}
    if se is not None:
        r["test_acc_se"] = se
    if ci is not None:
        r["speed_vs_sgd_low"], r["speed_vs_sgd_high"] = speed - ci, speed + ci
    return r


OBJ2 = [("test_acc", "max"), ("speed_vs_sgd", "max")]


def test_indistinguishable_rule():
    from esam.search.front.pareto import error_band, indistinguishable
    a = _noisy(1, 98.0, 0.60, se=0.5, ci=0.02)
    # accuracy: |diff| <= 2 * sqrt(0.5^2 + 0.5^2) = 1.414; speed: intervals [0.58, 0.62] and [0.61, 0.65] overlap
    assert indistinguishable(a, _noisy(2, 96.6, 0.63, se=0.5, ci=0.02), OBJ2)
    assert not indistinguishable(a, _noisy(2, 96.5, 0.63, se=0.5, ci=0.02), OBJ2)  # 1.5 > 1.414
    assert not indistinguishable(a, _noisy(2, 98.0, 0.65, se=0.5, ci=0.02), OBJ2)  # [0.63, 0.67] misses [0.58, 0.62]
    assert indistinguishable(a, _noisy(2, 98.0, 0.64, se=0.5, ci=0.02), OBJ2)  # touching intervals overlap
    # a missing SE counts as 0, a missing interval is the value alone; no noise data at all: only equal values
    assert indistinguishable(a, _noisy(2, 97.0, 0.61), OBJ2) and not indistinguishable(a, _noisy(2, 96.9, 0.61), OBJ2)
    assert indistinguishable(_noisy(1, 97.0, 0.6), _noisy(2, 97.0, 0.6), OBJ2)
    assert not indistinguishable(_noisy(1, 97.0, 0.6), _noisy(2, 97.1, 0.6), OBJ2)
    assert not indistinguishable(a, {"test_acc": float("nan"), "speed_vs_sgd": 0.6}, OBJ2)
    assert error_band(a, "test_acc") == (97.0, 99.0) and error_band(a, "speed_vs_sgd") == (0.58, 0.62)
    assert error_band(_noisy(1, 97.0, 0.6), "test_acc") is None


def test_table_shows_noise_and_ties():
    from esam.search.front.report import format_table, front_of
    rows = [_noisy(1, 98.61, 0.569, se=0.62, ci=0.02), _noisy(2, 97.22, 0.599, se=0.78, ci=0.02),
            _noisy(3, 95.0, 0.70, se=0.5, ci=0.01),
            _noisy(5, 98.33, 1.0, se=0.67, ci=0.01, kind="reference", optimizer="sgd"),
            _noisy(6, 98.33, 0.51, kind="reference", optimizer="sam")]  # no noise recorded: plain values
    front = front_of(rows, OBJ2)
    lines = format_table(front, [r for r in rows if r["kind"] == "reference"], OBJ2).splitlines()
    header, first, second, third, sgd, sam = lines[:6]
    assert "acc % ± SE" in header and "img/s (own)" in header and "speed/SGD [95%]" in header
    assert first.split()[:4] == ["pareto", "98.61", "±", "0.62"] and "0.569 [0.549, 0.589]" in first
    assert first.split()[-2:] == ["1", "2"] and second.split()[-2:] == ["2", "1"] and third.split()[-2:] == ["3", "-"]
    assert "98.33 ± 0.67" in sgd and "1.000 [0.990, 1.010]" in sgd
    assert sam.split()[:3] == ["sam", "98.33", "510"]  # neither SE nor interval: the bare values
    assert any(line.startswith("img/s (own):") for line in lines) and any(line.startswith("≈ #:") for line in lines)


def test_plotly_figure_traces_and_png(tmp_path):
    import json

    from esam.search.front.report import _plot_png, front_of, pareto_figure
    rows = [_noisy(1, 98.61, 0.569, se=0.62, ci=0.02), _noisy(2, 97.22, 0.599, se=0.78, ci=0.02),
            _noisy(3, 95.0, 0.55, se=0.5, ci=0.01), _noisy(4, 94.0, 0.50), _noisy(7, 99.0, 0.9, status="FAILED"),
            _noisy(5, 98.33, 1.0, se=0.67, ci=0.01, kind="reference", optimizer="sgd"),
            _noisy(6, 98.33, 0.51, kind="reference", optimizer="sam")]
    front = front_of(rows, OBJ2)
    figure = json.loads(pareto_figure(rows, front, OBJ2, "a summary").to_json())
    traces = {t["name"]: t for t in figure["data"]}
    assert {n: len(t["x"]) for n, t in traces.items()} == {"ESAM trials": 2, "Pareto front": 2, "SGD": 1, "SAM": 1}
    fr = traces["Pareto front"]
    assert fr["x"] == [0.569, 0.599] and fr["text"] == ["ρ=0.05, β=0.6, γ=0.5", "ρ=0.1, β=0.6, γ=0.5"]
    assert fr["error_y"]["array"] == pytest.approx([1.24, 1.56]) and fr["error_x"]["arrayminus"] == pytest.approx([0.02, 0.02])
    assert "error_y" not in traces["SAM"] and "run06" in traces["SAM"]["hovertext"][0]
    assert "rho: 0.05" in fr["hovertext"][0] and "run_id: run01" in fr["hovertext"][0]
    layout = figure["layout"]
    assert layout["xaxis"]["title"]["text"] == "speed vs SGD (x, higher is faster)"
    assert layout["yaxis"]["title"]["text"].startswith("test accuracy (%")
    assert layout["xaxis"]["showgrid"] and layout["annotations"][0]["text"] == "a summary"
    _plot_png(tmp_path / "p.png", rows, front, OBJ2, "a summary")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("methods, label, title", [
    (("esam", "esam"), "ESAM trials", "ESAM search"),
    (("looksam", "looksam"), "LookSAM trials", "LookSAM search"),
    (("looksam", "rst"), "trials", "Method search"),
])
def test_the_plot_names_the_trials_by_their_method(methods, label, title):
    import json

    from esam.search.front.report import front_of, pareto_figure
    rows = [_noisy(1, 98.0, 0.5, optimizer=methods[0]), _noisy(2, 97.0, 0.4, optimizer=methods[1]),
            _noisy(3, 96.0, 0.3, optimizer=methods[1])]
    figure = json.loads(pareto_figure(rows, front_of(rows, OBJ2), OBJ2).to_json())
    assert [t["name"] for t in figure["data"]] == [label, "Pareto front"]
    assert figure["layout"]["title"]["text"].startswith(f"{title}: accuracy vs speed")
