"""Fixture builders shared by the tests of scratchvit.data (test_data_*.py): tiny CIFAR archives,
IDX files, images, fake network responses. No network, no real datasets."""
from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
from PIL import Image

from scratchvit.data.idx import IDX_FILES


def file_md5(path) -> str:
    """The MD5 hex digest of a file's bytes."""
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


class FakeResponse(io.BytesIO):
    """What urllib's urlopen returns, enough for download_url: read(), headers, a context manager."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


def no_network(url, timeout=None):
    raise urllib.error.URLError("network is unreachable (tests)")


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
    for stem, a in zip(IDX_FILES, arrays, strict=True):
        data = idx_bytes(a)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return arrays


def write_image(path: Path, array: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


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

