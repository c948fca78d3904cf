"""Augmentation for real photos: random resized crop and horizontal flip (train.crop_scale,
train.hflip; both off by default), applied where a batch is read, in the loader's worker.

Each image draws from its own generator, seeded by (train seed, epoch, the image's row in
the split): its crop and flip do not depend on which worker reads it, on the batch it lands
in, or on what ran before. The global RNG is never touched: dropout's stream lives there,
and checkpoints keep it. The crop samples its box as torchvision's RandomResizedCrop does,
which draws from the global RNG and so cannot be used as it is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def sample_generator(seed: int, epoch: int, row: int) -> torch.Generator:
    """The generator of one image in one epoch (SeedSequence mixes the three into one seed)."""
    state = np.random.SeedSequence([seed, epoch, row]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def crop_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
             gen: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop covering `scale` of the area with aspect ratio in
    `ratio` (log-uniform): torchvision's RandomResizedCrop sampling, with `gen`."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1], generator=gen).item()
        aspect = math.exp(torch.empty(1).uniform_(*log_ratio, generator=gen).item())
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return top, left, h, w
    in_ratio = width / height  # ten misses: the central crop at the nearest allowed ratio
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@dataclass(frozen=True)
class Augment:
    """The augmentation of one epoch: called on a batch of uint8 images and their rows."""

    seed: int
    epoch: int
    crop_scale: tuple[float, float] | None = None
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = False

    @property
    def active(self) -> bool:
        return self.crop_scale is not None or self.hflip

    def __call__(self, x: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        height, width = x.shape[-2:]
        out = torch.empty_like(x)
        for i, row in enumerate(rows):
            gen, image = sample_generator(self.seed, self.epoch, int(row)), x[i]
            if self.crop_scale is not None:
                top, left, h, w = crop_box(height, width, self.crop_scale, self.crop_ratio, gen)
                image = TF.resized_crop(image, top, left, h, w, [height, width], antialias=True)
            if self.hflip and torch.rand(1, generator=gen).item() < 0.5:
                image = TF.horizontal_flip(image)
            out[i] = image
        return out
