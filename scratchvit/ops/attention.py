"""Multi-head self-attention (Vaswani et al., 2017; paper Eq. 2-3 and Appendix A), with its backward pass.

Official parameters (Flax ``nn.MultiHeadDotProductAttention``, pre-Linen names):
``query|key|value/kernel`` (D, heads, head_dim), ``query|key|value/bias`` (heads, head_dim),
``out/kernel`` (heads, head_dim, D), ``out/bias`` (D,).

    q, k, v = x Wq + bq, x Wk + bk, x Wv + bv          (per head, head_dim each)
    A = softmax(q k^T / sqrt(head_dim))                (row softmax over keys)
    y = concat_heads(A v) Wout + bout

The three projections run as one (B*N, D) x (D, 3D) product; the per-head products are batched
2-D BLAS calls on strided views (no transposed copies of q, k, v).
"""
from __future__ import annotations

import math

from ..backend import blockwise, get_xp

NAMES = ("query", "key", "value", "out")


def _softmax_rows(s):
    xp = get_xp(s)
    s -= s.max(axis=-1, keepdims=True)
    xp.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)


def _softmax_backward_rows(dp, p):
    xp = get_xp(dp)
    dp -= xp.einsum("ij,ij->i", dp, p)[:, None]
    dp *= p


def softmax_forward(s):
    """Row softmax over the last axis, in place in ``s`` (C-contiguous, any rank), max-subtracted
    for stability. Returns ``s``."""
    if not s.flags.c_contiguous:
        raise ValueError("softmax_forward works in place and needs a C-contiguous array")
    blockwise(_softmax_rows, s.reshape(-1, s.shape[-1]))
    return s


def softmax_backward(dp, p):
    """Gradient of the row softmax, ds = p * (dp - sum(dp * p)), in place in ``dp`` (C-contiguous)."""
    if not dp.flags.c_contiguous:
        raise ValueError("softmax_backward works in place and needs a C-contiguous array")
    blockwise(_softmax_backward_rows, dp.reshape(-1, dp.shape[-1]), p.reshape(-1, p.shape[-1]))
    return dp


def _core_forward(q, k, v, a, ctx):
    """Scores, softmax and weighted values for a block of images, while the block is in the cache."""
    xp = get_xp(q)
    xp.matmul(q, k.transpose(0, 1, 3, 2), out=a)  # (b, H, N, N) scores
    _softmax_rows(a.reshape(-1, a.shape[-1]))
    xp.matmul(a, v, out=ctx)


def _core_backward(q, k, v, a, dctx, dq, dk, dv, scale):
    """Gradients through softmax(q k^T) v for a block of images (q already scaled)."""
    xp = get_xp(q)
    xp.matmul(a.transpose(0, 1, 3, 2), dctx, out=dv)  # dv = A^T dctx
    ds = dctx @ v.transpose(0, 1, 3, 2)  # dA = dctx v^T
    _softmax_backward_rows(ds.reshape(-1, ds.shape[-1]), a.reshape(-1, a.shape[-1]))  # dS, in place
    xp.matmul(ds, k, out=dq)
    dq *= scale  # dq = dS k / sqrt(hd)
    xp.matmul(ds.transpose(0, 1, 3, 2), q, out=dk)  # dk = dS^T (q / sqrt(hd))


def attention_forward(x, p):
    """Multi-head self-attention on ``x`` (B, N, D).

    Args:
        x: (B, N, D) float.
        p: dict with the official sub-names "query/kernel", "query/bias", "key/...", "value/...",
           "out/kernel", "out/bias" (shapes as in the module docstring).

    Returns:
        y (B, N, D) and the cache for :func:`attention_backward`.
    """
    xp = get_xp(x)
    B, N, D = x.shape
    _, H, hd = p["query/kernel"].shape
    scale = 1.0 / math.sqrt(hd)
    w_qkv = xp.concatenate([p[f"{n}/kernel"].reshape(D, H * hd) for n in NAMES[:3]], axis=1)
    b_qkv = xp.concatenate([p[f"{n}/bias"].reshape(H * hd) for n in NAMES[:3]])
    x2d = x.reshape(B * N, D)
    qkv = x2d @ w_qkv
    qkv += b_qkv
    qkv = qkv.reshape(B, N, 3, H, hd)
    q = qkv[:, :, 0].transpose(0, 2, 1, 3) * scale  # (B, H, N, hd), scaled copy
    k = qkv[:, :, 1].transpose(0, 2, 1, 3)  # strided views: BLAS reads them in place
    v = qkv[:, :, 2].transpose(0, 2, 1, 3)
    a = xp.empty((B, H, N, N), dtype=x.dtype)  # attention weights, kept for the backward
    ctx = xp.empty((B, N, H, hd), dtype=x.dtype)  # heads side by side, ready for the out projection
    blockwise(_core_forward, q, k, v, a, ctx.transpose(0, 2, 1, 3), parallel=False)
    ctx2d = ctx.reshape(B * N, H * hd)
    w_out = p["out/kernel"].reshape(H * hd, D)
    y = ctx2d @ w_out
    y += p["out/bias"]
    cache = (x2d, w_qkv, q, k, v, a, ctx2d, w_out, (B, N, D, H, hd), scale)
    return y.reshape(B, N, D), cache


def attention_backward(dy, cache):
    """Gradients of :func:`attention_forward`.

    Returns:
        dx (B, N, D) and a dict of parameter gradients with the same sub-names and shapes as ``p``.
    """
    xp = get_xp(dy)
    x2d, w_qkv, q, k, v, a, ctx2d, w_out, (B, N, D, H, hd), scale = cache
    dy2d = dy.reshape(B * N, D)
    grads = {
        "out/kernel": (ctx2d.T @ dy2d).reshape(H, hd, D),
        "out/bias": dy2d.sum(axis=0),
    }
    dctx = (dy2d @ w_out.T).reshape(B, N, H, hd).transpose(0, 2, 1, 3)  # (B, H, N, hd) view
    dqkv = xp.empty((B, N, 3, H, hd), dtype=dy.dtype)
    dq, dk, dv = (dqkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    blockwise(lambda *blk: _core_backward(*blk, scale), q, k, v, a, dctx, dq, dk, dv, parallel=False)
    dqkv2d = dqkv.reshape(B * N, 3 * D)
    dw = x2d.T @ dqkv2d  # (D, 3D)
    db = dqkv2d.sum(axis=0)
    for i, n in enumerate(NAMES[:3]):
        grads[f"{n}/kernel"] = dw[:, i * D:(i + 1) * D].reshape(D, H, hd)
        grads[f"{n}/bias"] = db[i * D:(i + 1) * D].reshape(H, hd)
    dx = (dqkv2d @ w_qkv.T).reshape(B, N, D)
    return dx, grads
