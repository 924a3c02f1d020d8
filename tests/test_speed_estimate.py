"""The run-level speed estimate: median of paired ratios, its distribution-free interval, the stopping rule."""
import math
import random

import pytest
import torch

from esam.training.speed_estimate import (
    SpeedEstimate,
    _order_rank,
    block_ratios,
    keep_probing,
    median,
    median_interval,
    probe_epoch,
    ratios,
)

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
                       "step_time_vs_sgd": 2.0, "step_time_vs_sgd_low": 1 / 0.53, "step_time_vs_sgd_high": 1 / 0.47,
                       "probe_pairs": 10}


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


def test_each_method_is_timed_over_its_cycle():
    from esam.config import OptimizerConfig
    from esam.training.speed_probe import RANDOM_BLOCK, cycle_steps
    assert [cycle_steps(OptimizerConfig(name=n)) for n in ("sgd", "sam", "esam")] == [1, 1, 1]  # as before
    assert cycle_steps(OptimizerConfig(name="looksam", looksam_k=4)) == 4
    assert cycle_steps(OptimizerConfig(name="rst")) == cycle_steps(OptimizerConfig(name="aesam")) == RANDOM_BLOCK


def test_rst_is_timed_near_its_cost_not_near_its_cheap_steps(monkeypatch):
    """RST at p = 0.5 costs 1.5 passes a step: 0.67x SGD. On a clock that moves one unit per pass
    (a machine with nothing else on it), single-step pairs give 1 or 0.5 and their median one of the
    two; blocks of RANDOM_BLOCK steps give the cost model's ratio. The coin is seeded: deterministic."""
    from types import SimpleNamespace

    from esam.config import OptimizerConfig
    from esam.training import speed_probe
    from esam.training.speed_probe import InterleavedProbe, cycle_steps
    from esam.training.step import build_step_optimizer
    clock = [0.0]
    monkeypatch.setattr(speed_probe, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    config = OptimizerConfig(name="rst", rst_p=0.5)

    def make_closure(runner):
        def closure(indices=None):
            clock[0] += 1.0  # one pass
            return torch.nn.functional.cross_entropy(runner(x), y, reduction="none")
        return closure

    def probe(block: int) -> InterleavedProbe:
        return InterleavedProbe(model, lambda m: build_step_optimizer(m, config, 1),
                                lambda m: build_step_optimizer(m, config, 1, method="sgd"), torch.device("cpu"),
                                block=block)
    single = ratios(probe(1).time_pairs(make_closure, 15))
    assert set(single) == {1.0, 0.5} and median(single) in (1.0, 0.5)  # one kind's ratio, never the cost's
    blocks = probe(cycle_steps(config))
    speed, low, high = median_interval(ratios(blocks.time_pairs(make_closure, 15)))
    assert 0.4 <= blocks.method_opt.sharpness_steps / 160 <= 0.6  # the seeded draw (warm-up block included) near p
    assert speed == pytest.approx(1 / 1.5, abs=0.05) and low <= 1 / 1.5 <= high  # the cost model's ratio


def rst_probe_on_a_pass_counting_clock(monkeypatch, p: float, jitter: float = 0.0):
    """An RST probe (blocks of RANDOM_BLOCK steps) on a clock that moves by one unit per forward+backward
    pass (times 1 +- jitter, seeded): a sharpness step costs 2 units, a one-pass step and SGD's step 1."""
    from types import SimpleNamespace

    from esam.config import OptimizerConfig
    from esam.training import speed_probe
    from esam.training.speed_probe import InterleavedProbe, cycle_steps
    from esam.training.step import build_step_optimizer
    clock, noise = [0.0], random.Random(5)
    monkeypatch.setattr(speed_probe, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    config = OptimizerConfig(name="rst", rst_p=p)

    def make_closure(runner):
        def closure(indices=None):
            clock[0] += 1.0 + jitter * noise.uniform(-1, 1)
            return torch.nn.functional.cross_entropy(runner(x), y, reduction="none")
        return closure
    probe = InterleavedProbe(model, lambda m: build_step_optimizer(m, config, 1),
                             lambda m: build_step_optimizer(m, config, 1, method="sgd"), torch.device("cpu"),
                             block=cycle_steps(config))
    return probe, make_closure


@pytest.mark.parametrize("p", [0.15, 0.25, 0.35])
def test_a_skipping_method_is_timed_at_its_realized_share(monkeypatch, p):
    """On the pass-counting clock a block with s sharpness steps in 10 takes 10 + s units, SGD's 10: the exact
    speed at the probe's realized share S is 1 / (1 + S). The median block's ratio is 10 / (10 + its whole
    s): Binomial(10, p) arithmetic put it +4.5% off at p 0.15, +4.2% at 0.25, -3.1% at 0.55."""
    probe, make_closure = rst_probe_on_a_pass_counting_clock(monkeypatch, p)
    pairs = probe.time_pairs(make_closure, 24)
    counts = [round(pair[2] * 10) for pair in pairs]
    assert all(len(pair) == 3 for pair in pairs) and len(set(counts)) > 1  # blocks of several shares
    assert [pair[0] for pair in pairs] == [10.0 + s for s in counts]  # the recorded share is the block's own
    realized = sum(counts) / (10 * len(pairs))
    assert abs(realized - p) < 0.1
    truth = 1 / (1 + realized)
    est = SpeedEstimate(pairs=pairs)
    speed, low, high = est.interval()
    assert speed == pytest.approx(truth, rel=0.01) and low - 1e-9 <= truth <= high + 1e-9
    assert est.summary()["speed_vs_sgd"] == speed
    # at the run's own share (the trainer sets it): the speed there, not the probe's coin's
    est.share = p
    assert est.interval()[0] == pytest.approx(1 / (1 + p), rel=0.01)


def test_with_noisy_timings_the_interval_still_covers_the_realized_share(monkeypatch):
    for p in (0.15, 0.25, 0.35):
        probe, make_closure = rst_probe_on_a_pass_counting_clock(monkeypatch, p, jitter=0.3)
        pairs = probe.time_pairs(make_closure, 40)
        truth = 1 / (1 + sum(pair[2] for pair in pairs) / len(pairs))  # each pass costs 1 on average
        speed, low, high = SpeedEstimate(pairs=pairs).interval()
        assert low <= truth <= high and speed == pytest.approx(truth, rel=0.03), (p, speed, low, high, truth)


def test_blocks_move_to_the_share_along_their_line():
    # relative step time 1 + x at share x: every block moved to 0.3 says 1 / 1.3
    pairs = [(10.0 + s, 10.0, s / 10) for s in (1, 2, 2, 3, 4, 5)]
    assert block_ratios(pairs, 0.3) == pytest.approx([1 / 1.3] * 6)
    assert block_ratios(pairs) == pytest.approx([1 / (1 + 17 / 60)] * 6)  # None: the blocks' own mean share
    # a block slowed threefold by a neighbour stays an outlier; the group medians keep the line
    hit = pairs + [(36.0, 10.0, 0.2), (12.0, 10.0, 0.2)]
    moved = block_ratios(hit, 0.3)
    assert moved[:6] == pytest.approx([1 / 1.3] * 6) and moved[-1] == pytest.approx(1 / 1.3) and moved[-2] < 0.4
    # pairs without a share (one-cost methods), or blocks all at one share (LookSAM), are left as timed
    assert block_ratios(OUTLIERS, 0.3) == ratios(OUTLIERS)
    looksam = [(12.0 + i / 10, 10.0, 0.2) for i in range(5)]
    assert block_ratios(looksam, 0.5) == ratios(looksam)


def test_shares_survive_the_checkpoint_and_old_checkpoints_load(tmp_path):
    est = SpeedEstimate(pairs=[(11.0, 10.0, 0.1), (13.0, 10.0, 0.3)], train_s=2.0, probe_s=0.5)
    torch.save({"speed_pairs": torch.tensor(est.to_list(), dtype=torch.float64)}, tmp_path / "s.pt")
    back = torch.load(tmp_path / "s.pt", weights_only=True)["speed_pairs"]
    assert back.shape == (3, 3) and SpeedEstimate.from_list(back.tolist()) == est
    old = [[2.0, 0.5], [11.0, 10.0], [13.0, 10.0]]  # written before shares were recorded
    assert SpeedEstimate.from_list(old).pairs == [(11.0, 10.0), (13.0, 10.0)]


def test_step_time_carries_an_interval_so_two_of_its_points_can_be_indistinguishable():
    from esam.search.front.pareto import indistinguishable
    summary = SpeedEstimate(pairs=list(OUTLIERS)).summary()
    assert (summary["step_time_vs_sgd_low"], summary["step_time_vs_sgd_high"]) == (1 / 0.53, 1 / 0.47)
    objectives = [("test_acc", "max"), ("step_time_vs_sgd", "min")]
    a = {"test_acc": 90.0, "test_acc_se": 1.0, **summary}
    close = {**a, "test_acc": 90.5, "step_time_vs_sgd": 2.05}  # inside a's interval [1.89, 2.13]
    far = {**close, "step_time_vs_sgd": 2.4, "step_time_vs_sgd_low": 2.3, "step_time_vs_sgd_high": 2.5}
    assert indistinguishable(a, close, objectives) and not indistinguishable(a, far, objectives)
    # without the interval every distinct step time told the points apart
    bare = {k: v for k, v in close.items() if not k.startswith("step_time_vs_sgd_")}
    assert not indistinguishable({k: v for k, v in a.items() if not k.startswith("step_time_vs_sgd_")}, bare,
                                 objectives)
