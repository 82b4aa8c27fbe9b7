"""The benchmark harness: runners, interleaved timing, summaries, the matmul peak, memory figures.

Imported as ``bench.harness`` by the scripts (``bench/train_step.py``, ``bench/scaling.py``, ...) and the
tests. NumPy, scratchvit and PyTorch are imported inside the functions only, so
that a script can set thread variables, or import NumPy first on purpose, before any of them loads.

* :class:`ScratchRunner` / :class:`TorchRunner`: one training step (forward, backward, clipping
  at global norm 1.0, SGD with momentum 0.9) of scratchvit / of the same model in PyTorch
  (``torch_reference.py``), built from the same parameters and fed the same batch.
* :func:`run_rounds`: rounds of steps, the runners interleaved (order alternating per round),
  with a pause before each runner's turn; :func:`summarize`, :func:`round_ratios`.
* ``probes.py``: the matmul peak, resident-set figures and the memory probe.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

from bench.probes import sync

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
              "NUMEXPR_NUM_THREADS", "SCRATCHVIT_NUM_THREADS")  # the last: scratchvit's own thread pool


def add_model_args(p) -> None:
    """The model, device, dtype and thread options shared by the scripts."""
    p.add_argument("--model", default="ViT-Ti_16", help="a name from scratchvit.configs.MODELS (default ViT-Ti_16)")
    for flag in ("image-size", "patch-size", "hidden-size", "num-layers", "num-heads", "mlp-dim"):
        p.add_argument(f"--{flag}", type=int, default=None)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--classifier", choices=["token", "gap"], default=None, help="default: the model's (token)")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for BLAS (NumPy), scratchvit and PyTorch; default: the libraries' own (all cores)")


def set_thread_env(threads: int | None) -> None:
    """Set the thread variables to ``threads``; must run before NumPy is imported for OpenBLAS to honour it."""
    if threads is None:
        return
    if "numpy" in sys.modules:
        print("warning: NumPy was imported before --threads was applied; OpenBLAS keeps its default",
              file=sys.stderr)
    for k in THREAD_ENV:
        os.environ[k] = str(threads)


def write_json(path, data) -> None:
    """Write ``data`` as JSON (indented; NumPy scalars as floats) to ``path`` atomically, its folder created.

    The results files of every script: a run stopped half-way leaves the previous file whole, never a torn one.
    """
    import json

    from scratchvit.files import write_text_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=2, default=float) + "\n")


# The benchmark suite's three geometries (ViT-Ti/16 at 224 px and two small ViTs on 28 px images, one of them
# the fashion-mnist preset's), one table for train_step.py --suite small-vits, ab.py, gemm_shapes.py,
# elementwise_ops.py and op_profile.py:
# name -> (ViT-Ti_16 fields overridden, batch size).
SMALL = {"image_size": 28, "num_layers": 4, "num_heads": 4, "num_classes": 10}
SUITE_GEOMETRIES = {
    "ti16_b32": ({"num_classes": 1000}, 32),
    "p4_d64_b128": ({**SMALL, "patch_size": 4, "hidden_size": 64, "mlp_dim": 128}, 128),
    "p7_d128_gap_b128": ({**SMALL, "patch_size": 7, "hidden_size": 128, "mlp_dim": 256, "classifier": "gap"}, 128),
}


def geometry_args(name: str) -> list[str]:
    """The command-line options (:func:`add_model_args` and ``--batch-size``) of a geometry of the suite."""
    fields, batch = SUITE_GEOMETRIES[name]
    args = ["--model", "ViT-Ti_16"]
    for k, v in fields.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args + ["--batch-size", str(batch)]


def geometry_config(name: str):
    """The ViTConfig and the batch size of a geometry of the suite."""
    import scratchvit as sv

    fields, batch = SUITE_GEOMETRIES[name]
    return sv.get_config("ViT-Ti_16", **fields), batch


def make_config(args):
    """The ViTConfig of ``args`` (the options of :func:`add_model_args`)."""
    import scratchvit as sv

    return sv.get_config(args.model, image_size=args.image_size, patch_size=args.patch_size,
                         hidden_size=args.hidden_size, num_layers=args.num_layers, num_heads=args.num_heads,
                         mlp_dim=args.mlp_dim, num_classes=args.num_classes,
                         **({"classifier": args.classifier} if getattr(args, "classifier", None) else {}))


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


def make_batch(cfg, batch: int, dtype: str, seed: int = 0):
    """Uniform random images in [-1, 1] (batch, S, S, 3) and integer labels (batch,)."""
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


class ScratchRunner:
    """scratchvit: ``step.train_step`` (forward, backward, clipping at global norm 1.0, SGD with momentum 0.9),
    as ``python -m scratchvit.train`` runs it; fp32, or mixed precision with ``precision="fp16"``."""

    name = "scratchvit"

    def __init__(self, cfg, images, labels, device="cpu", dtype="float32", seed=0, lr=1e-3, params=None,
                 precision="fp32"):
        import scratchvit as sv
        from scratchvit import optim, step
        from scratchvit.backend import to_device

        self.device = device
        if params is None:
            params = bench_params(cfg, seed)
        self.name = "scratchvit" if precision == "fp32" else f"scratchvit-{precision}"
        self.model = sv.ViT(cfg, seed=seed, device=device, dtype=dtype, params=params)
        self.optim = optim
        self.opt = optim.SGD(momentum=0.9, weight_decay=0.0)
        # the flat parameter buffer (scratchvit.flat); a checkout from before it (bench/ab.py's baseline) takes the dict
        self.state = self.opt.init(getattr(self.model, "flat", self.model.params))
        self.lr = lr
        self.precision = precision
        self.train_step = step.train_step
        self.loss_scale = step.LossScale() if precision != "fp32" else None
        if precision != "fp32":
            dtype = step.COMPUTE_DTYPES[precision]
        # Inputs live on the device before timing (as a prefetching loader would deliver them); train_step
        # checks the labels on the host, so its labels stay there (B integers); parts() takes them on the device.
        self.images = to_device(images, device, dtype)
        self.labels, self.device_labels = labels, to_device(labels, device)

    def step(self) -> dict:
        """One ``train_step`` (for fp16: cast to float16, forward, backward, unscale, clip, update); seconds."""
        t0 = time.perf_counter()
        r = self.train_step(self.model, self.opt, self.state, self.images, self.labels, self.lr, grad_clip=1.0,
                            precision=self.precision, loss_scale=self.loss_scale)
        sync(self.device)
        return {"step": time.perf_counter() - t0, "loss": r.loss, "skipped": r.skipped}

    def parts(self) -> dict:
        """Training forward (with caches) and loss, backward, update, inference forward - timed apart.

        On the whole batch through the public ``forward(keep_cache=True)`` / ``backward``: the op-by-op
        path, not the batch split that ``loss_and_grads`` uses on the CPU.
        """
        from scratchvit import ops

        m = self.model

        def forward(_):
            logits, caches = m.forward(self.images, keep_cache=True)
            return caches, ops.softmax_cross_entropy_forward(logits, self.device_labels)[1]

        def update(grads):  # into the flat gradient buffer (scratchvit.flat), clip, update
            flat = m.layout.gather(grads)
            self.optim.clip_by_global_norm(flat, 1.0)
            self.opt.update(m.flat, flat, self.state, self.lr)

        return timed(self.device, forward, lambda c: m.backward(ops.softmax_cross_entropy_backward(c[1]), c[0]),
                     update, lambda _: m.forward(self.images))

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
                 compile_model=False, sdpa=False, amp=False):
        import contextlib

        import torch
        import torch.nn.functional as F

        from bench import torch_reference as tr

        self.torch, self.F = torch, F
        self.device = device
        dev = "cuda" if device == "gpu" else "cpu"
        # amp (GPU): the forward and the loss under float16 autocast, a GradScaler around backward and step
        self.autocast = (torch.autocast(device_type="cuda", dtype=torch.float16) if amp
                         else contextlib.nullcontext())
        self.scaler = torch.amp.GradScaler("cuda") if amp else None
        self.module = tr.build_torch_vit(params_np, classifier=cfg.classifier, gelu=cfg.gelu,
                                         dtype=getattr(torch, dtype), sdpa=sdpa, device=dev)
        self.params = list(self.module.parameters())
        self.opt = torch.optim.SGD(self.params, lr=lr, momentum=0.9, weight_decay=0.0)
        self.images = torch.from_numpy(images).to(dev)
        self.labels = torch.from_numpy(labels).to(dev)
        self.fn = torch.compile(self.module) if compile_model else self.module
        self.name = ("torch.compile" if compile_model else "pytorch") + ("-fp16" if amp else "")

    def step(self) -> dict:
        torch, F = self.torch, self.F
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        with self.autocast:
            loss = F.cross_entropy(self.fn(self.images), self.labels)
        if self.scaler is None:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.scaler.step(self.opt)
            self.scaler.update()
        sync(self.device)
        t1 = time.perf_counter()
        return {"step": t1 - t0, "loss": float(loss.detach())}

    def parts(self) -> dict:
        """Training forward and loss, backward, update, inference forward under no_grad - timed apart."""
        torch, F = self.torch, self.F

        def forward(_):
            self.opt.zero_grad(set_to_none=True)
            return F.cross_entropy(self.fn(self.images), self.labels)

        def update(_):
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.opt.step()

        def inference(_):
            with torch.no_grad():
                self.fn(self.images)

        return timed(self.device, forward, lambda loss: loss.backward(), update, inference)

    def logits(self):
        with self.torch.no_grad():
            return self.module(self.images).float().cpu().numpy()

    def loss_and_grads_numpy(self):
        from bench import torch_reference as tr

        return tr.loss_and_grads(self.module, self.images, self.labels)


PARTS = ("forward", "backward", "update", "inference")


def timed(device: str, *fns) -> dict:
    """Call ``fns`` in order, each given the previous one's result (None first); seconds each,
    the device synchronised after each, keyed by PARTS."""
    out, x = {}, None
    for name, fn in zip(PARTS, fns, strict=True):
        t = time.perf_counter()
        x = fn(x)
        sync(device)
        out[name] = time.perf_counter() - t
    return out


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


def run_rounds(runners, rounds: int, steps: int, warmup: int = 1, pause: float = 0.2) -> list[list[list[float]]]:
    """Step times in seconds, ``[runner][round][step]``: ``warmup`` untimed steps per runner, then
    ``rounds`` rounds in which each runner in turn (the order alternating per round) sleeps ``pause``
    seconds (so the other library's spinning worker threads go idle) and runs ``steps`` timed steps."""
    for r in runners:
        for _ in range(warmup):
            r.step()
    out = [[] for _ in runners]
    for i in range(rounds):
        order = list(range(len(runners)))[::(-1 if i % 2 else 1)]
        for j in order:
            if pause > 0:
                time.sleep(pause)
            out[j].append([runners[j].step()["step"] for _ in range(steps)])
    return out


def round_ratios(a: list[list[float]], b: list[list[float]]) -> list[float]:
    """Per round, (median step time of b) / (median step time of a): a's speed over b's."""
    return [statistics.median(y) / statistics.median(x) for x, y in zip(a, b, strict=True)]


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


