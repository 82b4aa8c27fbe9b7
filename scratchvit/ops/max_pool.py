"""Max pooling, k x k windows at a stride, 'SAME' padding with -inf (Flax ``nn.max_pool``; vit_jax
``models_vit``'s root: ``nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding='SAME')``).

x (B, H, W, C) is padded with -inf by XLA's 'SAME' arithmetic (:func:`~scratchvit.ops.conv2d.conv_output_size`:
Ho = ceil(H / s), the total padding split low = total // 2), so a padded cell never wins a window that
holds a finite value. Each output is the maximum of its window:

    y[b, r, q, c] = max_{i, j < k} xp[b, r*s + i, q*s + j, c]

Backward: each window's upstream gradient goes to the one element that took its maximum; overlapping
windows (k > s) add their gradients at an element that wins several. **Ties**: where several elements of
a window hold the maximum, the first in the window's raster order (row i, then column j) takes the whole
gradient, the others none. (XLA's ``select_and_scatter`` with a ``>=`` selector, JAX's max-pool
gradient, keeps the first of equal values the same way.)

The k*k window offsets are visited in raster order; a running maximum is replaced only where a later
offset is strictly larger, and the winning offset is kept in an int8 map (the cache). Two forms, the same
k*k whole-array passes: the plain form (:func:`max_pool_forward_plain`, array API 2023.12: CuPy, any
namespace, float16) with ``where``; the NumPy fast form (float32/float64 NumPy) updates the running
maximum, the map and the padded gradient in place, the selections written as arithmetic with the 0/1
masks (NumPy's masked ``where=`` copies are several times slower), no new array per offset.
"""
from __future__ import annotations

import numpy as np

from ..backend import device_of, dtype_of, namespace
from .common import fast_form
from .conv2d import clipped, conv_output_size


def _geometry(x, window, stride):
    if x.ndim != 4:
        raise ValueError(f"max pool: x must be (B, H, W, C), got shape {tuple(x.shape)}")
    if window * window > 127:
        raise ValueError(f"max pool: window {window} too large for the int8 argmax map (k*k <= 127)")
    B, H, W, C = x.shape
    Ho, pt, pb = conv_output_size(H, window, stride, "SAME")
    Wo, pl, pr = conv_output_size(W, window, stride, "SAME")
    return (B, H, W, C), (Ho, Wo), (pt, pb, pl, pr)


def _slices(i, j, stride, Ho, Wo):
    return (slice(None), slice(i, i + stride * (Ho - 1) + 1, stride), slice(j, j + stride * (Wo - 1) + 1, stride),
            slice(None))


def max_pool_forward_plain(x, window: int = 3, stride: int = 2):
    """Plain form (array API) of :func:`max_pool_forward`."""
    xp = namespace(x)
    (B, H, W, C), (Ho, Wo), (pt, pb, pl, pr) = _geometry(x, window, stride)
    xpad = xp.full((B, H + pt + pb, W + pl + pr, C), -float("inf"), dtype=x.dtype, device=device_of(x))
    xpad[:, pt:pt + H, pl:pl + W, :] = x
    int8 = dtype_of(xp, "int8")
    y = xpad[_slices(0, 0, stride, Ho, Wo)]
    arg = xp.zeros((B, Ho, Wo, C), dtype=int8, device=device_of(x))
    for o in range(1, window * window):
        v = xpad[_slices(o // window, o % window, stride, Ho, Wo)]
        better = v > y  # strictly: on a tie the earlier offset keeps the maximum
        y = xp.where(better, v, y)
        arg = xp.where(better, xp.full((), o, dtype=int8, device=device_of(x)), arg)
    return y, (arg, window, stride, (B, H, W, C))


def max_pool_backward_plain(dy, cache):
    """Plain form (array API) of :func:`max_pool_backward`."""
    arg, window, stride, (B, H, W, C) = cache
    xp = namespace(dy, arg)
    Ho, Wo = arg.shape[1], arg.shape[2]
    _, pt, pb = conv_output_size(H, window, stride, "SAME")
    _, pl, pr = conv_output_size(W, window, stride, "SAME")
    dxpad = xp.zeros((B, H + pt + pb, W + pl + pr, C), dtype=dy.dtype, device=device_of(dy))
    zero = xp.zeros_like(dy)
    for o in range(window * window):
        s = _slices(o // window, o % window, stride, Ho, Wo)
        dxpad[s] = dxpad[s] + xp.where(arg == o, dy, zero)
    return dxpad[:, pt:pt + H, pl:pl + W, :]


def _max_pool_forward_numpy(x, window, stride):
    (B, H, W, C), (Ho, Wo), (pt, pb, pl, pr) = _geometry(x, window, stride)
    xpad = np.full((B, H + pt + pb, W + pl + pr, C), -np.inf, dtype=x.dtype)
    xpad[:, pt:pt + H, pl:pl + W, :] = x
    y = xpad[_slices(0, 0, stride, Ho, Wo)].copy()
    arg = np.zeros((B, Ho, Wo, C), dtype=np.int8)
    better = np.empty((B, Ho, Wo, C), dtype=bool)
    step = np.empty((B, Ho, Wo, C), dtype=np.int8)
    for o in range(1, window * window):
        v = xpad[_slices(o // window, o % window, stride, Ho, Wo)]
        np.greater(v, y, out=better)  # strictly: on a tie the earlier offset keeps the maximum
        np.maximum(y, v, out=y)
        # arg = o where better, else arg; as arithmetic (masked copies are several times slower in NumPy)
        np.subtract(o, arg, out=step)
        np.multiply(step, better, out=step)
        arg += step
    return y, (arg, window, stride, (B, H, W, C))


def _max_pool_backward_numpy(dy, cache):
    arg, window, stride, (B, H, W, C) = cache
    Ho, Wo = arg.shape[1], arg.shape[2]
    _, pt, pb = conv_output_size(H, window, stride, "SAME")
    _, pl, pr = conv_output_size(W, window, stride, "SAME")
    dx = np.zeros((B, H, W, C), dtype=dy.dtype)  # no padded buffer: a padded cell never wins
    won = np.empty(arg.shape, dtype=bool)
    part = np.empty(dy.shape, dtype=dy.dtype)
    for o in range(window * window):
        out_r, in_r = clipped(o // window, stride, pt, H, Ho)
        out_q, in_q = clipped(o % window, stride, pl, W, Wo)
        np.equal(arg, o, out=won)
        np.multiply(dy, won, out=part)
        dx[:, in_r, in_q, :] += part[:, out_r, out_q, :]
    return dx


def max_pool_forward(x, window: int = 3, stride: int = 2):
    """y = the maximum of each ``window`` x ``window`` window at ``stride``, 'SAME' padding with -inf
    (Flax ``nn.max_pool``; vit_jax's hybrid root, paper Sec. 3.1).

    Args:
        x: (B, H, W, C) float16/float32/float64, any array-API namespace.
        window: k, the window side (3 in vit_jax); stride: s (2 in vit_jax).

    Returns:
        y (B, ceil(H/s), ceil(W/s), C), x's dtype, and the cache for :func:`max_pool_backward`: the int8
        map (B, Ho, Wo, C) of each output's winning offset i * k + j (ties: the first in raster order).

    Raises:
        ValueError: x not 4-D, or a window over 11 x 11.
    """
    if fast_form(namespace(x), x):
        return _max_pool_forward_numpy(x, window, stride)
    return max_pool_forward_plain(x, window, stride)


def max_pool_backward(dy, cache):
    """Gradient of :func:`max_pool_forward`: each window's dy added at its winning element (module docstring).

    Args:
        dy: (B, Ho, Wo, C).

    Returns:
        dx (B, H, W, C), dy's dtype.

    Raises:
        TypeError / ValueError: ``dy`` of another library / device than the cache.
    """
    if fast_form(namespace(dy, cache[0]), dy):
        return _max_pool_backward_numpy(dy, cache)
    return max_pool_backward_plain(dy, cache)
