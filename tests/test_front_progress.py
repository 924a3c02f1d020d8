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


class _Trial:
    def __init__(self, trial_id: str, result: dict):
        self.trial_id, self.last_result, self.config, self.status = trial_id, {**result, "epoch": 3}, {}, "TERMINATED"


def test_a_continued_search_keeps_the_reference_point_its_first_run_fixed(tmp_path):
    """The first run writes the reference it fixed on the parent run (through the record writer, beside its
    first series point); the next run of the search reads it back and measures the same area, and so does
    the final hypervolume."""
    from mlflow.tracking import MlflowClient

    from esam.search.records.mlflow_runs import SERIES_REFERENCE_TAG, log_search_metrics, series_reference
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.create_run(client.create_experiment("x")).info.run_id

    class Records:  # the record writer, writing at once
        def put(self, record):
            log_search_metrics(client, parent, record["metrics"], record["step"], record["timestamp"], record.get("tags"))
    first = FrontProgress("sqlite:///unused.db", parent, STEP_TIME, 3, records=Records())
    first._log([], _Trial("a", point(95, 1.0)), failed=False)
    first._log([_Trial("a", point(95, 1.0))], _Trial("b", point(90, 0.5)), failed=False)
    assert series_reference(client, parent, STEP_TIME) == {"test_acc": 0.0, "step_time_vs_sgd": 1.0}
    assert client.get_run(parent).data.tags[SERIES_REFERENCE_TAG].count("step_time_vs_sgd") == 1

    # the next run: a new callback, the earlier points, and a newcomer worse than the kept reference
    kept = series_reference(client, parent, STEP_TIME)
    again = FrontProgress("sqlite:///unused.db", parent, STEP_TIME, 3, records=Records(),
                          earlier=[point(95, 1.0), point(90, 0.5)], ended_before=2, reference=kept)
    again._log([], _Trial("c", point(99, 4.0)), failed=False)
    history = sorted(client.get_metric_history(parent, "front_hypervolume"), key=lambda m: m.step)
    assert [m.value for m in history] == [0.0, 45.0, 45.0]  # re-fixed at 4.0 it would have jumped
    assert again.reference == kept
    assert series_reference(client, parent, [("test_acc", "max"), ("speed_vs_sgd", "max")]) is None  # another search's
