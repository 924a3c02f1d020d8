"""Noisy training labels (`data.label_noise: p`, `data.label_noise_kind`), for searches under label noise.

- symmetric: each training label is replaced, with probability p, by a class drawn uniformly over
  all K classes. The draw may give the label's own class, so about p (K - 1) / K of them change.
- pairflip: each training label is replaced, with probability p, by the next class, (c + 1) mod K.

Which samples are replaced, and by what, depends only on `data.label_noise_seed` and the sample's
index in the dataset's fixed order: every trial and every repeat of a search (whatever its run
seed) trains on the same noisy labels, and `train_limit` keeps the first N samples' noisy labels.
Both kinds draw the same replaced set for the same seed, so they differ only in the new labels.
Test labels are never touched: the accuracy measured is the clean one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from esam.data.config import DataConfig


@dataclass(frozen=True)
class LabelNoise:
    rate: float  # probability that a training label is replaced
    kind: str  # symmetric | pairflip (esam.data.config.LABEL_NOISE_KINDS)
    num_classes: int
    seed: int = 0

    @classmethod
    def of(cls, cfg: DataConfig, num_classes: int) -> LabelNoise | None:
        """The config's noise, or None when it has none (label_noise 0)."""
        if cfg.label_noise == 0:
            return None
        return cls(cfg.label_noise, cfg.label_noise_kind, num_classes, cfg.label_noise_seed)

    def draws(self, n: int) -> tuple[Tensor, Tensor]:
        """(replaced: bool [n], uniform class: int64 [n]) for the samples 0..n-1, from this seed alone."""
        g = torch.Generator().manual_seed(self.seed)
        # float64: at p near 1 a float32 uniform's coarser grid would bias the rate (slightly)
        replaced = torch.rand(n, generator=g, dtype=torch.float64) < self.rate
        uniform = torch.randint(0, self.num_classes, (n,), generator=g)
        return replaced, uniform

    def replacement(self, labels: Tensor, uniform: Tensor) -> Tensor:
        """The label each sample gets when it is replaced."""
        return uniform if self.kind == "symmetric" else (labels + 1) % self.num_classes

    def apply(self, labels: Tensor) -> Tensor:
        """A noisy copy of the int64 labels [n] of a whole training set (index i is sample i)."""
        replaced, uniform = self.draws(len(labels))
        labels = labels.cpu()
        return torch.where(replaced, self.replacement(labels, uniform), labels)


class NoisyLabels(torch.utils.data.Dataset):
    """A streamed training set whose label i is replaced as LabelNoise.apply would replace it."""

    def __init__(self, dataset: torch.utils.data.Dataset, noise: LabelNoise) -> None:
        self.dataset, self.noise = dataset, noise
        self.replaced, self.uniform = noise.draws(len(dataset))  # a few bytes per sample, drawn once

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image, label = self.dataset[i]
        if self.replaced[i]:
            label = int(self.noise.replacement(torch.tensor(label), self.uniform[i]))
        return image, label
