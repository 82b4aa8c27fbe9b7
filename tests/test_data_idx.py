"""Tests of scratchvit.data: (Fashion-)MNIST IDX files and their chain of sources. No network."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
from data_helpers import (
    idx_bytes,
    make_idx,
)

from scratchvit.data import (
    idx,
    load_dataset,
)

pytestmark = pytest.mark.usefixtures("isolated_data")


SYSTEM_FASHION_DIRS = list(idx.SYSTEM_DIRS["fashion-mnist"])  # before the fixture hides them


def test_fashion_mnist_idx_gz_fixture(tmp_path):
    tr_x, tr_y, te_x, te_y = make_idx(tmp_path)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert ds.train_images.shape == (12, 28, 28, 3) and ds.test_images.shape == (5, 28, 28, 3)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int64
    for c in range(3):
        np.testing.assert_array_equal(ds.train_images[..., c], tr_x)
        np.testing.assert_array_equal(ds.test_images[..., c], te_x)
    np.testing.assert_array_equal(ds.train_labels, tr_y)
    np.testing.assert_array_equal(ds.test_labels, te_y)
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"


def test_uncompressed_idx_in_a_named_subfolder(tmp_path):
    tr_x, _, _, te_y = make_idx(tmp_path / "mnist", gz=False)
    ds = load_dataset("mnist", data_dir=tmp_path)
    np.testing.assert_array_equal(ds.train_images[..., 1], tr_x)
    np.testing.assert_array_equal(ds.test_labels, te_y)
    assert ds.class_names == [str(d) for d in range(10)]


def test_wrong_idx_magic_names_the_file(tmp_path):
    make_idx(tmp_path)
    bad = tmp_path / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(idx_bytes(np.zeros(12, np.uint8), magic=0x0803)))
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz: wrong IDX magic number 0x00000803"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_truncated_idx_is_rejected(tmp_path):
    make_idx(tmp_path, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte: .*truncated"):
        load_dataset("fashion-mnist", data_dir=tmp_path)
    gz = tmp_path / "t10k-images-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(b"x" * 5000)[:30])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz: not a valid gzip"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_real_fashion_mnist_system_copy(monkeypatch):
    if not any(idx.idx_paths(d) for d in SYSTEM_FASHION_DIRS if d.is_dir()):
        pytest.skip(f"no system Fashion-MNIST in {[str(d) for d in SYSTEM_FASHION_DIRS]} "
                    f"(apt-get install dataset-fashion-mnist)")
    monkeypatch.setitem(idx.SYSTEM_DIRS, "fashion-mnist", SYSTEM_FASHION_DIRS)
    ds = load_dataset("fashion-mnist", download=False)
    assert ds.train_images.shape == (60000, 28, 28, 3) and ds.test_images.shape == (10000, 28, 28, 3)
    np.testing.assert_array_equal(np.bincount(ds.train_labels, minlength=10), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.test_labels, minlength=10), [1000] * 10)
    assert 0 < ds.train_images.mean() < 255

