"""Atomic file writes: the one way the package creates or replaces a file (checkpoints, run files,
dataset downloads, PNGs). A crash or an error leaves either the old file or the new one, never half a file.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path, write) -> None:
    """Create or replace the file ``path`` atomically: ``write(f)`` fills a temporary file (binary)
    in the same folder, which is flushed to disk, given the usual permissions (0666 less the umask)
    and renamed over ``path``. A crash leaves either the old file or the new one, never half a file.

    Raises:
        OSError: the folder is missing or not writable; whatever ``write`` raises (no file is left).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`write_atomic`).

    Raises:
        OSError: the folder is missing or not writable.
    """
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))
