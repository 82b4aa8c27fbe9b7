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
range (:func:`_softmax_rows`). That is the NumPy fast form, taken for float32/float64 NumPy arrays.

Every other array (CuPy, any array-API namespace, float16 NumPy) takes the plain form
(:func:`attention_forward_plain`), the equations above on the array API standard 2023.12, one
batched matrix product per step over (B, H, N, hd) arrays. Mixed precision: for float16 inputs the
plain form takes the softmax and its backward in float32 (the scores are cast up, the weights cast
back down), and sums the bias gradients in float32; everything else stays float16.
"""
from __future__ import annotations

import math

import numpy as np

from .. import cpu
from ..backend import namespace
from ..cpu import blockwise, single_threaded_blas
from ..params import ATTN_PROJ
from ..rng import RngKey, drop_mask
from .common import fast_form, matmul, sum_rows, sum_rows_plain, wide_dtype

# exp(x) is finite and normal in float32 for |x| <= 64 (e^64 ~ 6.2e27, e^-64 ~ 1.6e-28): a row of entries in
# [-64, 64] sums, without the max subtracted, to between e^-64 and N e^64, far inside float32's range for any N.
EXP_SAFE = 64.0


def softmax_forward_plain(s):
    """Plain form (array API): softmax over the last axis, p = exp(s - max s) / sum exp(s - max s), a new
    array of ``s``'s dtype; computed in float32 for float16 ``s``."""
    xp = namespace(s)
    w = xp.astype(s, wide_dtype(xp, s.dtype), copy=False)
    e = xp.exp(w - xp.max(w, axis=-1, keepdims=True))
    return xp.astype(e / xp.sum(e, axis=-1, keepdims=True), s.dtype, copy=False)


def softmax_backward_plain(dp, p):
    """Plain form (array API): ds = p * (dp - sum(dp * p)) over the last axis, a new array of ``dp``'s dtype;
    computed in float32 for float16."""
    xp = namespace(dp, p)
    wide = wide_dtype(xp, dp.dtype)
    dw, pw = xp.astype(dp, wide, copy=False), xp.astype(p, wide, copy=False)
    return xp.astype(pw * (dw - xp.sum(dw * pw, axis=-1, keepdims=True)), dp.dtype, copy=False)


def _softmax_rows(s):
    """Softmax over the last axis of ``s`` (any rank), in place.

    Softmax is unchanged by subtracting a constant from a row; the usual row max is subtracted only
    to keep exp in range. On the CPU a max over each short row costs more than the exp itself, so
    when the whole block already lies in [-EXP_SAFE, EXP_SAFE] (two whole-array reductions, cheap)
    exp is taken directly; otherwise (and on the GPU) the row max is subtracted. The row sums are one
    matrix-vector product (BLAS) instead of a reduction over short rows.
    """
    xp = np
    if not (-EXP_SAFE <= s.min() and s.max() <= EXP_SAFE):  # NaN: not in range
        s -= s.max(axis=-1, keepdims=True)
    xp.exp(s, out=s)
    rows = s.reshape(-1, s.shape[-1]) if s.flags.c_contiguous else s
    inv_sum = rows @ xp.ones(s.shape[-1], dtype=s.dtype)
    xp.reciprocal(inv_sum, out=inv_sum)
    rows *= inv_sum[..., None]


def _softmax_backward_rows(dp, p):
    """dp <- p * (dp - sum(dp * p)) over the last axis (any rank), in place."""
    xp = np
    dp -= xp.einsum("...j,...j->...", dp, p)[..., None]
    dp *= p


def softmax_forward(s):
    """Row softmax over the last axis, p = exp(s - max s) / sum exp(s - max s), any rank, stable for any
    input (the attention softmax of paper Eq. 2 / Appendix A). Returns the softmax.

    A float32/float64 NumPy ``s`` (C-contiguous) is overwritten and returned (see :func:`_softmax_rows`);
    any other array (CuPy, any array-API namespace, float16) is left alone and a new array of its dtype is
    returned (:func:`softmax_forward_plain`, float32 inside for float16). Use the return value.

    Raises:
        ValueError: a float32/float64 NumPy ``s`` that is not C-contiguous.
    """
    if fast_form(namespace(s), s):
        if not s.flags.c_contiguous:
            raise ValueError("softmax_forward works in place and needs a C-contiguous array")
        blockwise(_softmax_rows, s.reshape(-1, s.shape[-1]))
        return s
    return softmax_forward_plain(s)


def softmax_backward(dp, p):
    """Gradient of the row softmax, ds = p * (dp - sum(dp * p)) over the last axis, ``dp`` of the shape of
    ``p`` (the softmax output). Returns ds: in place in ``dp`` for float32/float64 NumPy (C-contiguous),
    a new array otherwise (:func:`softmax_backward_plain`). Use the return value.

    Raises:
        ValueError: a float32/float64 NumPy ``dp`` that is not C-contiguous.
    """
    if fast_form(namespace(dp, p), dp, p):
        if not dp.flags.c_contiguous:
            raise ValueError("softmax_backward works in place and needs a C-contiguous array")
        blockwise(_softmax_backward_rows, dp.reshape(-1, dp.shape[-1]), p.reshape(-1, p.shape[-1]))
        return dp
    return softmax_backward_plain(dp, p)


def _dropout_multiplier(x, heads: int, rate: float, key: RngKey | None, site_id: int):
    """The attention-dropout multiplier M of ``x`` (B, N, D)'s weights: (B, heads, N, N), x's dtype, namespace
    and device, 0 where dropped and 1 / (1 - rate) where kept, drawn from (``key``, ``site_id``) by
    :func:`scratchvit.rng.drop_mask` as every mask of the model; None when nothing drops (rate 0, no key)."""
    return drop_mask(x, key, site_id, (x.shape[0], heads, x.shape[1], x.shape[1]), rate)


def attention_forward_plain(x, p, rate: float = 0.0, key: RngKey | None = None, site_id: int = 0):
    """Plain form (array API) of :func:`attention_forward`; its cache is a dict, read by
    :func:`attention_backward_plain` and :func:`attention_weights`.

        q = (x Wq + bq) / sqrt(hd),  k = x Wk + bk,  v = x Wv + bv      (B, H, N, hd) each
        A = softmax(q k^T)  (float32 for float16 inputs),  ctx = (A * keep) v,  y = concat_heads(ctx) Wout + bout
    """
    xp = namespace(x, *p.values())
    B, N, D = x.shape
    _, H, hd = p["query/kernel"].shape
    scale = 1.0 / math.sqrt(hd)
    keep = _dropout_multiplier(x, H, rate, key, site_id)
    x2d = xp.reshape(x, (B * N, D))

    def project(name):  # x W + b, as (B, H, N, hd)
        h = matmul(x2d, xp.reshape(p[f"{name}/kernel"], (D, H * hd))) + xp.reshape(p[f"{name}/bias"], (H * hd,))
        return xp.permute_dims(xp.reshape(h, (B, N, H, hd)), (0, 2, 1, 3))

    q, k, v = project("query") * scale, project("key"), project("value")
    a = softmax_forward_plain(matmul(q, k.mT))  # (B, H, N, N)
    weights = a if keep is None else a * keep  # attention dropout on the probabilities
    ctx2d = xp.reshape(xp.permute_dims(matmul(weights, v), (0, 2, 1, 3)), (B * N, H * hd))  # heads side by side
    y = matmul(ctx2d, xp.reshape(p["out/kernel"], (H * hd, D))) + p["out/bias"]
    cache = {"x2d": x2d, "p": p, "q": q, "k": k, "v": v, "a": a, "ctx2d": ctx2d, "scale": scale, "keep": keep}
    return xp.reshape(y, (B, N, D)), cache


def attention_backward_plain(dy, cache):
    """Plain form (array API) of :func:`attention_backward`, for a cache of :func:`attention_forward_plain`:

        dWout = ctx^T dy,  dbout = sum_rows dy,  dctx = dy Wout^T
        dA = (dctx v^T) * keep,  dS = A * (dA - rowsum(dA * A))  (float32 for float16),  dv = (A * keep)^T dctx
        dq = dS k / sqrt(hd),  dk = dS^T q   (q scaled),  dW = x^T dproj,  db = sum_rows dproj,  dx = sum dproj W^T
    """
    x2d, p, q, k, v, a, ctx2d, scale = (cache[n] for n in ("x2d", "p", "q", "k", "v", "a", "ctx2d", "scale"))
    xp = namespace(dy, x2d)
    B, H, N, hd = q.shape
    D = x2d.shape[1]
    dy2d = xp.reshape(dy, (B * N, D))
    w_out = xp.reshape(p["out/kernel"], (H * hd, D))
    grads = {
        "out/kernel": xp.reshape(matmul(ctx2d.mT, dy2d), (H, hd, D)),
        "out/bias": sum_rows_plain(dy2d, p["out/bias"].dtype),
    }
    dctx = xp.permute_dims(xp.reshape(matmul(dy2d, w_out.mT), (B, N, H, hd)), (0, 2, 1, 3))
    keep = cache["keep"]
    da = matmul(dctx, v.mT)
    weights = a
    if keep is not None:  # attention dropout: through the multiplier
        da, weights = da * keep, a * keep
    ds = softmax_backward_plain(da, a)  # (B, H, N, N)
    dproj = {"query": matmul(ds, k) * scale, "key": matmul(ds.mT, q), "value": matmul(weights.mT, dctx)}
    dx = None
    for name, d in dproj.items():
        d2d = xp.reshape(xp.permute_dims(d, (0, 2, 1, 3)), (B * N, H * hd))
        kernel = p[f"{name}/kernel"]
        grads[f"{name}/kernel"] = xp.reshape(matmul(x2d.mT, d2d), (D, H, hd))
        grads[f"{name}/bias"] = xp.reshape(sum_rows_plain(d2d, p[f"{name}/bias"].dtype), (H, hd))
        dx_n = matmul(d2d, xp.reshape(kernel, (D, H * hd)).mT)
        dx = dx_n if dx is None else dx + dx_n
    return xp.reshape(dx, (B, N, D)), grads


def _row_chunks(n_rows, n_cols, inner, whole=False):
    """Slices of at most R rows such that an (R x inner) x (inner x n_cols) product is cpu.SMALL_PRODUCT
    or less: each per-head product then runs on the calling thread. One slice if ``whole`` (BLAS
    held to one thread)."""
    if whole:
        return [slice(0, n_rows)]
    r = max(1, cpu.SMALL_PRODUCT // (n_cols * inner))
    return [slice(s, s + r) for s in range(0, n_rows, r)]


def _heads(qkv):
    """q, k, v of a (b, N, 3, H, hd) block of projections as (b, H, N, hd) views (no copy): each
    (N, hd) matrix has its rows 3D apart, a layout BLAS reads directly (leading dimension 3D)."""
    return (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))


def _core_forward(qkv, a, ctx, whole, keep=None):
    """A = softmax(q k^T) and ctx = A v (ctx = (A * keep) v with attention dropout) for a block of images,
    a chunk of query rows at a time.

    Args:
        qkv: (b, N, 3, H, hd) projections, the queries already scaled by 1/sqrt(hd).
        a: (b, H, N, N) output, the attention weights (kept for the backward; never dropped).
        ctx: (b, H, N, hd) output, a view of the heads-side-by-side (b, N, H, hd) array.
        keep: (b, H, N, N) dropout multiplier of the weights, or None.
    """
    xp = np
    q, k, v = _heads(qkv)
    kt = k.transpose(0, 1, 3, 2)
    for r in _row_chunks(q.shape[2], q.shape[2], q.shape[3], whole):
        xp.matmul(q[:, :, r], kt, out=a[:, :, r])  # scores of these queries, (b, H, R, N)
        _softmax_rows(a[:, :, r])
        weights = a[:, :, r] if keep is None else a[:, :, r] * keep[:, :, r]
        xp.matmul(weights, v, out=ctx[:, :, r])


def _core_backward(qkv, a, dctx, dqkv, whole, keep=None):
    """Gradients through softmax(q k^T) v for a block of images (q already scaled), into ``dqkv``
    (b, N, 3, H, hd), the same layout as ``qkv``:

        dA = dctx v^T,  dS = A * (dA - rowsum(dA * A)),  dq = dS k,  dk = dS^T q,  dv = A^T dctx

    With attention dropout (``keep``, the forward's multiplier M): dA = (dctx v^T) * M and dv = (A * M)^T dctx.
    dA, dS and dq go by chunks of query rows, dk and dv by chunks of key rows (no partial sums).
    """
    xp = np
    q, k, v = _heads(qkv)
    dq, dk, dv = _heads(dqkv)
    N, hd = q.shape[2], q.shape[3]
    ds = xp.empty_like(a)
    vt = v.transpose(0, 1, 3, 2)
    for r in _row_chunks(N, N, hd, whole):
        xp.matmul(dctx[:, :, r], vt, out=ds[:, :, r])  # dA
        if keep is not None:
            ds[:, :, r] *= keep[:, :, r]
        _softmax_backward_rows(ds[:, :, r], a[:, :, r])  # dS, in place
        xp.matmul(ds[:, :, r], k, out=dq[:, :, r])
    ds_t, a_t = ds.transpose(0, 1, 3, 2), a.transpose(0, 1, 3, 2)
    for c in _row_chunks(N, hd, N, whole):
        xp.matmul(ds_t[:, :, c], q, out=dk[:, :, c])
        weights_t = a_t[:, :, c] if keep is None else (a[:, :, :, c] * keep[:, :, :, c]).transpose(0, 1, 3, 2)
        xp.matmul(weights_t, dctx, out=dv[:, :, c])


def _attention_forward_numpy(x, p, keep):
    xp = np
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
        blocks = (qkv.reshape(B, N, 3, H, hd), a, ctx.transpose(0, 2, 1, 3))
        if keep is None:
            blockwise(lambda *blk: _core_forward(*blk, whole), *blocks)
        else:
            blockwise(lambda *blk: _core_forward(*blk[:3], whole, blk[3]), *blocks, keep)
    ctx2d = ctx.reshape(B * N, H * hd)
    w_out = p["out/kernel"].reshape(H * hd, D)
    y = ctx2d @ w_out
    y += p["out/bias"]
    cache = (x2d, w_qkv, qkv, a, ctx2d, w_out, (B, N, D, H, hd), scale, keep)
    return y.reshape(B, N, D), cache


def _attention_backward_numpy(dy, cache):
    xp = np
    x2d, w_qkv, qkv, a, ctx2d, w_out, (B, N, D, H, hd), scale, keep = cache
    dy2d = dy.reshape(B * N, D)
    grads = {
        "out/kernel": (ctx2d.T @ dy2d).reshape(H, hd, D),
        "out/bias": sum_rows(dy2d),
    }
    dctx = (dy2d @ w_out.T).reshape(B, N, H, hd).transpose(0, 2, 1, 3)  # (B, H, N, hd) view
    dqkv = xp.empty((B, N, 3, H, hd), dtype=dy.dtype)  # gradients of the scaled q, of k and v
    with single_threaded_blas() as whole:
        blocks = (qkv.reshape(B, N, 3, H, hd), a, dctx, dqkv)
        if keep is None:
            blockwise(lambda *blk: _core_backward(*blk, whole), *blocks)
        else:
            blockwise(lambda *blk: _core_backward(*blk[:4], whole, blk[4]), *blocks, keep)
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


def attention_forward(x, p, rate: float = 0.0, key: RngKey | None = None, site_id: int = 0):
    """Multi-head self-attention on ``x`` (B, N, D) (paper Eq. 2 and Appendix A; vit_jax ``Encoder1DBlock``,
    Flax ``nn.MultiHeadDotProductAttention``).

    Args:
        x: (B, N, D) float16/float32/float64.
        p: dict with the official sub-names "query/kernel", "query/bias", "key/...", "value/...",
           "out/kernel", "out/bias" (shapes as in the module docstring), x's namespace, device and dtype.
        rate, key, site_id: attention dropout (Flax ``nn.MultiHeadDotProductAttention(dropout_rate=...)``,
           which drops the probabilities before they weight the values): each weight dropped with probability
           ``rate`` in [0, 1), the mask M (B, H, N, N) drawn from the :class:`~scratchvit.rng.RngKey` ``key`` and
           the site ``site_id`` (:func:`scratchvit.rng.site`) as the dropout masks are; ``rate`` 0 or ``key``
           None: no dropout. ctx = (A * M) v; the cached weights (:func:`attention_weights`) stay A.

    Returns:
        y (B, N, D), x's dtype, and the cache for :func:`attention_backward` (a tuple for the NumPy fast
        form, a dict for the plain form).

    Raises:
        TypeError: arrays of different libraries; ValueError: (array-api-strict) arrays on different devices,
        or ``rate`` outside [0, 1).
    """
    if fast_form(namespace(x, *p.values()), x, *p.values()):
        return _attention_forward_numpy(x, p, _dropout_multiplier(x, p["query/kernel"].shape[1], rate, key, site_id))
    return attention_forward_plain(x, p, rate, key, site_id)


def attention_backward(dy, cache):
    """Gradients of :func:`attention_forward` (the form its forward took, told by the cache).

    Args:
        dy: (B, N, D), the forward input's dtype, namespace and device.

    Returns:
        dx (B, N, D) and a dict of parameter gradients with the same sub-names, shapes and dtypes as ``p``.

    Raises:
        TypeError / ValueError: ``dy`` of another library / device than the cache.
    """
    if isinstance(cache, dict):
        return attention_backward_plain(dy, cache)
    return _attention_backward_numpy(dy, cache)


def attention_weights(cache):
    """The attention probabilities A = softmax(q k^T / sqrt(head_dim)) that :func:`attention_forward`
    computed, read from its cache: (B, heads, N, N), each row (last axis) sums to 1. For attention
    maps (:mod:`scratchvit.rollout`); the array is the cache's own, not a copy. Either form's cache;
    the forward input's dtype and namespace.
    """
    return cache["a"] if isinstance(cache, dict) else cache[3]
