"""CIFAR-10 and CIFAR-100 from the official python archives (Krizhevsky 2009).

The archive is read in place (no extraction needed) or from its extracted folder. Each batch is a
pickled dict whose ``b"data"`` rows hold 1024 red, then 1024 green, then 1024 blue bytes (32x32
planes, row-major); CIFAR-100 uses its 100 fine labels.
"""
from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np

from .sources import Unavailable, cache_dir, download_all, first_source

CIFAR = {
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


def _unpickle(f, where: str):
    try:
        return pickle.load(f, encoding="bytes")
    except MemoryError:
        raise
    except Exception as e:
        raise ValueError(f"{where}: not a CIFAR python pickle ({type(e).__name__}: {e})") from e


def read_cifar_pickles(source: Path, spec: dict) -> dict:
    """Unpickle the batches and meta file of a CIFAR archive (read in place) or extracted folder.

    Returns:
        ``{member name: unpickled object}`` for the train, test and meta members.

    Raises:
        FileNotFoundError: an extracted folder lacks a member.
        ValueError: a corrupt or truncated archive, a member that is not a pickle, or an archive
            without the official members.
    """
    names = spec["train"] + spec["test"] + [spec["meta"]]
    out = {}
    if source.is_dir():
        for n in names:
            path = source / n
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: {source} is not a complete {spec['folder']} "
                                        f"folder (extract {spec['archive']} again, or use the archive itself)")
            with open(path, "rb") as f:
                out[n] = _unpickle(f, str(path))
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


def cifar_arrays(batch, label_key: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One unpickled batch -> uint8 images ``(N, 32, 32, 3)`` (HWC, RGB) and int64 labels ``(N,)``.

    Raises:
        ValueError: not a dict with ``b"data"`` uint8 ``(N, 3072)`` and N labels under ``label_key``.
    """
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"{where}: expected a dict with keys b'data' and {label_key!r}, got {keys}")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
        raise ValueError(f"{where}: expected uint8 data (N, 3072) and N labels, got data {data.dtype} "
                         f"{data.shape} and labels {labels.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _find_in(d: Path, spec: dict) -> Path:
    """The archive or extracted folder in ``d`` (``d`` may be the extracted folder itself)."""
    if (d / spec["archive"]).is_file():
        return d / spec["archive"]
    if (d / spec["folder"]).is_dir():
        return d / spec["folder"]
    if d.name == spec["folder"] and (d / spec["meta"]).is_file():
        return d
    raise Unavailable(f"neither {spec['archive']} nor {spec['folder']}/ there")


def load_cifar(name: str, data_dir: Path | None, download: bool, log=None):
    """CIFAR-10/100 as ``(train_x, train_y, test_x, test_y, class_names)``: images uint8 (N, 32, 32, 3),
    labels int64 (N,); the sources, arguments and errors are those of ``load_dataset``."""
    spec = CIFAR[name]
    cache = cache_dir()
    attempts = [] if data_dir is None else [(f"data_dir {data_dir}", lambda: _find_in(data_dir, spec), False)]
    attempts += [(f"the cache {cache}", lambda: _find_in(cache, spec), False),
                 (f"the download {spec['url']} into {cache}",
                  lambda: download_all([(spec["url"], cache / spec["archive"], spec["md5"])])[0], True)]
    source = first_source(name, attempts, log, download,
                          f"Download {spec['url']} by hand and put it in {cache}, "
                          f"or pass data_dir= a folder that holds it.")
    batches = read_cifar_pickles(source, spec)

    def split(names):
        parts = [cifar_arrays(batches[n], spec["label_key"], f"{source}: {n}") for n in names]
        return (np.ascontiguousarray(np.concatenate([p[0] for p in parts])),
                np.concatenate([p[1] for p in parts]))

    meta = batches[spec["meta"]]
    if not isinstance(meta, dict) or spec["names_key"] not in meta:
        raise ValueError(f"{source}: {spec['meta']} lacks the key {spec['names_key']!r}")
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[spec["names_key"]]]
    return (*split(spec["train"]), *split(spec["test"]), class_names)
