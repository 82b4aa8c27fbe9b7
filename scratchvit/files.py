"""Atomic file writes: the one way the package creates or replaces a file (checkpoints, run files,
dataset downloads, PNGs). A crash or an error leaves either the old file or the new one, never half a file.

A write that the system refuses (a full disk, a quota, a read-only or missing folder, no permission)
raises :class:`WriteError`: one line naming the file and why, with the space it needs when the disk
is full, which the command lines print as such (no traceback).
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# What the file system answers a write it refuses (a network error inside ``write``, as a reset
# connection while downloading, is not one of these and passes through unchanged).
REFUSED = NO_SPACE + (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.EISDIR,
                      errno.EFBIG, errno.EIO, errno.ENAMETOOLONG)


class WriteError(OSError):
    """A file could not be written; the message names it and why (for a full disk: the space it needs
    and the space left). The old file, if any, is left whole. ``str()`` is the message alone, without
    OSError's "[Errno N]" prefix; ``errno`` is the system's."""

    def __str__(self) -> str:
        return str(self.strerror)


def describe_size(n: float) -> str:
    """``n`` bytes in the unit that reads best: "812 B", "3.4 MB", "1.2 GB" (powers of 1000)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def write_error(path: Path, e: OSError, size: int | None = None) -> WriteError:
    """The :class:`WriteError` for an OSError ``e`` met while writing ``path`` (``size``: the bytes the
    file needs, if known)."""
    if e.errno in NO_SPACE:
        try:
            free = describe_size(shutil.disk_usage(path.parent).free)
        except OSError:
            free = "unknown"
        need = f"it needs about {describe_size(size)}, " if size is not None else ""
        return WriteError(e.errno, f"cannot write {path}: no space left on the device ({need}{free} free in "
                                   f"{path.parent})")
    return WriteError(e.errno, f"cannot write {path}: {e.strerror or e}")


def write_atomic(path, write, size: int | None = None) -> None:
    """Create or replace the file ``path`` atomically: ``write(f)`` fills a temporary file (binary)
    in the same folder, which is flushed to disk, given the usual permissions (0666 less the umask)
    and renamed over ``path``. A crash leaves either the old file or the new one, never half a file.

    Args:
        size: the bytes the file will take, if known: named in the error when the disk is full
            (otherwise the bytes written before the write failed are named, a lower bound).

    Raises:
        WriteError: the system refused the write (full disk, missing or read-only folder, no
            permission): one line naming ``path`` (no file is left). Whatever else ``write`` raises
            passes through (no file is left either).
    """
    path = Path(path)
    tmp, written = None, 0
    try:
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            try:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            finally:
                with contextlib.suppress(OSError, ValueError):
                    written = f.tell()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError) and e.errno in REFUSED:
            raise write_error(path, e, size if size is not None else (written or None)) from e
        raise


def write_text_atomic(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`write_atomic`).

    Raises:
        WriteError: the file cannot be written (named, with the reason).
    """
    data = text.encode("utf-8")
    write_atomic(path, lambda f: f.write(data), size=len(data))
