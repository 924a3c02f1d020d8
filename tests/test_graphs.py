"""GraphedPasses (which pass gets a CUDA graph), ESAM's SWP pool, and the dispatched-operator count.

On the CPU the capture is replaced by an eager stand-in that records what it was asked to capture:
what is tested here is the routing. The real capture runs in the CUDA-only test at the end.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from esam.perf.dispatch_count import count_ops
from esam.training.cuda_graphs import GraphedPasses, graph_budget, warm_up
from esam.optim import ESAM, build_optimizer
from conftest import closure_for, make_batches, make_cnn, sgd


class Recorder:
    """Stands in for the CUDA capture: runs the pass a few times, as a capture does, then eagerly."""

    def __init__(self):
        self.captured: list[tuple[bool, tuple, tuple]] = []

    def __call__(self, model, x, pool):
        self.captured.append((torch.is_grad_enabled(), tuple(x.shape), tuple(p.requires_grad for p in model.parameters())))
        with torch.no_grad():
            for _ in range(3):
                model(x)  # moves the BatchNorm running stats, which GraphedPasses must restore
        return lambda inp: model(inp)


def test_a_pass_is_captured_the_second_time_it_is_seen():
    model, rec = make_cnn(), Recorder()
    g = GraphedPasses(model, capture=rec)
    x = torch.randn(4, 3, 8, 8)
    g(x)
    assert rec.captured == [] and g.replays == 0
    g(x)
    g(x)
    assert len(rec.captured) == 1 and g.replays == 2 and g.num_graphs == 1


def test_passes_differ_by_grad_mode_shape_and_requires_grad_pattern():
    model, rec = make_cnn(), Recorder()
    g = GraphedPasses(model, capture=rec)
    x, half = torch.randn(4, 3, 8, 8), torch.randn(2, 3, 8, 8)
    first = next(model.parameters())
    for _ in range(2):
        g(x)
        g(half)
        with torch.no_grad():
            g(x)
        first.requires_grad_(False)
        g(x)
        first.requires_grad_(True)
    assert g.num_graphs == 4
    grad_modes = sorted(c[0] for c in rec.captured)
    assert grad_modes == [False, True, True, True]
    assert {c[1] for c in rec.captured} == {(4, 3, 8, 8), (2, 3, 8, 8)}
    assert sum(not c[2][0] for c in rec.captured) == 1  # the frozen-first-tensor pattern, once


def test_eval_mode_and_passes_beyond_max_graphs_run_eagerly():
    model, rec = make_cnn(), Recorder()
    g = GraphedPasses(model, max_graphs=1, capture=rec)
    x = torch.randn(4, 3, 8, 8)
    g.eval()
    for _ in range(3):
        g(x)
    assert rec.captured == [] and not model.training
    g.train()
    for batch in (4, 4, 2, 2, 2):
        g(torch.randn(batch, 3, 8, 8))
    assert g.num_graphs == 1 and rec.captured[0][1] == (4, 3, 8, 8)
    with pytest.raises(ValueError, match="max_graphs"):
        GraphedPasses(model, max_graphs=0)


def test_capture_leaves_the_batchnorm_statistics_untouched():
    model, rec = make_cnn(), Recorder()
    g = GraphedPasses(model, capture=rec)
    x = torch.randn(4, 3, 8, 8)
    g(x)  # first sighting: an ordinary forward, stats move once
    before = [b.clone() for b in model.buffers()]
    reference = copy.deepcopy(model)
    g(x)  # captured (three extra forwards inside), then run once
    reference(x)
    for b, r in zip(model.buffers(), reference.buffers()):
        assert torch.equal(b, r)
    assert any(not torch.equal(b, s) for b, s in zip(model.buffers(), before))


def test_training_through_graphed_passes_takes_the_eager_steps():
    """ESAM with a pool of 3 SWP patterns: every pass becomes graphable and nothing changes numerically."""
    batches = make_batches(12)
    results, graph_counts = [], []
    for graphed in (False, True):
        model = make_cnn()
        runner = GraphedPasses(model, capture=Recorder()) if graphed else model
        opt = build_optimizer("esam", model.parameters(), sgd(model), rho=0.05, beta=0.5, gamma=0.5,
                              swp_patterns=3, seed=0, model=model)
        for x, y in batches:
            opt.step(closure_for(runner, x, y))
        results.append([p.detach().clone() for p in model.parameters()] + [b.clone() for b in model.buffers()])
        if graphed:
            graph_counts.append(runner.num_graphs)
    for a, b in zip(*results):
        assert torch.equal(a, b)
    assert 3 <= graph_counts[0] <= 5  # descent + scoring + the ascent patterns seen twice (at most 3)


class StaticMemory:
    """Stands in for the CUDA capture with its memory hazards: every pass returns its output, and
    leaves its gradients, in buffers of its own that any later replay, of any pass, overwrites with
    NaN (graphs sharing one pool may reuse each other's memory). A step that read a pass's results
    after another pass had run would turn NaN."""

    def __init__(self):
        self.passes: list[dict] = []

    def __call__(self, model, x, pool):
        grad = torch.is_grad_enabled()
        params = [p for p in model.parameters() if p.requires_grad] if grad else []
        mine = {"buffers": []}
        self.passes.append(mine)
        memory = self

        class Replay(torch.autograd.Function):
            @staticmethod
            def forward(ctx, inp, *weights):
                with torch.enable_grad():
                    out = model(inp)
                ctx.out = out
                return memory.static(mine, out.detach())

            @staticmethod
            def backward(ctx, grad_out):
                grads = torch.autograd.grad(ctx.out, params, grad_out)
                return (None, *(memory.static(mine, g) for g in grads))

        def replay(inp):
            self.poison()
            if grad:
                return Replay.apply(inp, *params)
            return self.static(mine, model(inp))
        return replay

    def static(self, owner: dict, value: torch.Tensor) -> torch.Tensor:
        buffer = value.clone()
        owner["buffers"].append(buffer)
        return buffer.detach()  # a new tensor on the same memory, as make_graphed_callables returns

    def poison(self) -> None:
        for p in self.passes:
            for b in p["buffers"]:
                b.fill_(float("nan"))
            p["buffers"].clear()


@pytest.mark.parametrize("name, hparams", [
    ("sgd", {}), ("sam", {"rho": 0.05}),
    ("esam", {"rho": 0.05, "beta": 0.5, "gamma": 0.5, "score": "loss_rise", "swp_patterns": 2}),
    ("esam", {"rho": 0.05, "beta": 0.5, "gamma": 0.5, "score": "clean_loss", "swp_patterns": 2, "bn_update": "clean"}),
])
def test_the_steps_consume_each_pass_before_the_next_replay(name, hparams):
    """The contract that makes one shared graph pool safe, checked against the optimizers' own steps."""
    batches = make_batches(8)
    results = []
    for graphed in (False, True):
        model = make_cnn()
        memory = StaticMemory()
        runner = GraphedPasses(model, capture=memory) if graphed else model
        extra = {"seed": 0} if name == "esam" else {}
        opt = build_optimizer(name, model.parameters(), sgd(model), model=model, **hparams, **extra) \
            if name != "sgd" else build_optimizer(name, model.parameters(), sgd(model))
        losses = [opt.step(closure_for(runner, x, y)) for x, y in batches]
        assert all(torch.isfinite(loss) for loss in losses)
        results.append([p.detach().clone() for p in model.parameters()])
        if graphed:
            assert runner.replays >= 6
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_inputs_that_need_a_gradient_run_eagerly():
    model, rec = make_cnn(), Recorder()
    g = GraphedPasses(model, capture=rec)
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    for _ in range(3):
        g(x).sum().backward()
    assert rec.captured == [] and x.grad is not None


def test_warm_up_runs_until_every_pool_pattern_has_its_graph():
    model = make_cnn()
    g = GraphedPasses(model, capture=Recorder(), max_graphs=graph_budget(4))
    opt = build_optimizer("esam", model.parameters(), sgd(model), rho=0.05, beta=0.5, gamma=0.5, swp_patterns=4,
                          seed=0, model=model)
    x, y = make_batches(1)[0]
    calls = warm_up(lambda: opt.step(closure_for(g, x, y)), [g], quiet_steps=26)
    assert calls >= 26
    distinct = len({tuple(row.tolist()) for row in opt._swp_pool})
    assert g.num_graphs == distinct + 2  # every pool pattern, scoring, descent
    for _ in range(20):
        opt.step(closure_for(g, x, y))
    assert g.num_graphs == distinct + 2
    assert graph_budget(None) == 16 and graph_budget(40) == 44


# --- ESAM's SWP pool --------------------------------------------------------------------------

def _patterns(opt: ESAM, model: nn.Module, steps: int) -> list[tuple[bool, ...]]:
    seen = []
    x, y = make_batches(1)[0]
    for _ in range(steps):
        def closure(indices=None):
            if indices is None and torch.is_grad_enabled():
                seen.append(tuple(p.requires_grad for p in model.parameters()))
            return closure_for(model, x, y)(indices)
        opt.step(closure)
    return seen


def test_swp_pool_reuses_at_most_n_patterns_each_keeping_tensors_with_probability_beta():
    model = make_cnn()
    opt = ESAM(model.parameters(), sgd(model, lr=0.0), rho=0.05, beta=0.6, gamma=0.5, swp_patterns=4, seed=3)
    seen = _patterns(opt, model, 40)
    assert len(set(seen)) <= 4
    assert len(set(seen)) >= 2  # 40 uniform picks from 4 hit more than one
    pool = opt._swp_pool.float()
    assert pool.shape == (4, len(list(model.parameters())))
    other = make_cnn()
    big = ESAM(other.parameters(), sgd(other), beta=0.6, swp_patterns=2000, seed=0)._swp_pool
    assert abs(big.float().mean().item() - 0.6) < 0.02  # 2000 x 8 Bernoulli(0.6) draws


def test_swp_pool_is_seeded_and_survives_a_state_dict_round_trip():
    def fresh():
        model = make_cnn()
        return ESAM(model.parameters(), sgd(model), beta=0.5, swp_patterns=5, seed=7), model
    opt, model = fresh()
    first = _patterns(opt, model, 3)
    state = copy.deepcopy(opt.state_dict())
    later = _patterns(opt, model, 4)
    again, again_model = fresh()
    assert _patterns(again, again_model, 3) == first  # the same seed, the same pool and picks
    resumed, resumed_model = fresh()
    resumed._swp_pool = ~resumed._swp_pool  # a different pool, which loading must replace
    resumed.load_state_dict(state)
    assert _patterns(resumed, resumed_model, 4) == later


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "4"])
def test_bad_swp_patterns_are_refused(bad):
    model = make_cnn()
    with pytest.raises(ValueError, match="swp_patterns"):
        ESAM(model.parameters(), sgd(model), swp_patterns=bad)


def test_a_pool_cannot_load_into_an_esam_without_one():
    model = make_cnn()
    state = ESAM(model.parameters(), sgd(model), swp_patterns=3).state_dict()
    other = make_cnn()
    with pytest.raises(ValueError, match="pool of 3 SWP patterns"):
        ESAM(other.parameters(), sgd(other)).load_state_dict(state)


# --- host-side operator counts -------------------------------------------------------------------

def _ops_per_step(name: str, **hparams) -> int:
    model = make_cnn()
    opt = build_optimizer(name, model.parameters(), torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                                                                    foreach=True), **hparams)
    x, y = make_batches(1)[0]
    closure = closure_for(model, x, y)
    opt.step(closure)
    return sum(count_ops(lambda: opt.step(closure)).values())


def test_the_optimizers_add_few_host_operators_beyond_the_model_passes():
    """Where launches are the bottleneck, a per-tensor loop in a step would cost as much as a pass."""
    model = make_cnn()
    x, y = make_batches(1)[0]
    with torch.no_grad():
        forward = sum(count_ops(lambda: F.cross_entropy(model(x), y, reduction="none")).values())
    sgd_ops = _ops_per_step("sgd")
    sam_ops = _ops_per_step("sam", rho=0.05)
    clean = _ops_per_step("esam", rho=0.05, beta=1.0, gamma=0.5, score="clean_loss")
    paper = _ops_per_step("esam", rho=0.05, beta=1.0, gamma=0.5, score="loss_rise")
    # Measured: SGD 30, SAM 67, ESAM clean_loss 71, paper rule 84 (a forward is 11); 9 parameter
    # tensors, so a per-tensor loop anywhere would break these bounds.
    assert sam_ops - 2 * sgd_ops <= 8  # norm, scale, save, perturb, restore: foreach operators
    assert clean - sam_ops <= 6  # topk, sort, two index_selects
    assert paper - clean - forward <= 3  # the scoring forward and one subtraction


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_train_like_eager_on_a_gpu():
    batches = [(x.cuda(), y.cuda()) for x, y in make_batches(10)]
    results = []
    for graphed in (False, True):
        model = make_cnn().cuda()
        runner = GraphedPasses(model) if graphed else model
        opt = build_optimizer("esam", model.parameters(), sgd(model), rho=0.05, beta=0.5, gamma=0.5,
                              swp_patterns=2, seed=0, model=model)
        for x, y in batches:
            opt.step(closure_for(runner, x, y))
        results.append([p.detach().clone() for p in model.parameters()])
        if graphed:
            assert runner.replays > 0
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_the_probe_warms_up_both_copies_untimed(monkeypatch):
    from esam.training import speed_probe
    model = make_cnn()

    def make_opt(name):
        return lambda m: build_optimizer(name, m.parameters(), sgd(m), **({"rho": 0.05} if name == "sam" else {}))
    probe = speed_probe.InterleavedProbe(model, make_opt("sam"), make_opt("sgd"), torch.device("cpu"))
    x, y = make_batches(1)[0]
    probe.warm_up(lambda m: closure_for(m, x, y), lambda step: [step() for _ in range(3)])
    assert probe.method_opt.num_steps == 3 and probe.sgd_opt.num_steps == 3
    # A clock that ticks once per pass: SAM's step (ascent + descent) takes 2 ticks, SGD's 1.
    clock = [0.0]
    monkeypatch.setattr(speed_probe.time, "perf_counter", lambda: clock[0])

    def ticking(m):
        closure = closure_for(m, x, y)

        def counted(indices=None):
            clock[0] += 1.0
            return closure(indices)
        return counted
    assert probe.step_time_ratio(ticking, 2) == 2.0
    assert probe.method_opt.num_steps == 6 and probe.sgd_opt.num_steps == 6  # 2 timed pairs and 1 discarded
