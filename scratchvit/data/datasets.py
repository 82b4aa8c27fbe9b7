"""The front of the data package: :func:`load_dataset`, :class:`Dataset` and :func:`split_train_val`.

CIFAR-10/100 (``cifar.py``) and (Fashion-)MNIST (``idx.py``) are read into memory as uint8
arrays; an image folder (``imagefolder.py``) is only listed, its images decoded per batch by
``Batches``. Where the files come from, in order, is in ``load_dataset``'s docstring.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checks import check_positive_int
from .cifar import CIFAR, load_cifar
from .idx import IDX, load_idx
from .imagefolder import ImageFiles, load_imagefolder
from .sources import default_log

DATASETS = ("cifar10", "cifar100", "fashion-mnist", "mnist", "imagefolder")
GREY_DATASETS = ("mnist", "fashion-mnist")  # grey images, repeated to 3 channels: R = G = B (idx.py)
__all__ = ["DATASETS", "Dataset", "load_dataset", "split_train_val"]


@dataclass
class Dataset:
    """A labelled image dataset: images in memory (arrays) or listed (:class:`ImageFiles`).

    Attributes:
        name: the dataset's name, one of :data:`DATASETS`.
        train_images: uint8 ``(N, H, W, 3)`` RGB pixels, or :class:`ImageFiles` of N paths.
        train_labels: int64 ``(N,)`` in ``[0, num_classes)``.
        test_images: uint8 ``(M, H, W, 3)``, or :class:`ImageFiles` of M paths.
        test_labels: int64 ``(M,)``.
        class_names: one name per class, index = label.
    """

    name: str
    train_images: np.ndarray | ImageFiles
    train_labels: np.ndarray
    test_images: np.ndarray | ImageFiles
    test_labels: np.ndarray
    class_names: list[str]

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if not isinstance(x, ImageFiles) and (x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3):
                raise ValueError(f"{self.name}: {split}_images must be uint8 (N, H, W, 3) or ImageFiles, "
                                 f"got {x.dtype} {x.shape}")
            if y.dtype != np.int64 or y.shape != (len(x),):
                raise ValueError(f"{self.name}: {split}_labels must be int64 ({len(x)},), got {y.dtype} {y.shape}")
            if len(y) and (y.min() < 0 or y.max() >= len(self.class_names)):
                raise ValueError(f"{self.name}: {split} labels span [{y.min()}, {y.max()}], "
                                 f"outside [0, {len(self.class_names)}) for {len(self.class_names)} classes")

    @property
    def num_classes(self) -> int:
        """The number of classes, ``len(class_names)``."""
        return len(self.class_names)


def load_dataset(name: str, data_dir=None, download: bool = True, image_size: int | None = None,
                 skip_bad_images: bool = False, log=None) -> Dataset:
    """Load a dataset: uint8 images in memory (CIFAR, MNISTs) or a listing of files (``imagefolder``).

    Where the files are looked for, in order (the first that has them all is used, a progress
    line says which; if none has them the error lists every source tried and why it failed):

    - ``cifar10`` / ``cifar100``: ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` (read
      in place) or the extracted ``cifar-10-batches-py`` / ``cifar-100-python`` folder in
      ``data_dir`` (which may also be the extracted folder itself); the cache
      (``$SCRATCHVIT_DATA``, else ``data/`` at the repository root); the official download into
      the cache (MD5-checked). CIFAR-100 uses the 100 fine labels.
    - ``fashion-mnist`` / ``mnist``: the four IDX files (``train-images-idx3-ubyte.gz`` ...,
      gzipped or not) in ``data_dir`` or ``data_dir/<name>``; the system copy
      (/usr/share/datasets/fashion-mnist, Debian's ``dataset-fashion-mnist``); the cache
      ``cache/<name>``; the official download (MD5-checked); then, Fashion-MNIST only, ``apt-get
      download dataset-fashion-mnist`` unpacked with ``dpkg-deb -x`` into the cache (no root
      needed; MNIST has no Debian package). Grey images are repeated to 3 channels.
    - ``imagefolder``: ``data_dir/train/<class>/*`` and ``data_dir/test/<class>/*`` with
      extensions .jpg/.jpeg/.png/.bmp/.gif/.webp (any case); classes are the sorted folder
      names and must agree between train and test. Files are only listed here.

    Args:
        name: one of :data:`DATASETS`.
        data_dir: folder to look in first (required for ``imagefolder``), or None.
        download: whether the download steps (official servers, ``apt-get download``) may run.
        image_size: the model's input side in pixels; required for ``imagefolder`` (the CLI's
            ``--image-size``), whose images ``Batches`` decodes to that size; the in-memory
            datasets keep their native size (Batches resizes them) and only check it.
        skip_bad_images: ``imagefolder``: accepted so that one flag serves both calls; listing
            reads no pixels, so it changes nothing here. ``Batches(skip_bad_images=...)``, which
            decodes, is where unreadable files are skipped and counted.
        log: callable taking one progress line; default prints to stderr.

    Returns:
        :class:`Dataset`: uint8 ``(N, H, W, 3)`` images (32x32 for CIFAR, 28x28 for the MNISTs)
        or :class:`ImageFiles` for ``imagefolder``, and int64 ``(N,)`` labels.

    Raises:
        ValueError: unknown ``name``; ``data_dir`` not a folder; ``image_size`` missing for
            ``imagefolder`` or not a positive int; a corrupt or truncated archive; a wrong IDX
            magic number or size; an MD5 mismatch of a download; differing class folders.
        FileNotFoundError: ``data_dir`` does not exist; no source has the files and
            ``download=False``; ``imagefolder`` without ``train``/``test`` folders.
        RuntimeError: no source has the files (e.g. no network); the message lists each source.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    log = default_log if log is None else log
    if data_dir is not None:
        data_dir = Path(data_dir).expanduser()
        if not data_dir.exists():
            raise FileNotFoundError(f"data_dir {data_dir} does not exist")
        if not data_dir.is_dir():
            raise ValueError(f"data_dir {data_dir} is a file, not a folder; pass the folder that holds it")
    if image_size is not None:
        check_positive_int("image_size", image_size, unit="pixels")
    if name == "imagefolder":
        if image_size is None:
            raise ValueError("imagefolder needs image_size (--image-size PIXELS): the images differ in size "
                             "and are decoded to image_size x image_size per batch")
        parts = load_imagefolder(data_dir)
        log(f"imagefolder: {len(parts[0])} train and {len(parts[2])} test files in {len(parts[4])} classes "
            f"under {data_dir} (decoded per batch to {image_size}x{image_size} px)")
    elif name in CIFAR:
        parts = load_cifar(name, data_dir, download, log)
    else:
        assert name in IDX
        parts = load_idx(name, data_dir, download, log)
    return Dataset(name, *parts)


def split_train_val(images, labels: np.ndarray, val_fraction: float = 0.02,
                    seed: int = 0) -> tuple[tuple, tuple]:
    """Hold out a random fraction of a training set for validation.

    The held-out indices are the first ``round(N * val_fraction)`` (at least 1 when
    ``val_fraction > 0``) of ``np.random.default_rng(seed).permutation(N)``; both parts keep
    the original order of the images.

    Args:
        images: array ``(N, ...)``, e.g. uint8 ``(N, H, W, 3)``, or :class:`ImageFiles`.
        labels: array ``(N,)``.
        val_fraction: fraction held out, in [0, 1).
        seed: fixes the split.

    Returns:
        ``((train_images, train_labels), (val_images, val_labels))``, copies (ImageFiles subsets).

    Raises:
        ValueError: lengths differ, ``val_fraction`` outside [0, 1), or nothing left to train on.
    """
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"images and labels differ in length: {n} vs {len(labels)}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = round(n * val_fraction)
    if val_fraction > 0:
        n_val = max(n_val, 1)
    if n - n_val < 1:
        raise ValueError(f"val_fraction={val_fraction} of {n} images leaves nothing to train on")
    perm = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return (images[train_idx], labels[train_idx]), (images[val_idx], labels[val_idx])
