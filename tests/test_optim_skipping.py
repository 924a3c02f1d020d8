"""LookSAM, RST and AE-SAM on tiny CPU problems: hand-written float64 references, degenerate cases,
honest pass counts, state round trips, seeds, configs and bad arguments."""
from __future__ import annotations

import io
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import closure_for, make_batches, make_cnn, one_torch_thread, sgd
from esam.optim import AESAM, ESAM, RST, SAM, LookSAM, Plain, build_optimizer, predicted_relative_cost
from esam.optim.cost import aesam_sharp_fraction

SKIPPING = {"looksam": LookSAM, "rst": RST, "aesam": AESAM}
ESAM_SETTINGS = {"sharpness": "esam", "beta": 0.6, "gamma": 0.5, "score": "loss_rise"}


one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)


def train(opt, model: nn.Module, batches) -> list[torch.Tensor]:
    return [opt.step(closure_for(model, x, y)) for x, y in batches]


def assert_same_model(a: nn.Module, b: nn.Module) -> None:
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(ta, tb), name


# --- hand-written references in float64 ------------------------------------------------------------------------
# A two-layer tanh network written out as a function of its weights, and plain SGD (lr only), so that every
# update is the paper's equation with nothing in between.

LR, RHO = 0.1, 0.2


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3, bias=False)).double()


def tiny_batches(n: int, batch: int = 12) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(batch, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (batch,), generator=g))
            for _ in range(n)]


def loss_at(ws: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    w1, b1, w2 = ws
    return F.cross_entropy(torch.tanh(x @ w1.T + b1) @ w2.T, y)


def grad_at(ws, x, y) -> list[torch.Tensor]:
    ws = [w.detach().requires_grad_(True) for w in ws]
    return list(torch.autograd.grad(loss_at(ws, x, y), ws))


def norm(ts) -> torch.Tensor:
    return torch.sqrt(sum((t * t).sum() for t in ts))


def dot(a, b) -> torch.Tensor:
    return sum((s * t).sum() for s, t in zip(a, b))


def sam_gradient(ws, x, y) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(g, g_s): the gradient at w and at w + rho g / ||g||."""
    g = grad_at(ws, x, y)
    n = norm(g)
    return g, grad_at([w + RHO * gi / n for w, gi in zip(ws, g)], x, y)


def initial_weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def plain_sgd(model: nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=0.0, weight_decay=0.0)


def assert_weights(model: nn.Module, ws: list[torch.Tensor]) -> None:
    for p, w in zip(model.parameters(), ws):
        torch.testing.assert_close(p.detach(), w, rtol=1e-10, atol=1e-12)


def test_looksam_follows_the_papers_equations():
    k, alpha, batches = 3, 0.7, tiny_batches(8)
    model = tiny_model()
    ws = initial_weights(model)
    opt = LookSAM(model.parameters(), plain_sgd(model), rho=RHO, looksam_k=k, looksam_alpha=alpha)
    g_v = None
    for t, (x, y) in enumerate(batches):
        if t % k == 0:  # Algorithm 1: the SAM gradient, and its part orthogonal to g via the angle between them
            g, g_s = sam_gradient(ws, x, y)
            cos = dot(g, g_s) / (norm(g) * norm(g_s))
            g_v = [gs - norm(g_s) * cos * gi / norm(g) for gi, gs in zip(g, g_s)]
            direction = g_s
        else:  # reuse g_v, scaled to this step's gradient norm
            g = grad_at(ws, x, y)
            direction = [gi + alpha * norm(g) / norm(g_v) * v for gi, v in zip(g, g_v)]
        ws = [w - LR * d for w, d in zip(ws, direction)]
        opt.step(closure_for(model, x, y))
        assert opt.last_sharpened == (t % k == 0)
        assert_weights(model, ws)
    assert abs(dot(g_v, g).item()) > 1e-6  # reused across steps, g_v is not orthogonal to the new g


def test_rst_follows_its_coin():
    p, seed, batches = 0.5, 5, tiny_batches(10)
    model = tiny_model()
    ws = initial_weights(model)
    opt = RST(model.parameters(), plain_sgd(model), rho=RHO, rst_p=p, seed=seed)
    coin = torch.Generator().manual_seed(seed)
    taken = []
    for x, y in batches:
        sharpen = torch.rand((), generator=coin).item() < p
        direction = sam_gradient(ws, x, y)[1] if sharpen else grad_at(ws, x, y)
        ws = [w - LR * d for w, d in zip(ws, direction)]
        opt.step(closure_for(model, x, y))
        taken.append(opt.last_sharpened)
        assert opt.last_sharpened == sharpen
        assert_weights(model, ws)
    assert 0 < sum(taken) < len(taken) and opt.sharpness_steps == sum(taken)


def test_aesam_follows_its_gradient_norm_test():
    steps, delta, c_start, c_end = 12, 0.5, 0.8, -0.8
    batches = tiny_batches(steps)
    model = tiny_model()
    ws = initial_weights(model)
    opt = AESAM(model.parameters(), plain_sgd(model), rho=RHO, aesam_c_start=c_start, aesam_c_end=c_end,
                aesam_momentum=delta, total_steps=steps)
    mean = var = 0.0
    taken = []
    for t, (x, y) in enumerate(batches):
        g = grad_at(ws, x, y)
        s = (norm(g) ** 2).item()
        mean = delta * mean + (1 - delta) * s
        var = delta * var + (1 - delta) * (s - mean) ** 2
        c = c_start + (c_end - c_start) * t / (steps - 1)
        sharpen = s >= mean + c * math.sqrt(var)
        direction = sam_gradient(ws, x, y)[1] if sharpen else g
        ws = [w - LR * d for w, d in zip(ws, direction)]
        record = []
        opt.step(closure_for(model, x, y, record))
        taken.append(opt.last_sharpened)
        assert opt.last_sharpened == sharpen and len(record) == 1 + sharpen  # g serves both: no pass wasted
        assert opt.last_sq_norm == pytest.approx(s, rel=1e-12)
        assert_weights(model, ws)
    assert taken[0] and 0 < sum(taken) < steps
    assert (opt.mean, opt.var) == (pytest.approx(mean, rel=1e-12), pytest.approx(var, rel=1e-12))


def test_aesam_threshold_schedule():
    model = make_cnn()
    opt = AESAM(model.parameters(), sgd(model), aesam_c_start=1.0, aesam_c_end=-1.0, total_steps=5)
    assert [opt.threshold_c(t) for t in (0, 2, 4, 9)] == [1.0, 0.0, -1.0, -1.0]
    assert AESAM(model.parameters(), sgd(model), aesam_c_start=1.0, aesam_c_end=-0.5).threshold_c(7) == 0.25


# --- degenerate cases: exactly the wrapped methods ----------------------------------------------------------------

def run(cls, model, batches, **kwargs) -> nn.Module:
    train(cls(model.parameters(), sgd(model), rho=0.1, **kwargs), model, batches)
    return model


NEVER = {"aesam_c_start": 1e9, "aesam_c_end": 1e9}
ALWAYS = {"aesam_c_start": -1e9, "aesam_c_end": -1e9}


@pytest.mark.parametrize("cls, kwargs", [(LookSAM, {"looksam_k": 1}), (RST, {"rst_p": 1.0}), (AESAM, ALWAYS)])
def test_always_sharpening_is_sam_exactly(cls, kwargs):
    batches = make_batches(4)
    assert_same_model(run(SAM, make_cnn(), batches), run(cls, make_cnn(), batches, **kwargs))


@pytest.mark.parametrize("cls, kwargs", [(LookSAM, {"looksam_k": 1}), (RST, {"rst_p": 1.0}), (AESAM, ALWAYS)])
def test_always_sharpening_with_esam_is_esam_exactly(cls, kwargs):
    batches = make_batches(4)
    esam = run(ESAM, make_cnn(), batches, beta=0.6, gamma=0.5, seed=3)
    assert_same_model(esam, run(cls, make_cnn(), batches, seed=3, **ESAM_SETTINGS, **kwargs))


@pytest.mark.parametrize("cls, kwargs", [(RST, {"rst_p": 0.0}), (AESAM, NEVER)])
def test_never_sharpening_is_the_base_optimizer_exactly(cls, kwargs):
    batches = make_batches(4)
    plain = make_cnn()
    train(Plain(plain.parameters(), sgd(plain)), plain, batches)
    for sharpness in ("sam", "esam"):
        assert_same_model(plain, run(cls, make_cnn(), batches, sharpness=sharpness, **kwargs))


def test_looksam_alpha0_is_sam_every_k_steps_and_the_base_step_between():
    batches = make_batches(6)
    ref = make_cnn()
    base = sgd(ref)  # one base optimizer (one momentum buffer) behind both wrappers
    sam, plain = SAM(ref.parameters(), base, rho=0.1), Plain(ref.parameters(), base)
    for t, (x, y) in enumerate(batches):
        (sam if t % 3 == 0 else plain).step(closure_for(ref, x, y))
    assert_same_model(ref, run(LookSAM, make_cnn(), batches, looksam_k=3, looksam_alpha=0.0))


# --- honest cost: last_cost counts the passes each step ran ----------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SKIPPING))
@pytest.mark.parametrize("sharpness", ["sam", "esam"])
def test_last_cost_counts_the_passes_that_ran(name, sharpness):
    model = make_cnn()
    batches = make_batches(8, batch=10)
    extra = {"looksam": {"looksam_k": 3}, "rst": {}, "aesam": {"aesam_c_start": 0.5, "aesam_c_end": -0.5}}[name]
    opt = build_optimizer(name, model.parameters(), sgd(model), sharpness=sharpness, beta=0.5, gamma=0.3, seed=1,
                          **extra)
    kinds = set()
    for x, y in batches:
        record = []
        opt.step(closure_for(model, x, y, record))
        cost = opt.last_cost
        forwarded = sum(len(r[1]) for r in record)
        backwarded = sum(len(r[1]) for r in record if r[2])  # grad-enabled calls run a backward
        assert cost.method == name and (cost.forward_samples, cost.backward_samples) == (forwarded, backwarded)
        if not opt.last_sharpened:
            assert len(record) == 1 and cost.relative_cost == 1.0
        elif sharpness == "sam":
            assert len(record) == 2 and cost.relative_cost == 2.0
        else:  # ESAM: loss-rise scoring forward, descent on ceil(0.3 * 10) = 3 samples
            f = 1.0 if name == "aesam" else cost.weight_grad_fraction  # AE-SAM's first pass computed every gradient
            assert len(record) == 3 and cost.relative_cost == pytest.approx(((2 + f) * 10 + 10 + 9) / 30)
        kinds.add(opt.last_sharpened)
    assert kinds == {True, False}


def test_looksam_costs_follow_k():
    model = make_cnn()
    opt = LookSAM(model.parameters(), sgd(model), looksam_k=5)
    costs = []
    for x, y in make_batches(10):
        opt.step(closure_for(model, x, y))
        costs.append(opt.last_cost.relative_cost)
    assert costs == [2.0, 1.0, 1.0, 1.0, 1.0] * 2 and opt.sharpness_steps == 2


def test_predicted_relative_cost_of_the_skipping_methods():
    assert predicted_relative_cost("looksam", looksam_k=5) == pytest.approx(1.2)
    assert predicted_relative_cost("looksam", looksam_k=1) == 2.0
    assert predicted_relative_cost("rst", rst_p=0.5) == 1.5 and predicted_relative_cost("rst", rst_p=0.0) == 1.0
    assert predicted_relative_cost("aesam") == pytest.approx(1.5)  # c from 1 to -1: half the steps
    assert aesam_sharp_fraction(0.0, 0.0) == 0.5 and aesam_sharp_fraction(1.0, 1.0) == pytest.approx(0.1587, abs=1e-4)
    assert aesam_sharp_fraction(2.0, -1.0) == pytest.approx(  # the closed form against the schedule's average
        sum(0.5 * math.erfc((2.0 - 3.0 * i / 10000) / math.sqrt(2)) for i in range(10001)) / 10001, rel=1e-4)
    esam = predicted_relative_cost("esam", 0.6, 0.5, "clean_loss")
    assert predicted_relative_cost("rst", 0.6, 0.5, "clean_loss", sharpness="esam", rst_p=0.5) == (esam + 1) / 2
    # AE-SAM's first pass computes every weight gradient: beta saves nothing there
    assert predicted_relative_cost("aesam", 0.6, 0.5, "clean_loss", sharpness="esam", aesam_c_start=0.0,
                                   aesam_c_end=0.0) == pytest.approx((predicted_relative_cost(
                                       "esam", 1.0, 0.5, "clean_loss") + 1) / 2)
    for bad, message in [({"looksam_k": 0}, "looksam_k"), ({"sharpness": "gsam"}, "gsam")]:
        with pytest.raises(ValueError, match=message):
            predicted_relative_cost("looksam", **bad)
    with pytest.raises(ValueError, match="rst_p"):
        predicted_relative_cost("rst", rst_p=1.5)
    with pytest.raises(ValueError, match="aesam"):
        predicted_relative_cost("lion")


def test_host_operators_follow_the_passes():
    """A one-pass step dispatches SGD's operators, a sharpness step SAM's, each plus a few of bookkeeping."""
    from esam.models import build_model
    from esam.perf.dispatch_count import count_ops

    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))

    def ops(name: str, steps: int, **kwargs) -> list[int]:
        torch.manual_seed(0)
        model = build_model("small_cnn", num_classes=10, in_channels=3)
        base = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, foreach=True)
        opt = build_optimizer(name, model.parameters(), base, **kwargs)
        closure = closure_for(model, x, y)
        opt.step(closure)  # the first step also creates the momentum buffers
        return [sum(count_ops(lambda: opt.step(closure)).values()) for _ in range(steps)]
    (sgd_ops,), (sam_ops,) = ops("sgd", 1), ops("sam", 1)
    looksam = ops("looksam", 5, looksam_k=5)  # steps 1..5: four one-pass steps, then a sharpness step
    assert all(0 < n - sgd_ops <= 8 for n in looksam[:4])  # g's norm, one scaled add of g_v
    assert 0 < looksam[4] - sam_ops <= 16  # the decomposition: flat inner products, two foreach ops, a norm
    rst = ops("rst", 8, rst_p=0.5, seed=0)
    assert set(rst) == {sgd_ops + 2, sam_ops + 2}  # the coin: one CPU draw, no device kernel
    aesam = ops("aesam", 12, aesam_c_start=0.0, aesam_c_end=0.0, aesam_momentum=0.5)
    overhead = {n - (sam_ops if n > 1.5 * sgd_ops else sgd_ops) for n in aesam}
    assert len(overhead) == 1 and 0 < overhead.pop() <= 6  # ||g||^2: a foreach norm, a stack, a sum


# --- state, seeds ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SKIPPING))
@pytest.mark.parametrize("sharpness", ["sam", "esam"])
def test_state_dict_round_trip_continues_identically(name, sharpness):
    batches = make_batches(7)
    extra = {"looksam": {"looksam_k": 3}, "rst": {}, "aesam": {"total_steps": 7}}[name]

    def build(model, seed):
        return build_optimizer(name, model.parameters(), sgd(model), rho=0.1, sharpness=sharpness, beta=0.5,
                               gamma=0.5, seed=seed, **extra)
    model = make_cnn()
    opt = build(model, 3)
    train(opt, model, batches[:4])  # LookSAM stops mid-cycle: the next step reuses g_v
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    train(opt, model, batches[4:])
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)  # as checkpoints are read
    resumed = make_cnn(seed=99)
    resumed.load_state_dict(saved["model"])
    opt2 = build(resumed, 12345)
    opt2.load_state_dict(saved["opt"])
    assert opt2.param_groups is opt2.base_optimizer.param_groups and opt2.num_steps == 4
    assert opt2.sharpness_steps == saved["opt"]["sharpness_steps"]
    train(opt2, resumed, batches[4:])
    assert_same_model(model, resumed)
    assert opt2.sharpness_steps == opt.sharpness_steps


def test_looksam_state_refuses_g_v_of_another_model():
    model = make_cnn()  # 9 trainable tensors; `other` has as many, of other shapes
    other = nn.Sequential(*[nn.Linear(3, 3) for _ in range(4)], nn.Linear(3, 2, bias=False))
    opt = LookSAM(model.parameters(), sgd(model))
    train(opt, model, make_batches(1))
    with pytest.raises(ValueError, match="g_v"):
        LookSAM(other.parameters(), sgd(other)).load_state_dict(opt.state_dict())


@pytest.mark.parametrize("name, kwargs", [("rst", {}), ("looksam", ESAM_SETTINGS), ("aesam", ESAM_SETTINGS)])
def test_same_seed_same_run(name, kwargs):
    batches = make_batches(5)
    models = [make_cnn() for _ in range(3)]
    for model, seed in zip(models, [7, 7, 8]):
        train(build_optimizer(name, model.parameters(), sgd(model), seed=seed, **kwargs), model, batches)
    assert_same_model(models[0], models[1])
    assert not all(torch.equal(a, b) for a, b in zip(models[0].parameters(), models[2].parameters()))


def test_rst_draws_from_a_cpu_generator_only():
    model = make_cnn()
    opt = RST(model.parameters(), sgd(model), seed=0)
    state = opt.generator.get_state()
    train(opt, model, make_batches(3))
    assert opt.generator.device.type == "cpu" and not torch.equal(state, opt.generator.get_state())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs are counted on CUDA")
def test_only_aesam_syncs_the_host():
    from esam.perf.bench import count_host_syncs
    model = make_cnn().cuda()
    x, y = torch.randn(16, 3, 8, 8, device="cuda"), torch.randint(0, 4, (16,), device="cuda")
    for name, syncs in (("looksam", 0), ("rst", 0), ("aesam", 1)):
        opt = build_optimizer(name, model.parameters(), sgd(model), seed=0)
        for _ in range(3):
            opt.step(closure_for(model, x, y))
        def five_steps(opt=opt):
            for _ in range(5):
                opt.step(closure_for(model, x, y))
        assert count_host_syncs(five_steps) == 5 * syncs


# --- configs -------------------------------------------------------------------------------------------------------

def exported(name: str, **optimizer) -> dict:
    """An exported training config: every optimizer field, as `esam export` writes it."""
    from esam.config import to_dict, train_config_from_dict
    return to_dict(train_config_from_dict({"optimizer": {"name": name, **optimizer}}))


@pytest.mark.parametrize("name", sorted(SKIPPING))
def test_from_config_reads_an_exported_config(name, tmp_path):
    import yaml
    cls = SKIPPING[name]
    path = tmp_path / "best.yaml"
    path.write_text(yaml.safe_dump(exported(name, sharpness="esam", beta=0.4, looksam_k=4, looksam_alpha=0.5,
                                            rst_p=0.3, aesam_c_start=0.7, aesam_momentum=0.8)))
    model = make_cnn()
    opt = cls.from_config(model.parameters(), sgd(model), path, model=model)
    assert type(opt) is cls and (opt.sharpness, opt.beta, opt.rho) == ("esam", 0.4, 0.05)
    assert {"looksam": lambda: (opt.k, opt.alpha) == (4, 0.5), "rst": lambda: opt.p == 0.3,
            "aesam": lambda: (opt.c_start, opt.c_end, opt.momentum) == (0.7, -1.0, 0.8)}[name]()
    loaded = cls.from_config(model.parameters(), sgd(model), {"optimizer": {"name": name, "rst_p": "5e-1",
                                                                            "looksam_alpha": "1e-1"}})
    assert loaded.sharpness == "sam" and loaded.beta == 1.0
    with pytest.raises(ValueError, match="'sam'"):
        cls.from_config(model.parameters(), sgd(model), {"optimizer": {"name": "sam"}})
    with pytest.raises(ValueError, match="rst_pp"):
        cls.from_config(model.parameters(), sgd(model), {"optimizer": {"rst_pp": 0.5}})


def test_esam_from_config_ignores_the_other_methods_settings():
    model = make_cnn()
    opt = ESAM.from_config(model.parameters(), sgd(model), exported("esam", beta=0.5))
    assert type(opt) is ESAM and opt.beta == 0.5
    with pytest.raises(ValueError, match="'looksam'"):
        ESAM.from_config(model.parameters(), sgd(model), exported("looksam"))


@pytest.mark.parametrize("name", sorted(SKIPPING))
def test_train_builds_each_method_from_the_config(name):
    from esam.config import train_config_from_dict
    from esam.training.trainer import train as train_run
    cfg = train_config_from_dict({
        "model": "small_cnn", "epochs": 2, "batch_size": 64, "probe_steps": 1, "timing_warmup_steps": 1,
        "data": {"name": "digits", "train_limit": 256, "test_limit": 128},
        "optimizer": {"name": name, "looksam_k": 3, "rst_p": 0.5}})
    final = train_run(cfg)
    # AE-SAM's running mean starts at 0, so its first steps (here all 8) sharpen
    assert math.isfinite(final["train_loss"]) and 1.0 < final["relative_cost"] <= (2.0 if name == "aesam" else 1.9)


def test_train_tells_aesam_the_runs_length():
    from esam.config import train_config_from_dict
    from esam.training.trainer import _setup
    cfg = train_config_from_dict({
        "model": "small_cnn", "epochs": 3, "batch_size": 64, "probe_steps": 0,
        "data": {"name": "digits", "train_limit": 256, "test_limit": 128}, "optimizer": {"name": "aesam"}})
    run = _setup(cfg)
    assert run.data.steps_per_epoch == 4 and run.optimizer.total_steps == 12  # epochs x steps per epoch
    assert run.optimizer.threshold_c(0) == 1.0 and run.optimizer.threshold_c(11) == -1.0  # the paper's schedule


@pytest.mark.parametrize("name", sorted(SKIPPING))
def test_pass_mode_knows_when_swp_draws_a_fresh_pattern(name):
    from esam.config import train_config_from_dict
    from esam.training.step import PassMode

    def fresh(**optimizer) -> bool:
        return PassMode.of(train_config_from_dict({"optimizer": {"name": name, **optimizer}})).fresh_swp
    assert fresh(sharpness="esam", beta=0.6)
    assert not fresh(sharpness="sam", beta=0.6)  # SAM's sharpness step: no SWP
    assert not fresh(sharpness="esam", beta=1.0)  # SWP keeps every tensor
    assert not fresh(sharpness="esam", beta=0.6, swp_patterns=4)  # a fixed pool of patterns


def test_aesam_timed_at_a_share_sharpens_that_share_evenly():
    model = make_cnn()
    batches = make_batches(10, seed=3)
    opt = AESAM(model.parameters(), sgd(model), **NEVER)  # its own test would never sharpen
    opt.time_at_share(0.3)
    sharpened = []
    for x, y in batches:
        opt.step(closure_for(model, x, y))
        sharpened.append(opt.last_sharpened)
    assert sharpened == [False, False, False, True, False, False, True, False, False, True]
    opt.time_at_share(None)
    opt.step(closure_for(model, *batches[0]))
    assert not opt.last_sharpened  # back to its test
    with pytest.raises(ValueError, match=re.escape("share must be in [0, 1] or None, got 1.5")):
        opt.time_at_share(1.5)


def test_the_speed_probe_times_aesam_at_the_runs_share():
    from esam.config import train_config_from_dict
    from esam.training.trainer import _setup, _speed_vs_sgd, _train_epoch
    cfg = train_config_from_dict({
        "model": "small_cnn", "epochs": 2, "batch_size": 64, "probe_steps": 1, "timing_warmup_steps": 1,
        "data": {"name": "digits", "train_limit": 256, "test_limit": 128}, "optimizer": {"name": "aesam"}})
    run = _setup(cfg)
    _, batch = _train_epoch(run, 0)
    speed = _speed_vs_sgd(run, batch)
    assert run.probe.block == 10 and speed["probe_pairs"] >= 1 and speed["speed_vs_sgd"] > 0
    assert run.probe.method_opt.timed_share == run.optimizer.sharpness_steps / run.optimizer.num_steps


# --- bad arguments: one clear error each ----------------------------------------------------------------------------

@pytest.mark.parametrize("cls, kwargs, bad", [
    (LookSAM, {"looksam_k": 0}, "looksam_k must be a positive integer, got 0"),
    (LookSAM, {"looksam_k": 2.5}, "got 2.5"),
    (LookSAM, {"looksam_k": True}, "got True"),
    (LookSAM, {"looksam_alpha": -0.1}, "looksam_alpha must be >= 0, got -0.1"),
    (RST, {"rst_p": -0.1}, "rst_p must be in [0, 1], got -0.1"),
    (RST, {"rst_p": 1.5}, "got 1.5"),
    (AESAM, {"aesam_c_start": math.inf}, "aesam_c_start must be a finite number, got inf"),
    (AESAM, {"aesam_c_end": math.nan}, "aesam_c_end must be a finite number, got nan"),
    (AESAM, {"aesam_momentum": 1.0}, "aesam_momentum must be in [0, 1), got 1.0"),
    (AESAM, {"total_steps": 0}, "total_steps must be a positive integer or None, got 0"),
    (RST, {"sharpness": "gsam"}, "unknown sharpness 'gsam' (valid: sam, esam)"),
    (LookSAM, {"beta": 0.0}, "beta must be in (0, 1], got 0.0"),  # unused under sharpness="sam", still checked
    (AESAM, {"sharpness": "esam", "gamma": 1.5}, "gamma must be in (0, 1], got 1.5"),
    (RST, {"rho": -1.0}, "rho must be >= 0, got -1.0"),
])
def test_bad_arguments(cls, kwargs, bad):
    model = make_cnn()
    with pytest.raises(ValueError, match=re.escape(bad)):
        cls(model.parameters(), sgd(model), **kwargs)


@pytest.mark.parametrize("name", sorted(SKIPPING))
def test_config_errors_are_one_line(name):
    from esam.config import train_config_from_dict
    from esam.errors import ConfigError
    for optimizer, message in [({"looksam_k": 0}, "optimizer.looksam_k must be >= 1, got 0"),
                               ({"rst_p": 2.0}, "optimizer.rst_p must be in [0, 1], got 2.0"),
                               ({"aesam_momentum": -0.5}, "optimizer.aesam_momentum must be in [0, 1), got -0.5"),
                               ({"looksam_alpha": -1.0}, "optimizer.looksam_alpha must be >= 0, got -1.0"),
                               ({"sharpness": "gsam"}, "optimizer.sharpness: unknown value 'gsam'")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            train_config_from_dict({"optimizer": {"name": name, **optimizer}})


def test_bench_times_the_skipping_methods_with_their_predictions():
    from esam.config import train_config_from_dict
    from esam.perf import bench
    config = train_config_from_dict({"model": "small_cnn", "batch_size": 8, "device": "cpu", "precision": "fp32",
                                     "channels_last": False, "optimizer": {"looksam_k": 5, "rst_p": 0.5}})
    timing = dict(repeats=1, steps=5, warmup=0)
    rows = {r["method"]: r for r in bench.run_bench(config, methods=["SGD", "SAM", "LookSAM", "RST", "AE-SAM"],
                                                    **timing)}
    assert rows["LookSAM"]["predicted_ratio_to_sam"] == pytest.approx(2 / 1.2)
    assert rows["RST"]["predicted_ratio_to_sam"] == pytest.approx(2 / 1.5)
    assert rows["AE-SAM"]["predicted_ratio_to_sam"] == pytest.approx(2 / 1.5)
    assert rows["LookSAM"]["relative_cost"] == pytest.approx(1.2)  # five steps from t = 0: one sharpness step
    assert 1.0 <= rows["RST"]["relative_cost"] <= 2.0
    # host operators per step: between SGD's and SAM's, as the passes are
    assert rows["SGD"]["host_ops_per_step"] < rows["LookSAM"]["host_ops_per_step"] < rows["SAM"]["host_ops_per_step"]
    table = bench.markdown(list(rows.values()), config, **timing)
    assert "| LookSAM |" in table and "RST p 0.5" in table
