"""Dense (fully connected) layer over the last axis: ``y = x @ W + b``.

Official convention (Flax ``nn.Dense``): kernel of shape (in, out). Every product is a 2-D
matrix product on the (rows, in) view of the input, whatever its leading axes.

Two forms, as every op in :mod:`scratchvit.ops`:

* the plain form (:func:`dense_forward_plain`, :func:`dense_backward_plain`), written on the
  Python array API standard 2023.12: what CuPy, array-api-strict and float16 NumPy arrays run;
* the NumPy fast form (BLAS gemv for the bias gradient), taken for float32/float64 NumPy arrays.

This file also holds the helpers the other ops share: :func:`fast_form` (which form applies),
:func:`wide_dtype` (the float32 in which float16 statistics are computed), the row sums and
:func:`matmul`, the plain forms' matrix product (float16 on NumPy: float32 accumulation through BLAS).
"""
from __future__ import annotations

import numpy as np

from ..backend import dtype_of, is_numpy, namespace

FAST_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def fast_form(xp, *arrays) -> bool:
    """True where the NumPy fast form applies: namespace ``xp`` is NumPy's and every array (None
    skipped) is float32 or float64. Float16 NumPy arrays, and every other namespace, take the plain form."""
    return is_numpy(xp) and all(a is None or a.dtype in FAST_DTYPES for a in arrays)


def wide_dtype(xp, dtype):
    """The dtype statistics of a ``dtype`` array are computed in: float64 for float64, float32 for
    float32 and float16 (mixed precision: float16 sums of squares and exponentials overflow at 65504)."""
    f64 = dtype_of(xp, "float64")
    return f64 if dtype == f64 else dtype_of(xp, "float32")


def sum_rows(a2d):
    """NumPy fast form: column sums of a 2-D array (rows, n) -> (n,), as one BLAS matrix-vector product ones @ a2d.

    Used for every bias gradient: on the CPU a gemv is 2-4x faster than ``a2d.sum(axis=0)``
    (measured on (3136, 64-192) float32 blocks, one thread); the same sum in another order.
    """
    return np.ones(a2d.shape[0], dtype=a2d.dtype) @ a2d


def sum_rows_plain(a2d, dtype):
    """Plain form: column sums of ``a2d`` (rows, n) -> (n,), sum_i a2d[i, :], accumulated in
    :func:`wide_dtype` (float32 for float16) and returned as ``dtype`` (the parameter's dtype)."""
    xp = namespace(a2d)
    return xp.astype(xp.sum(a2d, axis=0, dtype=wide_dtype(xp, a2d.dtype)), dtype)


def matmul(a, b):
    """The plain forms' matrix product ``a @ b`` (array API ``matmul``: 2-D or stacked, broadcast as there).

    Float16 NumPy inputs: the float16 values multiplied and summed in float32 and the sum rounded to float16
    once, as a GPU does it (cuBLAS with a float32 compute type; Micikevicius et al. 2018, "arithmetic
    precision": float16 products accumulated into float32), computed as BLAS sgemm on the inputs cast up
    (a float16 product is exact in float32). NumPy's own float16 ``matmul`` accumulates in float32 too but
    runs without BLAS, many times slower (bench/RESULTS.md, "fp16 on the CPU"). Every other case
    (float32/float64, CuPy, array-api-strict): ``xp.matmul`` itself.

    Returns:
        the product, the inputs' dtype, namespace and device.

    Raises:
        TypeError / ValueError: as ``xp.matmul`` (arrays of different libraries or devices, shapes that
        do not fit).
    """
    xp = namespace(a, b)
    if is_numpy(xp) and a.dtype == np.float16 and b.dtype == np.float16:
        return np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(np.float16)
    return xp.matmul(a, b)


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
