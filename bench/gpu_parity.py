#!/usr/bin/env python
"""Parity of a device against the CPU: logits, loss and every parameter gradient, same parameters, same batch.

    python bench/gpu_parity.py                       # the GPU (CuPy) against the CPU (NumPy), both models, both dtypes
    python bench/gpu_parity.py --device strict --small   # array-api-strict's non-CPU device: seconds, no GPU needed
    python bench/gpu_parity.py --device cpu --small  # the CPU against itself (trivially equal): a smoke test

Four models: "small" (32 px, patch 4, width 64, 2 blocks, token classifier with a pre-logits layer),
"b16-shallow" (ViT-B/16's shapes at 224 px, 1000 classes, 2 blocks instead of 12), and two hybrids (paper
Sec. 3.1): "hybrid-small" (32 px, ResNet root of 32 channels and two stages of one unit, patch 1 on the
4x4 map) and "r50-b16-shallow" (R50+ViT-B_16's ResNet and shapes at 224 px, 2 blocks instead of 12).
--small runs "small" alone; --models picks any.
For each model and dtype, ``scratchvit.ViT(config, device=..., dtype=..., params=...)`` is built on the
device and on the CPU from the same float64 parameters (a random head, so that no gradient is trivially
0), ``forward`` and ``loss_and_grads`` run on the same batch, and each quantity is compared as

    rel = max |device - cpu| / max |cpu|

against 1e-10 (float64) or 1e-4 (float32). ``key/bias`` gradients are 0 in exact arithmetic (a
per-row constant of the scores, which softmax ignores): both sides hold rounding noise, so their
difference is divided by the largest ``query/bias`` gradient of the same block instead. Prints a table
(one line per model and dtype; ``--verbose``: one per quantity) and exits 1 if any quantity is over its
tolerance, 2 if the device cannot run the model at all.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python bench/gpu_parity.py): the repository root on sys.path,
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so that scratchvit imports uninstalled

TOLERANCE = {"float64": 1e-10, "float32": 1e-4}
MODELS = {  # name -> (ViT-Ti_16 / ViT-B_16 overrides, batch); the base model name is the first item
    "small": ("ViT-Ti_16", dict(image_size=32, patch_size=4, hidden_size=64, num_layers=2, num_heads=4, mlp_dim=128,
                                num_classes=10, classifier="token", representation_size=32), 4),
    "b16-shallow": ("ViT-B_16", dict(num_layers=2, num_classes=1000), 2),
    "hybrid-small": ("ViT-Ti_16", dict(image_size=32, patch_size=1, hidden_size=64, num_layers=2, num_heads=4,
                                       mlp_dim=128, num_classes=10, classifier="token", representation_size=32,
                                       resnet=dict(num_layers=(1, 1), width_factor=0.5)), 4),
    "r50-b16-shallow": ("R50+ViT-B_16", dict(num_layers=2, num_classes=1000), 2),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["gpu", "cpu", "strict"], default="gpu",
                   help="the device compared against the CPU (default gpu; strict: array-api-strict's device1)")
    p.add_argument("--small", action="store_true", help="the small model only (no ViT-B/16-shaped one)")
    p.add_argument("--models", help=f"comma-separated models to run (default: all of {', '.join(MODELS)})")
    p.add_argument("--dtypes", default="float64,float32", help="comma-separated (default float64,float32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true", help="one table line per compared quantity")
    p.add_argument("--json", metavar="FILE", help="write every comparison to FILE as JSON")
    return p


def case_inputs(name: str, seed: int):
    """(config, float64 parameters, images, labels) of one model: a fresh batch and a random head."""
    import numpy as np

    import scratchvit as sv

    base, fields, batch = MODELS[name]
    cfg = sv.get_config(base, **fields)
    rng = np.random.default_rng(seed)
    params = {k: np.asarray(v, dtype=np.float64) for k, v in sv.init_params(cfg, seed).items()}
    for k in params:
        if k.startswith(("head/", "pre_logits/")) or k.endswith("/bias"):  # zeros at init: make them count
            params[k] = rng.standard_normal(params[k].shape) * (0.5 if k.endswith("bias") else
                                                                1.0 / np.sqrt(params[k].shape[0]))
        elif k.endswith("/gn3/scale"):  # a hybrid unit's last group norm starts at 0 (vit_jax), and conv3's grad
            params[k] = 1.0 + 0.1 * rng.standard_normal(params[k].shape)
    images = rng.uniform(-1.0, 1.0, size=(batch, cfg.image_size, cfg.image_size, 3))
    labels = rng.integers(0, cfg.num_classes, size=(batch,)).astype(np.int64)
    return cfg, params, images, labels


def run_model(cfg, params, images, labels, device: str, dtype: str):
    """Logits, loss and gradients (NumPy) of a ViT on ``device`` in ``dtype``, and the seconds taken."""
    import scratchvit as sv
    from scratchvit.backend import to_numpy

    t = time.perf_counter()
    model = sv.ViT(cfg, device=device, dtype=dtype, params={k: v.copy() for k, v in params.items()})
    logits = to_numpy(model.forward(images))
    loss, grads = model.loss_and_grads(images, labels)
    grads = {k: to_numpy(v) for k, v in grads.items()}
    return logits, float(loss), grads, time.perf_counter() - t


def compare(name: str, dtype: str, dev, ref) -> dict:
    """Every quantity's max |diff|, scale and relative difference; the case's worst and pass/fail."""
    import numpy as np

    tol = TOLERANCE[dtype]
    rows = []

    def add(what, a, b, scale=None):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape != b.shape:
            rows.append(dict(quantity=what, error=f"shape {a.shape} != {b.shape}", rel=float("inf"), ok=False))
            return
        diff = float(np.abs(a - b).max()) if a.size else 0.0
        scale = float(np.abs(b).max()) if scale is None else scale
        rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
        ok = bool(np.isfinite(a).all()) and rel <= tol
        rows.append(dict(quantity=what, max_abs_diff=diff, scale=scale, rel=rel, ok=ok))

    add("logits", dev[0], ref[0])
    add("loss", dev[1], ref[1])
    missing = sorted(set(ref[2]) ^ set(dev[2]))
    for k in missing:
        rows.append(dict(quantity=f"grad {k}", error="present on one side only", rel=float("inf"), ok=False))
    for k in ref[2]:
        if k in missing:
            continue
        scale = None
        if k.endswith("key/bias"):  # 0 in exact arithmetic: measured against the same block's query/bias gradient
            scale = float(np.abs(ref[2][k[: -len("key/bias")] + "query/bias"]).max())
        add(f"grad {k}", dev[2][k], ref[2][k], scale)
    grads = [r for r in rows if r["quantity"].startswith("grad ")]
    worst = max(grads, key=lambda r: r["rel"])
    return dict(model=name, dtype=dtype, tolerance=tol, ok=all(r["ok"] for r in rows),
                logits_rel=rows[0]["rel"], loss_rel=rows[1]["rel"], grads_compared=len(grads),
                worst_grad=worst["quantity"][5:], worst_grad_rel=worst["rel"], rows=rows)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in TOLERANCE]
    if bad:
        print(f"error: --dtypes: unknown {bad}; known: {', '.join(TOLERANCE)}", file=sys.stderr)
        return 2
    if args.device == "strict":  # the standard's version, before any array is made (as tests/strict_device.py)
        import array_api_strict

        array_api_strict.set_array_api_strict_flags(api_version="2023.12")
    names = ["small"] if args.small else list(MODELS)
    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        unknown = [n for n in names if n not in MODELS]
        if unknown:
            print(f"error: --models: unknown {unknown}; known: {', '.join(MODELS)}", file=sys.stderr)
            return 2
    result = {"device": args.device, "reference": "cpu", "tolerance": TOLERANCE, "cases": []}
    print(f"parity: {args.device} against cpu; rel = max|diff| / max|cpu| (key/bias: / max|query/bias grad|)")
    header = f"{'model':15s} {'dtype':8s} {'logits rel':>10s} {'loss rel':>10s} {'grads':>5s} " \
             f"{'worst grad rel':>14s} {'tol':>6s}  result  worst gradient"
    print(header)
    status = 0
    for name in names:
        cfg, params, images, labels = case_inputs(name, args.seed)
        for dtype in dtypes:
            try:
                *ref, t_ref = run_model(cfg, params, images, labels, "cpu", dtype)
                *dev, t_dev = run_model(cfg, params, images, labels, args.device, dtype)
            except Exception as e:  # noqa: BLE001  (any failure of the device path is the finding: name it)
                msg = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"[:300]
                print(f"{name:15s} {dtype:8s} FAILED to run on {args.device}: {msg}")
                result["cases"].append(dict(model=name, dtype=dtype, ok=False, error=msg))
                status = 2
                continue
            c = compare(name, dtype, dev, ref)
            c.update(seconds_cpu=t_ref, seconds_device=t_dev, config=cfg.to_dict(), batch=int(len(labels)))
            result["cases"].append(c)
            print(f"{name:15s} {dtype:8s} {c['logits_rel']:10.2e} {c['loss_rel']:10.2e} {c['grads_compared']:5d} "
                  f"{c['worst_grad_rel']:14.2e} {c['tolerance']:6.0e}  {'ok' if c['ok'] else 'FAIL':6s}  "
                  f"{c['worst_grad']}")
            for r in c["rows"]:
                if args.verbose or not r["ok"]:
                    extra = r.get("error") or f"max|diff| {r['max_abs_diff']:.3e} scale {r['scale']:.3e}"
                    print(f"    {r['quantity']:60s} rel {r['rel']:.2e} {'ok' if r['ok'] else 'FAIL'}  {extra}")
            if not c["ok"] and status == 0:
                status = 1
    result["ok"] = status == 0
    print("parity: " + ("all within tolerance" if status == 0 else
                        "FAILED (quantities over tolerance above)" if status == 1 else "the device could not run"))
    if args.json:
        from bench.harness import write_json

        write_json(args.json, result)
    return status


if __name__ == "__main__":
    sys.exit(main())
