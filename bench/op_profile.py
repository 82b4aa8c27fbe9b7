"""Where a scratchvit training step's time goes: each op's forward and backward, timed call by call.

    python bench/op_profile.py --threads 1                       # the suite's three geometries
    python bench/op_profile.py --threads 1 --geometry p7_d128_gap_b128 --repeats 20
    python bench/op_profile.py --threads 2 --model R50+ViT-B_16 --batch 8 --repeats 3   # a named model at 224 px

Runs ``ViT.forward(keep_cache=True)`` and ``ViT.backward`` on one random batch (the op-by-op path on
the whole batch; ``loss_and_grads`` splits the batch over threads instead, so use one thread for
shares that add up), with every ``scratchvit.ops.*_forward`` / ``*_backward`` wrapped by a timer.
Prints, per geometry, milliseconds per forward + backward and each op's share of it; the rest
(residual adds, position embedding, class token) is "outside the ops".
"""
from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python bench/op_profile.py): the repository root on sys.path,
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so that `bench` imports as a package

from bench.harness import SUITE_GEOMETRIES, geometry_config, set_thread_env  # noqa: E402


def profile(cfg, batch: int, repeats: int) -> tuple[float, dict]:
    """(seconds per forward + backward, {op name: seconds per forward + backward}) of a ViTConfig."""
    import numpy as np

    import scratchvit as sv
    from scratchvit import ops

    model = sv.ViT(cfg, seed=0)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, cfg.image_size, cfg.image_size, 3), np.float32)
    spent = collections.defaultdict(float)
    real = {n: getattr(ops, n) for n in ops.__all__ if n.endswith(("_forward", "_backward"))}

    def timed(name, fn):
        def call(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] += time.perf_counter() - t
        return call

    def step():
        logits, caches = model.forward(images, keep_cache=True)
        model.backward(np.full_like(logits, 1.0 / batch), caches)

    try:
        for name, fn in real.items():
            setattr(ops, name, timed(name, fn))
        step()  # warm-up
        spent.clear()
        t = time.perf_counter()
        for _ in range(repeats):
            step()
        total = (time.perf_counter() - t) / repeats
    finally:
        for name, fn in real.items():
            setattr(ops, name, fn)
    return total, {k: v / repeats for k, v in spent.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="BLAS and scratchvit threads (default: all cores)")
    p.add_argument("--geometry", choices=list(SUITE_GEOMETRIES), action="append",
                   help="one of the suite's geometries (repeatable; default: all three)")
    p.add_argument("--model", action="append",
                   help="a name from scratchvit.configs.MODELS at its own size, 1000 classes, instead (repeatable; "
                   "e.g. R50+ViT-B_16, a hybrid)")
    p.add_argument("--batch", type=int, default=8, help="images per batch with --model (default 8)")
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)
    set_thread_env(args.threads)  # before NumPy loads OpenBLAS and scratchvit sizes its pool
    runs = [(name, None) for name in args.geometry or ([] if args.model else SUITE_GEOMETRIES)]
    runs += [(name, args.batch) for name in args.model or []]
    for name, model_batch in runs:
        if model_batch is None:
            cfg, batch = geometry_config(name)
        else:
            import scratchvit as sv

            cfg, batch = sv.get_config(name, num_classes=1000, dropout_rate=0.0), model_batch
            name = f"{name} batch {batch}"
        total, spent = profile(cfg, batch, args.repeats)
        print(f"\n{name}: forward + backward {total * 1e3:.1f} ms (threads {args.threads or 'default'})")
        for op, sec in sorted(spent.items(), key=lambda kv: -kv[1]):
            print(f"  {op:26s} {sec * 1e3:8.2f} ms  {100 * sec / total:5.1f}%")
        print(f"  {'(outside the ops)':26s} {(total - sum(spent.values())) * 1e3:8.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
