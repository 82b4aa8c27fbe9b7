"""Tests of scratchvit.data: dataset readers, downloads, transforms and Batches. No network."""
from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import threading
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scratchvit.data import (DATASETS, Batches, Dataset, download_url, inception_crop, load_dataset,
                             random_flip, split_train_val, to_float, to_model_input)
from scratchvit.data import datasets as D
from scratchvit.data import transforms as T

SYSTEM_FASHION_DIRS = list(D.SYSTEM_DIRS["fashion-mnist"])  # before the autouse fixture hides them


class FakeResponse(io.BytesIO):
    """What urllib's urlopen returns, enough for download_url: read(), headers, a context manager."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


def no_network(url, timeout=None):
    raise urllib.error.URLError("network is unreachable (tests)")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """An empty cache, no system copies, and no network, unless a test says otherwise."""
    monkeypatch.setenv("SCRATCHVIT_DATA", str(tmp_path / "cache"))
    monkeypatch.setitem(D.SYSTEM_DIRS, "fashion-mnist", [])
    monkeypatch.setattr(D, "_urlopen", no_network)


# ----------------------------------------------------------------------------------- fixtures


def cifar_batch(rng, n, label_key, num_classes):
    return {b"batch_label": b"fixture", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: rng.integers(0, num_classes, n).tolist(), b"filenames": [b"x.png"] * n}


def write_tar_gz(path: Path, members: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def make_cifar10(folder: Path, n=4, seed=0):
    """A tiny cifar-10-python.tar.gz in the official layout; returns (path, batches by name)."""
    rng = np.random.default_rng(seed)
    batches = {f"data_batch_{i}": cifar_batch(rng, n, b"labels", 10) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(rng, n, b"labels", 10)
    batches["batches.meta"] = {b"label_names": [f"class{i}".encode() for i in range(10)],
                               b"num_cases_per_batch": n}
    members = {f"cifar-10-batches-py/{k}": pickle.dumps(v, protocol=2) for k, v in batches.items()}
    folder.mkdir(parents=True, exist_ok=True)
    return write_tar_gz(folder / "cifar-10-python.tar.gz", members), batches


def make_cifar100(folder: Path, n=6, seed=1):
    rng = np.random.default_rng(seed)
    batches = {}
    for split in ("train", "test"):
        b = cifar_batch(rng, n, b"fine_labels", 100)
        b[b"coarse_labels"] = rng.integers(0, 20, n).tolist()
        batches[split] = b
    batches["meta"] = {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                       b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}
    members = {f"cifar-100-python/{k}": pickle.dumps(v, protocol=2) for k, v in batches.items()}
    folder.mkdir(parents=True, exist_ok=True)
    return write_tar_gz(folder / "cifar-100-python.tar.gz", members), batches


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    magic = (0x0800 | array.ndim) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_idx(folder: Path, n_train=12, n_test=5, seed=2, gz=True):
    """The four MNIST-style IDX files; returns the arrays (train_x, train_y, test_x, test_y)."""
    rng = np.random.default_rng(seed)
    arrays = (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_train, dtype=np.uint8),
              rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_test, dtype=np.uint8))
    folder.mkdir(parents=True, exist_ok=True)
    for stem, a in zip(D._IDX_FILES, arrays):
        data = idx_bytes(a)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return arrays


# -------------------------------------------------------------------------------------- CIFAR


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


# ------------------------------------------------------------------------------- MNIST family


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
    if not any(D._idx_paths(d) for d in SYSTEM_FASHION_DIRS if d.is_dir()):
        pytest.skip(f"no system Fashion-MNIST in {[str(d) for d in SYSTEM_FASHION_DIRS]} "
                    f"(apt-get install dataset-fashion-mnist)")
    monkeypatch.setitem(D.SYSTEM_DIRS, "fashion-mnist", SYSTEM_FASHION_DIRS)
    ds = load_dataset("fashion-mnist", download=False)
    assert ds.train_images.shape == (60000, 28, 28, 3) and ds.test_images.shape == (10000, 28, 28, 3)
    np.testing.assert_array_equal(np.bincount(ds.train_labels, minlength=10), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.test_labels, minlength=10), [1000] * 10)
    assert 0 < ds.train_images.mean() < 255


# -------------------------------------------------------------------------------- imagefolder


def write_image(path: Path, array: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


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


# --------------------------------------------------------------------- errors and downloading


def test_unknown_name_and_bad_data_dir(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset 'imagenet'.*cifar10"):
        load_dataset("imagenet")
    with pytest.raises(FileNotFoundError, match=r"nowhere.*does not exist"):
        load_dataset("cifar10", data_dir=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="only for 'imagefolder'"):
        load_dataset("cifar10", image_size=224)
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
    monkeypatch.setattr(D, "_urlopen", lambda url, timeout=None: FakeResponse(payload))
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

    monkeypatch.setattr(D, "_urlopen", lambda url, timeout=None: Broken(b"x" * (3 << 20)))
    with pytest.raises(ConnectionResetError):
        download_url("https://example.org/f", tmp_path / "f", md5=None)
    assert list(tmp_path.iterdir()) == []


def test_load_dataset_downloads_into_the_cache(tmp_path, monkeypatch):
    archive, batches = make_cifar10(tmp_path / "server")
    calls = []

    def serve(url, timeout=None):
        calls.append(url)
        return FakeResponse(archive.read_bytes())

    monkeypatch.setattr(D, "_urlopen", serve)
    with pytest.raises(ValueError, match="MD5 mismatch"):  # the fixture is not the official archive
        load_dataset("cifar10")
    monkeypatch.setitem(D._CIFAR["cifar10"], "md5", D.file_md5(archive))
    ds = load_dataset("cifar10")
    assert calls == [D._CIFAR["cifar10"]["url"]] * 2
    assert (tmp_path / "cache" / "cifar-10-python.tar.gz").read_bytes() == archive.read_bytes()
    np.testing.assert_array_equal(ds.test_labels, batches["test_batch"][b"labels"])
    load_dataset("cifar10")  # now from the cache
    assert len(calls) == 2


# ------------------------------------------------------------------------------------- split


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


# -------------------------------------------------------------------------------- transforms


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
    flipped = np.array([np.array_equal(f, im[:, ::-1]) for f, im in zip(flip, images)])
    kept = np.array([np.array_equal(f, im) for f, im in zip(flip, images)])
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


# ---------------------------------------------------------------------------------- Batches


def toy(n=40, size=12, seed=8):
    images = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return images, np.arange(n)  # label i = image index, so y shows the order


def take(batches, count):
    out = []
    for step, x, y in batches:
        out.append((step, x, y))
        if len(out) == count:
            break
    return out


def test_train_batches_shapes_and_epoch_permutations():
    images, labels = toy(40)
    with Batches(images, labels, 8, 12, augment="none", seed=3) as b:
        assert b.steps_per_epoch == 5
        got = take(b, 15)
    assert [s for s, _, _ in got] == list(range(15))
    for _, x, y in got:
        assert x.shape == (8, 12, 12, 3) and x.dtype == np.float32 and y.dtype == np.int64
        np.testing.assert_array_equal(x, to_float(images[y]))  # the no-augmentation fast path
    epochs = [np.concatenate([y for _, _, y in got[5 * e:5 * e + 5]]) for e in range(3)]
    for e, order in enumerate(epochs):
        np.testing.assert_array_equal(order, np.random.default_rng([3, e]).permutation(40))
    assert not np.array_equal(epochs[0], epochs[1])


def test_train_drops_the_last_partial_batch():
    images, labels = toy(42)
    with Batches(images, labels, 8, 12, augment="none") as b:
        assert b.steps_per_epoch == 5
        ys = [y for _, _, y in take(b, 5)]
    assert all(len(y) == 8 for y in ys) and len(np.unique(np.concatenate(ys))) == 40


@pytest.mark.parametrize("augment", ["inception", "crop-flip"])
def test_resume_gives_identical_batches(augment):
    images, labels = toy(30, size=20)
    with Batches(images, labels, 7, 16, augment=augment, seed=11, workers=1) as b:
        full = take(b, 9)[5:]
    with Batches(images, labels, 7, 16, augment=augment, seed=11, start_step=5, workers=3) as b:
        resumed = take(b, 4)
    assert [s for s, _, _ in resumed] == [5, 6, 7, 8]
    for (s1, x1, y1), (s2, x2, y2) in zip(full, resumed):
        assert s1 == s2
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(x1, x2)
    assert not np.array_equal(full[0][1], full[1][1])
    with Batches(images, labels, 7, 16, augment=augment, seed=12, start_step=5) as b:
        assert not np.array_equal(take(b, 1)[0][1], full[0][1])


def test_eval_pass_covers_every_image_once_in_order():
    images, labels = toy(10, size=6)
    b = Batches(images, labels, 4, 9, train=False, augment="inception")
    assert b.steps_per_epoch == 3
    got = list(b)
    assert [s for s, _, _ in got] == [0, 1, 2] and [len(y) for _, _, y in got] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([y for _, _, y in got]), labels)
    np.testing.assert_array_equal(np.concatenate([x for _, x, _ in got]), to_model_input(images, 9))
    assert len(list(b)) == 3  # a second pass starts again


def test_background_exception_reaches_the_consumer():
    images, labels = toy(40)
    b = Batches(images, labels, 8, 12, augment="none")
    real = b.make_batch

    def failing(step, map_fn=map):
        if step == 2:
            raise RuntimeError("broken batch 2")
        return real(step, map_fn)

    b.make_batch = failing
    seen = []
    with pytest.raises(RuntimeError, match="broken batch 2"):
        for step, _, _ in b:
            seen.append(step)
    assert seen == [0, 1]
    assert b._thread is None


def test_close_is_prompt_with_a_full_queue():
    images, labels = toy(40)
    b = Batches(images, labels, 8, 12, augment="flip", prefetch=1)
    it = iter(b)
    next(it)
    thread = b._thread
    time.sleep(0.2)  # the producer fills the queue and blocks
    t0 = time.perf_counter()
    b.close()
    assert time.perf_counter() - t0 < 1.0
    assert not thread.is_alive()
    assert not any(t.name == "scratchvit-batches" and t.is_alive() for t in threading.enumerate())


def test_batches_argument_errors():
    images, labels = toy(10)
    with pytest.raises(ValueError, match="batch_size 16 exceeds the 10"):
        Batches(images, labels, 16, 12)
    with pytest.raises(ValueError, match="augment must be one of"):
        Batches(images, labels, 4, 12, augment="mixup")
    with pytest.raises(ValueError, match=r"uint8 array \(N, H, W, 3\)"):
        Batches(images.astype(np.float32), labels, 4, 12)
    with pytest.raises(ValueError, match=r"labels must be integers of shape \(10,\)"):
        Batches(images, labels[:3], 4, 12)
