"""The data section of a training config (`train.data`): which dataset, its augmentation, its label noise.

It lives with the data package, which builds on it; esam/config.py holds it in TrainConfig and checks
its name against the dataset registry. Every field has a one-line comment, as in esam/config.py.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"  # digits | cifar10 | cifar100 | imagefolder | synthetic, or your loader's import path (my_project.data:load)
    root: str | None = None  # data root (cifar*, imagefolder); None: ./data
    download: bool = False  # cifar*: fetch torchvision's files when missing (needs network)
    augment: bool = True  # the paper's augmentation: random crop, horizontal flip, Cutout
    crop_padding: int | None = None  # random-crop padding in px (0: off; None: 1 for digits, else 4)
    flip: bool | None = None  # random horizontal flip (None: off for digits, a mirrored 3 is no 3; else on)
    cutout: int | None = None  # Cutout square side in px (0: off; None: 0 for digits' 8x8 images, else 16)
    cutout_prob: float = 0.5  # probability that a sample gets Cutout
    train_limit: int | None = None  # use only the first N training samples (quick runs)
    test_limit: int | None = None  # use only the first N test samples
    image_size: int | None = None  # imagefolder: resize to this side (None: keep the files' size)
    synthetic_size: int = 4096  # synthetic: number of training samples (test: a quarter)
    synthetic_shape: tuple[int, int, int] = (3, 32, 32)  # synthetic: C, H, W
    synthetic_classes: int = 10  # synthetic: number of classes
    num_workers: int = 4  # DataLoader workers for datasets too large for device memory
    cache_dir: str | None = None  # decoded uint8 tensors are cached here; None: ~/.cache/esam
    label_noise: float = 0.0  # probability that a training label is replaced (0: clean; test labels stay clean)
    label_noise_kind: str = "symmetric"  # symmetric: by a class drawn uniformly over all K | pairflip: by (c+1) mod K
    label_noise_seed: int = 0  # which labels are replaced, and by what: the same in every trial and repeat

    def __post_init__(self) -> None:
        # The paper's CIFAR augmentation would erase an 8x8 digit: each dataset fills what is left unset.
        crop, flip, cutout = _AUGMENTATION_DEFAULTS.get(self.name, (4, True, 16))
        for key, value in (("crop_padding", crop), ("flip", flip), ("cutout", cutout)):
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)


_AUGMENTATION_DEFAULTS = {"digits": (1, False, 0)}  # dataset -> (crop_padding, flip, cutout)
LABEL_NOISE_KINDS = ("symmetric", "pairflip")  # esam.data.label_noise
