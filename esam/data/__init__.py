"""Data for training: `build_data(cfg, device, seed, batch_size, eval_batch_size) -> DataBundle`.

    bundle = build_data(cfg.data, device, seed=0, batch_size=128, eval_batch_size=1024)
    for epoch in range(epochs):
        for x, y in bundle.train.epoch(epoch):   # bundle.steps_per_epoch full batches
            ...                                  # x float32 [B, C, H, W] normalized, y int64 [B], on device
    for x, y in bundle.test.epoch(0):            # every test sample in order, no augmentation
        ...

Datasets (`data.name`): digits (scikit-learn, 1x8x8, no download), cifar10 / cifar100
(torchvision's files under data.root), imagefolder (root/train/<class>/*, root/test/ or val/),
synthetic (random, for throughput). All but large imagefolder sets live on the device as uint8
and are augmented there in large chunks (`esam.data.augment`, `esam.data.loaders`); images are
normalized with the training set's per-channel mean and std, so Cutout's 0 is the mean colour.
Your own data comes by import path (`data.name: "my_project.data:load"`; the contract is in
esam.data.datasets): a (train, test) pair of torch Datasets lives on the device as given (float
inputs of any shape, no normalization, no augmentation).

Reproducibility: each dataset's split and sample order are fixed (independent of the run seed);
the shuffle and the augmentation of an epoch come from (seed, epoch) alone. With `label_noise`
the training labels are replaced from `label_noise_seed` alone (`esam.data.label_noise`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from esam.data import imagefolder as _imagefolder  # noqa: F401  (registers "imagefolder")
from esam.data.augment import Augmentation
from esam.data.config import DataConfig
from esam.data.datasets import DATASETS, InMemory, Streamed, Tensors, load_dataset, register_dataset
from esam.data.label_noise import LabelNoise, NoisyLabels
from esam.data.loaders import DeviceLoader, Normalize, StreamLoader, channel_stats, epoch_generator
from esam.errors import ConfigError, DataError

__all__ = ["DATASETS", "Augmentation", "DataBundle", "DeviceLoader", "InMemory", "StreamLoader", "Streamed",
           "Tensors", "build_data", "channel_stats", "epoch_generator", "register_dataset"]

Loader = DeviceLoader | StreamLoader


@dataclass
class DataBundle:
    train: Loader  # `for x, y in train.epoch(epoch)`: shuffled, augmented, full batches only
    test: Loader  # `for x, y in test.epoch(0)`: all test samples in order, last batch may be partial
    num_classes: int
    in_channels: int
    image_size: tuple[int, ...]  # (H, W) of the batches; () for inputs that are no images (feature vectors)
    train_size: int  # training samples (after train_limit)
    test_size: int  # test samples (after test_limit)
    steps_per_epoch: int  # train_size // batch_size
    name: str  # data.name


def augmentation_of(cfg: DataConfig) -> Augmentation | None:
    """The config's device augmentation, or None when `augment` is off or every part is off."""
    aug = Augmentation(cfg.crop_padding, cfg.flip, cfg.cutout, cfg.cutout_prob)
    return aug if cfg.augment and (aug.crops_or_flips or aug.cuts) else None


def build_data(cfg: DataConfig, device: torch.device | str, seed: int, batch_size: int,
               eval_batch_size: int) -> DataBundle:
    """Load `cfg.name` and return its train and test loaders on `device`.

    Raises ConfigError for an unknown dataset name, DataError for missing or corrupt files and
    for a batch larger than the training set.
    """
    device = torch.device(device)
    if batch_size <= 0 or eval_batch_size <= 0:
        raise ConfigError(f"batch sizes must be positive, got {batch_size} and {eval_batch_size}")
    source = load_dataset(cfg)
    # The one place training labels pass for every dataset: noise is applied here, before the limit,
    # so that a sample's noisy label depends on its index alone (esam.data.label_noise).
    noise = LabelNoise.of(cfg, source.num_classes)
    if isinstance(source, Tensors):  # the user's inputs, used as given
        train_y = source.train_y if noise is None else noise.apply(source.train_y)
        train_x, train_y = source.train_x[:cfg.train_limit], train_y[:cfg.train_limit]
        test_x, test_y = source.test_x[:cfg.test_limit], source.test_y[:cfg.test_limit]
        n_train, n_test = len(train_x), len(test_x)
        _check_batch(batch_size, n_train, cfg.name)
        train = DeviceLoader(train_x.to(device), train_y.to(device), batch_size, None, train=True, seed=seed)
        test = DeviceLoader(test_x.to(device), test_y.to(device), eval_batch_size, None, train=False)
        in_channels, image_size = train_x.shape[1], tuple(train_x.shape[2:4]) if train_x.dim() == 4 else ()
    elif isinstance(source, InMemory):
        if source.mean is None or source.std is None:
            mean, std = channel_stats(source.train_x)  # the full training set, before any limit
        else:
            mean, std = source.mean, source.std
        train_y = source.train_y if noise is None else noise.apply(source.train_y)
        train_x, train_y = source.train_x[:cfg.train_limit], train_y[:cfg.train_limit]
        test_x, test_y = source.test_x[:cfg.test_limit], source.test_y[:cfg.test_limit]
        n_train, n_test = len(train_x), len(test_x)
        _check_batch(batch_size, n_train, cfg.name)
        normalize = Normalize(mean, std, device)
        train = DeviceLoader(train_x.to(device), train_y.to(device), batch_size, normalize, train=True,
                             seed=seed, augmentation=augmentation_of(cfg))
        test = DeviceLoader(test_x.to(device), test_y.to(device), eval_batch_size, normalize, train=False)
        in_channels, image_size = train_x.shape[1], (train_x.shape[2], train_x.shape[3])
    else:
        def limited(ds: torch.utils.data.Dataset, limit: int | None) -> torch.utils.data.Dataset:
            return ds if limit is None or limit >= len(ds) else torch.utils.data.Subset(ds, range(limit))
        train_source = source.train if noise is None else NoisyLabels(source.train, noise)
        train_ds, test_ds = limited(train_source, cfg.train_limit), limited(source.test, cfg.test_limit)
        n_train, n_test = len(train_ds), len(test_ds)
        _check_batch(batch_size, n_train, cfg.name)
        normalize = Normalize(source.mean, source.std, device)
        train = StreamLoader(train_ds, batch_size, normalize, device, train=True, seed=seed, num_workers=cfg.num_workers)
        test = StreamLoader(test_ds, eval_batch_size, normalize, device, train=False, num_workers=cfg.num_workers)
        in_channels, image_size = source.in_channels, source.image_size
    return DataBundle(train, test, source.num_classes, int(in_channels), tuple(int(side) for side in image_size),
                      n_train, n_test, n_train // batch_size, cfg.name)


def _check_batch(batch_size: int, n_train: int, name: str) -> None:
    if batch_size > n_train:
        raise DataError(f"batch_size {batch_size} is larger than the {n_train} training samples of {name}")
