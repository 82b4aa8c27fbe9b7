"""Array-module selection (NumPy on the CPU, CuPy on the GPU), device moves and dtype policy.

Every op asks its inputs for their module with :func:`get_xp`, so one piece of code
runs on NumPy and CuPy arrays alike. Nothing here imports CuPy unless the GPU is asked for.
"""
from __future__ import annotations

import os

import numpy as np

DEVICES = ("cpu", "gpu")
DTYPES = ("float32", "float64")


def get_xp(*arrays):
    """Return the array module (``numpy`` or ``cupy``) that owns ``arrays``.

    Uses the array-API ``__array_namespace__`` protocol where an array offers it,
    so CuPy arrays give ``cupy`` without this module importing CuPy.
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
    """Copy ``array`` to ``device`` ("cpu" or "gpu"), optionally casting to ``dtype``.

    Returns the input itself when it already lives there with that dtype.
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


# ----------------------------------------------------------------------------- CPU element-wise work
# NumPy runs each ufunc on one core, one whole array at a time: a chain of k element-wise steps over
# an array larger than the cache reads and writes main memory k times. ``blockwise`` runs such a
# chain block by block (a block small enough to stay in the L2 cache while the whole chain runs on
# it), spreading the blocks over a few threads (NumPy releases the GIL inside ufuncs). On CuPy it
# makes one whole-array call: the GPU has its own parallelism.
BLOCK_ELEMENTS = 1 << 14  # elements per array per block: 64 KiB of float32
NUM_THREADS = max(1, int(os.environ.get("SCRATCHVIT_NUM_THREADS", os.cpu_count() or 1)))
_pool = None


def _thread_pool():
    global _pool
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

        _pool = ThreadPoolExecutor(max_workers=NUM_THREADS, thread_name_prefix="scratchvit")
    return _pool


def blockwise(fn, *arrays):
    """Call ``fn(*blocks)`` on matching row blocks of 2-D ``arrays``, in parallel on the CPU.

    Args:
        fn: takes one row block (a view) of each array, in order; writes its results into the
            blocks of output arrays passed among ``arrays``; may return a value.
        arrays: 2-D arrays with the same number of rows (NumPy or CuPy). Rows are independent.

    Returns:
        The list of ``fn``'s return values, one per block, in row order (one element on CuPy).
    """
    rows = arrays[0].shape[0]
    if get_xp(arrays[0]) is not np:
        return [fn(*arrays)]
    width = max(a.shape[1] for a in arrays)
    block = max(1, BLOCK_ELEMENTS // max(width, 1))
    starts = list(range(0, rows, block))
    if len(starts) == 1 or NUM_THREADS == 1:
        return [fn(*(a[s:s + block] for a in arrays)) for s in starts]
    # One task per thread, each a contiguous run of blocks, so the pool is woken only NUM_THREADS times.
    per = -(-len(starts) // NUM_THREADS)

    def run(chunk):
        return [fn(*(a[s:s + block] for a in arrays)) for s in chunk]

    futures = [_thread_pool().submit(run, starts[i:i + per]) for i in range(per, len(starts), per)]
    results = run(starts[:per])
    for f in futures:
        results += f.result()
    return results
