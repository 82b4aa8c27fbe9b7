"""Dense (fully connected) layer over the last axis: ``y = x @ W + b``.

Official convention (Flax ``nn.Dense``): kernel of shape (in, out). Every product is a 2-D
BLAS call on the (rows, in) view of the input, whatever its leading axes.
"""
from __future__ import annotations

from ..backend import get_xp


def sum_rows(a2d):
    """Column sums of a 2-D array (rows, n) -> (n,), as one BLAS matrix-vector product ones @ a2d.

    Used for every bias gradient: on the CPU a gemv is 2-4x faster than ``a2d.sum(axis=0)``
    (measured on (3136, 64-192) float32 blocks, one thread); the same sum in another order.
    """
    return get_xp(a2d).ones(a2d.shape[0], dtype=a2d.dtype) @ a2d


def dense_forward(x, kernel, bias):
    """y = x @ kernel + bias over the last axis.

    Args:
        x: (..., in) float array.
        kernel: (in, out), same dtype.
        bias: (out,) or None.

    Returns:
        y: (..., out); cache: what :func:`dense_backward` needs (the 2-D input view and the kernel).
    """
    x2d = x.reshape(-1, x.shape[-1])
    y = x2d @ kernel
    if bias is not None:
        y += bias
    return y.reshape(*x.shape[:-1], kernel.shape[1]), (x2d, kernel, x.shape)


def dense_backward(dy, cache, need_dx=True):
    """Gradients of :func:`dense_forward`.

    dx = dy @ W^T, dW = x^T @ dy, db = sum_rows dy.

    Args:
        dy: (..., out) upstream gradient.
        cache: from :func:`dense_forward`.
        need_dx: skip the input gradient (e.g. for the first layer of the network).

    Returns:
        (dx (..., in) or None, dkernel (in, out), dbias (out,)).
    """
    x2d, kernel, xshape = cache
    dy2d = dy.reshape(-1, dy.shape[-1])
    dkernel = x2d.T @ dy2d
    dbias = sum_rows(dy2d)
    dx = (dy2d @ kernel.T).reshape(xshape) if need_dx else None
    return dx, dkernel, dbias
