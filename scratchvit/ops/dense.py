"""Dense (fully connected) layer over the last axis: ``y = x @ W + b``.

Official convention (Flax ``nn.Dense``): kernel of shape (in, out). Every product is a 2-D
matrix product on the (rows, in) view of the input, whatever its leading axes.

Two forms, as every op in :mod:`scratchvit.ops`:

* the plain form (:func:`dense_forward_plain`, :func:`dense_backward_plain`), written on the
  Python array API standard 2023.12: what CuPy, array-api-strict and float16 NumPy arrays run;
* the NumPy fast form (BLAS gemv for the bias gradient), taken for float32/float64 NumPy arrays.
"""
from __future__ import annotations

from ..backend import namespace
from .common import fast_form, matmul, sum_rows, sum_rows_plain


def dense_forward_plain(x, kernel, bias):
    """Plain form of :func:`dense_forward` (array API): y = reshape(x, (rows, in)) @ kernel + bias."""
    xp = namespace(x, kernel, bias)
    x2d = xp.reshape(x, (-1, x.shape[-1]))
    y = matmul(x2d, kernel)
    if bias is not None:
        y = y + bias
    return xp.reshape(y, (*x.shape[:-1], kernel.shape[1])), (x2d, kernel, x.shape)


def dense_backward_plain(dy, cache, need_dx=True):
    """Plain form of :func:`dense_backward` (array API): dx = dy W^T, dW = x^T dy, db = sum_rows dy
    (accumulated in float32 for float16)."""
    x2d, kernel, xshape = cache
    xp = namespace(dy, x2d, kernel)
    dy2d = xp.reshape(dy, (-1, dy.shape[-1]))
    dkernel = matmul(x2d.mT, dy2d)
    dbias = sum_rows_plain(dy2d, kernel.dtype)
    dx = xp.reshape(matmul(dy2d, kernel.mT), xshape) if need_dx else None
    return dx, dkernel, dbias


def _dense_forward_numpy(x, kernel, bias):
    x2d = x.reshape(-1, x.shape[-1])
    y = x2d @ kernel
    if bias is not None:
        y += bias
    return y.reshape(*x.shape[:-1], kernel.shape[1]), (x2d, kernel, x.shape)


def _dense_backward_numpy(dy, cache, need_dx=True):
    x2d, kernel, xshape = cache
    dy2d = dy.reshape(-1, dy.shape[-1])
    dkernel = x2d.T @ dy2d
    dbias = sum_rows(dy2d)
    dx = (dy2d @ kernel.T).reshape(xshape) if need_dx else None
    return dx, dkernel, dbias


def dense_forward(x, kernel, bias):
    """y = x @ kernel + bias over the last axis (Flax ``nn.Dense``; vit_jax ``MlpBlock``, ``pre_logits``, ``head``).

    Args:
        x: (..., in) float16/float32/float64 array (NumPy, CuPy or any array-API namespace).
        kernel: (in, out), same dtype, namespace and device.
        bias: (out,) or None.

    Returns:
        y: (..., out), x's dtype; cache: what :func:`dense_backward` needs (the 2-D input view and the kernel).

    Raises:
        TypeError: arrays of different libraries (e.g. a NumPy array among device arrays);
        ValueError: (array-api-strict) arrays on different devices.
    """
    xp = namespace(x, kernel, bias)
    if fast_form(xp, x, kernel, bias):
        return _dense_forward_numpy(x, kernel, bias)
    return dense_forward_plain(x, kernel, bias)


def dense_backward(dy, cache, need_dx=True):
    """Gradients of :func:`dense_forward`.

    dx = dy @ W^T, dW = x^T @ dy, db = sum_rows dy (summed in float32 for float16, returned in the kernel's dtype).

    Args:
        dy: (..., out) upstream gradient, the forward input's dtype.
        cache: from :func:`dense_forward`.
        need_dx: skip the input gradient (e.g. for the first layer of the network).

    Returns:
        (dx (..., in) or None, dkernel (in, out), dbias (out,)).

    Raises:
        TypeError / ValueError: ``dy`` of another library / device than the cache.
    """
    x2d, kernel, _ = cache
    if fast_form(namespace(dy, x2d, kernel), dy, x2d, kernel):
        return _dense_backward_numpy(dy, cache, need_dx)
    return dense_backward_plain(dy, cache, need_dx)
