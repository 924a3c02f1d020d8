"""Data-parallel training: a model under DDP, each rank's share of a batch, and a check that SWP agrees.

Whatever starts the processes (Ray Train's TorchTrainer, torchrun, torch.multiprocessing) also
starts the process group; these helpers only use it (`train()` runs as one rank when it finds one:
esam/training/trainer.py). The optimizers do the rest: give SAM or ESAM
the wrapped module as `model=` and `step(closure)` runs the ascent under `no_sync` and the descent
as DDP's all-reduced backward (the semantics are in SAM's and ESAM's docstrings).

    model = wrap(model, device)
    opt = build_step_optimizer(model, config.optimizer, config.seed)   # the same seed on every rank
    check_swp_agrees(opt)
    x, y = x[rank_share(len(x))], y[rank_share(len(y))]
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from esam.data import DeviceLoader, StreamLoader, epoch_generator


def world_size() -> int:
    """The ranks of the initialised process group; 1 without one (a plain single-process run)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


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


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Each value summed over the ranks (a collective: call it on every rank with as many values)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every rank.

    DDP broadcasts them at the start of each forward, then each rank's forward updates them from
    its own shard: after training they differ slightly; evaluation and checkpoints use rank 0's."""
    for buffer in unwrap(model).buffers():
        dist.broadcast(buffer, 0)


class RankShare:
    """A loader's batches as one rank sees them: the same `epoch(epoch)` and `len()` as the loader.

    Training: this rank's `rank_share` of every global batch, which every rank draws alike (the
    shuffle and augmentation come from (seed, epoch)); a stream decodes only this rank's images.
    Evaluation: every world_size-th batch, from the rank-th on; sum the counts over the ranks.
    """

    def __init__(self, loader: DeviceLoader | StreamLoader, rank: int, world: int) -> None:
        self.loader, self.rank, self.world = loader, rank, world
        self.train, self.batch_size = loader.train, loader.batch_size
        if self.train:
            rank_share(loader.batch_size, rank, world)  # raises unless the batch splits evenly

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if isinstance(self.loader, StreamLoader):
            yield from self._stream(epoch)
            return
        share = rank_share(self.batch_size, self.rank, self.world) if self.train else None
        for i, (x, y) in enumerate(self.loader.epoch(epoch)):
            if share is not None:
                yield x[share], y[share]
            elif i % self.world == self.rank:
                yield x, y

    def _stream(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """StreamLoader.epoch, but the DataLoader reads only this rank's samples (decoding is the cost)."""
        loader = self.loader
        generator = epoch_generator(loader.seed, epoch)
        batches = _ShareSampler(len(loader.dataset), loader.batch_size, self.rank, self.world, loader.train, generator)
        data = torch.utils.data.DataLoader(loader.dataset, batch_sampler=batches, generator=generator,
                                           num_workers=loader.num_workers, pin_memory=loader.device.type == "cuda")
        for x, y in data:
            x = x.to(loader.device, non_blocking=True)
            yield loader.normalize(x), y.to(loader.device, non_blocking=True)


class _ShareSampler(torch.utils.data.Sampler):
    """Index lists of this rank's part of each batch: the training order is DataLoader's shuffle
    (drawn from the same generator, after the worker seed, as a shuffling DataLoader draws it)."""

    def __init__(self, n: int, batch_size: int, rank: int, world: int, train: bool, generator: torch.Generator):
        self.n, self.batch_size, self.rank, self.world, self.train = n, batch_size, rank, world, train
        self.generator = generator

    def __len__(self) -> int:
        if self.train:
            return self.n // self.batch_size
        return len(range(self.rank, -(-self.n // self.batch_size), self.world))

    def __iter__(self):
        if self.train:
            order = torch.randperm(self.n, generator=self.generator).tolist()
            share = rank_share(self.batch_size, self.rank, self.world)
            for start in range(0, self.n - self.batch_size + 1, self.batch_size):
                yield order[start:start + self.batch_size][share]
        else:
            for b in range(self.rank, -(-self.n // self.batch_size), self.world):
                yield list(range(b * self.batch_size, min((b + 1) * self.batch_size, self.n)))
