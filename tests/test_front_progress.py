"""The hypervolume series a search logs (FrontProgress): its reference point is fixed once and kept."""
import math
import pickle
import random
from itertools import pairwise

import pytest

from esam.search.front.hypervolume import fixed_reference, hypervolume
from esam.search.tune.callbacks import FrontProgress

STEP_TIME = [("test_acc", "max"), ("step_time_vs_sgd", "min")]


def point(acc, step_time):
    return {"test_acc": acc, "step_time_vs_sgd": step_time}


def progress(objectives=STEP_TIME, references=None):
    return FrontProgress("sqlite:///unused.db", "parent", objectives, 3, references=references)


def test_a_dominated_trial_does_not_raise_the_series():
    first, dominated, better = point(95, 1.0), point(10, 3.0), point(90, 0.5)
    # the reference as the worst value of the points so far: the dominated point raised the area
    assert hypervolume([first], STEP_TIME)[0] == 0.0
    assert hypervolume([first, dominated], STEP_TIME)[0] == 190.0  # 95 x (3.0 - 1.0)
    series = progress()
    assert series.area([first]) == 0.0 and series.reference == {"test_acc": 0.0, "step_time_vs_sgd": 1.0}
    assert series.area([first, dominated]) == 0.0  # beyond the kept reference: it dominates nothing
    assert series.area([first, dominated, better]) == 45.0  # 90 x (1.0 - 0.5): the front moved
    assert series.reference == {"test_acc": 0.0, "step_time_vs_sgd": 1.0}  # kept


def test_the_series_only_rises_when_the_front_moves():
    rng = random.Random(0)
    points = [point(rng.uniform(50, 99), rng.uniform(0.5, 3.0)) for _ in range(40)]
    series, seen, values = progress(), [], []
    for p in points:
        dominated = any(q["test_acc"] >= p["test_acc"] and q["step_time_vs_sgd"] <= p["step_time_vs_sgd"] for q in seen)
        seen.append(p)
        values.append(series.area(seen))
        if dominated:
            assert len(values) == 1 or values[-1] == values[-2]
    assert values == sorted(values) and values[-1] > values[0]
    assert any(b > a for a, b in pairwise(values))


def test_the_reference_trials_set_the_reference_when_they_are_worse():
    references = {"sgd": {"test_acc": 92.0, "step_time_vs_sgd": 1.0}, "sam": {"test_acc": 93.0, "step_time_vs_sgd": 2.0}}
    series = progress(references=references)
    assert series.area([point(95, 1.5)]) == 95 * (2.0 - 1.5)  # SAM's step time bounds it, not the first trial's
    assert fixed_reference([point(95, 2.5)], STEP_TIME, list(references.values())) == {"test_acc": 0.0,
                                                                                      "step_time_vs_sgd": 2.5}


def test_a_point_without_both_values_fixes_nothing():
    series = progress()
    assert series.area([point(90, math.nan), {"test_acc": 80.0}]) == 0.0 and series.reference is None
    assert series.area([point(90, math.nan), point(95, 1.2)]) == 0.0 and series.reference["step_time_vs_sgd"] == 1.2


def test_maximized_objectives_keep_the_zero_reference_and_it_survives_a_pickle():
    series = progress(objectives=[("test_acc", "max"), ("speed_vs_sgd", "max")])
    assert series.area([{"test_acc": 90.0, "speed_vs_sgd": 0.5}]) == pytest.approx(45.0)
    assert series.reference == {"test_acc": 0.0, "speed_vs_sgd": 0.0}
    assert pickle.loads(pickle.dumps(series)).reference == series.reference
