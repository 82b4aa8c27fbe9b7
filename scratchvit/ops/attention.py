"""Multi-head self-attention (Vaswani et al., 2017; paper Eq. 2-3 and Appendix A), with its backward pass.

Official parameters (Flax ``nn.MultiHeadDotProductAttention``, pre-Linen names):
``query|key|value/kernel`` (D, heads, head_dim), ``query|key|value/bias`` (heads, head_dim),
``out/kernel`` (heads, head_dim, D), ``out/bias`` (D,).

    q, k, v = x Wq + bq, x Wk + bk, x Wv + bv          (per head, head_dim each)
    A = softmax(q k^T / sqrt(head_dim))                (row softmax over keys)
    y = concat_heads(A v) Wout + bout

The three projections run as one (B*N, D) x (D, 3D) product. The per-head products run image
block by image block on scratchvit's threads (``cpu.blockwise``), on contiguous copies of q, k^T
and v, each a whole (N x hd) x (hd x N) product with OpenBLAS held to one thread meanwhile
(``cpu.single_threaded_blas``). Only where OpenBLAS cannot be held (another BLAS) are they cut
into chunks of rows small enough for BLAS to run them on the calling thread (``cpu.SMALL_PRODUCT``).
"""
from __future__ import annotations

import math

from .. import cpu
from ..backend import get_xp
from ..cpu import blockwise, single_threaded_blas
from ..params import ATTN_PROJ
from .dense import sum_rows


def _softmax_rows(s):
    """Softmax over the last axis of ``s`` (any rank, rows contiguous), in place."""
    xp = get_xp(s)
    s -= s.max(axis=-1, keepdims=True)
    xp.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)


def _softmax_backward_rows(dp, p):
    """dp <- p * (dp - sum(dp * p)) over the last axis (any rank), in place."""
    xp = get_xp(dp)
    dp -= xp.einsum("...j,...j->...", dp, p)[..., None]
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


def _row_chunks(n_rows, n_cols, inner, xp, whole=False):
    """Slices of at most R rows such that an (R x inner) x (inner x n_cols) product is cpu.SMALL_PRODUCT
    or less: each per-head product then runs on the calling thread. One slice if ``whole`` (BLAS
    held to one thread) or on the GPU."""
    if whole or xp.__name__ != "numpy":
        return [slice(0, n_rows)]
    r = max(1, cpu.SMALL_PRODUCT // (n_cols * inner))
    return [slice(s, s + r) for s in range(0, n_rows, r)]


def _core_forward(qkv, q, kt, v, a, ctx, scale, whole):
    """softmax(q k^T / sqrt(hd)) v for a block of images, a chunk of query rows at a time.

    Args:
        qkv: (b, N, 3, H, hd) projections. Written here (outputs, contiguous, kept for the backward):
            q (b, H, N, hd) scaled queries, kt (b, H, hd, N) transposed keys, v (b, H, N, hd) values,
            a (b, H, N, N) attention weights; ctx (b, H, N, hd) is a view of the heads-side-by-side output.
    BLAS reads contiguous operands about twice as fast as strided transposed views, and the copies
    are made here, block by block, while the block is in the cache.
    """
    xp = get_xp(qkv)
    xp.multiply(qkv[:, :, 0].transpose(0, 2, 1, 3), scale, out=q)
    kt[...] = qkv[:, :, 1].transpose(0, 2, 3, 1)
    v[...] = qkv[:, :, 2].transpose(0, 2, 1, 3)
    for r in _row_chunks(q.shape[2], kt.shape[3], q.shape[3], xp, whole):
        xp.matmul(q[:, :, r], kt, out=a[:, :, r])  # scores of these queries, (b, H, R, N)
        _softmax_rows(a[:, :, r])
        xp.matmul(a[:, :, r], v, out=ctx[:, :, r])


def _core_backward(q, kt, v, a, dctx, dq, dk, dv, scale, whole):
    """Gradients through softmax(q k^T) v for a block of images (q already scaled):

        dA = dctx v^T,  dS = A * (dA - rowsum(dA * A)),  dq = dS k / sqrt(hd),
        dk = dS^T q,    dv = A^T dctx

    dA, dS and dq go by chunks of query rows, dk and dv by chunks of key rows (no partial sums).
    """
    xp = get_xp(q)
    N, hd = q.shape[2], q.shape[3]
    vt = xp.ascontiguousarray(v.transpose(0, 1, 3, 2))
    k = xp.ascontiguousarray(kt.transpose(0, 1, 3, 2))
    ds = xp.empty_like(a)
    for r in _row_chunks(N, N, hd, xp, whole):
        xp.matmul(dctx[:, :, r], vt, out=ds[:, :, r])  # dA
        _softmax_backward_rows(ds[:, :, r], a[:, :, r])  # dS, in place
        xp.matmul(ds[:, :, r], k, out=dq[:, :, r])
    dq *= scale
    ds_t, a_t = ds.transpose(0, 1, 3, 2), a.transpose(0, 1, 3, 2)
    for c in _row_chunks(N, hd, N, xp, whole):
        xp.matmul(ds_t[:, :, c], q, out=dk[:, :, c])
        xp.matmul(a_t[:, :, c], dctx, out=dv[:, :, c])


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
    w_qkv = xp.concatenate([p[f"{n}/kernel"].reshape(D, H * hd) for n in ATTN_PROJ[:3]], axis=1)
    b_qkv = xp.concatenate([p[f"{n}/bias"].reshape(H * hd) for n in ATTN_PROJ[:3]])
    x2d = x.reshape(B * N, D)
    qkv = x2d @ w_qkv
    qkv += b_qkv
    q = xp.empty((B, H, N, hd), dtype=x.dtype)
    kt = xp.empty((B, H, hd, N), dtype=x.dtype)
    v = xp.empty((B, H, N, hd), dtype=x.dtype)
    a = xp.empty((B, H, N, N), dtype=x.dtype)  # attention weights
    ctx = xp.empty((B, N, H, hd), dtype=x.dtype)  # heads side by side, ready for the out projection
    with single_threaded_blas() as whole:
        blockwise(lambda *blk: _core_forward(*blk, scale, whole), qkv.reshape(B, N, 3, H, hd), q, kt, v, a,
                  ctx.transpose(0, 2, 1, 3))
    ctx2d = ctx.reshape(B * N, H * hd)
    w_out = p["out/kernel"].reshape(H * hd, D)
    y = ctx2d @ w_out
    y += p["out/bias"]
    cache = (x2d, w_qkv, q, kt, v, a, ctx2d, w_out, (B, N, D, H, hd), scale)
    return y.reshape(B, N, D), cache


def attention_weights(cache):
    """The attention probabilities A = softmax(q k^T / sqrt(head_dim)) that :func:`attention_forward`
    computed, read from its cache: (B, heads, N, N), each row (last axis) sums to 1. For attention
    maps (:mod:`scratchvit.rollout`); the array is the cache's own, not a copy.
    """
    return cache[5]


def attention_backward(dy, cache):
    """Gradients of :func:`attention_forward`.

    Returns:
        dx (B, N, D) and a dict of parameter gradients with the same sub-names and shapes as ``p``.
    """
    xp = get_xp(dy)
    x2d, w_qkv, q, kt, v, a, ctx2d, w_out, (B, N, D, H, hd), scale = cache
    dy2d = dy.reshape(B * N, D)
    grads = {
        "out/kernel": (ctx2d.T @ dy2d).reshape(H, hd, D),
        "out/bias": sum_rows(dy2d),
    }
    dctx = (dy2d @ w_out.T).reshape(B, N, H, hd).transpose(0, 2, 1, 3)  # (B, H, N, hd) view
    dqkv = xp.empty((B, N, 3, H, hd), dtype=dy.dtype)
    dq, dk, dv = (dqkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    with single_threaded_blas() as whole:
        blockwise(lambda *blk: _core_backward(*blk, scale, whole), q, kt, v, a, dctx, dq, dk, dv)
    dqkv2d = dqkv.reshape(B * N, 3 * D)
    dw = x2d.T @ dqkv2d  # (D, 3D)
    db = sum_rows(dqkv2d)
    for i, n in enumerate(ATTN_PROJ[:3]):
        grads[f"{n}/kernel"] = dw[:, i * D:(i + 1) * D].reshape(D, H, hd)
        grads[f"{n}/bias"] = db[i * D:(i + 1) * D].reshape(H, hd)
    dx = (dqkv2d @ w_qkv.T).reshape(B, N, D)
    return dx, grads
