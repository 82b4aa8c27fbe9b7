"""MNIST and Fashion-MNIST from IDX files (LeCun et al.'s format), with the chain of sources.

An IDX file is a big-endian header (magic ``0x000008NN`` for unsigned bytes with NN dimensions,
then one uint32 per dimension) followed by the bytes; the servers gzip each file.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from .sources import Unavailable, apt_package_files, cache_dir, download_all, first_source

# IDX file stems (train images, train labels, test images, test labels); on the servers each is `stem.gz`.
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IDX = {
    "fashion-mnist": dict(
        url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        md5=("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
             "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"),
        classes=["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]),
    "mnist": dict(
        url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        md5=("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
             "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"),
        classes=[str(d) for d in range(10)]),
}
# System-wide copies (Debian's dataset-fashion-mnist installs the four .gz files here). The
# Debian files are recompressed, so their MD5s differ from upstream's: they are checked by
# their IDX headers and sizes instead. Tests empty this to hide the system copy.
SYSTEM_DIRS = {
    "fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")],
    "mnist": [],
}
# Debian packages to fetch with `apt-get download` as the last source: (package, folder inside it).
# MNIST has no such package in Debian or Ubuntu (`apt-cache search mnist` lists only Fashion-MNIST),
# so it has no entry. Tests empty this to keep apt-get out.
APT_PACKAGES = {
    "fashion-mnist": ("dataset-fashion-mnist", "usr/share/datasets/fashion-mnist"),
}
_IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # unsigned-byte data with 3 dims (images) / 1 dim (labels)


def read_idx(path, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzip-compressed if the name ends in ``.gz``).

    Args:
        path: the file.
        ndim: expected number of dimensions: 3 for images ``(N, rows, cols)``, 1 for labels.

    Returns:
        uint8 array with the dimensions given in the file's header (read-only).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not valid gzip, a magic number other than unsigned-byte data with ``ndim``
            dimensions (0x00000803 images, 0x00000801 labels), or a length that disagrees with
            the header (truncated file).
    """
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: not a valid gzip file ({type(e).__name__}: {e}); delete it and "
                             f"fetch it again") from e
    expected = _IDX_MAGIC[ndim]
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic != expected:
        got = "a file shorter than 4 bytes" if magic is None else f"{magic:#010x}"
        raise ValueError(f"{path}: wrong IDX magic number {got}, expected {expected:#010x} "
                         f"({'images' if ndim == 3 else 'labels'}, unsigned bytes, {ndim} dims)")
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(dims)):
        raise ValueError(f"{path}: {len(raw)} bytes (uncompressed), but its header {dims} says "
                         f"{header + int(np.prod(dims))}: the file is truncated or corrupt")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def idx_paths(d: Path) -> list[Path] | None:
    """The four IDX files in folder ``d`` (``.gz`` or uncompressed), or None if any is missing."""
    paths = []
    for stem in IDX_FILES:
        for p in (d / f"{stem}.gz", d / stem):
            if p.is_file():
                paths.append(p)
                break
        else:
            return None
    return paths


def _in_dirs(dirs: list[Path]) -> list[Path]:
    for d in dirs:
        paths = idx_paths(d)
        if paths is not None:
            return paths
    missing = [s for s in IDX_FILES if not any((d / f"{s}.gz").is_file() or (d / s).is_file() for d in dirs)]
    raise Unavailable(f"{(missing or ['a complete set of the four IDX files'])[0]}(.gz) not there")


def idx_attempts(name: str, data_dir: Path | None) -> list:
    """The sources of ``name`` in the order tried: ``(label, fn, is_download)`` for :func:`first_source`."""
    spec, cache = IDX[name], cache_dir() / name
    attempts = []
    if data_dir is not None:
        dirs = [data_dir, data_dir / name]
        attempts.append((f"data_dir {data_dir}", lambda: _in_dirs(dirs), False))
    system = list(SYSTEM_DIRS.get(name, []))
    if system:
        attempts.append((f"the system copy {', '.join(map(str, system))}", lambda: _in_dirs(system), False))
    attempts.append((f"the cache {cache}", lambda: _in_dirs([cache]), False))

    def fetch():  # completes the cache file by file (uncompressed files already there count)
        have = [[p for p in (cache / f"{s}.gz", cache / s) if p.is_file()] for s in IDX_FILES]
        todo = [(spec["url"] + f"{s}.gz", cache / f"{s}.gz", md5)
                for s, md5, h in zip(IDX_FILES, spec["md5"], have, strict=True) if not h]
        download_all(todo)
        return idx_paths(cache)

    attempts.append((f"the official download {spec['url']} into {cache}", fetch, True))
    if name in APT_PACKAGES:
        package, member_dir = APT_PACKAGES[name]
        names = [f"{s}.gz" for s in IDX_FILES]
        attempts.append((f"`apt-get download {package}` into {cache}",
                         lambda: apt_package_files(package, member_dir, names, cache), True))
    return attempts


def load_idx(name: str, data_dir: Path | None, download: bool, log=None):
    """MNIST / Fashion-MNIST as ``(train_x, train_y, test_x, test_y, class_names)``; see ``load_dataset``.

    Images are uint8 ``(N, 28, 28, 3)`` (grey repeated to 3 channels), labels int64 ``(N,)``.

    Raises:
        RuntimeError: no source holds the files (the message lists each source and why).
        ValueError: files whose image and label counts differ, or a label outside the classes.
    """
    spec = IDX[name]
    paths = first_source(name, idx_attempts(name, data_dir), log, download,
                         f"Download the four files from {spec['url']} by hand (e.g. {spec['url']}{IDX_FILES[0]}.gz) "
                         f"and put them in {cache_dir() / name}, or pass data_dir= a folder that holds them.")
    tr_x, tr_y, te_x, te_y = (read_idx(p, 3 if "images" in p.name else 1) for p in paths)
    for x, y, px, py in ((tr_x, tr_y, paths[0], paths[1]), (te_x, te_y, paths[2], paths[3])):
        if len(x) != len(y):
            raise ValueError(f"{px} holds {len(x)} images but {py} holds {len(y)} labels")
        if len(y) and y.max() >= len(spec["classes"]):
            raise ValueError(f"{py}: label {y.max()} outside [0, {len(spec['classes'])})")
    grey3 = lambda x: np.repeat(x[..., None], 3, axis=-1)  # noqa: E731
    return grey3(tr_x), tr_y.astype(np.int64), grey3(te_x), te_y.astype(np.int64), list(spec["classes"])
