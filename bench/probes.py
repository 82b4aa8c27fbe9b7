"""Measurements of the machine and the process for the benchmarks: matmul peak, BLAS threads,
device synchronisation, resident-set high-water mark, the memory probe of one runner.

Standard library at import time; NumPy, CuPy and PyTorch are imported inside the functions.
"""
from __future__ import annotations

import os
import sys
import time


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def current_rss_bytes() -> int:
    kib = _proc_status_kib("VmRSS")
    return kib * 1024 if kib is not None else 0


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark of this process (Linux >= 4.0); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set of this process: VmHWM (Linux), else getrusage ru_maxrss.

    VmHWM belongs to the process's own address space; ru_maxrss on Linux also carries the
    parent's resident set over fork+exec, which would charge the parent's memory to a probe.
    """
    kib = _proc_status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # Linux reports KiB, macOS bytes


def blas_threads() -> str:
    """Thread-pool sizes (BLAS, OpenMP) as threadpoolctl (a scratchvit dependency) reports them, else what
    the environment says (no BLAS loaded yet)."""
    from threadpoolctl import threadpool_info

    info = [f"{d.get('internal_api')}={d.get('num_threads')}" for d in threadpool_info()]
    if info:
        return ", ".join(info)
    env = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    return f"{env} (from env)" if env else f"library default ({os.cpu_count()} cores)"


def measure_matmul_peak(dtype: str = "float32", n: int = 2048, repeats: int = 10, device: str = "cpu") -> dict:
    """Best-of-``repeats`` GFLOP/s of an n x n x n matmul in NumPy (CuPy on the GPU) and PyTorch if imported."""
    import numpy as np

    flop = 2 * n ** 3
    out = {"n": n, "dtype": dtype, "repeats": repeats}
    if device == "gpu":
        import cupy as cp

        a = cp.random.standard_normal((n, n), dtype=np.float32).astype(dtype)
        c = cp.matmul(a, a)
        cp.cuda.Device().synchronize()
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            cp.matmul(a, a, out=c)
            cp.cuda.Device().synchronize()
            best = min(best, time.perf_counter() - t)
        out["scratchvit_backend_gflops"] = flop / best / 1e9
    else:
        a = np.random.default_rng(0).standard_normal((n, n)).astype(dtype)
        c = np.empty_like(a)
        np.matmul(a, a, out=c)
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            np.matmul(a, a, out=c)
            best = min(best, time.perf_counter() - t)
        out["scratchvit_backend_gflops"] = flop / best / 1e9
    if "torch" in sys.modules:
        import torch

        dev = "cuda" if device == "gpu" else "cpu"
        at = torch.randn(n, n, dtype=getattr(torch, dtype), device=dev)
        ct = torch.mm(at, at)
        best = float("inf")
        for _ in range(repeats):
            sync(device)
            t = time.perf_counter()
            torch.mm(at, at, out=ct)
            sync(device)
            best = min(best, time.perf_counter() - t)
        out["torch_gflops"] = flop / best / 1e9
    out["peak_gflops"] = max(out["scratchvit_backend_gflops"], out.get("torch_gflops", 0.0))
    return out


def best_seconds(fn, repeats: int) -> float:
    """The shortest of ``repeats`` timed calls of ``fn()`` (after one untimed warm-up call), seconds."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def sync(device: str) -> None:
    """Wait for the GPU (CuPy and PyTorch) to finish; nothing on the CPU."""
    if device != "gpu":
        return
    if "cupy" in sys.modules:
        sys.modules["cupy"].cuda.Device().synchronize()
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        sys.modules["torch"].cuda.synchronize()


def memory_probe(runner, device: str) -> dict:
    """Peak resident set over a runner's first two steps, its increase over the resident set before,
    and (scratchvit on the CPU) the peak of live NumPy arrays during a third step (tracemalloc)."""
    out = {"rss_before_bytes": current_rss_bytes(), "peak_reset": reset_peak_rss()}
    runner.step()
    runner.step()
    out["peak_rss_bytes"] = peak_rss_bytes()
    out["rss_increase_bytes"] = out["peak_rss_bytes"] - out["rss_before_bytes"]
    if runner.name == "scratchvit" and device == "cpu":
        import tracemalloc

        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        runner.step()
        out["tracemalloc_step_peak_bytes"] = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
    elif device == "gpu" and runner.name == "scratchvit":
        import cupy as cp

        out["gpu_pool_total_bytes"] = cp.get_default_memory_pool().total_bytes()
    elif device == "gpu":
        out["gpu_max_allocated_bytes"] = runner.torch.cuda.max_memory_allocated()
    return out
