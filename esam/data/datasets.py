"""Dataset registry: a name maps to a function `DataConfig -> InMemory | Streamed`.

`InMemory` holds uint8 images [N, C, H, W] and int64 labels on the CPU; `build_data` moves them
to the device. `Streamed` holds torch datasets of image files (too large for device memory).
Sample order is fixed (independent of the run seed), so `train_limit` / `test_limit` always take
the same first N samples and test sets are comparable across runs.

Your own data, by import path (`data.name: "my_project.data:load"`, esam.import_paths): the
callable gets the `DataConfig` (root, limits, ...: read what you need) and returns either
- `InMemory` or `Streamed`, as a registered builder does (normalized and augmented by the config), or
- a pair `(train, test)` of torch `Dataset`s whose items are `(input, label)`: read once into memory
  (esam.data.pairs) and used as given, float inputs of any shape, no normalization and no
  augmentation; `num_classes` is the train set's attribute of that name, else 1 + the largest label.
Anything else it returns is one ConfigError naming the path.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from esam.data.config import DataConfig
from esam.data.pairs import Tensors, is_pair, read_pair
from esam.errors import ConfigError, DataError
from esam.registry import Registry


@dataclass
class InMemory:
    train_x: Tensor  # uint8 [N, C, H, W]
    train_y: Tensor  # int64 [N]
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    mean: tuple[float, ...] | None = None  # [0, 1] units; None: computed from the training set
    std: tuple[float, ...] | None = None


@dataclass
class Streamed:
    train: torch.utils.data.Dataset  # yields (uint8 [C, H, W] tensor, int label)
    test: torch.utils.data.Dataset
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]  # [0, 1] units, for the loaders' normalization
    std: tuple[float, ...]


DatasetFn = Callable[[DataConfig], "InMemory | Streamed | tuple"]

DATASETS = Registry("dataset", import_paths=True)


def register_dataset(name: str) -> Callable[[DatasetFn], DatasetFn]:
    """Decorator: `@register_dataset("digits")` adds `fn(DataConfig) -> InMemory | Streamed` under `name`."""
    return DATASETS.decorator(name)


def load_dataset(cfg: DataConfig) -> InMemory | Streamed | Tensors:
    """What `cfg.name`'s builder returns; a (train, test) pair of torch Datasets read into `Tensors`."""
    source = DATASETS.lookup(cfg.name, "data.name")(cfg)
    if isinstance(source, (InMemory, Streamed, Tensors)):
        return source
    if is_pair(source):
        return read_pair(*source, f"data.name {cfg.name!r}")
    raise ConfigError(f"data.name {cfg.name!r} returned {type(source).__name__}, not InMemory, Streamed or a "
                      f"(train, test) pair of torch Datasets")


def data_root(cfg: DataConfig) -> Path:
    return Path(cfg.root if cfg.root is not None else "./data").expanduser()


@register_dataset("digits")
def digits(cfg: DataConfig) -> InMemory:
    """scikit-learn's 8x8 digits (1797 images, ships with the library): a stratified 80/20 split
    with a fixed seed, 1437 train / 360 test. Pixel values 0..16 are scaled to 0..255."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.rint(bunch.images * (255 / 16)).astype(np.uint8)[:, None]  # [1797, 1, 8, 8]
    x_tr, x_te, y_tr, y_te = train_test_split(images, bunch.target, test_size=0.2, random_state=0,
                                              stratify=bunch.target)
    return InMemory(torch.from_numpy(x_tr), torch.from_numpy(y_tr).long(),
                    torch.from_numpy(x_te), torch.from_numpy(y_te).long(), num_classes=10)


def _cifar(cfg: DataConfig, num_classes: int) -> InMemory:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if num_classes == 10 else torchvision.datasets.CIFAR100
    folder = "cifar-10-batches-py" if num_classes == 10 else "cifar-100-python"
    root = data_root(cfg)
    try:
        train = cls(str(root), train=True, download=cfg.download)
        test = cls(str(root), train=False, download=cfg.download)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted..."
        hint = "" if cfg.download else "; set data.download: true to fetch it (needs network)"
        raise DataError(f"{cfg.name} not found or corrupt: expected torchvision's files in "
                        f"{root.resolve() / folder}{hint}") from err
    except OSError as err:  # no network, unwritable root, ...
        raise DataError(f"could not download {cfg.name} into {root.resolve()}: {err}") from err

    def arrays(ds) -> tuple[Tensor, Tensor]:
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets, dtype=torch.long)

    return InMemory(*arrays(train), *arrays(test), num_classes=num_classes)


@register_dataset("cifar10")
def cifar10(cfg: DataConfig) -> InMemory:
    """CIFAR-10 in torchvision's format under data.root (50000 / 10000 32x32 RGB images)."""
    return _cifar(cfg, 10)


@register_dataset("cifar100")
def cifar100(cfg: DataConfig) -> InMemory:
    """CIFAR-100 in torchvision's format under data.root."""
    return _cifar(cfg, 100)


@register_dataset("synthetic")
def synthetic(cfg: DataConfig) -> InMemory:
    """Uniform random uint8 images and labels from a fixed-seed generator, for throughput runs:
    `synthetic_size` training samples of `synthetic_shape`, a quarter as many test samples."""
    g = torch.Generator().manual_seed(0)
    shape, k = tuple(cfg.synthetic_shape), cfg.synthetic_classes
    n_test = max(1, cfg.synthetic_size // 4)

    def make(n: int) -> tuple[Tensor, Tensor]:
        return (torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8),
                torch.randint(0, k, (n,), generator=g))

    return InMemory(*make(cfg.synthetic_size), *make(n_test), num_classes=k)
