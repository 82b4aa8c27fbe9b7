"""Datasets as uint8 arrays in memory: CIFAR-10/100, MNIST, Fashion-MNIST and image folders.

:func:`load_dataset` returns a :class:`Dataset` whose images are uint8 ``(N, H, W, 3)`` (grey
images repeated to 3 channels) and labels int64 ``(N,)``. Files are looked for in ``data_dir``,
then (Fashion-MNIST only) in the Debian package ``dataset-fashion-mnist``'s folder, then in the
cache folder (``$SCRATCHVIT_DATA``, else ``data/`` at the repository root); if absent they are
downloaded into the cache with an MD5 check. Tests replace the module-level ``_urlopen`` to
serve bytes without a network.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import pickle
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

DATASETS = ("cifar10", "cifar100", "fashion-mnist", "mnist", "imagefolder")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

_urlopen = urllib.request.urlopen  # replaced in tests: called as _urlopen(url, timeout=seconds)

_CIFAR = {
    "cifar10": dict(
        archive="cifar-10-python.tar.gz", folder="cifar-10-batches-py",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
        meta="batches.meta", label_key=b"labels", names_key=b"label_names"),
    "cifar100": dict(
        archive="cifar-100-python.tar.gz", folder="cifar-100-python",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train=["train"], test=["test"],
        meta="meta", label_key=b"fine_labels", names_key=b"fine_label_names"),
}

# IDX file stems (train images, train labels, test images, test labels); on the servers each is `stem.gz`.
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_IDX = {
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
_IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # unsigned-byte data with 3 dims (images) / 1 dim (labels)


@dataclass
class Dataset:
    """A labelled image dataset held in memory.

    Attributes:
        name: the dataset's name, one of :data:`DATASETS`.
        train_images: uint8 ``(N, H, W, 3)``, RGB, pixels.
        train_labels: int64 ``(N,)`` in ``[0, num_classes)``.
        test_images: uint8 ``(M, H, W, 3)``.
        test_labels: int64 ``(M,)``.
        class_names: one name per class, index = label.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
                raise ValueError(f"{self.name}: {split}_images must be uint8 (N, H, W, 3), got {x.dtype} {x.shape}")
            if y.dtype != np.int64 or y.shape != (len(x),):
                raise ValueError(f"{self.name}: {split}_labels must be int64 ({len(x)},), got {y.dtype} {y.shape}")
            if len(y) and (y.min() < 0 or y.max() >= len(self.class_names)):
                raise ValueError(f"{self.name}: {split} labels span [{y.min()}, {y.max()}], "
                                 f"outside [0, {len(self.class_names)}) for {len(self.class_names)} classes")

    @property
    def num_classes(self) -> int:
        """The number of classes, ``len(class_names)``."""
        return len(self.class_names)


def cache_dir() -> Path:
    """The download cache: ``$SCRATCHVIT_DATA`` if set, else ``data/`` at the repository root."""
    env = os.environ.get("SCRATCHVIT_DATA")
    return Path(env).expanduser() if env else Path(__file__).resolve().parents[2] / "data"


def file_md5(path) -> str:
    """The MD5 hex digest of a file's bytes (read in 1 MiB chunks).

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def download_url(url: str, dest, md5: str | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` with a tqdm progress bar, checking the MD5.

    The bytes go to a temporary file beside ``dest`` that is renamed onto ``dest`` (atomic
    on one file system) only once complete and verified; on any failure it is deleted, so no
    partial file is ever left at ``dest``.

    Args:
        url: address to fetch (opened with the module-level ``_urlopen``).
        dest: path of the file to write; its folder is created.
        md5: expected MD5 hex digest, or None to skip the check.
        timeout: socket timeout, seconds.

    Returns:
        ``dest`` as a Path.

    Raises:
        ValueError: the downloaded bytes' MD5 differs from ``md5`` (nothing is written).
        OSError: the network or the file system failed (``urllib.error.URLError`` is one);
            ``http.client.HTTPException`` for a broken HTTP response.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.md5()
        with os.fdopen(fd, "wb") as f, _urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length") if response.headers is not None else None
            total = int(length) if length else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
        if md5 is not None and h.hexdigest() != md5:
            raise ValueError(f"MD5 mismatch for {dest.name} downloaded from {url}: got {h.hexdigest()}, "
                             f"expected {md5}; the download is corrupt or the file changed, "
                             f"nothing was written to {dest}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _fetch(dataset: str, url: str, dest: Path, md5: str, looked_in: list[Path], download: bool) -> Path:
    """Download ``url`` to ``dest`` or raise one error that says what is missing and what to do."""
    where = ", ".join(str(d) for d in looked_in)
    advice = (f"Download {url} by hand and put it in {dest.parent}, "
              f"or pass data_dir= a folder that holds it.")
    if not download:
        raise FileNotFoundError(f"{dataset}: {dest.name} not found (looked in {where}) and download=False. {advice}")
    try:
        return download_url(url, dest, md5)
    except (OSError, http.client.HTTPException) as e:
        raise RuntimeError(f"{dataset}: {dest.name} not found (looked in {where}) and downloading it from "
                           f"{url} failed ({type(e).__name__}: {e}). {advice}") from e


def _search_dirs(data_dir: Path | None, subfolder: str | None = None) -> list[Path]:
    if data_dir is None:
        return []
    return [data_dir] + ([data_dir / subfolder] if subfolder else [])


# ----------------------------------------------------------------------------------------- CIFAR


def _read_cifar_pickles(source: Path, spec: dict) -> dict:
    """Unpickle the batches and meta file of a CIFAR archive (read in place) or extracted folder."""
    names = spec["train"] + spec["test"] + [spec["meta"]]
    out = {}
    if source.is_dir():
        for n in names:
            path = source / n
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: {source} is not a complete {spec['folder']} "
                                        f"folder (extract {spec['archive']} again, or use the archive itself)")
            try:
                with open(path, "rb") as f:
                    out[n] = pickle.load(f, encoding="bytes")
            except MemoryError:
                raise
            except Exception as e:
                raise ValueError(f"{path}: not a CIFAR python pickle ({type(e).__name__}: {e})") from e
        return out
    wanted = {f"{spec['folder']}/{n}": n for n in names}
    try:
        with tarfile.open(source, "r:gz") as tar:
            for member in tar:
                key = wanted.get(member.name.removeprefix("./"))
                if key is not None and member.isfile():
                    with tar.extractfile(member) as f:
                        out[key] = pickle.load(f, encoding="bytes")
                    if len(out) == len(wanted):
                        break
    except MemoryError:
        raise
    except Exception as e:  # truncated gzip (EOFError), bad gzip (OSError), tar or pickle errors
        raise ValueError(f"{source}: corrupt or truncated archive ({type(e).__name__}: {e}); delete it "
                         f"and download {spec['url']} again") from e
    missing = [f"{spec['folder']}/{n}" for n in names if n not in out]
    if missing:
        raise ValueError(f"{source}: archive lacks {', '.join(missing)}; it is not the official {spec['archive']}")
    return out


def _cifar_arrays(batch, label_key: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3072) rows of R, G, B 32x32 planes -> uint8 (N, 32, 32, 3) and int64 labels."""
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"{where}: expected a dict with keys b'data' and {label_key!r}, got {keys}")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
        raise ValueError(f"{where}: expected uint8 data (N, 3072) and N labels, got data {data.dtype} "
                         f"{data.shape} and labels {labels.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _load_cifar(name: str, data_dir: Path | None, download: bool) -> Dataset:
    spec = _CIFAR[name]
    dirs = _search_dirs(data_dir) + [cache_dir()]
    source = None
    for d in dirs:
        if (d / spec["archive"]).is_file():
            source = d / spec["archive"]
        elif (d / spec["folder"]).is_dir():
            source = d / spec["folder"]
        elif d.name == spec["folder"] and (d / spec["meta"]).is_file():
            source = d  # data_dir is the extracted folder itself
        if source is not None:
            break
    if source is None:
        source = _fetch(name, spec["url"], cache_dir() / spec["archive"], spec["md5"], dirs, download)
    batches = _read_cifar_pickles(source, spec)

    def split(names):
        parts = [_cifar_arrays(batches[n], spec["label_key"], f"{source}: {n}") for n in names]
        return (np.ascontiguousarray(np.concatenate([p[0] for p in parts])),
                np.concatenate([p[1] for p in parts]))

    meta = batches[spec["meta"]]
    if not isinstance(meta, dict) or spec["names_key"] not in meta:
        raise ValueError(f"{source}: {spec['meta']} lacks the key {spec['names_key']!r}")
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[spec["names_key"]]]
    (tr_x, tr_y), (te_x, te_y) = split(spec["train"]), split(spec["test"])
    return Dataset(name, tr_x, tr_y, te_x, te_y, class_names)


# ----------------------------------------------------------------------------------- MNIST (IDX)


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


def _idx_paths(d: Path) -> list[Path] | None:
    """The four IDX files in folder ``d`` (``.gz`` or uncompressed), or None if any is missing."""
    paths = []
    for stem in _IDX_FILES:
        for p in (d / f"{stem}.gz", d / stem):
            if p.is_file():
                paths.append(p)
                break
        else:
            return None
    return paths


def _load_idx_dataset(name: str, data_dir: Path | None, download: bool) -> Dataset:
    spec = _IDX[name]
    cache = cache_dir() / name
    dirs = _search_dirs(data_dir, name) + list(SYSTEM_DIRS.get(name, [])) + [cache]
    paths = next((p for p in map(_idx_paths, dirs) if p is not None), None)
    if paths is None:  # complete the cache folder, file by file
        paths = []
        for stem, md5 in zip(_IDX_FILES, spec["md5"]):
            have = [p for p in (cache / f"{stem}.gz", cache / stem) if p.is_file()]
            paths.append(have[0] if have else
                         _fetch(name, spec["url"] + f"{stem}.gz", cache / f"{stem}.gz", md5, dirs, download))
    tr_x, tr_y, te_x, te_y = (read_idx(p, 3 if "images" in p.name else 1) for p in paths)
    for x, y, px, py in ((tr_x, tr_y, paths[0], paths[1]), (te_x, te_y, paths[2], paths[3])):
        if len(x) != len(y):
            raise ValueError(f"{px} holds {len(x)} images but {py} holds {len(y)} labels")
        if len(y) and y.max() >= len(spec["classes"]):
            raise ValueError(f"{py}: label {y.max()} outside [0, {len(spec['classes'])})")
    grey3 = lambda x: np.repeat(x[..., None], 3, axis=-1)  # noqa: E731
    return Dataset(name, grey3(tr_x), tr_y.astype(np.int64), grey3(te_x), te_y.astype(np.int64),
                   list(spec["classes"]))


# ----------------------------------------------------------------------------------- imagefolder


def _list_split(split_dir: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    if not split_dir.is_dir():
        raise FileNotFoundError(f"imagefolder: {split_dir} is not a folder; expected "
                                f"{split_dir.parent}/train/<class>/*.png|jpg and {split_dir.parent}/test/<class>/...")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"imagefolder: {split_dir} has no class folders (expected {split_dir}/<class>/*.png)")
    files = [(p, label) for label, c in enumerate(classes) for p in sorted((split_dir / c).iterdir())
             if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        raise ValueError(f"imagefolder: no {'/'.join(IMAGE_EXTENSIONS)} files under {split_dir}/<class>/")
    return classes, files


def _read_image(path: Path, image_size: int | None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if image_size is not None and im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.BILINEAR)
            return np.asarray(im)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: cannot be read as an image ({type(e).__name__}: {e})") from e


def _load_imagefolder(data_dir: Path | None, image_size: int | None) -> Dataset:
    if data_dir is None:
        raise ValueError("imagefolder needs data_dir= a folder holding train/<class>/*.png|jpg "
                         "and test/<class>/*.png|jpg")
    (tr_classes, tr_files), (te_classes, te_files) = _list_split(data_dir / "train"), _list_split(data_dir / "test")
    if tr_classes != te_classes:
        only_tr, only_te = sorted(set(tr_classes) - set(te_classes)), sorted(set(te_classes) - set(tr_classes))
        raise ValueError(f"imagefolder: {data_dir}/train and {data_dir}/test must have the same class folders; "
                         f"only in train: {only_tr}, only in test: {only_te}")
    arrays = {}
    first = None
    for split, files in (("train", tr_files), ("test", te_files)):
        images = [_read_image(p, image_size) for p, _ in files]
        for (p, _), im in zip(files, images):
            if first is None:
                first = (p, im.shape)
            elif im.shape != first[1]:
                raise ValueError(f"imagefolder: images differ in size: {first[0]} is {first[1][1]}x{first[1][0]} "
                                 f"px but {p} is {im.shape[1]}x{im.shape[0]} px (width x height); pass "
                                 f"image_size= to load_dataset to resize all to one square size")
        arrays[split] = (np.stack(images), np.array([label for _, label in files], np.int64))
    return Dataset("imagefolder", *arrays["train"], *arrays["test"], tr_classes)


# -------------------------------------------------------------------------------------- public


def load_dataset(name: str, data_dir=None, download: bool = True, image_size: int | None = None) -> Dataset:
    """Load a dataset into memory as uint8 images and int64 labels.

    Where the files are looked for, in order:

    - ``cifar10`` / ``cifar100``: ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` (read
      in place) or the extracted ``cifar-10-batches-py`` / ``cifar-100-python`` folder, in
      ``data_dir`` (which may also be the extracted folder itself), then in :func:`cache_dir`.
      CIFAR-100 uses the 100 fine labels.
    - ``fashion-mnist`` / ``mnist``: the four IDX files (``train-images-idx3-ubyte.gz`` ...,
      gzipped or not) in ``data_dir``, ``data_dir/<name>``, a system copy (Debian's
      ``dataset-fashion-mnist``: /usr/share/datasets/fashion-mnist), then ``cache_dir()/<name>``.
      Grey images are repeated to 3 channels.
    - ``imagefolder``: ``data_dir/train/<class>/*`` and ``data_dir/test/<class>/*`` with
      extensions .jpg/.jpeg/.png (any case), decoded with Pillow and converted to RGB; classes
      are the sorted folder names and must agree between train and test.

    Missing CIFAR/MNIST files are downloaded into :func:`cache_dir` (MD5-checked) when
    ``download`` is true.

    Args:
        name: one of :data:`DATASETS`.
        data_dir: folder to look in first (required for ``imagefolder``), or None.
        download: whether to download missing files.
        image_size: ``imagefolder`` only: resize every image to ``image_size x image_size``
            pixels (bilinear). Without it all images must already have one size.

    Returns:
        :class:`Dataset` with uint8 ``(N, H, W, 3)`` images (32x32 for CIFAR, 28x28 for the
        MNISTs) and int64 ``(N,)`` labels.

    Raises:
        ValueError: unknown ``name``; ``data_dir`` not a folder; ``image_size`` given for a
            dataset other than ``imagefolder``; a corrupt or truncated archive; a wrong IDX magic
            number or size; an MD5 mismatch of a download; images of differing sizes without
            ``image_size``; unreadable images; differing class folders.
        FileNotFoundError: ``data_dir`` does not exist; files missing and ``download=False``
            (the message names the file, its address and where to put it); ``imagefolder``
            without ``train``/``test`` folders.
        RuntimeError: files missing and the download failed (e.g. no network); the message
            names the file, its address and where to put it.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if data_dir is not None:
        data_dir = Path(data_dir).expanduser()
        if not data_dir.exists():
            raise FileNotFoundError(f"data_dir {data_dir} does not exist")
        if not data_dir.is_dir():
            raise ValueError(f"data_dir {data_dir} is a file, not a folder; pass the folder that holds it")
    if name == "imagefolder":
        bad_size = isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
        if image_size is not None and bad_size:
            raise ValueError(f"image_size must be a positive int (pixels), got {image_size!r}")
        return _load_imagefolder(data_dir, image_size)
    if image_size is not None:
        raise ValueError(f"image_size is only for 'imagefolder'; {name} keeps its native size "
                         f"(Batches / to_model_input resize to the model's input)")
    if name in _CIFAR:
        return _load_cifar(name, data_dir, download)
    return _load_idx_dataset(name, data_dir, download)


def split_train_val(images: np.ndarray, labels: np.ndarray, val_fraction: float = 0.02,
                    seed: int = 0) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Hold out a random fraction of a training set for validation.

    The held-out indices are the first ``round(N * val_fraction)`` (at least 1 when
    ``val_fraction > 0``) of ``np.random.default_rng(seed).permutation(N)``; both parts keep
    the original order of the images.

    Args:
        images: array ``(N, ...)``, e.g. uint8 ``(N, H, W, 3)``.
        labels: array ``(N,)``.
        val_fraction: fraction held out, in [0, 1).
        seed: fixes the split.

    Returns:
        ``((train_images, train_labels), (val_images, val_labels))``, copies.

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
