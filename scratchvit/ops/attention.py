"""Multi-head self-attention (Vaswani et al., 2017; paper Eq. 2-3 and Appendix A), with its backward pass.

Official parameters (Flax ``nn.MultiHeadDotProductAttention``, pre-Linen names):
``query|key|value/kernel`` (D, heads, head_dim), ``query|key|value/bias`` (heads, head_dim),
``out/kernel`` (heads, head_dim, D), ``out/bias`` (D,).

    q, k, v = x Wq + bq, x Wk + bk, x Wv + bv          (per head, head_dim each)
    A = softmax(q k^T / sqrt(head_dim))                (row softmax over keys)
    y = concat_heads(A v) Wout + bout

The three projections run as one (B*N, D) x (D, 3D) product, with 1/sqrt(head_dim) folded into
the query kernel and bias. The per-head products run image block by image block on scratchvit's
threads (``cpu.blockwise``), straight on (N, hd) views of that product (no copies: BLAS takes the
row stride 3D as its leading dimension), each a whole (N x hd) x (hd x N) product with OpenBLAS
held to one thread meanwhile (``cpu.single_threaded_blas``). Only where OpenBLAS cannot be held
(another BLAS) are they cut into chunks of rows small enough for BLAS to run them on the calling
thread (``cpu.SMALL_PRODUCT``). The softmax takes exp without the row max when the scores are in
range (:func:`_softmax_rows`).
"""
from __future__ import annotations

import math

from .. import cpu
from ..backend import get_xp
from ..cpu import blockwise, single_threaded_blas
from ..params import ATTN_PROJ
from .dense import sum_rows

# exp(x) is finite and normal in float32 for |x| <= 64 (e^64 ~ 6.2e27, e^-64 ~ 1.6e-28): a row of entries in
# [-64, 64] sums, without the max subtracted, to between e^-64 and N e^64, far inside float32's range for any N.
EXP_SAFE = 64.0


def _softmax_rows(s):
    """Softmax over the last axis of ``s`` (any rank), in place.

    Softmax is unchanged by subtracting a constant from a row; the usual row max is subtracted only
    to keep exp in range. On the CPU a max over each short row costs more than the exp itself, so
    when the whole block already lies in [-EXP_SAFE, EXP_SAFE] (two whole-array reductions, cheap)
    exp is taken directly; otherwise (and on the GPU) the row max is subtracted. The row sums are one
    matrix-vector product (BLAS) instead of a reduction over short rows.
    """
    xp = get_xp(s)
    if xp.__name__ != "numpy" or not (-EXP_SAFE <= s.min() and s.max() <= EXP_SAFE):  # NaN: not in range
        s -= s.max(axis=-1, keepdims=True)
    xp.exp(s, out=s)
    rows = s.reshape(-1, s.shape[-1]) if s.flags.c_contiguous else s
    inv_sum = rows @ xp.ones(s.shape[-1], dtype=s.dtype)
    xp.reciprocal(inv_sum, out=inv_sum)
    rows *= inv_sum[..., None]


def _softmax_backward_rows(dp, p):
    """dp <- p * (dp - sum(dp * p)) over the last axis (any rank), in place."""
    xp = get_xp(dp)
    dp -= xp.einsum("...j,...j->...", dp, p)[..., None]
    dp *= p


def softmax_forward(s):
    """Row softmax over the last axis, in place in ``s`` (C-contiguous float, any rank), stable for any
    input (see :func:`_softmax_rows`). Returns ``s``.

    Raises:
        ValueError: ``s`` is not C-contiguous.
    """
    if not s.flags.c_contiguous:
        raise ValueError("softmax_forward works in place and needs a C-contiguous array")
    blockwise(_softmax_rows, s.reshape(-1, s.shape[-1]))
    return s


def softmax_backward(dp, p):
    """Gradient of the row softmax, ds = p * (dp - sum(dp * p)), in place in ``dp`` (C-contiguous, the shape
    of ``p``, the softmax output). Returns ``dp``.

    Raises:
        ValueError: ``dp`` is not C-contiguous.
    """
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


def _heads(qkv):
    """q, k, v of a (b, N, 3, H, hd) block of projections as (b, H, N, hd) views (no copy): each
    (N, hd) matrix has its rows 3D apart, a layout BLAS reads directly (leading dimension 3D)."""
    return (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))


def _core_forward(qkv, a, ctx, whole):
    """A = softmax(q k^T) and ctx = A v for a block of images, a chunk of query rows at a time.

    Args:
        qkv: (b, N, 3, H, hd) projections, the queries already scaled by 1/sqrt(hd).
        a: (b, H, N, N) output, the attention weights (kept for the backward).
        ctx: (b, H, N, hd) output, a view of the heads-side-by-side (b, N, H, hd) array.
    """
    xp = get_xp(qkv)
    q, k, v = _heads(qkv)
    kt = k.transpose(0, 1, 3, 2)
    for r in _row_chunks(q.shape[2], q.shape[2], q.shape[3], xp, whole):
        xp.matmul(q[:, :, r], kt, out=a[:, :, r])  # scores of these queries, (b, H, R, N)
        _softmax_rows(a[:, :, r])
        xp.matmul(a[:, :, r], v, out=ctx[:, :, r])


def _core_backward(qkv, a, dctx, dqkv, whole):
    """Gradients through softmax(q k^T) v for a block of images (q already scaled), into ``dqkv``
    (b, N, 3, H, hd), the same layout as ``qkv``:

        dA = dctx v^T,  dS = A * (dA - rowsum(dA * A)),  dq = dS k,  dk = dS^T q,  dv = A^T dctx

    dA, dS and dq go by chunks of query rows, dk and dv by chunks of key rows (no partial sums).
    """
    xp = get_xp(qkv)
    q, k, v = _heads(qkv)
    dq, dk, dv = _heads(dqkv)
    N, hd = q.shape[2], q.shape[3]
    ds = xp.empty_like(a)
    vt = v.transpose(0, 1, 3, 2)
    for r in _row_chunks(N, N, hd, xp, whole):
        xp.matmul(dctx[:, :, r], vt, out=ds[:, :, r])  # dA
        _softmax_backward_rows(ds[:, :, r], a[:, :, r])  # dS, in place
        xp.matmul(ds[:, :, r], k, out=dq[:, :, r])
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
    # q k^T / sqrt(hd) = (x Wq s + bq s) k^T: the scale s is folded into the query projection.
    w_qkv = xp.concatenate([p[f"{n}/kernel"].reshape(D, H * hd) for n in ATTN_PROJ[:3]], axis=1)
    b_qkv = xp.concatenate([p[f"{n}/bias"].reshape(H * hd) for n in ATTN_PROJ[:3]])
    w_qkv[:, :D] *= scale
    b_qkv[:D] *= scale
    x2d = x.reshape(B * N, D)
    qkv = x2d @ w_qkv
    qkv += b_qkv
    a = xp.empty((B, H, N, N), dtype=x.dtype)  # attention weights
    ctx = xp.empty((B, N, H, hd), dtype=x.dtype)  # heads side by side, ready for the out projection
    with single_threaded_blas() as whole:
        blockwise(lambda *blk: _core_forward(*blk, whole), qkv.reshape(B, N, 3, H, hd), a, ctx.transpose(0, 2, 1, 3))
    ctx2d = ctx.reshape(B * N, H * hd)
    w_out = p["out/kernel"].reshape(H * hd, D)
    y = ctx2d @ w_out
    y += p["out/bias"]
    cache = (x2d, w_qkv, qkv, a, ctx2d, w_out, (B, N, D, H, hd), scale)
    return y.reshape(B, N, D), cache


def attention_weights(cache):
    """The attention probabilities A = softmax(q k^T / sqrt(head_dim)) that :func:`attention_forward`
    computed, read from its cache: (B, heads, N, N), each row (last axis) sums to 1. For attention
    maps (:mod:`scratchvit.rollout`); the array is the cache's own, not a copy.
    """
    return cache[3]


def attention_backward(dy, cache):
    """Gradients of :func:`attention_forward`.

    Returns:
        dx (B, N, D) and a dict of parameter gradients with the same sub-names and shapes as ``p``.
    """
    xp = get_xp(dy)
    x2d, w_qkv, qkv, a, ctx2d, w_out, (B, N, D, H, hd), scale = cache
    dy2d = dy.reshape(B * N, D)
    grads = {
        "out/kernel": (ctx2d.T @ dy2d).reshape(H, hd, D),
        "out/bias": sum_rows(dy2d),
    }
    dctx = (dy2d @ w_out.T).reshape(B, N, H, hd).transpose(0, 2, 1, 3)  # (B, H, N, hd) view
    dqkv = xp.empty((B, N, 3, H, hd), dtype=dy.dtype)  # gradients of the scaled q, of k and v
    with single_threaded_blas() as whole:
        blockwise(lambda *blk: _core_backward(*blk, whole), qkv.reshape(B, N, 3, H, hd), a, dctx, dqkv)
    dqkv2d = dqkv.reshape(B * N, 3 * D)
    dw = x2d.T @ dqkv2d  # (D, 3D)
    db = sum_rows(dqkv2d)
    dw[:, :D] *= scale  # back through the scale folded into the query projection
    db[:D] *= scale
    for i, n in enumerate(ATTN_PROJ[:3]):
        grads[f"{n}/kernel"] = dw[:, i * D:(i + 1) * D].reshape(D, H, hd)
        grads[f"{n}/bias"] = db[i * D:(i + 1) * D].reshape(H, hd)
    dx = (dqkv2d @ w_qkv.T).reshape(B, N, D)  # w_qkv holds the scaled query kernel, as the forward used
    return dx, grads
