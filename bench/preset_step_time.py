"""Step time of candidate hybrid geometries (the Quickstart, fashion-mnist, was chosen so) beside the plain ViT
preset's model, fashion-mnist-vit (batch 128).

    SCRATCHVIT_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 python bench/preset_step_time.py 64,4,128,0.5 96,4,192,0.5

Each argument is a candidate hybrid: width,blocks,mlp,resnet_width (the ResNet root alone, patch 1, on the
fashion-mnist-vit preset's settings otherwise). Every model runs step.train_step (AdamW, clipping, label
smoothing 0.1) on the same random batch of 128 28 px images; 4 interleaved rounds of 3 steps, the first
round untimed; prints the median step time and its ratio to the fashion-mnist-vit preset's.
"""
import sys
import time

import numpy as np

import scratchvit as sv
from scratchvit import optim, settings, step, train

cands = {"fashion-mnist-vit (ViT, patch 7)": ["--config", "fashion-mnist-vit"]}
for spec in sys.argv[1:]:
    width, layers, mlp, rw = spec.split(",")
    cands[f"hybrid root {int(64*float(rw))}ch, patch 1, width {width}, {layers} blocks, mlp {mlp}"] = [
        "--config", "fashion-mnist-vit", "--resnet", "root", "--resnet-width", rw, "--patch-size", "1",
        "--hidden-size", width, "--num-layers", layers, "--mlp-dim", mlp]
rng = np.random.default_rng(0)
images = rng.uniform(-1, 1, (128, 28, 28, 3)).astype(np.float32)
labels = rng.integers(0, 10, 128)
runners = {}
for name, argv in cands.items():
    s, _ = settings.resolve_settings(argv)
    cfg = train.model_config(s, 10)
    model = sv.ViT(cfg, seed=0)
    opt = optim.make_optimizer("adamw", weight_decay=0.1)
    state = opt.init(model.params)
    runners[name] = (model, opt, state)
    print(name, f"{model.num_params():,} params, {cfg.seq_len} tokens", flush=True)
times = {n: [] for n in runners}
for r in range(4):
    for name, (model, opt, state) in (list(runners.items()) if r % 2 == 0 else list(runners.items())[::-1]):
        for i in range(3):
            t = time.perf_counter()
            step.train_step(model, opt, state, images, labels, 1e-3, grad_clip=1.0, label_smoothing=0.1, step=i)
            if r > 0:
                times[name].append(time.perf_counter() - t)
base = np.median(times[list(times)[0]])
for name, ts in times.items():
    print(f"{name:60s} median {np.median(ts) * 1e3:7.1f} ms/step  ({np.median(ts) / base:.2f}x the ViT preset's)")
