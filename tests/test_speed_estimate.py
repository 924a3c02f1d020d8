"""The run-level speed estimate: median of paired ratios, its distribution-free interval, the stopping rule."""
import math
import random

import pytest
import torch

from esam.training.speed_estimate import (SpeedEstimate, _order_rank, keep_probing, median, median_interval,
                                          probe_epoch, ratios)

# (method seconds, SGD seconds) with the method at 1 s, so each ratio is exactly the SGD time.
# Eight pairs near 0.5 and two outliers: a method step hit by a neighbour (0.05), an SGD step hit (2.0).
OUTLIERS = [(1.0, r) for r in (0.50, 0.52, 0.05, 0.48, 0.51, 2.0, 0.49, 0.50, 0.53, 0.47)]


def noisy_pairs(n: int, seed: int = 0) -> list[tuple[float, float]]:
    """SGD steps of 10 ms, method steps about twice as long with 20% log-normal jitter on each."""
    rng = random.Random(seed)
    return [(0.02 * rng.lognormvariate(0, 0.2), 0.01 * rng.lognormvariate(0, 0.2)) for _ in range(n)]


def test_outliers_leave_the_median_and_its_interval_alone():
    speed, low, high = median_interval(ratios(OUTLIERS))
    # sorted: 0.05 0.47 0.48 0.49 0.50 0.50 0.51 0.52 0.53 2.0; at n = 10 the 95% interval is x(2)..x(9)
    assert (speed, low, high) == (0.50, 0.47, 0.53)
    assert sum(ratios(OUTLIERS)) / 10 == pytest.approx(0.605)  # what a mean would have said
    summary = SpeedEstimate(pairs=list(OUTLIERS)).summary()
    assert summary == {"speed_vs_sgd": 0.5, "speed_vs_sgd_low": 0.47, "speed_vs_sgd_high": 0.53,
                       "step_time_vs_sgd": 2.0, "probe_pairs": 10}


@pytest.mark.parametrize("n, rank", [(5, 0), (6, 1), (10, 2), (20, 6), (36, 12), (100, 40)])
def test_order_statistic_ranks_match_the_binomial_tables(n, rank):
    assert _order_rank(n, 0.95) == rank


def test_too_few_pairs_give_the_range_and_no_precision():
    few = SpeedEstimate(pairs=[(1.0, 0.5), (1.0, 0.51), (1.0, 0.49)])
    assert median_interval(ratios(few.pairs)) == (0.5, 0.49, 0.51)
    assert few.relative_half_width() == math.inf  # below 6 pairs there is no 95% interval to trust
    assert math.isnan(SpeedEstimate().summary()["speed_vs_sgd"]) and SpeedEstimate().summary()["probe_pairs"] == 0


def test_the_interval_shrinks_with_more_pairs():
    widths = [SpeedEstimate(pairs=noisy_pairs(n)).relative_half_width() for n in (10, 40, 160, 640)]
    assert widths == sorted(widths, reverse=True) and widths[-1] < widths[0] / 4
    speed, low, high = median_interval(ratios(noisy_pairs(640)))
    assert low < 0.5 < high and speed == pytest.approx(0.5, rel=0.03)


def test_same_pairs_same_numbers_in_any_order():
    pairs = noisy_pairs(50)
    shuffled = list(pairs)
    random.Random(1).shuffle(shuffled)
    assert median_interval(ratios(pairs)) == median_interval(ratios(shuffled)) == median_interval(ratios(pairs))


def test_stops_at_the_target_precision():
    est = SpeedEstimate(train_s=100.0)
    calls = []

    def measure(n, first):
        calls.append((n, first))
        return [(1.0, 0.5 + 0.001 * i) for i in range(n)]  # ratios within 0.4% of each other
    epoch = probe_epoch(est, measure, min_pairs=3, clock=lambda: 0.0)
    # 3 pairs: no 95% interval yet; 6: the range, half-width 0.2% < 2%: stop
    assert len(epoch) == 6 and calls == [(3, True), (3, False)]
    assert est.relative_half_width() < 0.02 and len(est.pairs) == 6
    # the next epoch is precise already: its minimum only
    assert len(probe_epoch(est, measure, min_pairs=3, clock=lambda: 0.0)) == 3 and len(est.pairs) == 9


def test_stops_when_the_probe_has_used_its_share_of_the_time():
    ticks = iter(range(1000))
    est = SpeedEstimate(train_s=8.0)  # each measure call takes one second of the fake clock

    def measure(n, first):
        return [(1.0, r) for r in random.Random(len(est.pairs)).sample([0.2, 0.5, 0.9, 1.4, 2.0], 2)]
    epoch = probe_epoch(est, measure, min_pairs=2, share=0.2, clock=lambda: float(next(ticks)))
    # probing continues while probe_s < 0.2 * (8 + probe_s), i.e. probe_s < 2 s: two calls
    assert len(epoch) == 4 and est.probe_s == 2.0 and not est.within_budget(0.2)
    assert est.relative_half_width() > 0.02  # imprecise, but out of budget
    # out of budget, each later epoch still times its minimum (the per-epoch diagnostic needs pairs)
    assert len(probe_epoch(est, measure, min_pairs=2, share=0.2, clock=lambda: float(next(ticks)))) == 2


def test_keep_probing_rule():
    precise = SpeedEstimate(pairs=[(1.0, 0.5)] * 8, train_s=1.0)
    assert keep_probing(precise, epoch_pairs=0, min_pairs=1)  # the minimum first
    assert not keep_probing(precise, epoch_pairs=1, min_pairs=1)
    imprecise = SpeedEstimate(pairs=noisy_pairs(8), train_s=10.0, probe_s=1.0)
    assert keep_probing(imprecise, epoch_pairs=1, min_pairs=1)
    assert not keep_probing(SpeedEstimate(pairs=noisy_pairs(8), train_s=1.0, probe_s=1.0), epoch_pairs=1, min_pairs=1)


def test_the_checkpoint_copy_is_a_plain_tensor(tmp_path):
    est = SpeedEstimate(pairs=noisy_pairs(7), train_s=3.5, probe_s=0.25)
    torch.save({"speed_pairs": torch.tensor(est.to_list(), dtype=torch.float64)}, tmp_path / "s.pt")
    back = torch.load(tmp_path / "s.pt", weights_only=True)["speed_pairs"]
    assert SpeedEstimate.from_list(back.tolist()) == est
    assert SpeedEstimate.from_list(None) == SpeedEstimate()


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="two positive step times"):
        ratios([(0.0, 1.0)])
    with pytest.raises(ValueError, match="confidence"):
        median_interval([1.0], confidence=1.5)
    with pytest.raises(ValueError, match="min_pairs"):
        probe_epoch(SpeedEstimate(), lambda n, first: [], min_pairs=0)
    assert math.isnan(median([]))


def test_the_probe_alternates_which_step_goes_first(monkeypatch):
    from esam.training import speed_probe
    probe = speed_probe.InterleavedProbe.__new__(speed_probe.InterleavedProbe)
    probe.method_opt, probe.sgd_opt, probe.runners, probe._order = "method", "sgd", [None, None], 0
    order = []
    monkeypatch.setattr(probe, "_time_step", lambda opt, closure: order.append(opt) or (2.0 if opt == "method" else 1.0))
    assert probe.time_pairs(lambda r: None, 3) == [(2.0, 1.0)] * 3
    assert order == ["method", "sgd", "sgd", "method", "method", "sgd", "sgd", "method"]  # warm-up pair first
