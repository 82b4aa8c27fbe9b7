"""CPU tuning, all in one place: memory reuse, BLAS threads, scratchvit's own threads.

Nothing here changes a result: every path computes the same numbers (up to the order of float
additions), only faster on a CPU with few cores. What is **process-wide** (it affects every
library in the process, PyTorch included, for as long as the process lives):

* :func:`keep_freed_memory` - glibc ``mallopt``: freed memory is kept for reuse instead of being
  handed back to the OS and page-faulted in again every step.
* ``OPENBLAS_THREAD_TIMEOUT=4`` - OpenBLAS's idle threads stop spinning soon after a product.
  An environment variable that OpenBLAS reads once, when it loads: :func:`configure` sets it
  (unless set) only while NumPy is not imported yet; later it can no longer take effect, which is
  why the training step holds OpenBLAS to one thread instead (next item), so that no OpenBLAS
  thread is left to spin while scratchvit's threads run.
* :func:`blas_threads` - the BLAS's thread count (OpenBLAS, MKL, BLIS, FlexiBLAS), changed through
  ``threadpoolctl`` for the
  duration of a ``with`` block: while a training step runs on scratchvit's threads (see
  :func:`split_batch`), and while attention's per-head products run.

and what is scratchvit's own: a pool of ``NUM_THREADS`` threads (``SCRATCHVIT_NUM_THREADS``,
default: all cores), on which :func:`split_batch` runs the shards of a training batch and
:func:`blockwise` runs element-wise chains block by block in the cache.

:func:`configure` applies the process-wide settings once (idempotent); ``ViT`` calls it when a CPU
model is built and the CLIs call it first thing, so the settings hold whatever was imported
first. Set ``SCRATCHVIT_NO_CPU_TUNING=1`` to opt out of all of it: no ``mallopt``, no change of
OpenBLAS's threads or environment, no batch split (element-wise blocks still use the pool).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from threadpoolctl import ThreadpoolController

OPT_OUT_ENV = "SCRATCHVIT_NO_CPU_TUNING"
NUM_THREADS = max(1, int(os.environ.get("SCRATCHVIT_NUM_THREADS", os.cpu_count() or 1)))
# Elements per array per block of an element-wise chain: 512 KiB of float32, so a block of each
# operand stays in the L2 cache while the whole chain runs on it.
BLOCK_ELEMENTS = 1 << 17
# OpenBLAS computes a product with M*N*K below 4 * 65536 on the calling thread (interface/gemm.c:
# SMP_THRESHOLD_MIN * GEMM_MULTITHREAD_THRESHOLD). Where OpenBLAS cannot be held to one thread
# (another BLAS), attention cuts its per-head products into row chunks below this size.
SMALL_PRODUCT = 4 * 65536

_configured: dict | None = None
_timeout_before_numpy = False
_controller = None  # None: not looked up yet; False: no BLAS threadpoolctl can steer; else the controller
_pool = None
_local = threading.local()  # .serial: this thread already runs a shard; no nested parallelism


def tuning_enabled() -> bool:
    """False when the environment variable ``SCRATCHVIT_NO_CPU_TUNING`` is set to a non-empty value
    other than "0"."""
    return os.environ.get(OPT_OUT_ENV, "") in ("", "0")


def configure() -> dict:
    """Apply the process-wide CPU settings once; later calls return the first call's record.

    Returns:
        dict: ``enabled`` (False under the opt-out), ``malloc`` (mallopt applied),
        ``openblas_thread_timeout`` (the variable was set before OpenBLAS loaded, so it holds),
        ``blas_thread_control`` (the BLAS's thread count can be changed at run time; None if NumPy
        is not loaded yet).
    """
    global _configured
    if _configured is not None:
        return _configured
    if not tuning_enabled():
        _configured = {"enabled": False, "malloc": False, "openblas_thread_timeout": False,
                       "blas_thread_control": False}
        return _configured
    timeout = set_openblas_env()
    _configured = {"enabled": True, "malloc": keep_freed_memory(), "openblas_thread_timeout": timeout,
                   "blas_thread_control": bool(blas_controller()) if "numpy" in sys.modules else None}
    return _configured


def set_openblas_env() -> bool:
    """Set ``OPENBLAS_THREAD_TIMEOUT=4`` (unless set, or tuning is off) while NumPy is not imported.

    Called on ``import scratchvit`` and by :func:`configure`. Returns True if it was set in time, by
    this call or an earlier one (NumPy not loaded yet), False if it is too late or tuning is off.
    """
    global _timeout_before_numpy
    if tuning_enabled() and "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
        _timeout_before_numpy = True
    return _timeout_before_numpy


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the OS.

    A training step allocates and frees the same large activation arrays every step. By default
    glibc serves arrays above a threshold with fresh ``mmap`` pages and returns freed heap tops to
    the OS, so every step page-faults its activations in again (measured: ~70,000 faults and a
    1.3-1.4x slower step for the small Fashion-MNIST ViT). This sets M_MMAP_THRESHOLD to its
    maximum (32 MiB), and M_TRIM_THRESHOLD and M_TOP_PAD high. Process-wide; see :func:`configure`.

    Returns:
        True if applied (Linux with glibc), False where there is no glibc ``mallopt``.
    """
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


def blas_controller():
    """The ``threadpoolctl.ThreadpoolController`` of the BLAS libraries NumPy loaded (OpenBLAS, MKL,
    BLIS, FlexiBLAS: whatever threadpoolctl knows), created once; None where tuning is switched off,
    NumPy is not imported yet (nothing to find; looked up again on the next call) or no BLAS that
    threadpoolctl can steer is loaded."""
    global _controller
    if not tuning_enabled() or "numpy" not in sys.modules:
        return None
    if _controller is None:
        found = ThreadpoolController().select(user_api="blas")
        _controller = found if found.lib_controllers else False
    return _controller or None


@contextlib.contextmanager
def blas_threads(n: int = 1):
    """Run the body with the BLAS on ``n`` threads; yields whether that could be done.

    Process-wide while it lasts (the BLAS has one thread count), through threadpoolctl
    (``controller.limit``, about 20 us a call). Yields False, changing nothing, where
    :func:`blas_controller` finds no BLAS to steer. Nested use is fine: the count is restored.
    """
    controller = blas_controller()
    if controller is None:
        yield False
        return
    if n == 1 and getattr(_local, "serial", False):  # a shard of split_batch: already held to one thread
        yield True
        return
    with controller.limit(limits=n, user_api="blas"):
        yield True


def single_threaded_blas():
    """``blas_threads(1)``: the BLAS on one thread while scratchvit's threads call it at once."""
    return blas_threads(1)


def _thread_pool():
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=NUM_THREADS, thread_name_prefix="scratchvit")
    return _pool


def _parallel() -> bool:
    return NUM_THREADS > 1 and not getattr(_local, "serial", False)


def _run_spread(fn, items):
    """[fn(item) for item in items], the items spread over the pool in NUM_THREADS contiguous runs."""
    per = -(-len(items) // NUM_THREADS)
    futures = [_thread_pool().submit(lambda c: [fn(i) for i in c], items[i:i + per])
               for i in range(per, len(items), per)]
    results = [fn(i) for i in items[:per]]
    for f in futures:
        results += f.result()
    return results


def blockwise(fn, *arrays):
    """Call ``fn(*blocks)`` on matching blocks of ``arrays`` along axis 0, in parallel on the CPU.

    NumPy runs each ufunc on one core over a whole array: a chain of k element-wise steps over an
    array larger than the cache reads and writes main memory k times. Here the chain runs block by
    block (each block in the L2 cache), the blocks spread over the pool (NumPy releases the GIL in
    ufuncs and BLAS). Inside a shard of :func:`split_batch` the blocks run in order on the calling
    thread. On CuPy it makes one whole-array call: the GPU has its own parallelism.

    Args:
        fn: takes one block (a view ``a[s:e]``) of each array, in order; writes its results into
            the blocks of output arrays passed among ``arrays``; may return a value.
        arrays: arrays with the same length along axis 0 (NumPy or CuPy), whose rows (entries along
            axis 0) are independent; a block holds about BLOCK_ELEMENTS elements of the widest.

    Returns:
        The list of ``fn``'s return values, one per block, in row order (one element on CuPy).
    """
    if type(arrays[0]).__module__ != "numpy":  # CuPy
        return [fn(*arrays)]
    rows = arrays[0].shape[0]
    width = max(a.size // max(rows, 1) for a in arrays)
    block = max(1, BLOCK_ELEMENTS // max(width, 1))
    starts = list(range(0, rows, block))
    if len(starts) == 1 or not _parallel():
        return [fn(*(a[s:s + block] for a in arrays)) for s in starts]
    return _run_spread(lambda s: fn(*(a[s:s + block] for a in arrays)), starts)


def split_batch(fn, batch: int, on_cpu: bool = True):
    """Run ``fn(start, stop)`` on contiguous shards of a batch of ``batch`` items, one per thread.

    The whole training step of each shard (forward and backward) runs on one of scratchvit's
    threads with the BLAS held to one thread (:func:`blas_threads`), instead of every op being
    spread over the threads on its own: far fewer hand-overs between threads, and no BLAS
    thread left spinning. Used only where that can be done: tuning on, a CPU array, a BLAS
    threadpoolctl can steer, more than one thread and at least one item per thread; otherwise one call
    ``fn(0, batch)``.

    Returns:
        The list of ``fn``'s return values, one per shard, in batch order.
    """
    shards = min(NUM_THREADS, batch)
    if not on_cpu or shards < 2 or not _parallel() or not blas_controller():
        return [fn(0, batch)]
    bounds = [batch * i // shards for i in range(shards + 1)]

    def run(i):
        _local.serial = True
        try:
            return fn(bounds[i], bounds[i + 1])
        finally:
            _local.serial = False

    with blas_threads(1):
        futures = [_thread_pool().submit(run, i) for i in range(1, shards)]
        results = [run(0)]
        results += [f.result() for f in futures]
    return results
