"""Pooling of the encoder output into one vector per image (vit_jax ``VisionTransformer.__call__``).

- ``"token"``: the class token, token 0 (paper Eq. 4, y = LN(z_L^0)); dx = dy at token 0, zero elsewhere.
- ``"gap"``: the mean over all T tokens (global average pooling; no class token); dx_t = dy / T.

Plain form (:func:`pool_forward_plain`, array API 2023.12: CuPy, any namespace, float16, the gap mean
accumulated in float32) and NumPy fast form (float32/float64 NumPy).
"""
from __future__ import annotations

import numpy as np

from ..backend import device_of, namespace
from .common import fast_form, wide_dtype


def _check(classifier):
    if classifier not in ("token", "gap"):
        raise ValueError(f"pooling: classifier must be 'token' or 'gap', got {classifier!r}")


def pool_forward_plain(x, classifier):
    """Plain form (array API) of :func:`pool_forward`."""
    _check(classifier)
    xp = namespace(x)
    if classifier == "token":
        return x[:, 0, :], (x.shape, classifier)
    return xp.astype(xp.mean(xp.astype(x, wide_dtype(xp, x.dtype), copy=False), axis=1), x.dtype), (x.shape, classifier)


def pool_backward_plain(dpooled, cache):
    """Plain form (array API) of :func:`pool_backward`."""
    (B, T, D), classifier = cache
    xp = namespace(dpooled)
    if classifier == "token":
        rest = xp.zeros((B, T - 1, D), dtype=dpooled.dtype, device=device_of(dpooled))
        return xp.concat([dpooled[:, None, :], rest], axis=1)
    return xp.zeros((B, T, D), dtype=dpooled.dtype, device=device_of(dpooled)) + dpooled[:, None, :] / T


def _pool_forward_numpy(x, classifier):
    if classifier == "token":
        return x[:, 0], (x.shape, classifier)
    return x.mean(axis=1), (x.shape, classifier)


def _pool_backward_numpy(dpooled, cache):
    shape, classifier = cache
    if classifier == "token":
        dx = np.zeros(shape, dtype=dpooled.dtype)
        dx[:, 0] = dpooled
        return dx
    return np.broadcast_to((dpooled / shape[1])[:, None, :], shape).copy()


def pool_forward(x, classifier):
    """(B, T, D) -> (B, D) by ``classifier`` "token" or "gap". Returns the pooled array (x's dtype,
    float16/float32/float64) and a cache. For "token" the result may be a view of ``x``.

    Raises:
        ValueError: unknown classifier.
    """
    _check(classifier)
    if fast_form(namespace(x), x):
        return _pool_forward_numpy(x, classifier)
    return pool_forward_plain(x, classifier)


def pool_backward(dpooled, cache):
    """(B, D) -> (B, T, D): the gradient flows to token 0, or is shared equally by the T tokens."""
    if fast_form(namespace(dpooled), dpooled):
        return _pool_backward_numpy(dpooled, cache)
    return pool_backward_plain(dpooled, cache)
