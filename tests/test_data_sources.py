"""Tests of scratchvit.data: sources, downloads, errors and the split. No network."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import platformdirs
import pytest
from data_helpers import FakeResponse, file_md5, make_cifar10

from scratchvit.data import DATASETS, cifar, download_url, load_dataset, sources, split_train_val

pytestmark = pytest.mark.usefixtures("isolated_data")


def test_unknown_name_and_bad_data_dir(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset 'imagenet'.*cifar10"):
        load_dataset("imagenet")
    with pytest.raises(FileNotFoundError, match=r"nowhere.*does not exist"):
        load_dataset("cifar10", data_dir=tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"image_size must be a positive integer \(pixels\), got 0"):
        load_dataset("cifar10", image_size=0)
    assert DATASETS == ("cifar10", "cifar100", "fashion-mnist", "mnist", "imagefolder")


def test_no_network_names_file_url_and_folder(tmp_path):
    with pytest.raises(RuntimeError) as err:
        load_dataset("cifar10", data_dir=tmp_path)
    msg = str(err.value)
    assert "cifar-10-python.tar.gz" in msg and "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg
    assert str(tmp_path / "cache") in msg and "URLError" in msg
    with pytest.raises(RuntimeError, match=r"train-images-idx3-ubyte\.gz.*https://ossci-datasets"):
        load_dataset("mnist")
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python\.tar\.gz.*download=False.*kriz"):
        load_dataset("cifar100", download=False)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.*"))


def test_download_checks_md5_and_renames_atomically(tmp_path, monkeypatch):
    payload = b"0123456789" * 100_000
    monkeypatch.setattr(sources, "_urlopen", lambda url, timeout=None: FakeResponse(payload))
    dest = tmp_path / "dl" / "file.bin"
    with pytest.raises(ValueError, match=r"MD5 mismatch for file\.bin.*https://example\.org/file\.bin"):
        download_url("https://example.org/file.bin", dest, md5="0" * 32)
    assert list((tmp_path / "dl").iterdir()) == []  # neither dest nor a partial file
    md5 = __import__("hashlib").md5(payload).hexdigest()
    assert download_url("https://example.org/file.bin", dest, md5=md5) == dest
    assert dest.read_bytes() == payload and list((tmp_path / "dl").iterdir()) == [dest]


def test_interrupted_download_leaves_no_partial_file(tmp_path, monkeypatch):
    class Broken(FakeResponse):
        def read(self, n=-1):
            if self.tell() > 0:
                raise ConnectionResetError("connection reset")
            return super().read(n)

    monkeypatch.setattr(sources, "_urlopen", lambda url, timeout=None: Broken(b"x" * (3 << 20)))
    with pytest.raises(ConnectionResetError):
        download_url("https://example.org/f", tmp_path / "f", md5=None)
    assert list(tmp_path.iterdir()) == []


def test_load_dataset_downloads_into_the_cache(tmp_path, monkeypatch):
    archive, batches = make_cifar10(tmp_path / "server")
    calls = []

    def serve(url, timeout=None):
        calls.append(url)
        return FakeResponse(archive.read_bytes())

    monkeypatch.setattr(sources, "_urlopen", serve)
    with pytest.raises(ValueError, match="MD5 mismatch"):  # the fixture is not the official archive
        load_dataset("cifar10")
    monkeypatch.setitem(cifar.CIFAR["cifar10"], "md5", file_md5(archive))
    ds = load_dataset("cifar10")
    assert calls == [cifar.CIFAR["cifar10"]["url"]] * 2
    assert (tmp_path / "cache" / "cifar-10-python.tar.gz").read_bytes() == archive.read_bytes()
    np.testing.assert_array_equal(ds.test_labels, batches["test_batch"][b"labels"])
    load_dataset("cifar10")  # now from the cache
    assert len(calls) == 2


def test_split_train_val_sizes_disjoint_deterministic():
    images = np.arange(1000)[:, None, None, None].repeat(3, axis=3).astype(np.int32)
    labels = np.arange(1000)
    (tx, ty), (vx, vy) = split_train_val(images, labels, 0.02, seed=0)
    assert len(ty) == 980 and len(vy) == 20
    assert len(np.intersect1d(ty, vy)) == 0 and len(np.union1d(ty, vy)) == 1000
    np.testing.assert_array_equal(tx[:, 0, 0, 0], ty)
    assert np.all(np.diff(vy) > 0)
    np.testing.assert_array_equal(vy, np.sort(np.random.default_rng(0).permutation(1000)[:20]))
    (_, ty2), (_, vy2) = split_train_val(images, labels, 0.02, seed=0)
    np.testing.assert_array_equal(vy, vy2)
    (_, _), (_, vy3) = split_train_val(images, labels, 0.02, seed=1)
    assert not np.array_equal(vy, vy3)
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_val(images, labels, 1.0)
    with pytest.raises(ValueError, match="differ in length"):
        split_train_val(images, labels[:5])


def test_cache_dir_in_a_checkout_and_in_an_installed_package(tmp_path, monkeypatch):
    from scratchvit.data import sources

    monkeypatch.setenv("SCRATCHVIT_DATA", str(tmp_path / "mine"))
    assert sources.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("SCRATCHVIT_DATA")
    checkout = tmp_path / "repo"
    checkout.mkdir()
    (checkout / "setup.cfg").write_text("[metadata]\n")
    monkeypatch.setattr(sources, "_SOURCE_ROOT", checkout)
    assert sources.cache_dir() == checkout / "data"
    monkeypatch.setattr(sources, "_SOURCE_ROOT", tmp_path / "site-packages")  # pip install . (not -e)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert sources.cache_dir() == Path(platformdirs.user_cache_dir("scratchvit", appauthor=False))
    if sys.platform.startswith("linux"):
        assert sources.cache_dir() == tmp_path / "xdg" / "scratchvit"
