"""NumPy's BLAS against PyTorch's on the matrix products a ViT training step makes.

scratchvit's step is matrix products plus element-wise passes; the products run in whatever BLAS
NumPy was built with (OpenBLAS in the PyPI wheels), PyTorch's in its own (MKL / oneDNN in the x86
CPU wheels). This times both libraries on the same float32 operands, one product shape at a time,
so that a training-step ratio can be read against what the two BLAS libraries give on their own.

    python bench/gemm_shapes.py --threads 2            # the suite's three geometries, 2 threads
    python bench/gemm_shapes.py --threads 1 --json results/gemm_shapes_1t.json

Shapes (M x K x N, 2 FLOPs per multiply-add; B x ... for the per-head products, one product per
image and head): for each geometry, the qkv projection, the MLP's two layers and a weight gradient
(rows = B * tokens), and the attention scores q k^T and A v per head. Reported: GFLOP/s of each
library (best of --repeats calls) and the ratio NumPy / PyTorch (above 1: NumPy's BLAS is faster).
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python bench/gemm_shapes.py): the repository root on sys.path,
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so that `bench` imports as a package

from bench.harness import SUITE_GEOMETRIES, geometry_config, set_thread_env, write_json  # noqa: E402
from bench.probes import best_seconds  # noqa: E402


def shapes(cfg, images: int) -> list[tuple[str, tuple]]:
    """(label, shape) pairs of a ViTConfig and batch: ("dense", (M, K, N)) or ("per-head", (count, M, K, N))."""
    tokens = (cfg.image_size // cfg.patch_size) ** 2 + (cfg.classifier == "token")
    width, heads, mlp = cfg.hidden_size, cfg.num_heads, cfg.mlp_dim
    rows, hd = images * tokens, width // heads
    return [
        ("qkv projection", ("dense", (rows, width, 3 * width))),
        ("MLP in", ("dense", (rows, width, mlp))),
        ("MLP out", ("dense", (rows, mlp, width))),
        ("MLP in, weight gradient", ("dense", (width, rows, mlp))),
        ("scores q k^T per head", ("per-head", (images * heads, tokens, hd, tokens))),
        ("A v per head", ("per-head", (images * heads, tokens, tokens, hd))),
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="threads for both libraries (default: all cores)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)
    set_thread_env(args.threads)  # before NumPy loads OpenBLAS
    import numpy as np
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    results = []
    print(f"{platform.processor() or platform.machine()}, NumPy {np.__version__}, PyTorch {torch.__version__}, "
          f"threads {args.threads or 'default'}")
    for geometry in SUITE_GEOMETRIES:
        print(f"\n{geometry}")
        for label, (kind, shape) in shapes(*geometry_config(geometry)):
            if kind == "dense":
                m, k, n = shape
                a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
                flops = 2 * m * k * n
            else:
                c, m, k, n = shape
                a, b = rng.standard_normal((c, m, k), np.float32), rng.standard_normal((c, k, n), np.float32)
                flops = 2 * c * m * k * n
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            out, tout = np.empty((*a.shape[:-1], b.shape[-1]), np.float32), torch.empty(*a.shape[:-1], b.shape[-1])
            t_np = best_seconds(lambda a=a, b=b, out=out: np.matmul(a, b, out=out), args.repeats)
            t_torch = best_seconds(lambda ta=ta, tb=tb, tout=tout: torch.matmul(ta, tb, out=tout), args.repeats)
            row = {"geometry": geometry, "product": label, "kind": kind, "shape": list(shape),
                   "numpy_gflops": flops / t_np / 1e9, "torch_gflops": flops / t_torch / 1e9,
                   "ratio_numpy_over_torch": t_torch / t_np}
            results.append(row)
            print(f"  {label:26s} {'x'.join(map(str, shape)):>18s}  NumPy {row['numpy_gflops']:6.1f} GFLOP/s  "
                  f"PyTorch {row['torch_gflops']:6.1f} GFLOP/s  ratio {row['ratio_numpy_over_torch']:.2f}")
    if args.json:
        write_json(args.json, {"threads": args.threads, "argv": sys.argv, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
