"""Data-parallel training: a model under DDP, each rank's share of a batch, and a check that SWP agrees.

Whatever starts the processes (Ray Train's TorchTrainer, torchrun, torch.multiprocessing) also
starts the process group; these helpers only use it. The optimizers do the rest: give SAM or ESAM
the wrapped module as `model=` and `step(closure)` runs the ascent under `no_sync` and the descent
as DDP's all-reduced backward (the semantics are in SAM's and ESAM's docstrings).

    model = wrap(model, device)
    opt = build_step_optimizer(model, config.optimizer, config.seed)   # the same seed on every rank
    check_swp_agrees(opt)
    x, y = x[rank_share(len(x))], y[rank_share(len(y))]
"""
from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def wrap(model: torch.nn.Module, device: torch.device | None = None) -> DistributedDataParallel:
    """`model` (already on `device`) as a DDP module; rank 0's weights and buffers are broadcast to all ranks."""
    device = device or next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (what checkpoints and evaluation use), or `model` itself."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def rank_share(global_batch: int, rank: int | None = None, world_size: int | None = None) -> slice:
    """The contiguous part of a global batch that `rank` trains on (default: this process's rank)."""
    rank = dist.get_rank() if rank is None else rank
    world_size = dist.get_world_size() if world_size is None else world_size
    if global_batch % world_size:
        raise ValueError(f"a global batch of {global_batch} does not split evenly over {world_size} ranks")
    share = global_batch // world_size
    return slice(rank * share, (rank + 1) * share)


def swp_fingerprint(optimizer: torch.optim.Optimizer) -> str:
    """A digest of what SWP's next draws depend on (the generator's state and pattern pool); '' without SWP."""
    generator = getattr(optimizer, "generator", None)
    if generator is None:
        return ""
    digest = hashlib.sha256(generator.get_state().numpy().tobytes())
    pool = getattr(optimizer, "_swp_pool", None)
    if pool is not None:
        digest.update(pool.numpy().tobytes())
    return digest.hexdigest()


def check_swp_agrees(optimizer: torch.optim.Optimizer) -> None:
    """Raise RuntimeError unless every rank will draw the same SWP masks (a collective: call it on every rank)."""
    prints: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(prints, swp_fingerprint(optimizer))
    if len(set(prints)) > 1:
        raise RuntimeError(f"ESAM's SWP generator differs between ranks ({len(set(prints))} states over "
                           f"{len(prints)} ranks): build it with the same seed on every rank")
