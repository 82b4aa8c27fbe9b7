"""Two checkouts of scratchvit side by side: training-step images/s, alternating fresh processes.

For a change to the CPU path, against the commit before it (``git worktree add ../base HEAD~1``):

    python bench/ab.py ../base . --geometry p4 --rounds 4 --threads 2

Each round starts one process per checkout (the order alternating), each of which imports
scratchvit from its checkout, runs 2 untimed and then --steps timed training steps (forward,
backward, clipping at 1, SGD-momentum update) on the same random batch, and prints the median
images/s. Printed per round: both figures and the ratio B / A (above 1: B is faster); at the end
the median and min-max of the ratios. Geometries are those of ``train_step.py --suite issue10``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

GEOMETRIES = {  # name: (config overrides of ViT-Ti_16, batch)
    "ti16": ({"num_classes": 1000}, 32),
    "p4": ({"image_size": 28, "patch_size": 4, "hidden_size": 64, "mlp_dim": 128, "num_layers": 4,
            "num_heads": 4, "num_classes": 10}, 128),
    "p7": ({"image_size": 28, "patch_size": 7, "hidden_size": 128, "mlp_dim": 256, "num_layers": 4,
            "num_heads": 4, "num_classes": 10, "classifier": "gap"}, 128),
}

CHILD = """
import sys, time, json
sys.path.insert(0, {repo!r})
import numpy as np
import scratchvit
assert scratchvit.__file__.startswith({repo!r}), scratchvit.__file__
from scratchvit import model, optim
from scratchvit.configs import get_config
cfg = get_config("ViT-Ti_16").replace(**json.loads({overrides!r}))
m = model.ViT(cfg)
rng = np.random.default_rng(0)
x = rng.uniform(-1, 1, ({batch}, cfg.image_size, cfg.image_size, 3)).astype(np.float32)
y = rng.integers(0, cfg.num_classes, {batch})
opt = optim.SGD(momentum=0.9)
state = opt.init(m.params)
def step():
    loss, g = m.loss_and_grads(x, y)
    optim.clip_by_global_norm(g, 1.0)
    opt.update(m.params, g, state, 1e-3)
for _ in range(2):
    step()
times = []
for _ in range({steps}):
    t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
print({batch} / float(np.median(times)))
"""


def images_per_second(repo: Path, geometry: str, steps: int, threads: int | None) -> float:
    import json

    overrides, batch = GEOMETRIES[geometry]
    env = dict(os.environ)
    if threads is not None:
        for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "SCRATCHVIT_NUM_THREADS"):
            env[k] = str(threads)
    code = CHILD.format(repo=str(repo), overrides=json.dumps(overrides), batch=batch, steps=steps)
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path, help="checkout A (the baseline)")
    p.add_argument("b", type=Path, help="checkout B (the change)")
    p.add_argument("--geometry", choices=sorted(GEOMETRIES), default="p4")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=None, help="timed steps per process (default 12; 4 for ti16)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    steps = args.steps or (4 if args.geometry == "ti16" else 12)
    a, b = args.a.resolve(), args.b.resolve()
    ratios = []
    for r in range(args.rounds):
        order = (a, b) if r % 2 == 0 else (b, a)
        got = {repo: images_per_second(repo, args.geometry, steps, args.threads) for repo in order}
        ratios.append(got[b] / got[a])
        print(f"{args.geometry} round {r + 1}: A {got[a]:.1f} img/s  B {got[b]:.1f} img/s  B/A {ratios[-1]:.3f}",
              flush=True)
    print(f"{args.geometry}: B/A median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
