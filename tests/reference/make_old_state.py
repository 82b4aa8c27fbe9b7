"""Resume points (state.npz) written by scratchvit before the flat parameter buffers (issue 29).

Run once against the commit before the change (fc7c256), the files are committed next to this script:

    git archive fc7c256 | tar -x -C /tmp/flat-base
    python tests/reference/make_old_state.py /tmp/flat-base tests/reference

For each optimiser (sgd, adamw; adamw also in fp16 mixed precision with its loss scale) it builds the
tiny model of tests/test_flat.py (seed 1), trains 2 steps on a fixed random batch and saves the run's
resume point with that version's ``runs.save_state`` as ``old_state_<name>/state.npz`` (plus last.npz).
It uses that version's API (``opt.init(model.params)``) and does not run on later versions.
"""
import sys
from pathlib import Path

repo, dest = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
sys.path.insert(0, str(repo))

import numpy as np  # noqa: E402

import scratchvit as sv  # noqa: E402
from scratchvit import optim, runs, step  # noqa: E402

assert sv.__file__.startswith(str(repo)), sv.__file__

config = sv.get_config("ViT-Ti_16", image_size=16, patch_size=8, hidden_size=16, num_heads=2, num_layers=1,
                       mlp_dim=32, num_classes=5)
rng = np.random.default_rng(0)
images, labels = rng.uniform(-1, 1, (8, 16, 16, 3)), rng.integers(0, 5, 8)
for name, opt_name, dtype, precision in (("sgd", "sgd", "float64", "fp32"), ("adamw", "adamw", "float64", "fp32"),
                                         ("adamw_fp16", "adamw", "float32", "fp16")):
    model = sv.ViT(config, seed=1, dtype=dtype)
    opt = optim.make_optimizer(opt_name, weight_decay=0.05)
    state = opt.init(model.params)
    scale = step.LossScale(scale=1024.0) if precision == "fp16" else None
    for i in range(2):
        step.train_step(model, opt, state, images, labels, 0.01, accum_steps=2, grad_clip=0.5, precision=precision,
                        loss_scale=scale, step=i)
    out = dest / f"old_state_{name}"
    out.mkdir(parents=True, exist_ok=True)
    runs.save_state(out, model, state, 2, 0.25, 0, scale)
    print(out, sorted(np.load(out / "state.npz").files)[:4], "...")
