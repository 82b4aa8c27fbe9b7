"""Where dataset files come from: the cache folder, MD5-checked downloads, Debian packages, and
the ordered chain of sources that :func:`first_source` tries.

Every step that writes into the cache writes a temporary file beside its destination and renames
it (atomic on one file system), so an interrupted step never leaves a partial file behind.
Tests replace the module-level ``_urlopen`` to serve bytes without a network.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from platformdirs import user_cache_dir
from tqdm import tqdm

from ..files import write_atomic

_urlopen = urllib.request.urlopen  # replaced in tests: called as _urlopen(url, timeout=seconds)


class Unavailable(Exception):
    """A source does not hold the files; the message says why (collected into the final error)."""


def default_log(message: str) -> None:
    """The default progress line: ``message`` on stderr."""
    print(message, file=sys.stderr, flush=True)


_SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the repository root, for a source checkout


def cache_dir() -> Path:
    """The download cache: ``$SCRATCHVIT_DATA`` if set; else ``data/`` at the repository root for a
    source checkout (``pip install -e .``); else, for an installed package (whose parent folder is
    site-packages), the platform's user cache folder from ``platformdirs.user_cache_dir("scratchvit")``
    (``$XDG_CACHE_HOME/scratchvit`` or ``~/.cache/scratchvit`` on Linux, ``~/Library/Caches/scratchvit``
    on macOS, ``%LOCALAPPDATA%\\scratchvit\\Cache`` on Windows)."""
    env = os.environ.get("SCRATCHVIT_DATA")
    if env:
        return Path(env).expanduser()
    if (_SOURCE_ROOT / "setup.cfg").is_file():
        return _SOURCE_ROOT / "data"
    return Path(user_cache_dir("scratchvit", appauthor=False))


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

    def fetch(f):  # raising here leaves nothing at dest (write_atomic removes the temporary file)
        h = hashlib.md5()
        with _urlopen(url, timeout=timeout) as response:
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

    write_atomic(dest, fetch)
    return dest


def download_all(files: list[tuple[str, Path, str | None]]) -> list[Path]:
    """Download each ``(url, dest, md5)`` with :func:`download_url`, skipping dests already present.

    Raises:
        Unavailable: the network failed (the message names the URL and the error).
        ValueError: an MD5 mismatch (a corrupt or changed file is never skipped silently).
    """
    out = []
    for url, dest, md5 in files:
        if not dest.is_file():
            try:
                download_url(url, dest, md5)
            except (OSError, http.client.HTTPException) as e:
                raise Unavailable(f"{url} failed ({type(e).__name__}: {e})") from e
        out.append(dest)
    return out


def copy_atomic(src: Path, dest: Path) -> Path:
    """Copy ``src`` to ``dest`` atomically (:func:`scratchvit.files.write_atomic`); returns ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as f_src:
        write_atomic(dest, lambda f: shutil.copyfileobj(f_src, f))
    return dest


def apt_package_files(package: str, member_dir: str, names: list[str], dest_dir: Path,
                      timeout: float = 600.0) -> list[Path]:
    """Fetch Debian package ``package`` with ``apt-get download`` and copy some of its files to ``dest_dir``.

    Runs ``apt-get download PACKAGE`` in a temporary folder (no root needed where the package
    lists are present), unpacks the ``.deb`` with ``dpkg-deb -x`` into another temporary folder,
    and copies ``member_dir/<name>`` for each of ``names`` into ``dest_dir`` atomically. Nothing
    is installed; the temporary folders are removed.

    Args:
        package: Debian package name, e.g. ``"dataset-fashion-mnist"``.
        member_dir: folder inside the package, e.g. ``"usr/share/datasets/fashion-mnist"``.
        names: file names to copy from ``member_dir``.
        dest_dir: where they go (created).
        timeout: seconds allowed for each of the two commands.

    Returns:
        The copied files, in the order of ``names``.

    Raises:
        Unavailable: no ``apt-get``/``dpkg-deb`` on PATH, either command failed or timed out, or
            the package lacks a file; the message says which.
    """
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise Unavailable(f"no {tool} on PATH (not a Debian/Ubuntu system)")
    with tempfile.TemporaryDirectory(prefix="scratchvit-apt-") as tmp:
        tmp = Path(tmp)
        (tmp / "deb").mkdir()

        def run(cmd, cwd):
            try:
                r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise Unavailable(f"`{' '.join(cmd)}` failed ({type(e).__name__}: {e})") from e
            if r.returncode != 0:
                last = (r.stderr.strip() or r.stdout.strip()).splitlines()[-1:] or ["no output"]
                raise Unavailable(f"`{' '.join(cmd)}` exited with {r.returncode}: {last[0]}")

        run(["apt-get", "download", package], tmp / "deb")
        debs = sorted((tmp / "deb").glob("*.deb"))
        if not debs:
            raise Unavailable(f"`apt-get download {package}` wrote no .deb file")
        run(["dpkg-deb", "-x", str(debs[0]), str(tmp / "root")], tmp)
        src_dir = tmp / "root" / member_dir
        missing = [n for n in names if not (src_dir / n).is_file()]
        if missing:
            raise Unavailable(f"{debs[0].name} lacks {member_dir}/{missing[0]}")
        return [copy_atomic(src_dir / n, Path(dest_dir) / n) for n in names]


def first_source(dataset: str, attempts: list, log=None, download: bool = True, advice: str = ""):
    """Try ``attempts`` in order and return the first result; one error naming all of them if none works.

    Args:
        dataset: the dataset's name, for messages.
        attempts: ``(label, fn, is_download)`` triples; ``fn()`` returns a result or raises
            :class:`Unavailable` with the reason. Download steps are skipped when ``download`` is
            false. ``label`` describes the source, e.g. ``"the system copy /usr/share/..."``.
        log: callable taking one progress line (default: print to stderr), told which source is used.
        download: whether download steps may run.
        advice: a sentence appended to the final error (what the user can do).

    Returns:
        The result of the first ``fn`` that succeeds.

    Raises:
        RuntimeError: every source failed (the message lists each source and why, in order).
        FileNotFoundError: every source failed and ``download`` is false (same message).
        ValueError: passed through from a source that found corrupt files (e.g. an MD5 mismatch).
    """
    log = default_log if log is None else log
    reasons = []
    for label, fn, is_download in attempts:
        if is_download and not download:
            reasons.append(f"{label}: skipped (download=False)")
            continue
        if is_download:
            log(f"{dataset}: trying {label}")
        try:
            result = fn()
        except Unavailable as e:
            reasons.append(f"{label}: {e}")
            continue
        log(f"{dataset}: using {label}")
        return result
    tried = "; ".join(f"({i}) {r}" for i, r in enumerate(reasons, 1))
    msg = f"{dataset}: no source has the files. Tried, in order: {tried}. {advice}".rstrip()
    raise (RuntimeError if download else FileNotFoundError)(msg)
