"""The optimiser update on the CPU: one parameter at a time, the whole flat buffer at once, or in pieces.

    python bench/update_pieces.py --threads 1            # ViT-Ti/16 and ViT-B/16 parameter counts, float32

The flat buffers (scratchvit/flat.py) let a GPU run AdamW in ~23 kernel launches instead of ~3,200. On a
CPU the same whole-buffer operations stream every buffer through memory once per operation and allocate
whole-buffer temporaries (fresh pages for large ones), so ``optim.in_pieces`` runs the same elementwise
formulas over pieces of ``optim.CHUNK`` elements that stay in the cache (bit for bit the same result,
``tests/test_optim.py``). This times, per update (median of --repeats, after one untimed):

* ``per parameter``: the formulas on each parameter's view in turn, as the optimisers did before the flat
  buffers (AdamW's step count and bias corrections once per step);
* ``one piece``: ``opt.update`` on the flat buffers with ``optim.CHUNK`` above the buffer's size (what
  a GPU runs);
* ``in pieces``: ``opt.update`` as it runs on NumPy.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python bench/update_pieces.py): the repository root on sys.path,
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so that `bench` imports as a package

from bench.harness import set_thread_env  # noqa: E402


def per_parameter(opt, views: dict, lr: float):
    """The update as before the flat buffers: a loop over the parameters (``views``: name -> (p, g, slots...))."""
    import numpy as np

    from scratchvit import optim

    if isinstance(opt, optim.SGD):
        def run(state):
            for p, g, m in views.values():
                m *= opt.momentum
                m += g
                if opt.weight_decay:
                    p *= 1.0 - lr * opt.weight_decay
                p -= lr * m
        return run

    def run(state):
        count = state["count"]
        count += 1
        t = count.astype(np.float64)
        c1, c2 = 1.0 - opt.b1 ** t, 1.0 - opt.b2 ** t
        for p, g, m, v in views.values():
            m *= opt.b1
            m += (1.0 - opt.b1) * g
            v *= opt.b2
            v += (1.0 - opt.b2) * (g * g)
            denom = np.sqrt(v / c2.astype(v.dtype))
            denom += opt.eps
            if opt.weight_decay:
                p *= 1.0 - lr * opt.weight_decay
            step = m / denom
            step *= (lr / c1).astype(m.dtype)
            p -= step
    return run


def time_update(opt, layout, repeats: int) -> dict:
    """{way: median seconds} of one update of ``opt`` on flat float32 buffers of ``layout``."""
    import numpy as np

    from scratchvit import optim

    rng = np.random.default_rng(0)
    p = (rng.standard_normal(layout.size) * 0.02).astype(np.float32)
    g = (rng.standard_normal(layout.size) * 1e-3).astype(np.float32)
    state = opt.init(p)
    slots = [layout.views(state[k]) for k in ("momentum", "mu", "nu") if k in state]
    pv, gv = layout.views(p), layout.views(g)
    views = {k: (pv[k], gv[k], *(s[k] for s in slots)) for k in layout.names}

    def one_piece(s, chunk=optim.CHUNK):
        optim.CHUNK = layout.size + 1  # in_pieces then runs the whole buffer at once, as on a GPU
        try:
            opt.update(p, g, s, 1e-4)
        finally:
            optim.CHUNK = chunk

    ways = {"per parameter": per_parameter(opt, views, 1e-4), "one piece": one_piece,
            "in pieces": lambda s: opt.update(p, g, s, 1e-4)}
    times = {w: [] for w in ways}
    for i in range(repeats + 1):
        for w, fn in ways.items():
            t = time.perf_counter()
            fn(state)
            if i:
                times[w].append(time.perf_counter() - t)
    return {w: statistics.median(ts) for w, ts in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="ViT-Ti_16,ViT-B_16")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    set_thread_env(args.threads)
    import scratchvit as sv
    from scratchvit import optim
    from scratchvit.flat import Layout

    for m in args.models.split(","):
        layout = Layout.of(sv.param_shapes(sv.get_config(m, num_classes=1000)))
        for name in ("sgd", "adamw"):
            out = time_update(optim.make_optimizer(name, weight_decay=0.1), layout, args.repeats)
            print(f"{m} ({layout.size:,} elements) {name:5s} " + "  ".join(
                f"{w} {1e3 * t:8.1f} ms" for w, t in out.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
