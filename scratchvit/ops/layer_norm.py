"""Layer normalisation over the last axis (Ba et al., 2016), as Flax ``nn.LayerNorm`` (epsilon 1e-6).

    y = x_hat * scale + bias,   x_hat = (x - mean) * rstd,   rstd = 1 / sqrt(var + eps)

The backward pass uses the standard closed form (g = dy * scale, means over the last axis):

    dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat))
    dscale = sum_rows(dy * x_hat),   dbias = sum_rows(dy)

Both passes run row block by row block (``cpu.blockwise``): each block's whole chain stays in
the cache, and the blocks are spread over the CPU's cores. Means over a row and sums over the
rows are matrix-vector products (BLAS) with a vector of 1/D or of ones: NumPy reduces a short
row (D of 64-768) several times slower than BLAS does. That is the NumPy fast form, taken for
float32/float64 NumPy arrays; every other array (CuPy, any array-API namespace, float16) takes the
plain form (:func:`layer_norm_forward_plain`), the equations above on the array API standard 2023.12.

Mixed precision: the plain form computes mean, variance, x_hat, y and the whole backward in float32
for float16 inputs (a float16 sum of squares overflows at 65504, e.g. for values ~300) and casts
y and dx back to float16, dscale and dbias to the scale's dtype.
"""
from __future__ import annotations

import numpy as np

from ..backend import namespace
from ..cpu import blockwise
from .common import fast_form, sum_rows, wide_dtype

EPS = 1e-6


def layer_norm_forward_plain(x, scale, bias, eps=EPS):
    """Plain form (array API) of :func:`layer_norm_forward`; statistics in float32 for float16 ``x``."""
    xp = namespace(x, scale, bias)
    wide = wide_dtype(xp, x.dtype)
    D = x.shape[-1]
    x2d = xp.astype(xp.reshape(x, (-1, D)), wide, copy=False)
    centred = x2d - xp.mean(x2d, axis=1, keepdims=True)
    rstd = 1.0 / xp.sqrt(xp.mean(centred * centred, axis=1, keepdims=True) + eps)
    x_hat = centred * rstd
    y = x_hat * xp.astype(scale, wide, copy=False) + xp.astype(bias, wide, copy=False)
    return xp.reshape(xp.astype(y, x.dtype, copy=False), x.shape), (x_hat, rstd, scale, x.shape)


def layer_norm_backward_plain(dy, cache):
    """Plain form (array API) of :func:`layer_norm_backward`; computed in float32 for float16 ``dy``."""
    x_hat, rstd, scale, shape = cache
    xp = namespace(dy, x_hat, scale)
    wide = x_hat.dtype
    dy2d = xp.astype(xp.reshape(dy, x_hat.shape), wide, copy=False)
    g = dy2d * xp.astype(scale, wide, copy=False)
    dx = rstd * (g - xp.mean(g, axis=1, keepdims=True) - x_hat * xp.mean(g * x_hat, axis=1, keepdims=True))
    dscale = xp.astype(xp.sum(dy2d * x_hat, axis=0), scale.dtype)
    dbias = xp.astype(xp.sum(dy2d, axis=0), scale.dtype)
    return xp.reshape(xp.astype(dx, dy.dtype, copy=False), shape), dscale, dbias


def _forward_rows(x, x_hat, y, rstd, scale, bias, eps):
    xp = np
    inv_d = xp.full(x.shape[-1], 1.0 / x.shape[-1], dtype=x.dtype)
    xp.subtract(x, (x @ inv_d)[:, None], out=x_hat)  # x - mean
    var = xp.einsum("ij,ij->i", x_hat, x_hat)[:, None]
    var *= inv_d[0]
    var += eps
    xp.sqrt(var, out=var)
    xp.divide(1.0, var, out=rstd)
    x_hat *= rstd
    xp.multiply(x_hat, scale, out=y)
    y += bias


def _layer_norm_forward_numpy(x, scale, bias, eps=EPS):
    xp = np
    D = x.shape[-1]
    x2d = x.reshape(-1, D)
    x_hat, y = xp.empty_like(x2d), xp.empty_like(x2d)
    rstd = xp.empty((x2d.shape[0], 1), dtype=x.dtype)
    blockwise(lambda *b: _forward_rows(*b, scale, bias, eps), x2d, x_hat, y, rstd)
    return y.reshape(x.shape), (x_hat, rstd, scale, x.shape)


def _backward_rows(dy, x_hat, rstd, dx, scale):
    xp = np
    inv_d = xp.full(dy.shape[-1], 1.0 / dy.shape[-1], dtype=dy.dtype)
    dscale = xp.einsum("ij,ij->j", dy, x_hat)
    dbias = sum_rows(dy)
    xp.multiply(dy, scale, out=dx)  # g
    mean_gx = xp.einsum("ij,ij->i", dx, x_hat)[:, None]
    mean_gx *= inv_d[0]
    dx -= (dx @ inv_d)[:, None]  # g - mean(g)
    dx -= x_hat * mean_gx
    dx *= rstd
    return dscale, dbias


def _layer_norm_backward_numpy(dy, cache):
    x_hat, rstd, scale, shape = cache
    xp = np
    dy2d = dy.reshape(x_hat.shape)
    dx = xp.empty_like(dy2d)
    partial = blockwise(lambda *b: _backward_rows(*b, scale), dy2d, x_hat, rstd, dx)
    dscale = partial[0][0].copy()
    dbias = partial[0][1].copy()
    for ds, db in partial[1:]:
        dscale += ds
        dbias += db
    return dx.reshape(shape), dscale, dbias


def layer_norm_forward(x, scale, bias, eps=EPS):
    """Normalise each row of ``x`` (..., D) to zero mean and unit variance, then scale and shift (Ba et
    al. 2016; vit_jax ``Encoder1DBlock``/``Encoder`` ``nn.LayerNorm``, paper Eq. 2-4).

    Args:
        x: (..., D) float16/float32/float64. scale, bias: (D,), same namespace and device.

    Returns:
        y (..., D), x's dtype, and the cache for the backward: (x_hat (rows, D), rstd (rows, 1), scale,
        shape), x_hat and rstd in float32 for a float16 ``x``.

    Raises:
        TypeError: arrays of different libraries; ValueError: (array-api-strict) arrays on different devices.
    """
    if fast_form(namespace(x, scale, bias), x, scale, bias):
        return _layer_norm_forward_numpy(x, scale, bias, eps)
    return layer_norm_forward_plain(x, scale, bias, eps)


def layer_norm_backward(dy, cache):
    """Gradients of :func:`layer_norm_forward` (closed form in the module docstring).

    Returns:
        (dx (..., D), dy's dtype; dscale (D,), dbias (D,), the scale's dtype).

    Raises:
        TypeError / ValueError: ``dy`` of another library / device than the cache.
    """
    x_hat, _, scale, _ = cache
    if fast_form(namespace(dy, x_hat, scale), dy, x_hat, scale):
        return _layer_norm_backward_numpy(dy, cache)
    return layer_norm_backward_plain(dy, cache)
