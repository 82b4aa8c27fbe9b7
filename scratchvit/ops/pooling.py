"""Pooling of the encoder output into one vector per image (vit_jax ``VisionTransformer.__call__``).

- ``"token"``: the class token, token 0 (paper Eq. 4, y = LN(z_L^0)).
- ``"gap"``: the mean over all tokens (global average pooling; no class token).
"""
from __future__ import annotations

from ..backend import get_xp


def pool_forward(x, classifier):
    """(B, T, D) -> (B, D) by ``classifier`` "token" or "gap". Returns the pooled array and a cache.

    Raises:
        ValueError: unknown classifier.
    """
    if classifier == "token":
        return x[:, 0], (x.shape, classifier)
    if classifier == "gap":
        return x.mean(axis=1), (x.shape, classifier)
    raise ValueError(f"pooling: classifier must be 'token' or 'gap', got {classifier!r}")


def pool_backward(dpooled, cache):
    """(B, D) -> (B, T, D): the gradient flows to token 0, or is shared equally by the T tokens."""
    shape, classifier = cache
    xp = get_xp(dpooled)
    if classifier == "token":
        dx = xp.zeros(shape, dtype=dpooled.dtype)
        dx[:, 0] = dpooled
        return dx
    return xp.broadcast_to((dpooled / shape[1])[:, None, :], shape).copy()
