"""Tests of scratchvit.data: CIFAR-10/100 archives and folders. No network."""
from __future__ import annotations

import tarfile

import numpy as np
import pytest
from data_helpers import make_cifar10, make_cifar100, write_tar_gz

from scratchvit.data import Dataset, load_dataset

pytestmark = pytest.mark.usefixtures("isolated_data")


def test_cifar10_archive_gives_hwc_images_labels_and_names(tmp_path):
    _, batches = make_cifar10(tmp_path / "dl")
    ds = load_dataset("cifar10", data_dir=tmp_path / "dl")
    assert isinstance(ds, Dataset) and ds.name == "cifar10"
    assert ds.train_images.shape == (20, 32, 32, 3) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (4, 32, 32, 3)
    assert ds.train_labels.dtype == np.int64 and ds.train_labels.shape == (20,)
    expected_labels = np.concatenate([batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)])
    np.testing.assert_array_equal(ds.train_labels, expected_labels)
    np.testing.assert_array_equal(ds.test_labels, batches["test_batch"][b"labels"])
    assert ds.class_names == [f"class{i}" for i in range(10)] and ds.num_classes == 10
    # Row layout: 1024 red, then 1024 green, then 1024 blue values, each plane row-major.
    row = batches["data_batch_2"][b"data"][1]  # train image 4 + 1 = 5
    y, x = 7, 19
    assert ds.train_images[5, y, x].tolist() == [row[y * 32 + x], row[1024 + y * 32 + x], row[2048 + y * 32 + x]]
    full = batches["data_batch_1"][b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(ds.train_images[:4], full)


def test_cifar10_extracted_folder_and_cache_give_the_same_arrays(tmp_path, monkeypatch):
    archive, _ = make_cifar10(tmp_path / "dl")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "ex", filter="data")
    a = load_dataset("cifar10", data_dir=tmp_path / "dl")
    b = load_dataset("cifar10", data_dir=tmp_path / "ex")
    c = load_dataset("cifar10", data_dir=tmp_path / "ex" / "cifar-10-batches-py")
    monkeypatch.setenv("SCRATCHVIT_DATA", str(tmp_path / "dl"))  # the archive as the cache, no data_dir
    d = load_dataset("cifar10")
    for other in (b, c, d):
        np.testing.assert_array_equal(a.train_images, other.train_images)
        np.testing.assert_array_equal(a.test_labels, other.test_labels)


def test_cifar100_uses_fine_labels_and_names(tmp_path):
    _, batches = make_cifar100(tmp_path)
    ds = load_dataset("cifar100", data_dir=tmp_path)
    assert ds.train_images.shape == (6, 32, 32, 3) and ds.test_images.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(ds.train_labels, batches["train"][b"fine_labels"])
    np.testing.assert_array_equal(ds.test_labels, batches["test"][b"fine_labels"])
    assert ds.num_classes == 100 and ds.class_names[:2] == ["fine0", "fine1"]
    row = batches["test"][b"data"][3]
    assert ds.test_images[3, 31, 0].tolist() == [row[31 * 32], row[1024 + 31 * 32], row[2048 + 31 * 32]]


def test_truncated_cifar_archive_is_a_clear_error(tmp_path):
    archive, _ = make_cifar10(tmp_path / "src")
    data = archive.read_bytes()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / archive.name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cifar-10-python\.tar\.gz.*(corrupt|truncated)"):
        load_dataset("cifar10", data_dir=tmp_path / "bad")


def test_archive_without_the_cifar_members_is_rejected(tmp_path):
    write_tar_gz(tmp_path / "cifar-10-python.tar.gz", {"readme.txt": b"hello"})
    with pytest.raises(ValueError, match=r"lacks cifar-10-batches-py/data_batch_1"):
        load_dataset("cifar10", data_dir=tmp_path)

