"""The paper's augmentation as whole-batch tensor ops on the device: random crop, flip, Cutout.

Per sample, as in torchvision + DeVries & Taylor's Cutout (the pipeline SAM and ESAM use):
  1. random crop: pad `crop_padding` px of zeros (black, like `RandomCrop(32, padding=4)` on a
     PIL image) and cut a window of the original size at a uniform offset in [0, 2 * padding];
  2. horizontal flip with probability 0.5;
  3. normalize (done by the loader between steps 2 and 3);
  4. Cutout with probability `cutout_prob`: a `cutout` px square centred uniformly in the image
     and clipped at the borders is set to 0 in normalized space, i.e. to the per-channel mean.

Design: all random parameters of an epoch are drawn at once (`sample`), then applied to large
chunks of samples with a handful of kernels each, no per-sample Python and no DataLoader. Crop
and flip are one `gather` on the uint8 images: each output pixel reads the padded input at
(row + dy, dx + (W - 1 - col if flipped else col)). Cutout is one `masked_fill` of a mask made by
broadcasting row and column ranges. Parameters are drawn for the whole epoch before chunking, so
the result does not depend on the chunk size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class AugmentParams:
    """Per-sample random parameters for n samples (1-D tensors of length n)."""

    shift_y: Tensor  # int64 in [0, 2 * padding]: crop window row offset in the padded image
    shift_x: Tensor  # int64 in [0, 2 * padding]
    flip: Tensor  # bool: mirror horizontally
    cut: Tensor  # bool: apply Cutout
    cut_y: Tensor  # int64 in [0, H): Cutout centre row
    cut_x: Tensor  # int64 in [0, W)

    def __getitem__(self, index: slice) -> AugmentParams:
        return AugmentParams(*(t[index] for t in self._tensors()))

    def to(self, device: torch.device) -> AugmentParams:
        """On CUDA through pinned memory, so the host does not wait for the GPU's queue."""
        if device.type == "cuda":
            return AugmentParams(*(t.pin_memory().to(device, non_blocking=True) for t in self._tensors()))
        return AugmentParams(*(t.to(device) for t in self._tensors()))

    def _tensors(self) -> tuple[Tensor, ...]:
        return self.shift_y, self.shift_x, self.flip, self.cut, self.cut_y, self.cut_x


@dataclass(frozen=True)
class Augmentation:
    crop_padding: int = 4  # 0: no crop
    flip: bool = True
    cutout: int = 16  # square side in px; 0: no Cutout
    cutout_prob: float = 0.5

    def __post_init__(self) -> None:
        if self.crop_padding < 0 or self.cutout < 0 or not 0.0 <= self.cutout_prob <= 1.0:
            raise ValueError(f"bad augmentation settings: {self}")

    @property
    def crops_or_flips(self) -> bool:
        return self.crop_padding > 0 or self.flip

    @property
    def cuts(self) -> bool:
        return self.cutout > 0 and self.cutout_prob > 0

    def sample(self, n: int, height: int, width: int, generator: torch.Generator) -> AugmentParams:
        """Draw the parameters of n samples. Every kind is always drawn, in a fixed order, so
        switching one augmentation off leaves the others' random draws unchanged."""
        g, span = generator, 2 * self.crop_padding + 1
        shift_y = torch.randint(0, span, (n,), generator=g)
        shift_x = torch.randint(0, span, (n,), generator=g)
        flip = torch.rand(n, generator=g) < 0.5
        cut = torch.rand(n, generator=g) < self.cutout_prob
        cut_y = torch.randint(0, height, (n,), generator=g)
        cut_x = torch.randint(0, width, (n,), generator=g)
        if not self.flip:
            flip = torch.zeros_like(flip)
        if not self.cuts:
            cut = torch.zeros_like(cut)
        return AugmentParams(shift_y, shift_x, flip, cut, cut_y, cut_x)


def crop_flip(images: Tensor, params: AugmentParams, padding: int) -> Tensor:
    """Random crop (zero padding) and horizontal flip of [n, C, H, W] images in one gather."""
    n, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (padding,) * 4) if padding else images
    hp, wp = h + 2 * padding, w + 2 * padding
    rows = params.shift_y[:, None] + torch.arange(h, device=device)  # [n, h]
    cols = torch.arange(w, device=device).expand(n, w)
    cols = torch.where(params.flip[:, None], w - 1 - cols, cols) + params.shift_x[:, None]  # [n, w]
    index = (rows[:, :, None] * wp + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return padded.reshape(n, c, hp * wp).gather(2, index).view(n, c, h, w)


def cutout_(images: Tensor, params: AugmentParams, size: int, value: float = 0.0) -> Tensor:
    """In place: set a `size` px square, clipped at the borders, to `value` in the selected samples.

    The square covers rows [cy - size // 2, cy - size // 2 + size), likewise columns: for even
    sizes exactly DeVries & Taylor's [cy - 8, cy + 8) at size 16.
    """
    _, _, h, w = images.shape
    lo_y = params.cut_y[:, None] - size // 2
    lo_x = params.cut_x[:, None] - size // 2
    r = torch.arange(h, device=images.device)
    c = torch.arange(w, device=images.device)
    in_rows = (r >= lo_y) & (r < lo_y + size)  # [n, h]
    in_cols = (c >= lo_x) & (c < lo_x + size)  # [n, w]
    mask = in_rows[:, :, None] & in_cols[:, None, :] & params.cut[:, None, None]  # [n, h, w]
    return images.masked_fill_(mask[:, None], value)
