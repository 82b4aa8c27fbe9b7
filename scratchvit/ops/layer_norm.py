"""Layer normalisation over the last axis (Ba et al., 2016), as Flax ``nn.LayerNorm`` (epsilon 1e-6).

    y = x_hat * scale + bias,   x_hat = (x - mean) * rstd,   rstd = 1 / sqrt(var + eps)

The backward pass uses the standard closed form (g = dy * scale, means over the last axis):

    dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat))
    dscale = sum_rows(dy * x_hat),   dbias = sum_rows(dy)

Both passes run row block by row block (``cpu.blockwise``): each block's whole chain stays in
the cache, and the blocks are spread over the CPU's cores. Means over a row and sums over the
rows are matrix-vector products (BLAS) with a vector of 1/D or of ones: NumPy reduces a short
row (D of 64-768) several times slower than BLAS does.
"""
from __future__ import annotations

from ..backend import get_xp
from ..cpu import blockwise
from .dense import sum_rows

EPS = 1e-6


def _forward_rows(x, x_hat, y, rstd, scale, bias, eps):
    xp = get_xp(x)
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


def layer_norm_forward(x, scale, bias, eps=EPS):
    """Normalise each row of ``x`` (..., D) to zero mean and unit variance, then scale and shift.

    Args:
        x: (..., D) float32/float64. scale, bias: (D,).

    Returns:
        y (..., D) and the cache (x_hat (rows, D), rstd (rows, 1), scale, shape) for the backward.
    """
    xp = get_xp(x)
    D = x.shape[-1]
    x2d = x.reshape(-1, D)
    x_hat, y = xp.empty_like(x2d), xp.empty_like(x2d)
    rstd = xp.empty((x2d.shape[0], 1), dtype=x.dtype)
    blockwise(lambda *b: _forward_rows(*b, scale, bias, eps), x2d, x_hat, y, rstd)
    return y.reshape(x.shape), (x_hat, rstd, scale, x.shape)


def _backward_rows(dy, x_hat, rstd, dx, scale):
    xp = get_xp(dy)
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


def layer_norm_backward(dy, cache):
    """Gradients of :func:`layer_norm_forward`.

    Returns:
        (dx (..., D), dscale (D,), dbias (D,)).
    """
    x_hat, rstd, scale, shape = cache
    xp = get_xp(dy)
    dy2d = dy.reshape(x_hat.shape)
    dx = xp.empty_like(dy2d)
    partial = blockwise(lambda *b: _backward_rows(*b, scale), dy2d, x_hat, rstd, dx)
    dscale = partial[0][0].copy()
    dbias = partial[0][1].copy()
    for ds, db in partial[1:]:
        dscale += ds
        dbias += db
    return dx.reshape(shape), dscale, dbias
