"""The hybrid's convolutions and group norms (paper Sec. 3.1), scratchvit against PyTorch, op by op.

    python bench/hybrid_ops.py --threads 2 --json bench/results/hybrid_ops_2t.json

At the shapes of R50+ViT-B_16 at 224 px (batch 8, ``--batch``), each op runs one forward and one
backward on the same float32 numbers in both libraries:

- conv2d: ``ops.conv2d_forward`` + ``conv2d_backward`` (NHWC, HWIO, XLA 'SAME' padding) against
  ``F.conv2d`` on the NCHW copy of the same input (converted once, outside the timing), with the same
  asymmetric 'SAME' padding (``F.pad`` where the two sides differ, ``padding=`` where they do not) and
  autograd's backward; the root convolution computes no input gradient in either (the network never
  needs it);
- group norm: ``ops.group_norm_forward`` + ``group_norm_backward`` (32 groups, eps 1e-6) against
  ``F.group_norm`` + autograd.

Reported: milliseconds for one forward + backward (best of --repeats, after a warm-up call) and the
ratio PyTorch time / scratchvit time (above 1: scratchvit is faster), and that the outputs and input
gradients agree (max |diff| relative to the largest value). The process first applies
``scratchvit.cpu.configure()``, as building a ViT does (freed memory kept for reuse, for both).
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python bench/hybrid_ops.py): the repository root on sys.path,
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so that `bench` imports as a package

from bench.harness import set_thread_env, write_json  # noqa: E402
from bench.probes import best_seconds  # noqa: E402

# name -> (H = W of the input, C in, kernel, C out, stride) at 224 px; the layers of R50+ViT-B_16
CONVS = {
    "conv_root 7x7/2": (224, 3, 7, 64, 2),
    "block1 conv2 3x3": (56, 64, 3, 64, 1),
    "block2/unit1 conv2 3x3/2": (56, 128, 3, 128, 2),
    "block3 conv2 3x3": (14, 256, 3, 256, 1),
    "block1/unit1 conv1 1x1": (56, 64, 1, 64, 1),
    "block3 conv3 1x1": (14, 256, 1, 1024, 1),
    "block2/unit1 conv_proj 1x1/2": (56, 256, 1, 512, 2),
}
GROUP_NORMS = {"gn_root": (112, 64), "block1 gn3": (56, 256), "block2 gn3": (28, 512), "block3 gn3": (14, 1024)}


def conv_pair(x, kernel, stride, dy, need_dx):
    """(scratchvit fn, PyTorch fn), each one forward + backward returning (y NHWC, dx NHWC or None, dkernel HWIO)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from scratchvit import ops
    from scratchvit.ops.conv2d import conv_output_size

    k = kernel.shape[0]
    _, pt, pb = conv_output_size(x.shape[1], k, stride, "SAME")
    _, pl, pr = conv_output_size(x.shape[2], k, stride, "SAME")
    tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_(need_dx)
    tw = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))).requires_grad_(True)
    tdy = torch.from_numpy(np.ascontiguousarray(dy.transpose(0, 3, 1, 2)))

    def ours():
        y, cache = ops.conv2d_forward(x, kernel, None, stride, "SAME")
        dx, dk, _ = ops.conv2d_backward(dy, cache, need_dx=need_dx)
        return y, dx, dk

    def theirs():
        tx.grad = tw.grad = None
        if pt == pb and pl == pr:
            y = F.conv2d(tx, tw, None, stride, padding=(pt, pl))
        else:
            y = F.conv2d(F.pad(tx, (pl, pr, pt, pb)), tw, None, stride)
        y.backward(tdy)
        dx = tx.grad.numpy().transpose(0, 2, 3, 1) if need_dx else None
        return y.detach().numpy().transpose(0, 2, 3, 1), dx, tw.grad.numpy().transpose(2, 3, 1, 0)

    return ours, theirs


def group_norm_pair(x, dy):
    import numpy as np
    import torch
    import torch.nn.functional as F

    from scratchvit import ops

    c = x.shape[-1]
    scale, bias = np.ones(c, np.float32), np.zeros(c, np.float32)
    tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_(True)
    tdy = torch.from_numpy(np.ascontiguousarray(dy.transpose(0, 3, 1, 2)))
    tscale, tbias = torch.ones(c, requires_grad=True), torch.zeros(c, requires_grad=True)

    def ours():
        y, cache = ops.group_norm_forward(x, scale, bias)
        dx, dscale, _ = ops.group_norm_backward(dy, cache)
        return y, dx, dscale

    def theirs():
        tx.grad = tscale.grad = tbias.grad = None
        y = F.group_norm(tx, 32, tscale, tbias, eps=1e-6)
        y.backward(tdy)
        return y.detach().numpy().transpose(0, 2, 3, 1), tx.grad.numpy().transpose(0, 2, 3, 1), tscale.grad.numpy()

    return ours, theirs


def agreement(a, b) -> float:
    """max over the returned arrays of max |a - b| / max |b|."""
    import numpy as np

    worst = 0.0
    for u, v in zip(a, b):
        if u is not None:
            worst = max(worst, float(np.abs(u - v).max() / np.abs(v).max()))
    return worst


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="threads for both libraries (default: all cores)")
    p.add_argument("--batch", type=int, default=8, help="images (default 8, as the R50+ViT-B_16 step)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)
    set_thread_env(args.threads)  # before NumPy loads OpenBLAS and scratchvit sizes its pool
    import numpy as np
    import torch

    from scratchvit import cpu
    from scratchvit.ops.conv2d import conv_output_size

    cpu.configure()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    B = args.batch
    print(f"{platform.processor() or platform.machine()}, NumPy {np.__version__}, PyTorch {torch.__version__}, "
          f"threads {args.threads or 'default'}, batch {B}, float32; forward + backward, best of {args.repeats}")
    results = []
    for name, (side, cin, k, cout, s) in CONVS.items():
        x = rng.standard_normal((B, side, side, cin), np.float32)
        kernel = (rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin)).astype(np.float32)
        out = conv_output_size(side, k, s, "SAME")[0]
        dy = rng.standard_normal((B, out, out, cout), np.float32)
        results.append(("conv2d", name, [B, side, side, cin], [k, k, cin, cout], s,
                        conv_pair(x, kernel, s, dy, need_dx=not name.startswith("conv_root"))))
    for name, (side, c) in GROUP_NORMS.items():
        x = rng.standard_normal((B, side, side, c), np.float32) * 2 + 1
        dy = rng.standard_normal(x.shape, np.float32)
        results.append(("group_norm", name, [B, side, side, c], None, None, group_norm_pair(x, dy)))
    rows = []
    for op, name, xshape, kshape, stride, (ours, theirs) in results:
        agree = agreement(ours(), theirs())
        t_ours, t_theirs = best_seconds(ours, args.repeats), best_seconds(theirs, args.repeats)
        row = {"op": op, "layer": name, "x": xshape, "kernel": kshape, "stride": stride,
               "scratchvit_ms": t_ours * 1e3, "torch_ms": t_theirs * 1e3,
               "ratio_torch_over_scratchvit": t_theirs / t_ours, "max_rel_diff": agree}
        rows.append(row)
        print(f"  {op:10s} {name:30s} {'x'.join(map(str, xshape)):>16s}  scratchvit {row['scratchvit_ms']:8.1f} ms  "
              f"PyTorch {row['torch_ms']:8.1f} ms  ratio {row['ratio_torch_over_scratchvit']:.2f}  "
              f"(agree {agree:.1e})")
    if args.json:
        write_json(args.json, {"threads": args.threads, "batch": B, "argv": sys.argv, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
