#!/usr/bin/env python
"""Time one scratchvit training step and its parts, optionally beside the same step in PyTorch.

    python bench/train_step.py                                   # ViT-Ti_16, 224 px, batch 32, CPU
    python bench/train_step.py --compare torch --steps 10
    python bench/train_step.py --image-size 28 --patch-size 4 --hidden-size 64 --num-layers 4 \\
        --num-heads 4 --mlp-dim 128 --num-classes 10 --batch-size 128 --compare torch
    python bench/train_step.py --threads 1 --profile               # + cProfile of scratchvit's step

A *training step* is what ``python -m scratchvit.train`` does per batch: forward and backward
(``model.loss_and_grads``), gradient clipping at global norm 1.0, and an SGD-with-momentum update.
The PyTorch step is the idiomatic equivalent: ``zero_grad``, forward, ``cross_entropy``,
``backward``, ``clip_grad_norm_(1.0)``, ``torch.optim.SGD(momentum=0.9).step()``, on a model
built from the *same* parameters (bench/torch_reference.py) and fed the *same* batch.

Method (see bench/README.md):
* timing: ``time.perf_counter`` around each step (with a device synchronisation on the GPU),
  ``--warmup`` untimed steps, then ``--steps`` timed ones; scratchvit and PyTorch steps are
  interleaved (alternating which goes first) so machine noise hits both, with a ``--pause``
  (0.2 s) before each so one library's spinning worker threads do not eat the other's cores. Reported: median,
  min, max and interquartile range; images/s = batch / median step time.
* parts: measured in a second interleaved pass: training forward (keeping what the backward
  needs), backward (from the loss), and the update (clip + SGD); plus an inference forward.
* FLOPs: scratchvit/flops.py, 2 FLOPs per multiply-add of every matmul, elementwise work not
  counted, a training step = 3 x forward. GFLOP/s = counted FLOPs / median time.
* peak: the best of a few 2048^3 float32 ``np.matmul`` calls (and ``torch.mm``) with the
  same threads; the share of peak is GFLOP/s / that figure.
* memory: each framework's step runs in its own subprocess (only its own framework imported);
  reported is the peak resident set over its first two steps (Linux ``VmHWM``, reset just
  before the first step via /proc/self/clear_refs) and its increase over the resident set
  just before the first step, and for scratchvit also the peak of live NumPy
  arrays during one step (``tracemalloc``; NumPy reports its allocations to it).

Threads: ``--threads N`` sets OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / MKL_NUM_THREADS (and
SCRATCHVIT_NUM_THREADS, scratchvit's pool for blockwise elementwise work) before NumPy is
imported (this script imports NumPy only after parsing its arguments) and calls
``torch.set_num_threads(N)``. Without it all libraries use their defaults (all cores).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
              "NUMEXPR_NUM_THREADS", "SCRATCHVIT_NUM_THREADS")  # the last: scratchvit's elementwise thread pool


# ----------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed steps per framework (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--compare", choices=["torch"], default=None, help="also time the same step in PyTorch")
    p.add_argument("--torch-compile", action="store_true",
                   help="with --compare torch: also time a torch.compile'd model (skipped if it fails)")
    p.add_argument("--torch-sdpa", action="store_true",
                   help="PyTorch attention via F.scaled_dot_product_attention (default: explicit softmax(QK^T)V)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--no-parts", action="store_true", help="skip the forward/backward/update breakdown pass")
    p.add_argument("--profile", nargs="?", const=25, type=int, metavar="N",
                   help="after timing, cProfile scratchvit's step and print the top N lines by tottime (25)")
    p.add_argument("--json", metavar="FILE", help="write all results to FILE as JSON")
    p.add_argument("--pause", type=float, default=0.2,
                   help="seconds of sleep before each timed call, so one library's spinning worker threads "
                        "do not slow the other's next step (default 0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--_probe", choices=["scratchvit", "torch"], help=argparse.SUPPRESS)
    return p


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="ViT-Ti_16", help="a name from scratchvit.configs.MODELS (default ViT-Ti_16)")
    for flag in ("image-size", "patch-size", "hidden-size", "num-layers", "num-heads", "mlp-dim"):
        p.add_argument(f"--{flag}", type=int, default=None)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for BLAS (NumPy) and PyTorch; default: the libraries' own (all cores)")


def set_thread_env(threads: int | None) -> None:
    """Must run before NumPy is imported for OpenBLAS to honour it."""
    if threads is None:
        return
    if "numpy" in sys.modules:
        print("warning: NumPy was imported before --threads was applied; OpenBLAS keeps its default",
              file=sys.stderr)
    for k in THREAD_ENV:
        os.environ[k] = str(threads)


def make_config(args):
    import scratchvit as sv

    return sv.get_config(args.model, image_size=args.image_size, patch_size=args.patch_size,
                         hidden_size=args.hidden_size, num_layers=args.num_layers, num_heads=args.num_heads,
                         mlp_dim=args.mlp_dim, num_classes=args.num_classes)


# ------------------------------------------------------------------------------------ helpers
def summarize(times: list[float]) -> dict:
    """Median, min, max and interquartile range of a list of seconds, in milliseconds."""
    ms = sorted(t * 1e3 for t in times)
    if not ms:
        return {}
    if len(ms) >= 4:
        q = statistics.quantiles(ms, n=4)
        q1, q3 = q[0], q[2]
    else:
        q1, q3 = ms[0], ms[-1]
    return {"median_ms": statistics.median(ms), "min_ms": ms[0], "max_ms": ms[-1], "q1_ms": q1, "q3_ms": q3,
            "n": len(ms)}


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
    try:
        from threadpoolctl import threadpool_info  # optional

        info = [f"{d.get('internal_api')}={d.get('num_threads')}" for d in threadpool_info()]
        if info:
            return ", ".join(info)
    except Exception:
        pass
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


def sync(device: str) -> None:
    if device != "gpu":
        return
    if "cupy" in sys.modules:
        sys.modules["cupy"].cuda.Device().synchronize()
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        sys.modules["torch"].cuda.synchronize()


def make_batch(cfg, batch: int, dtype: str, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.uniform(-1.0, 1.0, size=(batch, cfg.image_size, cfg.image_size, 3)).astype(dtype)
    labels = rng.integers(0, cfg.num_classes, size=(batch,)).astype(np.int64)
    return images, labels


def bench_params(cfg, seed: int = 0) -> dict:
    """scratchvit's initial parameters, but with a random head instead of the official zeros.

    A zero head (the fine-tuning convention) makes every logit 0 and every backbone gradient 0
    on the first step, which would make the logits/gradients agreement check vacuous.
    """
    import numpy as np

    from scratchvit.model import init_params

    params = init_params(cfg, seed)
    k = params["head/kernel"]
    params["head/kernel"] = (np.random.default_rng(seed + 1).standard_normal(k.shape)
                             / np.sqrt(k.shape[0])).astype(k.dtype)
    return params


# ------------------------------------------------------------------------------------ runners
class ScratchRunner:
    """scratchvit: model.loss_and_grads, optim.clip_by_global_norm(1.0), optim.SGD(momentum=0.9)."""

    name = "scratchvit"

    def __init__(self, cfg, images, labels, device="cpu", dtype="float32", seed=0, lr=1e-3, params=None):
        import scratchvit as sv
        from scratchvit import optim
        from scratchvit.backend import to_device

        self.device = device
        if params is None:
            params = bench_params(cfg, seed)
        self.model = sv.ViT(cfg, seed=seed, device=device, dtype=dtype, params=params)
        self.optim = optim
        self.opt = optim.SGD(momentum=0.9, weight_decay=0.0)
        self.state = self.opt.init(self.model.params)
        self.lr = lr
        # Inputs live on the device before timing (as a prefetching loader would deliver them).
        self.images = to_device(images, device, dtype)
        self.labels = to_device(labels, device)

    def step(self) -> dict:
        m = self.model
        t0 = time.perf_counter()
        loss, grads = m.loss_and_grads(self.images, self.labels)
        t1 = time.perf_counter()
        self.optim.clip_by_global_norm(grads, 1.0)
        self.opt.update(m.params, grads, self.state, self.lr)
        sync(self.device)
        t2 = time.perf_counter()
        return {"step": t2 - t0, "fwd_bwd": t1 - t0, "update": t2 - t1, "loss": loss}

    def parts(self) -> dict:
        """Training forward (with caches), backward from the loss, update - timed separately."""
        m = self.model
        have_split = hasattr(m, "_forward") and hasattr(m, "backward")
        t0 = time.perf_counter()
        if have_split:
            from scratchvit import ops

            logits, caches = m._forward(self.images, keep_cache=True)
            loss, ce = ops.softmax_cross_entropy_forward(logits, self.labels)
            sync(self.device)
            t1 = time.perf_counter()
            grads = m.backward(ops.softmax_cross_entropy_backward(ce), caches)
            sync(self.device)
            t2 = time.perf_counter()
            fwd, bwd = t1 - t0, t2 - t1
        else:  # public API only: backward = (forward + backward) - inference forward
            m.forward(self.images)
            sync(self.device)
            t1 = time.perf_counter()
            _, grads = m.loss_and_grads(self.images, self.labels)
            sync(self.device)
            t2 = time.perf_counter()
            fwd, bwd = t1 - t0, (t2 - t1) - (t1 - t0)
        self.optim.clip_by_global_norm(grads, 1.0)
        self.opt.update(m.params, grads, self.state, self.lr)
        sync(self.device)
        t3 = time.perf_counter()
        m.forward(self.images)
        sync(self.device)
        t4 = time.perf_counter()
        return {"forward": fwd, "backward": bwd, "update": t3 - t2, "inference": t4 - t3}

    def logits(self):
        from scratchvit.backend import to_numpy

        return to_numpy(self.model.forward(self.images))

    def loss_and_grads_numpy(self):
        from scratchvit.backend import to_numpy

        loss, grads = self.model.loss_and_grads(self.images, self.labels)
        return loss, {k: to_numpy(v) for k, v in grads.items()}

    def params_numpy(self):
        from scratchvit.backend import to_numpy

        return {k: to_numpy(v) for k, v in self.model.params.items()}


class TorchRunner:
    """PyTorch: the same step with torch.optim.SGD(momentum=0.9) and clip_grad_norm_(1.0)."""

    def __init__(self, params_np, cfg, images, labels, device="cpu", dtype="float32", lr=1e-3,
                 compile_model=False, sdpa=False):
        import torch
        import torch.nn.functional as F

        sys.path.insert(0, str(BENCH_DIR))
        import torch_reference as tr

        self.torch, self.F = torch, F
        self.device = device
        dev = "cuda" if device == "gpu" else "cpu"
        self.module = tr.build_torch_vit(params_np, classifier=cfg.classifier, gelu=cfg.gelu,
                                         dtype=getattr(torch, dtype), sdpa=sdpa, device=dev)
        self.params = list(self.module.parameters())
        self.opt = torch.optim.SGD(self.params, lr=lr, momentum=0.9, weight_decay=0.0)
        self.images = torch.from_numpy(images).to(dev)
        self.labels = torch.from_numpy(labels).to(dev)
        self.fn = torch.compile(self.module) if compile_model else self.module
        self.name = "torch.compile" if compile_model else "pytorch"

    def step(self) -> dict:
        torch, F = self.torch, self.F
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.fn(self.images), self.labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        sync(self.device)
        t1 = time.perf_counter()
        return {"step": t1 - t0, "loss": float(loss.detach())}

    def parts(self) -> dict:
        torch, F = self.torch, self.F
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.fn(self.images), self.labels)
        sync(self.device)
        t1 = time.perf_counter()
        loss.backward()
        sync(self.device)
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        sync(self.device)
        t3 = time.perf_counter()
        with torch.no_grad():
            t4 = time.perf_counter()
            self.fn(self.images)
            sync(self.device)
            t5 = time.perf_counter()
        return {"forward": t1 - t0, "backward": t2 - t1, "update": t3 - t2, "inference": t5 - t4}

    def logits(self):
        with self.torch.no_grad():
            return self.module(self.images).float().cpu().numpy()

    def loss_and_grads_numpy(self):
        sys.path.insert(0, str(BENCH_DIR))
        import torch_reference as tr

        return tr.loss_and_grads(self.module, self.images, self.labels)


def run_interleaved(runners, method: str, warmup: int, steps: int, pause: float = 0.0) -> list[list[dict]]:
    """Call ``getattr(r, method)()`` warmup + steps times per runner, alternating the order each round.

    ``pause`` seconds of sleep before every call let the previous call's worker threads (OpenBLAS's
    pthreads, PyTorch's OpenMP team) stop spinning; on a 2-core machine a spinning pool of one
    library otherwise steals a core from the next step of the other.
    """
    results = [[] for _ in runners]
    for i in range(warmup + steps):
        order = list(range(len(runners)))
        if i % 2:
            order.reverse()
        for j in order:
            if pause > 0:
                time.sleep(pause)
            r = getattr(runners[j], method)()
            if i >= warmup:
                results[j].append(r)
    return results


# -------------------------------------------------------------------------------- memory probe
def probe(args) -> dict:
    """Runs in a subprocess: one framework only; peak RSS of its first training steps."""
    if args._probe == "scratchvit":
        import scratchvit  # noqa: F401  (before NumPy, as in main)
    import numpy as np

    from scratchvit.backend import keep_freed_memory

    keep_freed_memory()  # both frameworks' probes, as in main

    cfg = make_config(args)
    images, labels = make_batch(cfg, args.batch_size, args.dtype, args.seed)
    out = {"framework": args._probe}
    if args._probe == "scratchvit":
        import tracemalloc

        r = ScratchRunner(cfg, images, labels, args.device, args.dtype, args.seed)
        del images
        rss0 = current_rss_bytes()
        out["peak_reset"] = reset_peak_rss()
        r.step()
        r.step()
        out["rss_before_bytes"], out["peak_rss_bytes"] = rss0, peak_rss_bytes()
        if args.device == "cpu":
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            r.step()
            out["tracemalloc_step_peak_bytes"] = tracemalloc.get_traced_memory()[1] - base
            tracemalloc.stop()
        else:
            import cupy as cp

            out["gpu_pool_total_bytes"] = cp.get_default_memory_pool().total_bytes()
    else:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        params = bench_params(cfg, args.seed)
        params = {k: np.asarray(v, dtype=args.dtype) for k, v in params.items()}
        r = TorchRunner(params, cfg, images, labels, args.device, args.dtype, sdpa=args.torch_sdpa)
        del images, params
        rss0 = current_rss_bytes()
        out["peak_reset"] = reset_peak_rss()
        r.step()
        r.step()
        out["rss_before_bytes"], out["peak_rss_bytes"] = rss0, peak_rss_bytes()
        if args.device == "gpu":
            out["gpu_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
    out["rss_increase_bytes"] = out["peak_rss_bytes"] - out["rss_before_bytes"]
    return out


def run_probe_subprocess(framework: str, argv: list[str]) -> dict | None:
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--_probe", framework]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=os.environ.copy())
    except subprocess.TimeoutExpired:
        return {"error": "timeout"}
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]}


def probe_argv(args) -> list[str]:
    """The options a memory-probe subprocess needs to rebuild the same model and batch."""
    out = ["--model", args.model, "--batch-size", str(args.batch_size), "--device", args.device,
           "--dtype", args.dtype, "--seed", str(args.seed), "--num-classes", str(args.num_classes)]
    for flag in ("image_size", "patch_size", "hidden_size", "num_layers", "num_heads", "mlp_dim", "threads"):
        v = getattr(args, flag)
        if v is not None:
            out += ["--" + flag.replace("_", "-"), str(v)]
    if args.torch_sdpa:
        out.append("--torch-sdpa")
    return out


# ------------------------------------------------------------------------------------- report
def fmt_mb(b) -> str:
    return f"{b / 2**20:8.1f} MiB" if isinstance(b, (int, float)) else "       n/a"


def compare_outputs(scratch: ScratchRunner, torch_runner: TorchRunner) -> dict:
    """Logits, loss and gradients of both models on the same batch and the same parameters."""
    import numpy as np

    a, b = scratch.logits(), torch_runner.logits()
    out = {"logits_max_abs_diff": float(np.abs(a - b).max()), "logits_max_abs": float(np.abs(b).max())}
    la, ga = scratch.loss_and_grads_numpy()
    lb, gb = torch_runner.loss_and_grads_numpy()
    out["loss_scratchvit"], out["loss_torch"] = float(la), float(lb)
    # key/bias: adds q.b_k to every score of a row, which softmax ignores, so its gradient is 0
    # in exact arithmetic and both sides hold rounding noise; it is reported apart.
    worst, worst_name, kb = 0.0, None, 0.0
    for k in gb:
        if k.endswith("key/bias"):
            kb = max(kb, float(np.abs(ga[k]).max()), float(np.abs(gb[k]).max()))
            continue
        err = float(np.abs(ga[k] - gb[k]).max()) / max(float(np.abs(gb[k]).max()), 1e-30)
        if err > worst:
            worst, worst_name = err, k
    out["grads_max_rel_diff"], out["grads_worst_param"] = worst, worst_name
    out["key_bias_grad_max_abs"] = kb
    return out


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    set_thread_env(args.threads)  # before NumPy is imported
    sys.path.insert(0, str(REPO))

    if args._probe:
        print(json.dumps(probe(args)))
        return {}

    import scratchvit  # noqa: F401  (first: it sets OpenBLAS's thread spinning before NumPy loads OpenBLAS)
    from scratchvit import flops
    from scratchvit.backend import keep_freed_memory

    import numpy as np

    keep_freed_memory()  # as `python -m scratchvit.train` does; process-wide, so PyTorch's step gets it too
    use_torch = args.compare == "torch"
    if use_torch:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
    cfg = make_config(args)
    images, labels = make_batch(cfg, args.batch_size, args.dtype, args.seed)

    res: dict = {
        "config": cfg.to_dict(), "batch_size": args.batch_size, "device": args.device, "dtype": args.dtype,
        "steps": args.steps, "warmup": args.warmup,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
                    "blas_threads": blas_threads()},
        "flops": {"forward_per_image": flops.forward_flops(cfg),
                  "train_step": flops.train_step_flops(cfg, args.batch_size),
                  "counting": "2 FLOPs per multiply-add of every matmul; elementwise ops not counted; "
                              "train step = 3 x forward"},
        "frameworks": {},
    }
    if use_torch:
        res["machine"]["torch"] = torch.__version__
        res["machine"]["torch_threads"] = torch.get_num_threads()

    print(f"model {args.model}: {cfg}")
    print(f"batch {args.batch_size}, {args.device}, {args.dtype}, warmup {args.warmup}, timed steps {args.steps}")
    print(f"threads: BLAS {res['machine']['blas_threads']}"
          + (f", torch {res['machine']['torch_threads']}" if use_torch else ""))

    scratch = ScratchRunner(cfg, images, labels, args.device, args.dtype, args.seed)
    runners = [scratch]
    if use_torch:
        params_np = scratch.params_numpy()
        tr_runner = TorchRunner(params_np, cfg, images, labels, args.device, args.dtype, sdpa=args.torch_sdpa)
        res["agreement"] = agree = compare_outputs(scratch, tr_runner)
        print(f"agreement (same params, same batch): logits max |diff| {agree['logits_max_abs_diff']:.3g} "
              f"(max |logit| {agree['logits_max_abs']:.3g}); loss {agree['loss_scratchvit']:.6f} vs "
              f"{agree['loss_torch']:.6f}; grads max rel diff {agree['grads_max_rel_diff']:.3g} "
              f"({agree['grads_worst_param']}; per tensor, relative to its max |grad|; key/bias grads, "
              f"zero in exact arithmetic, are {agree['key_bias_grad_max_abs']:.1g})")
        runners.append(tr_runner)
        if args.torch_compile:
            try:
                comp = TorchRunner(params_np, cfg, images, labels, args.device, args.dtype, compile_model=True,
                                   sdpa=args.torch_sdpa)
                t = time.perf_counter()
                comp.step()  # compiles
                print(f"torch.compile: compiled in {time.perf_counter() - t:.1f} s")
                runners.append(comp)
            except Exception as e:  # noqa: BLE001 - optional line, report and go on
                msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                print(f"torch.compile: failed, skipped ({msg[:300]})")
                res["torch_compile_error"] = msg[:2000]

    peak = measure_matmul_peak(args.dtype, device=args.device)
    res["peak"] = peak
    if args.dtype != "float32" and args.device == "cpu":
        res["peak_float32"] = measure_matmul_peak("float32", device=args.device)
    peak_gflops = peak["peak_gflops"]

    steps = run_interleaved(runners, "step", args.warmup, args.steps, args.pause)
    parts = None if args.no_parts else run_interleaved(runners, "parts", min(args.warmup, 1), args.steps,
                                                       args.pause)

    for k, r in enumerate(runners):
        s = summarize([x["step"] for x in steps[k]])
        fr = {"step": s}
        med = s["median_ms"] / 1e3
        fr["images_per_s"] = args.batch_size / med
        fr["gflops"] = res["flops"]["train_step"] / med / 1e9
        fr["share_of_peak"] = fr["gflops"] / peak_gflops
        fr["share_of_peak_same_library"] = fr["gflops"] / (
            peak["scratchvit_backend_gflops"] if r.name == "scratchvit" else peak.get("torch_gflops", peak_gflops))
        if "fwd_bwd" in steps[k][0]:
            fr["in_step"] = {p: summarize([x[p] for x in steps[k]]) for p in ("fwd_bwd", "update")}
        if parts:
            fr["parts"] = {p: summarize([x[p] for x in parts[k]]) for p in ("forward", "backward", "update",
                                                                          "inference")}
            fwd = fr["parts"]["forward"]["median_ms"] / 1e3
            fr["forward_gflops"] = args.batch_size * res["flops"]["forward_per_image"] / fwd / 1e9
        fr["losses"] = [x["loss"] for x in steps[k]]
        res["frameworks"][r.name] = fr

    if not args.no_memory:
        sub_argv = probe_argv(args)
        res["memory"] = {"method": "separate subprocess per framework (only its own framework imported); "
                                   "peak resident set (Linux VmHWM, reset just before the first step) over two "
                                   "training steps, and its increase over the resident set before that step"}
        for fw in ["scratchvit"] + (["torch"] if use_torch else []):
            res["memory"][fw] = run_probe_subprocess(fw, sub_argv)

    print_report(res, args)

    if args.profile:
        res["profile_top"] = profile_scratch(scratch, args.steps, args.profile)

    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2, default=float))
        print(f"wrote {args.json}")
    return res


def print_report(res: dict, args) -> None:
    peak = res["peak"]
    print()
    print(f"matmul peak ({peak['n']}^3 {peak['dtype']}, best of {peak.get('repeats', 10)}): NumPy/BLAS "
          f"{peak['scratchvit_backend_gflops']:.1f} GFLOP/s"
          + (f", torch.mm {peak['torch_gflops']:.1f} GFLOP/s" if "torch_gflops" in peak else "")
          + f"  -> peak used for shares: {peak['peak_gflops']:.1f}")
    if "peak_float32" in res:
        print(f"float32 matmul peak: {res['peak_float32']['peak_gflops']:.1f} GFLOP/s")
    f = res["flops"]
    print(f"FLOPs (counted: {f['counting']}): forward {f['forward_per_image'] / 1e9:.3f} GFLOP/image, "
          f"train step {f['train_step'] / 1e9:.2f} GFLOP/batch")
    print()
    names = list(res["frameworks"])
    w = 14
    print(f"{'':28s}" + "".join(f"{n:>{w}s}" for n in names))

    def row(label, vals, fmt):
        print(f"{label:28s}" + "".join(f"{fmt.format(v) if v is not None else 'n/a':>{w}s}" for v in vals))

    fws = [res["frameworks"][n] for n in names]
    row("images/s", [x["images_per_s"] for x in fws], "{:.2f}")
    row("step ms (median)", [x["step"]["median_ms"] for x in fws], "{:.1f}")
    row("step ms (min)", [x["step"]["min_ms"] for x in fws], "{:.1f}")
    row("step ms (max)", [x["step"]["max_ms"] for x in fws], "{:.1f}")
    row("step ms (IQR q1-q3)", [f"{x['step']['q1_ms']:.0f}-{x['step']['q3_ms']:.0f}" for x in fws], "{}")
    row("GFLOP/s (counted)", [x["gflops"] for x in fws], "{:.1f}")
    row("% of matmul peak", [100 * x["share_of_peak"] for x in fws], "{:.1f}%")
    if all("parts" in x for x in fws):
        for p, label in (("forward", "  forward (train) ms"), ("backward", "  backward ms"),
                         ("update", "  clip+SGD update ms"), ("inference", "  inference forward ms")):
            row(label, [x["parts"][p]["median_ms"] for x in fws], "{:.1f}")
        row("  forward GFLOP/s", [x["forward_gflops"] for x in fws], "{:.1f}")
    mem = res.get("memory")
    if mem:
        probes = [mem.get("scratchvit" if n == "scratchvit" else "torch") if n != "torch.compile" else None
                  for n in names]
        row("peak RSS MiB", [p.get("peak_rss_bytes", 0) / 2**20 if p and "error" not in p else None
                             for p in probes], "{:.0f}")
        row("RSS increase in step MiB", [p.get("rss_increase_bytes", 0) / 2**20 if p and "error" not in p
                                         else None for p in probes], "{:.0f}")
        sp = mem.get("scratchvit") or {}
        if "tracemalloc_step_peak_bytes" in sp:
            print(f"scratchvit live NumPy arrays peak during a step (tracemalloc): "
                  f"{sp['tracemalloc_step_peak_bytes'] / 2**20:.0f} MiB")
        for fw in ("scratchvit", "torch"):
            if isinstance(mem.get(fw), dict) and "error" in mem[fw]:
                print(f"memory probe {fw} failed: {mem[fw]['error']}")
        print(f"memory method: {mem['method']}")
    if "pytorch" in res["frameworks"]:
        ratio = res["frameworks"]["scratchvit"]["images_per_s"] / res["frameworks"]["pytorch"]["images_per_s"]
        res["ratio_scratchvit_over_pytorch"] = ratio
        print(f"\nratio scratchvit / PyTorch (images/s): {ratio:.3f}")
        if "torch.compile" in res["frameworks"]:
            r2 = res["frameworks"]["scratchvit"]["images_per_s"] / res["frameworks"]["torch.compile"]["images_per_s"]
            res["ratio_scratchvit_over_torch_compile"] = r2
            print(f"ratio scratchvit / torch.compile (images/s): {r2:.3f}")


def profile_scratch(scratch: ScratchRunner, steps: int, top: int) -> str:
    import cProfile
    import io
    import pstats

    pr = cProfile.Profile()
    pr.enable()
    for _ in range(max(1, steps)):
        scratch.step()
    pr.disable()
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(top)
    text = buf.getvalue()
    print(f"\ncProfile of {max(1, steps)} scratchvit step(s), top {top} by tottime:")
    print(text)
    return text


if __name__ == "__main__":
    main()
