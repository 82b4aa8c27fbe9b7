"""Tests of scratchvit.data: (Fashion-)MNIST IDX files and their chain of sources. No network."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
from data_helpers import FakeResponse, file_md5, idx_bytes, make_idx

from scratchvit.data import idx, load_dataset, sources
from scratchvit.data.idx import IDX_FILES

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



# ------------------------------------------------------------------------- the chain of sources

APT = dict(idx.APT_PACKAGES)  # before the fixture empties it

FAKE_APT_GET = """#!/bin/sh
if [ "$1" != download ] || [ "$2" != dataset-fashion-mnist ]; then
  echo "E: Unable to locate package $2" >&2; exit 100
fi
echo "$PWD" >> "$FAKE_LOG"
echo not-a-real-deb > dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb
"""
FAKE_DPKG_DEB = """#!/bin/sh
[ "$1" = -x ] || exit 2
mkdir -p "$3/usr/share/datasets/fashion-mnist" && cp "$FAKE_FILES"/*.gz "$3/usr/share/datasets/fashion-mnist/"
"""


def fake_tools(tmp_path, monkeypatch, apt_get=FAKE_APT_GET):
    """apt-get and dpkg-deb stand-ins on PATH; the package 'contains' tmp_path/pkg/*.gz."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("apt-get", apt_get), ("dpkg-deb", FAKE_DPKG_DEB)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "apt.log"))
    monkeypatch.setenv("FAKE_FILES", str(tmp_path / "pkg"))
    monkeypatch.setattr(idx, "APT_PACKAGES", APT)
    return make_idx(tmp_path / "pkg", seed=7)


def serve_idx(folder, monkeypatch, calls):
    """A fake server for the official files, with the fixtures' MD5s as the expected ones."""
    files = {f"{s}.gz": (folder / f"{s}.gz").read_bytes() for s in IDX_FILES}
    monkeypatch.setitem(idx.IDX["fashion-mnist"], "md5", tuple(file_md5(folder / f"{s}.gz") for s in IDX_FILES))

    def opener(url, timeout=None):
        calls.append(url)
        return FakeResponse(files[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(sources, "_urlopen", opener)


def test_each_source_in_order(tmp_path, monkeypatch):
    lines = []
    expected = {name: make_idx(tmp_path / name, seed=i) for i, name in enumerate(["given", "system", "server"])}
    monkeypatch.setitem(idx.SYSTEM_DIRS, "fashion-mnist", [tmp_path / "system"])
    ds = load_dataset("fashion-mnist", data_dir=tmp_path / "given", log=lines.append)
    np.testing.assert_array_equal(ds.train_labels, expected["given"][1])
    assert lines[-1] == f"fashion-mnist: using data_dir {tmp_path / 'given'}"
    ds = load_dataset("fashion-mnist", log=lines.append)
    np.testing.assert_array_equal(ds.train_labels, expected["system"][1])
    assert lines[-1] == f"fashion-mnist: using the system copy {tmp_path / 'system'}"
    monkeypatch.setitem(idx.SYSTEM_DIRS, "fashion-mnist", [])
    calls = []
    serve_idx(tmp_path / "server", monkeypatch, calls)
    ds = load_dataset("fashion-mnist", log=lines.append)  # downloads into the empty cache
    np.testing.assert_array_equal(ds.test_labels, expected["server"][3])
    assert len(calls) == 4 and calls[0] == idx.IDX["fashion-mnist"]["url"] + "train-images-idx3-ubyte.gz"
    assert lines[-1].startswith("fashion-mnist: using the official download http://fashion-mnist.s3-website")
    load_dataset("fashion-mnist", log=lines.append)
    assert len(calls) == 4 and lines[-1] == f"fashion-mnist: using the cache {tmp_path / 'cache' / 'fashion-mnist'}"


def test_apt_get_download_fills_the_cache(tmp_path, monkeypatch):
    expected = fake_tools(tmp_path, monkeypatch)
    lines = []
    ds = load_dataset("fashion-mnist", log=lines.append)  # the download fails: no network
    np.testing.assert_array_equal(ds.train_labels, expected[1])
    np.testing.assert_array_equal(ds.test_images[..., 0], expected[2])
    cache = tmp_path / "cache" / "fashion-mnist"
    assert lines[-1] == f"fashion-mnist: using `apt-get download dataset-fashion-mnist` into {cache}"
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{s}.gz" for s in IDX_FILES)  # no partial files
    ran_in = Path((tmp_path / "apt.log").read_text().strip())
    assert ran_in != Path.cwd() and not ran_in.exists()  # a temporary folder, removed afterwards
    load_dataset("fashion-mnist", log=lines.append)
    assert "using the cache" in lines[-1] and len((tmp_path / "apt.log").read_text().splitlines()) == 1


def test_when_every_source_fails_the_error_lists_them_all(tmp_path, monkeypatch):
    fake_tools(tmp_path, monkeypatch, apt_get='#!/bin/sh\necho "E: Unable to locate package $2" >&2\nexit 100\n')
    monkeypatch.setitem(idx.SYSTEM_DIRS, "fashion-mnist", [tmp_path / "nothing"])
    (tmp_path / "given").mkdir()
    with pytest.raises(RuntimeError) as err:
        load_dataset("fashion-mnist", data_dir=tmp_path / "given", log=lambda _: None)
    msg = str(err.value)
    order = ["(1) data_dir", "(2) the system copy", "(3) the cache", "(4) the official download",
             "(5) `apt-get download dataset-fashion-mnist`"]
    assert all(o in msg for o in order) and [msg.index(o) for o in order] == sorted(msg.index(o) for o in order)
    assert "train-images-idx3-ubyte(.gz) not there" in msg and "URLError" in msg
    assert "exited with 100: E: Unable to locate package dataset-fashion-mnist" in msg
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("fashion-mnist", download=False, log=lambda _: None)
    assert "(3) the official download" in str(err.value) and "skipped (download=False)" in str(err.value)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(RuntimeError, match=r"apt-get download.*no apt-get on PATH"):
        load_dataset("fashion-mnist", log=lambda _: None)


def test_mnist_has_no_debian_package_step(tmp_path, monkeypatch):
    fake_tools(tmp_path, monkeypatch)
    with pytest.raises(RuntimeError) as err:
        load_dataset("mnist", log=lambda _: None)
    assert "apt-get" not in str(err.value) and "https://ossci-datasets.s3.amazonaws.com/mnist/" in str(err.value)
    assert not (tmp_path / "apt.log").exists()
