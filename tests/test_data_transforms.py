"""Tests of scratchvit.data: array transforms. No network."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from scratchvit.data import inception_crop, random_flip, to_float, to_model_input
from scratchvit.data import transforms as T

pytestmark = pytest.mark.usefixtures("isolated_data")


def test_inception_crop_shape_range_and_determinism():
    rng = np.random.default_rng(4)
    image = rng.integers(50, 101, (40, 30, 3), dtype=np.uint8)
    out = inception_crop(image, 16, np.random.default_rng(7))
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert 50 <= out.min() and out.max() <= 100
    np.testing.assert_array_equal(out, inception_crop(image, 16, np.random.default_rng(7)))
    others = [inception_crop(image, 16, np.random.default_rng(s)) for s in range(8, 12)]
    assert any(not np.array_equal(out, o) for o in others)


def test_inception_boxes_respect_area_and_aspect():
    rng = np.random.default_rng(5)
    fractions = []
    for _ in range(500):
        top, left, h, w = T.sample_inception_box(60, 80, rng)
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 80
        assert 0.05 * 4800 <= h * w <= 4800
        assert 0.75 - 1.0 / h <= w / h <= 4 / 3 + 1.0 / h  # width is rounded to whole pixels
        fractions.append(h * w / 4800)
    assert min(fractions) < 0.2 and max(fractions) > 0.8
    # Area 100 % forces the whole image whatever the aspect draw.
    assert T.sample_inception_box(32, 32, rng, area_range=(1.0, 1.0)) == (0, 0, 32, 32)
    with pytest.raises(ValueError, match="area_range"):
        T.sample_inception_box(32, 32, rng, area_range=(0.0, 1.0))


def test_flip_and_to_float():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.testing.assert_array_equal(random_flip(image, np.random.default_rng(0), p=1.0), image[:, ::-1])
    assert random_flip(image, np.random.default_rng(0), p=0.0) is image
    flips = [random_flip(image, np.random.default_rng(s))[0, 0, 0] == image[0, -1, 0] for s in range(200)]
    assert 60 < sum(flips) < 140
    x = to_float(np.arange(256, dtype=np.uint8))
    assert x.dtype == np.float32 and x[0] == -1.0 and x[255] == 1.0 and x[128] > 0 > x[127]
    np.testing.assert_allclose(x, (np.arange(256) - 127.5) / 127.5, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="uint8"):
        to_float(np.zeros(3, np.float32))


def test_to_model_input_resizes_only_when_needed():
    images = np.random.default_rng(6).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    same = to_model_input(images, 8)
    np.testing.assert_array_equal(same, to_float(images))
    big = to_model_input(images, 12)
    assert big.shape == (3, 12, 12, 3) and big.dtype == np.float32 and -1 <= big.min() and big.max() <= 1
    ref = np.asarray(Image.fromarray(images[1]).resize((12, 12), Image.BILINEAR))
    np.testing.assert_array_equal(big[1], to_float(ref))
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        to_model_input(images[0], 8)


def test_augment_batch_modes():
    rng = np.random.default_rng(7)
    images = rng.integers(1, 256, (64, 16, 16, 3), dtype=np.uint8)  # no zeros: padding is visible
    flip = T.augment_batch(images, 16, "flip", np.random.default_rng(0))
    flipped = np.array([np.array_equal(f, im[:, ::-1]) for f, im in zip(flip, images, strict=True)])
    kept = np.array([np.array_equal(f, im) for f, im in zip(flip, images, strict=True)])
    assert np.all(flipped | kept) and 10 < flipped.sum() < 54
    cf = T.augment_batch(images, 16, "crop-flip", np.random.default_rng(0))
    assert cf.shape == images.shape and (cf == 0).any()  # some crops reach into the zero padding
    np.testing.assert_array_equal(T.pad_crop_batch(images, 2, np.full((64, 2), 2)), images)
    shifted = T.pad_crop_batch(images[:1], 2, [[0, 4]])  # 2 px down, 2 px left
    np.testing.assert_array_equal(shifted[0, 2:, :14], images[0, :14, 2:])
    assert (shifted[0, :2] == 0).all() and (shifted[0, :, 14:] == 0).all()
    assert T.augment_batch(images, 16, "none", rng) is images
    with pytest.raises(ValueError, match="augment must be one of"):
        T.augment_batch(images, 16, "mixup", rng)

