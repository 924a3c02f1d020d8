import itertools
import random

import pytest

from esam.search.pareto import dominates, pareto_front, pick

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
    from esam.search.pareto_report import _plot_html, _plot_png, format_table, front_of

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
    assert html.count("<circle") == 5 and html.count("<title>") == 5 + 1  # every finished run with hover text, + the page title
    assert "rho: 0.05" in html and "crimson" in html
    _plot_png(tmp_path / "p.png", rows, front, objectives)
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
