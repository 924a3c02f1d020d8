"""Plain, SAM and ESAM on tiny CPU problems: degenerate cases, SWP, SDS, exact restore, state, cost."""
from __future__ import annotations

import copy
import io
import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import closure_for, make_batches, make_cnn, one_torch_thread, sgd
from esam.optim import (ESAM, OPTIMIZERS, SAM, Plain, StepCost, build_optimizer, predicted_relative_cost,
                        subset_size)


one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)


def make(name: str, model: nn.Module, **hparams) -> Plain:
    return build_optimizer(name, model.parameters(), sgd(model), **hparams)


def train(opt: Plain, model: nn.Module, batches) -> list[torch.Tensor]:
    return [opt.step(closure_for(model, x, y)) for x, y in batches]


def assert_same_model(a: nn.Module, b: nn.Module) -> None:
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(ta, tb), name


# --- registry ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_loss_falls(name):
    model = make_cnn()
    (x, y), = make_batches(1, batch=32)
    opt = make(name, model, **({"seed": 0} if name == "esam" else {}))
    losses = train(opt, model, [(x, y)] * 25)
    assert torch.isfinite(losses[-1]) and losses[-1] < 0.85 * losses[0]
    assert losses[-1].grad_fn is None and losses[-1].dim() == 0


def test_unknown_name_lists_valid_ones():
    model = make_cnn()
    with pytest.raises(ValueError, match="aesam, esam, looksam, rst, sam, sgd"):
        make("adam", model)
    with pytest.raises(ValueError, match="rho"):
        make("sgd", model, rho=0.1)


# --- degenerate cases ---------------------------------------------------------------------------------

def test_esam_beta1_gamma1_is_sam():
    batches = make_batches(4)
    sam_model, esam_model = make_cnn(), make_cnn()
    train(SAM(sam_model.parameters(), sgd(sam_model), rho=0.1), sam_model, batches)
    train(ESAM(esam_model.parameters(), sgd(esam_model), rho=0.1, beta=1.0, gamma=1.0), esam_model, batches)
    assert_same_model(sam_model, esam_model)


def test_sam_rho0_takes_sgd_steps():
    batches = make_batches(4)
    sam_model, plain_model, ref_model = make_cnn(), make_cnn(), make_cnn()
    train(SAM(sam_model.parameters(), sgd(sam_model), rho=0.0), sam_model, batches)
    train(Plain(plain_model.parameters(), sgd(plain_model)), plain_model, batches)
    ref = sgd(ref_model)
    for x, y in batches:  # the textbook loop
        ref.zero_grad(set_to_none=True)
        F.cross_entropy(ref_model(x), y).backward()
        ref.step()
    for a, b, c in zip(sam_model.parameters(), plain_model.parameters(), ref_model.parameters()):
        assert torch.equal(a, b) and torch.equal(b, c)


def test_esam_keeping_no_tensor_perturbs_nothing():
    model = make_cnn()
    (x, y), = make_batches(1)
    opt = ESAM(model.parameters(), sgd(model), rho=0.5, beta=1e-12, gamma=0.5, seed=0)
    record = []
    opt.step(closure_for(model, x, y, record))
    assert not any(record[0][3]) and not record[0][1].requires_grad  # ascent: a forward only
    assert all(torch.equal(a, b) for a, b in zip(record[0][4], record[1][4]))  # e = 0
    assert opt.last_cost.weight_grad_fraction == 0.0 and opt.last_cost.backward_samples == 8
    assert opt.last_cost.relative_cost == pytest.approx((16 + 16 + 3 * 8) / 48)


# --- SDS -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("score", ["loss_rise", "clean_loss"])
@pytest.mark.parametrize("gamma, batch", [(0.3, 10), (0.5, 7), (0.75, 16), (1.0, 8)])
def test_sds_picks_top_k(score, gamma, batch):
    model = make_cnn()
    (x, y), = make_batches(1, batch=batch)
    opt = ESAM(model.parameters(), sgd(model), rho=0.5, beta=0.6, gamma=gamma, score=score, seed=0)
    record = []
    opt.step(closure_for(model, x, y, record))
    k = math.ceil(round(gamma * batch, 6))
    assert subset_size(gamma, batch) == k and opt.last_cost.backward_samples - batch == k
    if gamma == 1.0:  # no scoring: ascent and descent on the whole batch
        assert [r[0] for r in record] == [None, None]
        return
    l_before = record[0][1]
    if score == "loss_rise":
        assert len(record) == 3 and record[1][0] is None and not record[1][2]  # scoring forward, no grad
        s = record[1][1] - l_before
    else:
        assert len(record) == 2
        s = l_before
    expected = sorted(range(batch), key=lambda i: -s[i].item())[:k]
    assert record[-1][0].dtype == torch.long
    assert record[-1][0].tolist() == sorted(expected)


# --- SWP -------------------------------------------------------------------------------------------------

def test_swp_keeps_each_tensor_with_probability_beta_and_frozen_get_no_grad():
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(10)])  # 20 tensors
    x, y = torch.randn(8, 4), torch.randint(0, 4, (8,))
    beta, steps = 0.6, 100
    opt = ESAM(model.parameters(), sgd(model, lr=0.01), beta=beta, gamma=1.0, seed=0)
    grads_at_perturb = []
    first_step = opt.first_step

    def spy(zero_grad=False):
        grads_at_perturb.append([p.grad is not None for p in model.parameters()])
        first_step(zero_grad)
    opt.first_step = spy
    kept = []
    for _ in range(steps):
        record = []
        opt.step(closure_for(model, x, y, record))
        kept.append(record[0][3])  # requires_grad during the ascent pass
        assert record[1][3] == [True] * 20  # descent: everything trainable again
    assert grads_at_perturb == kept
    n = 20 * steps
    frac = sum(map(sum, kept)) / n
    assert abs(frac - beta) < 4 * math.sqrt(beta * (1 - beta) / n)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_perturbation_norm_is_rho_over_beta(beta):
    model = make_cnn()
    (x, y), = make_batches(1)
    rho = 0.05
    opt = ESAM(model.parameters(), sgd(model), rho=rho, beta=beta, gamma=0.5, seed=1)
    record = []
    opt.step(closure_for(model, x, y, record))
    w0, w_e, mask = record[0][4], record[1][4], record[0][3]  # at the ascent and the scoring forward
    e = [b - a for a, b in zip(w0, w_e)]
    norm = torch.linalg.vector_norm(torch.stack([t.norm() for t in e]))
    assert norm.item() == pytest.approx(rho / beta, rel=1e-4)
    for t, kept in zip(e, mask):
        assert kept or not t.any()  # only kept tensors move


def test_asam_perturbation():
    model = make_cnn()
    (x, y), = make_batches(1)
    opt = SAM(model.parameters(), sgd(model), rho=0.5, adaptive=True)
    F.cross_entropy(model(x), y).backward()
    w0 = [p.detach().clone() for p in model.parameters()]
    g = [p.grad.clone() for p in model.parameters()]
    opt.first_step()
    norm = torch.linalg.vector_norm(torch.stack([(w.abs() * gi).norm() for w, gi in zip(w0, g)]))
    for p, w, gi in zip(model.parameters(), w0, g):
        torch.testing.assert_close(p.detach() - w, 0.5 * w * w * gi / norm, rtol=1e-4, atol=1e-7)


# --- exact restore ------------------------------------------------------------------------------------------

def test_first_then_second_step_restores_w_bit_for_bit():
    model = make_cnn()
    (x, y), = make_batches(1)
    opt = SAM(model.parameters(), sgd(model, lr=0.0, momentum=0.0, weight_decay=0.0), rho=0.5)
    w0 = [p.detach().clone() for p in model.parameters()]
    F.cross_entropy(model(x), y).backward()
    opt.first_step(zero_grad=True)
    assert not all(torch.equal(p, w) for p, w in zip(model.parameters(), w0))
    F.cross_entropy(model(x), y).backward()
    opt.second_step()
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), w0))


@pytest.mark.parametrize("adaptive", [False, True])
def test_step_is_base_step_from_exact_w(adaptive):
    model = make_cnn()
    (x, y), = make_batches(1)
    opt = ESAM(model.parameters(), sgd(model), rho=0.5, beta=0.6, gamma=0.5, adaptive=adaptive, seed=2)
    w0 = [p.detach().clone() for p in model.parameters()]
    opt.step(closure_for(model, x, y))
    clones = [nn.Parameter(w) for w in w0]
    for c, p in zip(clones, model.parameters()):
        c.grad = p.grad.clone()  # the descent gradient is left in .grad
    torch.optim.SGD(clones, lr=0.1, momentum=0.9, weight_decay=5e-4).step()
    assert all(torch.equal(c, p) for c, p in zip(clones, model.parameters()))


# --- state, seeds, schedulers ----------------------------------------------------------------------------------

def test_state_dict_round_trip_continues_identically():
    batches = make_batches(6)
    model = make_cnn()
    opt = ESAM(model.parameters(), sgd(model), rho=0.1, beta=0.6, gamma=0.5, seed=3)
    train(opt, model, batches[:3])
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    train(opt, model, batches[3:])
    buf.seek(0)
    saved = torch.load(buf)
    resumed = make_cnn(seed=99)
    resumed.load_state_dict(saved["model"])
    opt2 = ESAM(resumed.parameters(), sgd(resumed), rho=0.1, beta=0.6, gamma=0.5, seed=12345)
    opt2.load_state_dict(saved["opt"])
    assert opt2.param_groups is opt2.base_optimizer.param_groups and opt2.num_steps == 3
    train(opt2, resumed, batches[3:])
    assert_same_model(model, resumed)


def test_same_seed_same_run():
    batches = make_batches(5)
    models = [make_cnn() for _ in range(3)]
    for model, seed in zip(models, [7, 7, 8]):
        train(ESAM(model.parameters(), sgd(model), beta=0.5, gamma=0.5, seed=seed), model, batches)
    assert_same_model(models[0], models[1])
    assert not all(torch.equal(a, b) for a, b in zip(models[0].parameters(), models[2].parameters()))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_lr_scheduler_drives_the_base_optimizer(name):
    model = make_cnn()
    opt = make(name, model)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    (x, y), = make_batches(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            opt.step(closure_for(model, x, y))
            sched.step()
    expected = 0.1 * (1 + math.cos(math.pi * 2 / 4)) / 2
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    assert opt.param_groups is opt.base_optimizer.param_groups


# --- validation --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls, kwargs, bad", [
    (SAM, {"rho": -0.1}, "-0.1"),
    (ESAM, {"rho": -1.0}, "-1.0"),
    (ESAM, {"beta": 0.0}, "0.0"),
    (ESAM, {"beta": 1.5}, "1.5"),
    (ESAM, {"gamma": 0.0}, "0.0"),
    (ESAM, {"gamma": 1.01}, "1.01"),
    (ESAM, {"score": "sharpest"}, "sharpest"),
    (ESAM, {"bn_update": "never"}, "never"),
    (SAM, {"bn_update": "never"}, "never"),
    (SAM, {"max_grad_norm": 0.0}, "0.0"),
    (Plain, {"max_grad_norm": -1.0}, "-1.0"),
    (ESAM, {"bn_update": "clean"}, "model"),
])
def test_bad_arguments(cls, kwargs, bad):
    model = make_cnn()
    with pytest.raises(ValueError, match=re.escape(bad)):
        cls(model.parameters(), sgd(model), **kwargs)


def test_bad_params_base_and_dtype():
    model, other = make_cnn(), make_cnn()
    with pytest.raises(ValueError, match="base optimizer's parameters"):
        ESAM(other.parameters(), sgd(model))
    with pytest.raises(TypeError, match="instance"):
        SAM(model.parameters(), torch.optim.SGD)
    half = make_cnn().half()
    with pytest.raises(ValueError, match="fp16"):
        SAM(half.parameters(), sgd(half))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_scalar_closure_is_refused(name):
    model = make_cnn()
    (x, y), = make_batches(1)
    with pytest.raises(TypeError, match=re.escape("got ()")):
        make(name, model).step(lambda indices=None: F.cross_entropy(model(x), y))
    with pytest.raises(TypeError, match="closure"):
        make(name, model).step()


def test_wrong_subset_length_is_refused():
    model = make_cnn()
    (x, y), = make_batches(1)
    opt = ESAM(model.parameters(), sgd(model), gamma=0.5, seed=0)
    w0 = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TypeError, match=re.escape("[8]")):
        opt.step(lambda indices=None: F.cross_entropy(model(x), y, reduction="none"))
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), w0))  # the perturbation was undone


# --- BatchNorm, clipping, cost -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cls, kwargs", [(SAM, {}), (ESAM, {"score": "loss_rise", "seed": 0})])
def test_bn_update_clean_keeps_only_the_clean_forward_stats(cls, kwargs):
    (x, y), = make_batches(1)
    buffers = {}
    for bn_update in ("clean", "all"):
        model = make_cnn()
        ref = copy.deepcopy(model)
        with torch.no_grad():
            ref(x)  # one clean forward in train mode
        opt = cls(model.parameters(), sgd(model), rho=0.5, model=model, bn_update=bn_update, **kwargs)
        opt.step(closure_for(model, x, y))
        buffers[bn_update] = [(b, r) for b, r in zip(model.buffers(), ref.buffers())]
    assert all(torch.equal(b, r) for b, r in buffers["clean"])
    assert not all(torch.equal(b, r) for b, r in buffers["all"])


@pytest.mark.parametrize("name", ["sam", "esam"])
def test_descent_gradient_is_clipped(name):
    model = make_cnn()
    (x, y), = make_batches(1)
    opt = make(name, model, max_grad_norm=0.01)
    opt.step(closure_for(model, x, y))
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert norm.item() <= 0.01 * (1 + 1e-4)


@pytest.mark.parametrize("score", ["loss_rise", "clean_loss"])
def test_last_cost(score):
    model = make_cnn()
    (x, y), = make_batches(1, batch=16)
    plain, sam = Plain(model.parameters(), sgd(model)), SAM(model.parameters(), sgd(model))
    plain.step(closure_for(model, x, y))
    sam.step(closure_for(model, x, y))
    assert plain.last_cost == StepCost("sgd", 16, 16, 16, 1.0, 1.0)
    assert sam.last_cost.relative_cost == 2.0 and sam.last_cost.forward_samples == 32
    opt = ESAM(model.parameters(), sgd(model), beta=0.5, gamma=0.3, score=score, seed=4)
    record = []
    opt.step(closure_for(model, x, y, record))
    numels = [p.numel() for p in model.parameters()]
    f = sum(n for n, kept in zip(numels, record[0][3]) if kept) / sum(numels)
    k, scored = 5, score == "loss_rise"
    cost = opt.last_cost
    assert cost.weight_grad_fraction == pytest.approx(f)
    assert cost.forward_samples == 16 + 16 * scored + k and cost.backward_samples == 16 + k
    assert cost.relative_cost == pytest.approx(((2 + f) * 16 + 16 * scored + 3 * k) / 48)


def test_predicted_relative_cost():
    assert predicted_relative_cost("sgd") == 1.0 and predicted_relative_cost("sam") == 2.0
    assert predicted_relative_cost("esam", 1.0, 1.0) == 2.0
    assert predicted_relative_cost("esam", 0.6, 0.5, "loss_rise") == pytest.approx(5.1 / 3)
    assert predicted_relative_cost("esam", 0.6, 0.5, "clean_loss") == pytest.approx(4.1 / 3)
    with pytest.raises(ValueError, match="lion"):
        predicted_relative_cost("lion")


# --- config ----------------------------------------------------------------------------------------------------

def test_from_config_yaml_round_trip(tmp_path):
    path = tmp_path / "best.yaml"
    path.write_text("# exported\nmodel: small_cnn\noptimizer:\n  name: esam\n  rho: 0.1\n  beta: 0.5\n  gamma: 0.4\n"
                    "  score: clean_loss\n  bn_update: clean\n  lr: 0.05\n  momentum: 0.9\n  weight_decay: 5e-4\n"
                    "  nesterov: false\n")
    model = make_cnn()
    opt = ESAM.from_config(model.parameters(), sgd(model), path, model=model)
    assert (opt.rho, opt.beta, opt.gamma, opt.score, opt.bn_update) == (0.1, 0.5, 0.4, "clean_loss", "clean")
    assert opt.base_optimizer.param_groups[0]["lr"] == 0.1  # base keys are the base optimizer's business
    opt = ESAM.from_config(model.parameters(), sgd(model), {"optimizer": {"rho": "5e-2", "gamma": 1}})
    assert (opt.rho, opt.gamma) == (0.05, 1.0)
    with pytest.raises(ValueError, match="betta"):
        ESAM.from_config(model.parameters(), sgd(model), {"optimizer": {"betta": 0.5}})
    with pytest.raises(ValueError, match="'sam'"):
        ESAM.from_config(model.parameters(), sgd(model), {"optimizer": {"name": "sam"}})


# --- DDP (one process, gloo) ---------------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_ddp_single_process(tmp_path):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        model = nn.parallel.DistributedDataParallel(make_cnn())
        synced = []  # per gradient pass: whether DDP would all-reduce its gradients

        def record(module, inputs):
            if torch.is_grad_enabled():
                synced.append(model.require_backward_grad_sync)
        model.module.register_forward_pre_hook(record)
        (x, y), = make_batches(1)
        opt = ESAM(model.parameters(), sgd(model), beta=0.5, gamma=0.5, model=model, seed=0)
        losses = train(opt, model, [(x, y)] * 3)
        assert all(torch.isfinite(loss) for loss in losses)
        # Each step: the ascent pass under no_sync (its gradient stays local), the descent pass all-reduced.
        assert synced == [False, True] * 3
    finally:
        dist.destroy_process_group()


# --- the benchmark's quick path ------------------------------------------------------------------------------------

def test_bench_step_runs():
    from esam.config import train_config_from_dict
    from esam.perf import bench
    config = train_config_from_dict({"model": "small_cnn", "batch_size": 8, "device": "cpu", "precision": "fp32",
                                     "channels_last": False, "optimizer": {"rho": 0.05, "beta": 0.6, "gamma": 0.5}})
    timing = dict(repeats=1, steps=1, warmup=0)
    rows = bench.run_bench(config, **timing)
    assert [r["method"] for r in rows] == list(bench.METHODS)
    assert rows[1]["ratio_to_sam"] == 1.0 and rows[0]["relative_cost"] == 1.0
    assert rows[2]["predicted_ratio_to_sam"] == pytest.approx(2 / 1.7)
    assert "| SAM |" in bench.markdown(rows, config, **timing)



def test_esam_bench_command(capsys):
    from esam.cli import main
    assert main(["bench", "--quick", "--repeats", "1", "--steps", "1", "--warmup", "0"]) == 0
    assert "| ESAM cheap (clean_loss) |" in capsys.readouterr().out
    assert main(["bench", "--quick", "--model", "vgg"]) == 2
    assert "unknown model 'vgg'" in capsys.readouterr().err
