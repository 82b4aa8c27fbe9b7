#!/usr/bin/env python
"""Training throughput of scratchvit and PyTorch vs batch size and vs image size.

    python bench/scaling.py                     # ViT-Ti_16: batch 8,16,32,64 at 224 px; 64,128,224 px at batch 32
    python bench/scaling.py --quick             # a 4-block ViT-Ti_16, small sizes: well under a minute
    python bench/scaling.py --batch-sizes 8 32 --image-sizes 64 224 --steps 5 --threads 2

Each point builds both models from the same parameters and the same batch, runs ``--warmup``
untimed steps and ``--steps`` timed ones per framework, interleaved (see bench/train_step.py
for what a step is), and records images/s = batch / median step time and the counted GFLOP/s
(bench/flops.py). The point at (default batch, default image size) is shared by the two
sweeps. Results: ``bench/results/scaling_<date>.json`` and the plot ``bench/results/scaling.png``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python bench/scaling.py): the repository root on sys.path,
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so that `bench` imports as a package

from bench import harness as h  # noqa: E402  (stdlib-only at import time)
from bench import probes  # noqa: E402

BENCH_DIR = h.BENCH_DIR


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    h.add_model_args(p)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default 8 16 32 64")
    p.add_argument("--image-sizes", type=int, nargs="+", default=None, help="default 64 128 224")
    p.add_argument("--batch-size", type=int, default=None,
                   help="batch of the image-size sweep (default 32)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per framework and point (default 5)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--quick", action="store_true",
                   help="4 blocks, batch 4 8 16 at 64 px, image sizes 32 64 96 at batch 8: a smoke run")
    p.add_argument("--no-torch", action="store_true", help="time scratchvit only")
    p.add_argument("--torch-sdpa", action="store_true")
    p.add_argument("--pause", type=float, default=0.2, help="sleep before each timed step (see train_step.py)")
    p.add_argument("--out-dir", default=str(BENCH_DIR / "results"))
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    return p


def measure_point(args, image_size: int, batch: int) -> dict:
    from bench import flops

    cfg = h.make_config(argparse.Namespace(**{**vars(args), "image_size": image_size}))
    images, labels = h.make_batch(cfg, batch, args.dtype, args.seed)
    runners = [h.ScratchRunner(cfg, images, labels, args.device, args.dtype, args.seed)]
    if not args.no_torch:
        params_np = runners[0].params_numpy()
        runners.append(h.TorchRunner(params_np, cfg, images, labels, args.device, args.dtype,
                                      sdpa=args.torch_sdpa))
    t0 = time.perf_counter()
    steps = h.run_interleaved(runners, "step", args.warmup, args.steps, args.pause)
    out = {"image_size": image_size, "batch_size": batch, "tokens": cfg.seq_len,
           "train_step_flops": flops.train_step_flops(cfg, batch), "wall_s": time.perf_counter() - t0}
    for r, st in zip(runners, steps, strict=True):
        s = h.summarize([x["step"] for x in st])
        med = s["median_ms"] / 1e3
        out[r.name] = {"step": s, "images_per_s": batch / med, "gflops": out["train_step_flops"] / med / 1e9}
    if "pytorch" in out:
        out["ratio"] = out["scratchvit"]["images_per_s"] / out["pytorch"]["images_per_s"]
    return out


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (used as matplotlib.ticker)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    sweeps = (("batch", "batch_size", "batch size", f"{res['image_size']} px"),
              ("image", "image_size", "image size (px)", f"batch {res['batch_size']}"))
    for ax, (key, xkey, xlabel, fixed) in zip(axes, sweeps, strict=True):
        pts = res["sweeps"][key]
        xs = [p[xkey] for p in pts]
        for name, style in (("scratchvit", "o-"), ("pytorch", "s--")):
            if all(name in p for p in pts):
                ax.plot(xs, [p[name]["images_per_s"] for p in pts], style, label=name)
        if all("ratio" in p for p in pts):
            for p in pts:
                ax.annotate(f"{p['ratio']:.2f}x", (p[xkey], p["scratchvit"]["images_per_s"]),
                            textcoords="offset points", xytext=(0, -14), ha="center", fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("training images / s")
        ax.set_xticks(xs)
        if key == "image":
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        else:
            ax.set_ylim(bottom=0)
        ax.set_title(f"{res['model']}, {fixed}, {res['dtype']}, {res['device']}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"training step throughput (point labels: scratchvit / PyTorch images/s), "
                 f"threads {res['threads'] or 'default'}, median of {res['steps']} steps",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    h.set_thread_env(args.threads)
    if args.quick:
        args.num_layers = args.num_layers or 4
        args.batch_sizes = args.batch_sizes or [4, 8, 16]
        args.image_sizes = args.image_sizes or [32, 64, 96]
        args.batch_size = args.batch_size or 8
        args.image_size = args.image_size or 64
        args.num_classes = 10 if args.num_classes == 1000 else args.num_classes
    args.batch_sizes = args.batch_sizes or [8, 16, 32, 64]
    args.image_sizes = args.image_sizes or [64, 128, 224]
    args.batch_size = args.batch_size or 32
    args.image_size = args.image_size or 224

    import numpy as np

    if not args.no_torch:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)

    peak = probes.measure_matmul_peak(args.dtype, device=args.device)
    res = {"model": args.model, "overrides": {k: getattr(args, k) for k in (
               "patch_size", "hidden_size", "num_layers", "num_heads", "mlp_dim", "num_classes")},
           "image_size": args.image_size, "batch_size": args.batch_size, "dtype": args.dtype,
           "device": args.device, "threads": args.threads, "steps": args.steps, "warmup": args.warmup,
           "date": _dt.datetime.now().isoformat(timespec="seconds"),
           "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "numpy": np.__version__,
                       "blas_threads": probes.blas_threads()},
           "peak": peak, "sweeps": {"batch": [], "image": []}}
    if not args.no_torch:
        res["machine"]["torch"] = torch.__version__
        res["machine"]["torch_threads"] = torch.get_num_threads()

    cache: dict = {}

    def point(image_size, batch):
        if (image_size, batch) not in cache:
            p = measure_point(args, image_size, batch)
            cache[(image_size, batch)] = p
            line = f"{image_size:4d} px  batch {batch:4d}  tokens {p['tokens']:4d}:  scratchvit " \
                   f"{p['scratchvit']['images_per_s']:8.2f} img/s {p['scratchvit']['gflops']:6.1f} GFLOP/s"
            if "pytorch" in p:
                line += f"  | pytorch {p['pytorch']['images_per_s']:8.2f} img/s " \
                        f"{p['pytorch']['gflops']:6.1f} GFLOP/s  | ratio {p['ratio']:.3f}"
            print(line, flush=True)
        return cache[(image_size, batch)]

    t0 = time.perf_counter()
    print(f"{args.model} {res['overrides']}, {args.dtype}, {args.device}; "
          f"matmul peak {peak['peak_gflops']:.1f} GFLOP/s")
    print(f"batch sweep at {args.image_size} px:")
    for b in args.batch_sizes:
        res["sweeps"]["batch"].append(point(args.image_size, b))
    print(f"image-size sweep at batch {args.batch_size}:")
    for s in args.image_sizes:
        res["sweeps"]["image"].append(point(s, args.batch_size))
    res["wall_s"] = time.perf_counter() - t0

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jpath = out_dir / f"scaling_{_dt.date.today().isoformat()}.json"
    h.write_json(jpath, res)
    print(f"wrote {jpath} ({res['wall_s']:.0f} s)")
    if not args.no_plot:
        try:
            ppath = out_dir / "scaling.png"
            plot(res, ppath)
            print(f"wrote {ppath}")
        except ImportError:
            print("matplotlib is not installed: no plot (pip install -e '.[bench]')")
    return res


if __name__ == "__main__":
    main()
