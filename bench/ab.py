"""Two checkouts of scratchvit side by side: training-step images/s, alternating fresh processes.

For a change to the CPU path, against the commit before it (``git worktree add ../base HEAD~1``):

    python bench/ab.py ../base . --geometry p4_d64_b128 --rounds 4 --threads 2

Each round starts one process per checkout (the order alternating), each of which imports
scratchvit from its checkout, runs 2 untimed and then --steps timed training steps of
``harness.ScratchRunner`` (forward, backward, clipping at 1, SGD-momentum update) on the same
random batch, and prints the median images/s. Printed per round: both figures and the ratio B / A
(above 1: B is faster); at the end the median and min-max of the ratios. Geometries:
``harness.ISSUE10_GEOMETRIES`` (those of ``train_step.py --suite issue10``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from harness import ISSUE10_GEOMETRIES, THREAD_ENV

BENCH_DIR = Path(__file__).resolve().parent

# Runs in a fresh interpreter: scratchvit from the checkout, the step of harness.ScratchRunner.
CHILD = """
import statistics, sys
sys.path[:0] = [{repo!r}, {bench!r}]
import scratchvit
assert scratchvit.__file__.startswith({repo!r}), scratchvit.__file__
import harness
cfg, batch = harness.geometry_config({geometry!r})
runner = harness.ScratchRunner(cfg, *harness.make_batch(cfg, batch, "float32"))
for _ in range(2):
    runner.step()
print(batch / statistics.median(runner.step()["step"] for _ in range({steps})))
"""


def images_per_second(repo: Path, geometry: str, steps: int, threads: int | None) -> float:
    """Median training-step images/s of the checkout ``repo`` on an issue-10 geometry, in a fresh process."""
    env = dict(os.environ)
    if threads is not None:
        for k in THREAD_ENV:
            env[k] = str(threads)
    code = CHILD.format(repo=str(repo), bench=str(BENCH_DIR), geometry=geometry, steps=steps)
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path, help="checkout A (the baseline)")
    p.add_argument("b", type=Path, help="checkout B (the change)")
    p.add_argument("--geometry", choices=list(ISSUE10_GEOMETRIES), default="p4_d64_b128")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=None, help="timed steps per process (default 12; 4 for ti16_b32)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    steps = args.steps or (4 if args.geometry == "ti16_b32" else 12)
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
