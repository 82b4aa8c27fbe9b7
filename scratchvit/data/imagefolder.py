"""Your own images: ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*``, listed, never held in memory.

:func:`load_imagefolder` only lists the files; :class:`ImageFiles` is the lazy stand-in for an
image array that ``split_train_val`` and ``Batches`` accept, and the pixels are decoded per batch
(``images.load_image`` / ``images.train_image``) in the loader's background workers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")  # compared lower-case


class ImageFiles:
    """A sequence of image file paths standing in for a uint8 ``(N, H, W, 3)`` array.

    ``len(files)`` is N; ``files[i]`` (an int) is the i-th path; ``files[idx]`` with a slice, an
    int array or a boolean mask is a new :class:`ImageFiles` of those paths, so code that indexes
    image arrays (``split_train_val``, ``Batches``) works unchanged. Nothing is decoded here.

    Args:
        paths: image file paths (str or Path), in dataset order.
    """

    def __init__(self, paths):
        self.paths = np.array([str(p) for p in paths], dtype=object)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return Path(self.paths[index])
        return ImageFiles(self.paths[index])

    def __iter__(self):
        return (Path(p) for p in self.paths)

    def __eq__(self, other):
        return isinstance(other, ImageFiles) and list(self.paths) == list(other.paths)

    def __repr__(self) -> str:
        first = f", first {self.paths[0]}" if len(self) else ""
        return f"ImageFiles({len(self)} files{first})"


def _list_split(split_dir: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Sorted class folder names of ``split_dir`` and its ``(file, label)`` pairs in sorted order."""
    if not split_dir.is_dir():
        root = split_dir.parent
        raise FileNotFoundError(f"imagefolder: {split_dir} is not a folder; expected "
                                f"{root}/train/<class>/*.jpg|png|... and {root}/test/<class>/...")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"imagefolder: {split_dir} has no class folders (expected {split_dir}/<class>/*.jpg)")
    files = [(p, label) for label, c in enumerate(classes) for p in sorted((split_dir / c).iterdir())
             if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]
    if not files:
        raise ValueError(f"imagefolder: no {'/'.join(IMAGE_EXTENSIONS)} files under {split_dir}/<class>/")
    return classes, files


def load_imagefolder(data_dir: Path | None):
    """List an image folder: ``(train_files, train_y, test_files, test_y, class_names)``; see ``load_dataset``.

    Raises:
        ValueError: no ``data_dir``; no class folders or no image files in a split; train and
            test with different class folders.
        FileNotFoundError: ``data_dir/train`` or ``data_dir/test`` is not a folder.
    """
    if data_dir is None:
        raise ValueError("imagefolder needs data_dir= a folder holding train/<class>/*.jpg|png|... "
                         "and test/<class>/*.jpg|png|...")
    (tr_classes, tr_files), (te_classes, te_files) = _list_split(data_dir / "train"), _list_split(data_dir / "test")
    if tr_classes != te_classes:
        only_tr, only_te = sorted(set(tr_classes) - set(te_classes)), sorted(set(te_classes) - set(tr_classes))
        raise ValueError(f"imagefolder: {data_dir}/train and {data_dir}/test must have the same class folders; "
                         f"only in train: {only_tr}, only in test: {only_te}")
    out = []
    for files in (tr_files, te_files):
        out += [ImageFiles(p for p, _ in files), np.array([label for _, label in files], np.int64)]
    return (*out, tr_classes)
