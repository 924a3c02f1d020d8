"""SAM and ESAM under DDP: 2 gloo processes on 127.0.0.1 against a single-process computation of the same steps.

What each rank must see (the optimizers' docstrings): the same SWP mask on every rank, its own
perturbation e_r from its own shard (ascent under no_sync), SDS's picks from its own shard, and the
descent gradient averaged over the ranks, hence the same weights everywhere after each step.
"""
from __future__ import annotations

import datetime
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from esam.optim import ESAM, SAM
from esam.training import distributed

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")

WORLD, GLOBAL_BATCH, STEPS = 2, 16, 3
SGD_ARGS = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}
METHODS = {"sam": {"rho": 0.05}, "esam": {"rho": 0.05, "beta": 0.5, "gamma": 0.5, "seed": 3}}


def make_model() -> nn.Module:
    torch.manual_seed(0)  # the same weights on every rank and in the reference
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(GLOBAL_BATCH, 6, generator=g, dtype=torch.float64),
             torch.randint(0, 3, (GLOBAL_BATCH,), generator=g)) for _ in range(STEPS)]


def make_optimizer(method: str, model: nn.Module, base: torch.optim.Optimizer, **override) -> SAM:
    kind = ESAM if method == "esam" else SAM
    return kind(model.parameters(), base, model=model, **{**METHODS[method], **override})


def one_step(opt: SAM, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """One opt.step on (x, y), with what the passes saw: the SWP mask, SDS's picks, e, and the final grads."""
    w = [p.detach().clone() for p in model.parameters()]
    calls = []

    def closure(indices=None):
        xb, yb = (x, y) if indices is None else (x[indices], y[indices])
        calls.append((indices, torch.is_grad_enabled(), [p.requires_grad for p in model.parameters()],
                      [p.detach().clone() for p in model.parameters()]))
        return F.cross_entropy(model(xb), yb, reduction="none")

    opt.step(closure)
    ascent, descent = calls[0], calls[-1]  # (a scoring forward under no_grad may sit between them)
    assert ascent[0] is None and ascent[1] and descent[1]
    return {"mask": ascent[2], "indices": descent[0], "e": [a - b for a, b in zip(descent[3], w)],
            "grad": [p.grad.clone() for p in model.parameters()],
            "w": [p.detach().clone() for p in model.parameters()]}


# --- the two ranks ---------------------------------------------------------------------------------------------------

def _rank(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        torch.manual_seed(100 + rank)  # a per-rank global seed, as trainers often set: SWP must not depend on it
        share = distributed.rank_share(GLOBAL_BATCH)
        result = {}
        for method in METHODS:
            model = distributed.wrap(make_model())
            opt = make_optimizer(method, model, torch.optim.SGD(model.parameters(), **SGD_ARGS))
            distributed.check_swp_agrees(opt)
            result[method] = [one_step(opt, model, x[share], y[share]) for x, y in batches()]
        model = distributed.wrap(make_model())
        try:  # a seed that differs between ranks is caught before the first step
            distributed.check_swp_agrees(make_optimizer("esam", model, torch.optim.SGD(model.parameters(), lr=0.1),
                                                        seed=rank))
            result["mismatch"] = None
        except RuntimeError as error:
            result["mismatch"] = str(error)
        torch.save(result, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(port, str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


# --- the same steps in one process -----------------------------------------------------------------------------------

def reference(method: str) -> list[list[dict]]:
    """Per step, per rank: the rank's step computed alone on its shard, then the averaged descent applied once.

    Each rank's optimizer steps with lr 0 (its weights stay at w), so its grads after step() are its own
    descent gradient; the reference model takes SGD's step with their mean, and each rank starts the next
    step from there.
    """
    model = make_model()
    sgd = torch.optim.SGD(model.parameters(), **SGD_ARGS)
    local = [make_model() for _ in range(WORLD)]
    opts = [make_optimizer(method, m, torch.optim.SGD(m.parameters(), lr=0.0)) for m in local]
    steps = []
    for x, y in batches():
        per_rank = []
        for r, (m, opt) in enumerate(zip(local, opts)):
            with torch.no_grad():
                for p, q in zip(m.parameters(), model.parameters()):
                    p.copy_(q)
            share = distributed.rank_share(GLOBAL_BATCH, r, WORLD)
            per_rank.append(one_step(opt, m, x[share], y[share]))
        for i, p in enumerate(model.parameters()):
            p.grad = sum(s["grad"][i] for s in per_rank) / WORLD
        sgd.step()
        for s in per_rank:
            s.update(grad=[p.grad.clone() for p in model.parameters()],
                     w=[p.detach().clone() for p in model.parameters()])
        steps.append(per_rank)
    return steps


def close(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.allclose(u, v, rtol=1e-10, atol=1e-13) for u, v in zip(a, b))


@pytest.mark.parametrize("method", list(METHODS))
def test_each_rank_perturbs_with_its_own_shard_and_descends_with_the_mean(ranks, method):
    for step, expected in enumerate(reference(method)):
        got = [ranks[r][method][step] for r in range(WORLD)]
        for r in range(WORLD):
            assert close(got[r]["e"], expected[r]["e"]), f"step {step}: rank {r}'s e is not its shard's"
            assert close(got[r]["grad"], expected[r]["grad"]), f"step {step}: rank {r}'s descent gradient"
            assert close(got[r]["w"], expected[r]["w"]), f"step {step}: rank {r}'s weights after the step"
        # The ascent stayed local: the ranks' perturbations differ (an all-reduced one would be shared).
        assert not close(got[0]["e"], got[1]["e"])
        assert all(torch.equal(a, b) for a, b in zip(got[0]["w"], got[1]["w"]))  # one model after every step


def test_esam_draws_one_swp_mask_on_every_rank_and_selects_per_rank(ranks):
    expected = reference("esam")
    masks = [[ranks[r]["esam"][step]["mask"] for r in range(WORLD)] for step in range(STEPS)]
    for step, (mine, theirs) in enumerate(masks):
        assert mine == theirs == expected[step][0]["mask"], f"step {step}: SWP masks differ"
    assert any(not all(m[0]) for m in masks) and any(any(m[0]) for m in masks)  # SWP froze some, kept some
    k = -(-GLOBAL_BATCH // WORLD // 2)  # ceil(gamma * the rank's batch)
    for step in range(STEPS):
        picks = [ranks[r]["esam"][step]["indices"] for r in range(WORLD)]
        for r in range(WORLD):
            assert picks[r].tolist() == expected[step][r]["indices"].tolist() and len(picks[r]) == k
    assert any(ranks[0]["esam"][s]["indices"].tolist() != ranks[1]["esam"][s]["indices"].tolist()
               for s in range(STEPS))  # each rank ranked its own samples


def test_ranks_with_different_swp_seeds_are_refused(ranks):
    assert all("differs between ranks" in ranks[r]["mismatch"] for r in range(WORLD))


def test_esam_under_ddp_needs_a_seed(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        model = distributed.wrap(make_model())
        with pytest.raises(ValueError, match="seed"):
            ESAM(model.parameters(), torch.optim.SGD(model.parameters(), lr=0.1), model=model)
        assert distributed.unwrap(model) is model.module
    finally:
        dist.destroy_process_group()


def test_rank_share_splits_the_global_batch():
    assert [distributed.rank_share(12, r, 3) for r in range(3)] == [slice(0, 4), slice(4, 8), slice(8, 12)]
    with pytest.raises(ValueError, match="10"):
        distributed.rank_share(10, 0, 3)
