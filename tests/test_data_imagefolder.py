"""Tests of scratchvit.data: image folders, decoding and streaming. No network."""
from __future__ import annotations

import numpy as np
import pytest
from data_helpers import (
    write_image,
)

from scratchvit.data import (
    load_dataset,
)

pytestmark = pytest.mark.usefixtures("isolated_data")


def test_imagefolder_png_and_jpg(tmp_path):
    rng = np.random.default_rng(3)
    png = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
    flat = np.full((8, 10, 3), 200, np.uint8)  # a flat colour survives JPEG almost exactly
    write_image(tmp_path / "train" / "dog" / "a.png", png)
    write_image(tmp_path / "train" / "cat" / "b.JPG", flat)
    write_image(tmp_path / "train" / "cat" / "c.png", png[..., 0].copy())  # grey -> RGB
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    write_image(tmp_path / "test" / "cat" / "d.jpeg", flat)
    write_image(tmp_path / "test" / "dog" / "e.png", png)
    ds = load_dataset("imagefolder", data_dir=tmp_path)
    assert ds.class_names == ["cat", "dog"]
    assert ds.train_images.shape == (3, 8, 10, 3) and ds.test_images.shape == (2, 8, 10, 3)
    np.testing.assert_array_equal(ds.train_labels, [0, 0, 1])  # cat/b.JPG, cat/c.png, dog/a.png
    np.testing.assert_array_equal(ds.test_labels, [0, 1])
    assert np.abs(ds.train_images[0].astype(int) - 200).max() <= 2
    np.testing.assert_array_equal(ds.train_images[1], np.repeat(png[..., :1], 3, axis=2))
    np.testing.assert_array_equal(ds.train_images[2], png)


def test_imagefolder_sizes_and_classes(tmp_path):
    write_image(tmp_path / "train" / "a" / "1.png", np.zeros((8, 8, 3), np.uint8))
    write_image(tmp_path / "train" / "a" / "2.png", np.zeros((6, 9, 3), np.uint8))
    write_image(tmp_path / "test" / "a" / "3.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"2\.png is 9x6 px.*image_size="):
        load_dataset("imagefolder", data_dir=tmp_path)
    ds = load_dataset("imagefolder", data_dir=tmp_path, image_size=5)
    assert ds.train_images.shape == (2, 5, 5, 3) and ds.test_images.shape == (1, 5, 5, 3)
    write_image(tmp_path / "test" / "b" / "4.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"same class folders.*only in test: \['b'\]"):
        load_dataset("imagefolder", data_dir=tmp_path, image_size=5)
    with pytest.raises(FileNotFoundError, match=r"train"):
        load_dataset("imagefolder", data_dir=tmp_path / "test")
    with pytest.raises(ValueError, match="needs data_dir"):
        load_dataset("imagefolder")

