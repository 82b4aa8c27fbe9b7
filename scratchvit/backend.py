"""Array-module selection (NumPy on the CPU, CuPy on the GPU), device moves and dtype policy.

Every op asks its inputs for their module with :func:`get_xp`, so one piece of code
runs on NumPy and CuPy arrays alike. Nothing here imports CuPy unless the GPU is asked for.
CPU tuning (threads, BLAS, malloc) lives in :mod:`scratchvit.cpu`.
"""
from __future__ import annotations

import numpy as np

DEVICES = ("cpu", "gpu")
DTYPES = ("float32", "float64")


def get_xp(*arrays):
    """Return the array module (``numpy`` or ``cupy``) that owns ``arrays``.

    Looks at the module that defines each array's type: an array whose type comes from a
    ``cupy`` module gives ``cupy`` (imported only then); anything else gives ``numpy``.
    """
    for a in arrays:
        mod = type(a).__module__
        if mod.startswith("cupy"):
            import cupy  # noqa: PLC0415  (only reached when a CuPy array exists)

            return cupy
    return np


def check_dtype(dtype) -> np.dtype:
    """Validate a floating dtype name ("float32" or "float64"); return it as ``np.dtype``.

    Raises:
        ValueError: for any other dtype.
    """
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return np.dtype(name)


def cupy_or_error():
    """Import and return CuPy, or raise a RuntimeError that says how to get a GPU backend.

    Raises:
        RuntimeError: CuPy is not installed, or no CUDA GPU is visible to it.
    """
    try:
        import cupy  # noqa: PLC0415
    except ImportError as e:
        raise RuntimeError(
            "--device gpu needs CuPy, which is not installed. Install the GPU extra, "
            "e.g. `pip install -e \".[gpu]\"` (CuPy for CUDA 12), on a machine with an NVIDIA GPU."
        ) from e
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDA driver missing or broken
        raise RuntimeError(f"--device gpu: CuPy is installed but no CUDA GPU is usable ({e}).") from e
    if n < 1:
        raise RuntimeError("--device gpu: CuPy is installed but no CUDA GPU was found.")
    return cupy


def module_for(device: str):
    """Return the array module for ``device`` ("cpu" -> numpy, "gpu" -> cupy).

    Raises:
        ValueError: unknown device name.
        RuntimeError: "gpu" asked for without CuPy or a GPU (see :func:`cupy_or_error`).
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    return np if device == "cpu" else cupy_or_error()


def to_device(array, device: str, dtype=None):
    """Copy ``array`` (NumPy or CuPy, any shape) to ``device`` ("cpu" or "gpu"), optionally casting to ``dtype``.

    Returns the input itself, not a copy, when it already lives there with that dtype: writing to
    the result then writes to the caller's array.

    Raises:
        ValueError: unknown ``device``. RuntimeError: ``device="gpu"`` without CuPy or a GPU.
    """
    xp = module_for(device)
    if device == "cpu":
        if get_xp(array) is not np:
            array = array.get()
        return np.asarray(array, dtype=dtype)
    return xp.asarray(array, dtype=dtype)


def to_numpy(array) -> np.ndarray:
    """Return ``array`` as a NumPy array (a device-to-host copy for CuPy arrays)."""
    if get_xp(array) is not np:
        return array.get()
    return np.asarray(array)
