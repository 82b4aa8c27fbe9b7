"""scratchvit's element-wise ops against PyTorch's: layer norm, GELU and the attention softmax.

The other half of a training step, beside the matrix products that ``gemm_shapes.py`` compares.
scratchvit writes each of these ops as a chain of NumPy calls (a pass over the array each, run
block by block on its threads, ``cpu.blockwise``); PyTorch runs each as one fused kernel. This
times the forward and backward of each op in both libraries on the same float32 arrays, at the
shapes of the suite's geometries (``harness.SUITE_GEOMETRIES``; rows = batch * tokens):

    python bench/elementwise_ops.py --threads 2
    python bench/elementwise_ops.py --threads 1 --json results/elementwise_ops_1t.json

- layer norm: (rows, width), ``ops.layer_norm_forward`` + ``layer_norm_backward`` against
  ``torch.nn.functional.layer_norm`` forward + autograd backward (epsilon 1e-6);
- GELU (tanh form): (rows, mlp_dim), ``ops.gelu_forward`` + ``gelu_backward`` against
  ``torch.nn.functional.gelu(approximate="tanh")``;
- softmax: (batch * heads, tokens, tokens), ``ops.softmax_forward`` + ``softmax_backward`` against
  ``torch.softmax`` over the last axis (scratchvit's softmax works in place: the time of copying x
  and dy into its buffers, measured apart, is subtracted).

Reported: microseconds for one forward + backward (best of --repeats) and the ratio PyTorch time /
scratchvit time (above 1: scratchvit is faster). The process first applies ``scratchvit.cpu.configure()``,
as building a ``ViT`` does (it keeps freed memory for reuse, for PyTorch too; without it every call
page-faults its fresh outputs). These are the ops on the whole array, op by op; in
the training step, ``loss_and_grads`` runs each on one shard of the batch per thread instead.
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python bench/elementwise_ops.py): the repository root on sys.path,
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so that `bench` imports as a package

from bench.harness import SUITE_GEOMETRIES, geometry_config, set_thread_env, write_json  # noqa: E402
from bench.probes import best_seconds  # noqa: E402


def shapes(cfg, images: int) -> list[tuple[str, tuple]]:
    """(op, shape) pairs of a ViTConfig and batch: layer norm and GELU (rows, features), softmax (count, N, N)."""
    tokens = (cfg.image_size // cfg.patch_size) ** 2 + (cfg.classifier == "token")
    rows = images * tokens
    return [
        ("layer norm", (rows, cfg.hidden_size)),
        ("GELU", (rows, cfg.mlp_dim)),
        ("softmax", (images * cfg.num_heads, tokens, tokens)),
    ]


def op_pair(op: str, x, dy):
    """(scratchvit fn, PyTorch fn): each runs one forward and one backward of ``op`` on float32 ``x``
    with upstream gradient ``dy`` (same shape) and returns (y, dx) as NumPy arrays."""
    import numpy as np
    import torch

    from scratchvit import ops

    tx, tdy = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(dy)
    if op == "layer norm":
        d = x.shape[-1]
        scale, bias = np.ones(d, np.float32), np.zeros(d, np.float32)
        tscale, tbias = torch.ones(d, requires_grad=True), torch.zeros(d, requires_grad=True)

        def ours():
            y, cache = ops.layer_norm_forward(x, scale, bias)
            return y, ops.layer_norm_backward(dy, cache)[0]

        def theirs():
            tx.grad = tscale.grad = tbias.grad = None
            y = torch.nn.functional.layer_norm(tx, (d,), tscale, tbias, eps=1e-6)
            y.backward(tdy)
            return y.detach().numpy(), tx.grad.numpy()
    elif op == "GELU":
        def ours():
            y, cache = ops.gelu_forward(x, "tanh")
            return y, ops.gelu_backward(dy, cache)

        def theirs():
            tx.grad = None
            y = torch.nn.functional.gelu(tx, approximate="tanh")
            y.backward(tdy)
            return y.detach().numpy(), tx.grad.numpy()
    else:  # softmax: scratchvit's works in place, so each call first copies x and dy (see copy_seconds)
        s_buf, d_buf = np.empty_like(x), np.empty_like(dy)

        def ours():
            np.copyto(s_buf, x)
            np.copyto(d_buf, dy)
            y = ops.softmax_forward(s_buf)
            return y, ops.softmax_backward(d_buf, y)

        def theirs():
            tx.grad = None
            y = torch.softmax(tx, dim=-1)
            y.backward(tdy)
            return y.detach().numpy(), tx.grad.numpy()
    return ours, theirs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None,
                   help="threads for both libraries, scratchvit's own included (default: all cores)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)
    set_thread_env(args.threads)  # before NumPy loads OpenBLAS and scratchvit sizes its pool
    import numpy as np
    import torch

    from scratchvit import cpu

    cpu.configure()  # the process-wide settings a scratchvit model applies (mallopt), for both libraries
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    results = []
    print(f"{platform.processor() or platform.machine()}, NumPy {np.__version__}, PyTorch {torch.__version__}, "
          f"threads {args.threads or 'default'}")
    for geometry in SUITE_GEOMETRIES:
        print(f"\n{geometry}")
        for op, shape in shapes(*geometry_config(geometry)):
            x = rng.standard_normal(shape, np.float32)
            dy = rng.standard_normal(shape, np.float32)
            ours, theirs = op_pair(op, x, dy)
            t_ours, t_theirs = best_seconds(ours, args.repeats), best_seconds(theirs, args.repeats)
            if op == "softmax":  # the in-place op's two input copies are not the op's work
                s_buf, d_buf = np.empty_like(x), np.empty_like(dy)
                copies = lambda s=s_buf, d=d_buf, x=x, dy=dy: (np.copyto(s, x), np.copyto(d, dy))  # noqa: E731
                t_ours -= best_seconds(copies, args.repeats)
            row = {"geometry": geometry, "op": op, "shape": list(shape), "scratchvit_us": t_ours * 1e6,
                   "torch_us": t_theirs * 1e6, "ratio_torch_over_scratchvit": t_theirs / t_ours}
            results.append(row)
            print(f"  {op:11s} {'x'.join(map(str, shape)):>12s}  scratchvit {row['scratchvit_us']:8.1f} us  "
                  f"PyTorch {row['torch_us']:8.1f} us  ratio {row['ratio_torch_over_scratchvit']:.2f}")
    if args.json:
        write_json(args.json, {"threads": args.threads, "argv": sys.argv, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
