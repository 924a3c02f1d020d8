"""Loaders: `loader.epoch(epoch)` yields `(images, labels)` batches on the device.

Two kinds with the same interface (`epoch(epoch)` and `len(loader)` = batches per epoch):
- `DeviceLoader`: the whole uint8 dataset [N, C, H, W] lives on the device (airbench style);
  each epoch is shuffled, augmented (see `esam.data.augment`) and normalized in large chunks.
- `StreamLoader`: a torch DataLoader over image files, for datasets too large for that (ImageNet).

Images come out float32, normalized per channel; labels int64. Training loaders yield full
batches only; evaluation loaders yield every sample in order, the last batch possibly partial.
Shuffling and augmentation draw from a CPU `torch.Generator` seeded from (seed, epoch): an epoch
repeats exactly, and is the same on the CPU and on a GPU. Only the index and parameter vectors
(a few bytes per sample) are drawn on the CPU; the images never leave the device.
"""
from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from esam.data.augment import Augmentation, AugmentParams, crop_flip, cutout_
from esam.errors import DataError

Batch = tuple[Tensor, Tensor]

CHUNK_BYTES = 64 << 20  # float32 bytes processed per augmentation chunk (rounded to whole batches)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded from (seed, epoch) through NumPy's SeedSequence (well mixed)."""
    state = np.random.SeedSequence([seed % 2**64, epoch % 2**64]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std, in [0, 1] units, of uint8 images [N, C, H, W] (via histograms)."""
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).to("cpu", torch.float64)
        total = counts.sum()
        mean = (counts * values).sum() / total
        var = (counts * (values - mean) ** 2).sum() / total
        means.append(float(mean))
        stds.append(max(float(var.sqrt()), 1e-3))  # a constant channel must not divide by zero
    return tuple(means), tuple(stds)


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    """Copy a CPU tensor to the device without making the host wait for the GPU's queue."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class Normalize:
    """uint8 [N, C, H, W] -> float32 (x / 255 - mean) / std, as one multiply-add."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> None:
        self.mean, self.std = tuple(mean), tuple(std)
        std_t = torch.tensor(std, dtype=torch.float64)
        self.scale = (1 / (255 * std_t)).float().view(1, -1, 1, 1).to(device)
        self.shift = (-torch.tensor(mean, dtype=torch.float64) / std_t).float().view(1, -1, 1, 1).to(device)

    def __call__(self, images: Tensor) -> Tensor:
        return torch.addcmul(self.shift, images.float(), self.scale)


class _EpochSize:
    """Batches and samples per epoch: training drops the last partial batch, evaluation keeps it."""

    batch_size: int
    train: bool

    def _dataset_size(self) -> int:
        raise NotImplementedError

    def __len__(self) -> int:
        n = self._dataset_size()
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    @property
    def num_samples(self) -> int:
        """Samples yielded per epoch."""
        return len(self) * self.batch_size if self.train else self._dataset_size()


class DeviceLoader(_EpochSize):
    """Batches from a device-resident uint8 dataset.

    train=True: a fresh permutation per epoch, full batches only (the last partial batch is
    dropped), augmentation if given. train=False: all samples in order, no augmentation.
    normalize=None: float inputs of any shape, yielded as they are (a user's dataset pair; no augmentation).
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, normalize: Normalize | None, *,
                 train: bool, seed: int = 0, augmentation: Augmentation | None = None) -> None:
        if len(images) != len(labels):
            raise ValueError("DeviceLoader wants N inputs and N labels")
        if normalize is not None and (images.dtype != torch.uint8 or images.dim() != 4):
            raise ValueError("DeviceLoader wants uint8 images [N, C, H, W] to normalize")
        if normalize is None and (augmentation is not None or not images.is_floating_point()):
            raise ValueError("DeviceLoader yields float inputs as given only without augmentation")
        self.images, self.labels = images, labels
        self.batch_size, self.normalize, self.train, self.seed = batch_size, normalize, train, seed
        self.augmentation = augmentation
        sample_bytes = 4 * images[0].numel()
        self.chunk = batch_size * max(1, CHUNK_BYTES // (sample_bytes * batch_size))

    def _dataset_size(self) -> int:
        return len(self.images)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        if not self.train:
            yield from self._batches(None, None, len(self.images))
            return
        n = len(self.images)
        g = epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=g)
        params = None
        if self.augmentation is not None:
            params = self.augmentation.sample(n, self.images.shape[2], self.images.shape[3], g)
        device = self.images.device
        order = _to_device(order, device)
        params = params.to(device) if params is not None else None
        yield from self._batches(order, params, self.num_samples)

    def _batches(self, order: Tensor | None, params: AugmentParams | None, stop: int) -> Iterator[Batch]:
        """Gather, augment and normalize `chunk` samples at a time (about 64 MB of float32,
        whole batches), then yield views of that chunk: a few kernels per chunk, none per sample."""
        aug = self.augmentation
        for start in range(0, stop, self.chunk):
            end = min(start + self.chunk, stop)
            if order is None:
                x, y = self.images[start:end], self.labels[start:end]
            else:
                idx = order[start:end]
                x, y = self.images[idx], self.labels[idx]
            if params is not None and aug.crops_or_flips:
                x = crop_flip(x, params[start:end], aug.crop_padding)
            x = self.normalize(x) if self.normalize is not None else x
            if params is not None and aug.cuts:
                cutout_(x, params[start:end], aug.cutout, value=0.0)  # 0 after normalization = the mean
            for b in range(0, end - start, self.batch_size):
                yield x[b:b + self.batch_size], y[b:b + self.batch_size]


class StreamLoader(_EpochSize):
    """Batches from a map-style dataset of (uint8 image tensor, label) through a torch DataLoader.

    The dataset's transforms do the decoding and geometric augmentation in `num_workers`
    processes; the uint8 batch is moved to the device and normalized there. The sampler and the
    workers' seeds come from the (seed, epoch) generator, so an epoch repeats for a fixed
    `num_workers` (with 0 workers the transforms use torch's global generator).
    """

    def __init__(self, dataset: torch.utils.data.Dataset, batch_size: int, normalize: Normalize,
                 device: torch.device, *, train: bool, seed: int = 0, num_workers: int = 0) -> None:
        self.dataset, self.batch_size, self.normalize, self.device = dataset, batch_size, normalize, device
        self.train, self.seed, self.num_workers = train, seed, num_workers

    def _dataset_size(self) -> int:
        return len(self.dataset)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch_size, shuffle=self.train, drop_last=self.train,
            generator=epoch_generator(self.seed, epoch), num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda", persistent_workers=False,
        )
        try:
            for x, y in loader:
                x = x.to(self.device, non_blocking=True)
                yield self.normalize(x), y.to(self.device, non_blocking=True)
        except DataError as err:  # re-raised from a worker with its traceback: keep the last line
            lines = str(err).strip().splitlines()
            raise DataError(re.sub(r"^[\w.]*DataError: ", "", lines[-1]) if lines else str(err)) from None
