"""A (train, test) pair of torch Datasets, as a dataset builder of the user's may return, read into memory once.

Each item is `(input, label)`: the input a tensor, array or list of numbers (float32 once read; all
of one shape), the label an int or a 0-d tensor. A `TensorDataset` of two tensors is taken as its
tensors; any other dataset is read item by item, once per run (so it should fit in memory: larger
data goes through `Streamed`). `num_classes` is the train set's attribute of that name when it has
one, else 1 + the largest label of either set. Every problem is one ConfigError naming the builder.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from esam.errors import ConfigError, first_line


@dataclass
class Tensors:
    """Inputs used as given (a dataset pair that read_pair read into memory): no normalization, no augmentation."""

    train_x: Tensor  # float32 [N, ...]: a feature vector, an image, ...
    train_y: Tensor  # int64 [N]
    test_x: Tensor
    test_y: Tensor
    num_classes: int


def is_pair(obj: object) -> bool:
    return isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(d, Dataset) for d in obj)


def read_pair(train: Dataset, test: Dataset, where: str) -> Tensors:
    """Both sets as tensors; `where` (e.g. "data.name 'my.data:load'") starts every error."""
    train_x, train_y = _read(train, f"{where}: its train set")
    test_x, test_y = _read(test, f"{where}: its test set")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ConfigError(f"{where}: train inputs are {list(train_x.shape[1:])}, test inputs {list(test_x.shape[1:])}")
    lowest, largest = int(min(train_y.min(), test_y.min())), int(max(train_y.max(), test_y.max()))
    if lowest < 0:
        raise ConfigError(f"{where}: labels must be 0, 1, ..., num_classes - 1, found {lowest}")
    declared = getattr(train, "num_classes", None)
    if declared is not None and (not isinstance(declared, int) or declared <= largest):
        raise ConfigError(f"{where}: num_classes is {declared!r}, but a label is {largest}")
    return Tensors(train_x, train_y, test_x, test_y, declared if declared is not None else largest + 1)


def _read(dataset: Dataset, where: str) -> tuple[Tensor, Tensor]:
    try:
        n = len(dataset)
    except TypeError:
        raise ConfigError(f"{where} has no len(): return a map-style Dataset") from None
    if n == 0:
        raise ConfigError(f"{where} is empty")
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        inputs, labels = dataset.tensors
    else:
        items = [dataset[i] for i in range(n)]
        if not all(isinstance(item, (tuple, list)) and len(item) == 2 for item in items):
            raise ConfigError(f"{where}: items must be (input, label) pairs, got {type(items[0]).__name__}")
        try:
            inputs = torch.stack([torch.as_tensor(x) for x, _ in items])
            labels = torch.as_tensor([int(y) for _, y in items])
        except (TypeError, ValueError, RuntimeError) as err:
            raise ConfigError(f"{where}: items must be (input of one shape, int label): "
                              f"{first_line(err, 150)}") from None
    if inputs.dim() < 2 or labels.dim() != 1 or len(inputs) != len(labels):
        raise ConfigError(f"{where}: expected N inputs and N labels, got shapes {list(inputs.shape)} and {list(labels.shape)}")
    if labels.is_floating_point():
        raise ConfigError(f"{where}: labels must be integers (class indices), got {labels.dtype}")
    return inputs.float().contiguous(), labels.long()
