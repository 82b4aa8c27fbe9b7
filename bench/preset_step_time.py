"""Step time of candidate hybrid geometries beside the plain ViT preset's model (fashion-mnist-vit).

The Quickstart's hybrid (fashion-mnist) and the long preset's were chosen with this:

    SCRATCHVIT_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 python bench/preset_step_time.py 64,3,128,0.5 96,4,192,0.5

Each argument is a candidate hybrid: width,blocks,mlp,resnet_width (the ResNet root alone, patch 1, on the
fashion-mnist-vit preset's settings otherwise: 28 px, 4 heads). Every model runs step.train_step (AdamW,
clipping at 1, label smoothing 0.1) on the same random batch (--batch images of 28 px); --rounds interleaved
rounds (the order reversed every other round) of --steps steps, the first round untimed. Printed: each
model's parameters and tokens, then its median step time (milliseconds) and its ratio to the
fashion-mnist-vit preset's.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python bench/preset_step_time.py): the repository root on sys.path,
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so that `bench` imports as a package


def candidate_argv(spec: str) -> tuple[str, list[str]]:
    """(label, train command-line flags) of a candidate "width,blocks,mlp,resnet_width".

    Raises:
        ValueError: ``spec`` is not four comma-separated numbers.
    """
    try:
        width, layers, mlp, rw = spec.split(",")
        int(width), int(layers), int(mlp), float(rw)
    except ValueError:
        raise ValueError(f"preset_step_time: candidate {spec!r} is not width,blocks,mlp,resnet_width "
                         "(e.g. 64,3,128,0.5)") from None
    label = f"hybrid root {int(64 * float(rw))}ch, patch 1, width {width}, {layers} blocks, mlp {mlp}"
    return label, ["--config", "fashion-mnist-vit", "--resnet", "root", "--resnet-width", rw, "--patch-size", "1",
                   "--hidden-size", width, "--num-layers", layers, "--mlp-dim", mlp]


def main(argv=None) -> dict:
    """Time the candidates; returns {label: median seconds a step} (the ViT preset's first)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("candidates", nargs="*", metavar="WIDTH,BLOCKS,MLP,RESNET_WIDTH")
    p.add_argument("--batch", type=int, default=128, help="images per step (default 128, the presets')")
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds, the first untimed (default 4)")
    p.add_argument("--steps", type=int, default=3, help="steps per model and round (default 3)")
    args = p.parse_args(argv)
    if args.rounds < 2:
        p.error("--rounds must be at least 2 (the first round is untimed)")
    try:
        cands = dict([("fashion-mnist-vit (ViT, patch 7)", ["--config", "fashion-mnist-vit"])]
                     + [candidate_argv(s) for s in args.candidates])
    except ValueError as e:
        p.error(str(e))
    import numpy as np

    import scratchvit as sv
    from scratchvit import optim, settings, step, train

    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (args.batch, 28, 28, 3)).astype(np.float32)
    labels = rng.integers(0, 10, args.batch)
    runners = {}
    for name, flags in cands.items():
        s, _ = settings.resolve_settings(flags)
        cfg = train.model_config(s, 10)
        model = sv.ViT(cfg, seed=0)
        opt = optim.make_optimizer("adamw", weight_decay=0.1)
        runners[name] = (model, opt, opt.init(model.flat))
        print(name, f"{model.num_params():,} params, {cfg.seq_len} tokens", flush=True)
    times = {n: [] for n in runners}
    for r in range(args.rounds):
        for name, (model, opt, state) in (list(runners.items()) if r % 2 == 0 else list(runners.items())[::-1]):
            for i in range(args.steps):
                t = time.perf_counter()
                step.train_step(model, opt, state, images, labels, 1e-3, grad_clip=1.0, label_smoothing=0.1, step=i)
                if r > 0:
                    times[name].append(time.perf_counter() - t)
    medians = {n: statistics.median(ts) for n, ts in times.items()}
    base = medians[next(iter(medians))]
    for name, t in medians.items():
        print(f"{name:60s} median {t * 1e3:7.1f} ms/step  ({t / base:.2f}x the ViT preset's)")
    return medians


if __name__ == "__main__":
    main()
