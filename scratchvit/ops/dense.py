"""Dense (fully connected) layer over the last axis: ``y = x @ W + b``.

Official convention (Flax ``nn.Dense``): kernel of shape (in, out). Every product is a 2-D
matrix product on the (rows, in) view of the input, whatever its leading axes.

One form: the plain form (:func:`dense_forward_plain`, :func:`dense_backward_plain`), written on the
Python array API standard 2023.12, runs on every namespace, NumPy included. The products are BLAS
either way; a NumPy fast form (the bias added in place, the bias gradient as a BLAS gemv) saved 2-5% of
the op's time on the suite's geometries and the Quickstart's (``bench/op_profile.py --compare-forms``:
bench/RESULTS.md, "The two forms of each op"), under the 5% that keeps a second form, so it was removed.
"""
from __future__ import annotations

from ..backend import namespace
from .common import matmul, sum_rows_plain


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
    return dense_backward_plain(dy, cache, need_dx)
