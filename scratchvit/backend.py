"""Array-module selection (NumPy on the CPU, CuPy on the GPU), device moves and dtype policy.

Every op asks its inputs for their module with :func:`get_xp`, so one piece of code
runs on NumPy and CuPy arrays alike. Nothing here imports CuPy unless the GPU is asked for.
"""
from __future__ import annotations

import contextlib
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


# ----------------------------------------------------------------------------- CPU memory
def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the OS.

    A training step allocates and frees the same large activation arrays every step. By default
    glibc serves arrays above a threshold with fresh ``mmap`` pages and returns freed heap tops to
    the OS, so every step page-faults its activations in again (measured here: ~70,000 faults and
    a 1.3-1.4x slower step for the small Fashion-MNIST ViT). This sets M_MMAP_THRESHOLD to its
    maximum (32 MiB), and M_TRIM_THRESHOLD and M_TOP_PAD high: memory is reused, never faulted
    in twice. Process-wide; called by the training and benchmark entry points, never on import.

    Returns:
        True if applied (Linux with glibc), False where there is no glibc ``mallopt``.
    """
    import ctypes  # noqa: PLC0415
    import ctypes.util  # noqa: PLC0415

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    ok = mallopt(M_MMAP_THRESHOLD, 32 << 20)
    ok &= mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1)
    ok &= mallopt(M_TOP_PAD, 64 << 20)
    return bool(ok)


# ----------------------------------------------------------------------------- BLAS threads
_blas_thread_fns = None


def _find_blas_thread_fns():
    """(get, set) of the loaded OpenBLAS's thread count, through ctypes, or None where unknown."""
    import ctypes  # noqa: PLC0415
    import re  # noqa: PLC0415

    try:
        with open("/proc/self/maps") as f:
            libs = sorted({m for m in re.findall(r"(/\S+\.so\S*)", f.read()) if "openblas" in m.lower()})
    except OSError:  # not Linux
        return None
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("openblas", ""), ("scipy_openblas", "64_"), ("openblas", "64_")):
            get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                put.argtypes = [ctypes.c_int]
                return get, put
    return None


@contextlib.contextmanager
def single_threaded_blas():
    """Run the body with OpenBLAS on one thread; yields whether that could be done.

    Used where scratchvit's own threads call BLAS at once on many small products (attention's
    per-head products): OpenBLAS's thread pool and ours would otherwise fight over the cores.
    Process-wide while it lasts. Yields False (and changes nothing) where the BLAS is not an
    OpenBLAS found through ctypes (other BLAS builds, non-Linux).
    """
    global _blas_thread_fns
    if _blas_thread_fns is None:
        _blas_thread_fns = _find_blas_thread_fns() or False
    if not _blas_thread_fns:
        yield False
        return
    get, put = _blas_thread_fns
    before = get()
    put(1)
    try:
        yield True
    finally:
        put(before)


# ----------------------------------------------------------------------------- CPU element-wise work
# NumPy runs each ufunc on one core, one whole array at a time: a chain of k element-wise steps over
# an array larger than the cache reads and writes main memory k times. ``blockwise`` runs such a
# chain block by block (a block small enough to stay in the L2 cache while the whole chain runs on
# it), spreading the blocks over a few threads (NumPy releases the GIL inside ufuncs). On CuPy it
# makes one whole-array call: the GPU has its own parallelism.
BLOCK_ELEMENTS = 1 << 17  # elements per array per block: 512 KiB of float32
NUM_THREADS = max(1, int(os.environ.get("SCRATCHVIT_NUM_THREADS", os.cpu_count() or 1)))
_pool = None


def _thread_pool():
    global _pool
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

        _pool = ThreadPoolExecutor(max_workers=NUM_THREADS, thread_name_prefix="scratchvit")
    return _pool


def blockwise(fn, *arrays, parallel: bool = True):
    """Call ``fn(*blocks)`` on matching blocks of ``arrays`` along axis 0, in parallel on the CPU.

    Args:
        fn: takes one block (a view ``a[s:e]``) of each array, in order; writes its results into
            the blocks of output arrays passed among ``arrays``; may return a value.
        arrays: arrays with the same length along axis 0 (NumPy or CuPy), whose rows (entries along
            axis 0) are independent; a block holds about BLOCK_ELEMENTS elements of the widest.
        parallel: spread the blocks over NUM_THREADS threads. Pass False when ``fn`` calls BLAS,
            which has threads of its own (two thread pools on the same cores slow each other down).

    Returns:
        The list of ``fn``'s return values, one per block, in row order (one element on CuPy).
    """
    rows = arrays[0].shape[0]
    if get_xp(arrays[0]) is not np:
        return [fn(*arrays)]
    width = max(a.size // max(rows, 1) for a in arrays)
    block = max(1, BLOCK_ELEMENTS // max(width, 1))
    starts = list(range(0, rows, block))
    if len(starts) == 1 or NUM_THREADS == 1 or not parallel:
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
