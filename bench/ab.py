"""Two checkouts of scratchvit side by side: training-step images/s, alternating fresh processes.

For a change to the CPU path, against the commit before it (``git worktree add ../base HEAD~1``):

    python bench/ab.py ../base . --geometry p4_d64_b128 --rounds 4 --threads 2

Each round starts one process per checkout (the order alternating), each of which imports
scratchvit from its checkout, runs 2 untimed and then --steps timed training steps of
``harness.ScratchRunner`` (forward, backward, clipping at 1, SGD-momentum update) on the same
random batch, and prints the median images/s. Printed per round: both figures and the ratio B / A
(above 1: B is faster); at the end the median and min-max of the ratios. Geometries:
``harness.SUITE_GEOMETRIES`` (those of ``train_step.py --suite small-vits``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python bench/ab.py): the repository root on sys.path,
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so that `bench` imports as a package

from bench.harness import SUITE_GEOMETRIES, THREAD_ENV  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]  # this checkout: its bench package times both

# Runs in a fresh interpreter: scratchvit from the checkout, the step of this checkout's bench.harness.ScratchRunner.
# scratchvit is imported before this checkout's root goes on the path, so that it stays the one of the checkout.
CHILD = """
import statistics, sys
sys.path.insert(0, {repo!r})
import scratchvit
assert scratchvit.__file__.startswith({repo!r}), scratchvit.__file__
sys.path.insert(0, {root!r})
from bench import harness
assert harness.__file__.startswith({root!r}), harness.__file__
cfg, batch = harness.geometry_config({geometry!r})
runner = harness.ScratchRunner(cfg, *harness.make_batch(cfg, batch, "float32"))
for _ in range(2):
    runner.step()
print(batch / statistics.median(runner.step()["step"] for _ in range({steps})))
"""


def images_per_second(repo: Path, geometry: str, steps: int, threads: int | None) -> float:
    """Median training-step images/s of the checkout ``repo`` on a geometry of the suite, in a fresh process."""
    env = dict(os.environ)
    if threads is not None:
        for k in THREAD_ENV:
            env[k] = str(threads)
    code = CHILD.format(repo=str(repo), root=str(ROOT), geometry=geometry, steps=steps)
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path, help="checkout A (the baseline)")
    p.add_argument("b", type=Path, help="checkout B (the change)")
    p.add_argument("--geometry", choices=list(SUITE_GEOMETRIES), default="p4_d64_b128")
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
