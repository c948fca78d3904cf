"""Seeded per-image augmentation (slimline.data.augment): each image's crop and flip follow
(seed, epoch, row) alone, whatever batch or worker reads it; the global RNG is untouched."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from slimline.data.augment import Augment, crop_box, sample_generator
from slimline.params import ParamsError, parse_params

IMAGES = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (6, 3, 16, 16), dtype=np.uint8))
PHOTOS = Augment(seed=3, epoch=1, crop_scale=(0.3, 1.0), hflip=True)


def test_an_images_augmentation_depends_on_its_row_not_its_batch():
    rows = np.array([10, 11, 12, 13, 14, 15])
    whole = PHOTOS(IMAGES, rows)
    apart = torch.cat([PHOTOS(IMAGES[[4, 1]], rows[[4, 1]]), PHOTOS(IMAGES[[0]], rows[[0]])])
    assert torch.equal(apart, whole[[4, 1, 0]])
    assert whole.dtype == torch.uint8 and whole.shape == IMAGES.shape
    assert not torch.equal(whole, IMAGES)
    next_epoch = Augment(seed=3, epoch=2, crop_scale=(0.3, 1.0), hflip=True)(IMAGES, rows)
    assert not torch.equal(next_epoch, whole)  # a new epoch draws anew


def test_augmenting_leaves_the_global_rng_alone():
    before = torch.get_rng_state()
    PHOTOS(IMAGES, np.arange(6))
    assert torch.equal(torch.get_rng_state(), before)


def test_flip_alone_mirrors_about_half_the_images():
    flips = Augment(seed=0, epoch=1, hflip=True)
    out = flips(IMAGES.repeat(10, 1, 1, 1), np.arange(60))
    mirrored = [torch.equal(o, IMAGES[i % 6].flip(-1)) for i, o in enumerate(out)]
    kept = [torch.equal(o, IMAGES[i % 6]) for i, o in enumerate(out)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True)) and 15 < sum(mirrored) < 45
    assert not Augment(seed=0, epoch=1).active and flips.active


@pytest.mark.parametrize("height, width, scale, ratio", [
    (16, 16, (0.08, 1.0), (3 / 4, 4 / 3)), (9, 40, (0.5, 1.0), (3 / 4, 4 / 3)),
    (5, 5, (1.0, 1.0), (2.0, 3.0))])
def test_crop_boxes_stay_inside_the_image(height, width, scale, ratio):
    for row in range(50):
        top, left, h, w = crop_box(height, width, scale, ratio, sample_generator(0, 1, row))
        assert 0 <= top and 0 <= left and 0 < h and 0 < w and top + h <= height and left + w <= width
    # a ratio the image cannot meet: the central crop at the nearest allowed ratio
    assert crop_box(5, 5, (1.0, 1.0), (2.0, 3.0), sample_generator(0, 1, 0)) == (1, 0, 2, 5)


def test_a_crop_scale_outside_0_1_is_refused_naming_the_key():
    with pytest.raises(ParamsError, match=r"train\.crop_scale: .*0 < low <= high <= 1"):
        parse_params({"train": {"crop_scale": [0.9, 0.2]}}, sections=("train",))
