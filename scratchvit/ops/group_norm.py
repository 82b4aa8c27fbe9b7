"""Group normalisation (Wu & He, ECCV 2018) as Flax ``nn.GroupNorm`` (32 groups, epsilon 1e-6, per-channel
scale and bias): the normalisation of the hybrid's ResNet (vit_jax ``gn_root``, ``ResidualUnit``'s
``gn1``, ``gn2``, ``gn3``, ``gn_proj``).

x (B, H, W, C) is split into G groups of Cg = C / G consecutive channels; each (image, group) has its
own statistics over its n = H * W * Cg values:

    x_hat = (x - mean_bg) * rstd_bg,   rstd_bg = 1 / sqrt(var_bg + eps),   y = x_hat * scale + bias

The backward is layer norm's closed form with the means taken over each (image, group) instead of each
row (g = dy * scale):

    dx = rstd_bg * (g - mean_bg(g) - x_hat * mean_bg(g * x_hat))
    dscale = sum_{b,h,w} dy * x_hat,   dbias = sum_{b,h,w} dy

Plain form (:func:`group_norm_forward_plain`, array API 2023.12: CuPy, any namespace, float16) on the
(B, H*W, G, Cg) view, means over axes 1 and 3; NumPy fast form (float32/float64 NumPy) on the
(B, H*W, C) view: per-channel sums over the pixels, then sums over each group's channels, so that no
pass reduces across a strided axis pair. Mixed precision: for float16 x the plain form computes the
statistics, x_hat and the whole backward in float32 (as layer norm) and casts y and dx back to float16,
dscale and dbias to the scale's dtype.
"""
from __future__ import annotations

import numpy as np

from ..backend import namespace
from .common import fast_form, wide_dtype

EPS = 1e-6
GROUPS = 32


def _check(x, scale, groups):
    if x.ndim != 4:
        raise ValueError(f"group norm: x must be (B, H, W, C), got shape {tuple(x.shape)}")
    C = x.shape[3]
    if C % groups:
        raise ValueError(f"group norm: {C} channels do not split into {groups} groups")
    if tuple(scale.shape) != (C,):
        raise ValueError(f"group norm: scale must be ({C},), got {tuple(scale.shape)}")


def group_norm_forward_plain(x, scale, bias, groups=GROUPS, eps=EPS):
    """Plain form (array API) of :func:`group_norm_forward`; statistics in float32 for float16 ``x``."""
    _check(x, scale, groups)
    xp = namespace(x, scale, bias)
    wide = wide_dtype(xp, x.dtype)
    B, H, W, C = x.shape
    x4 = xp.reshape(xp.astype(x, wide, copy=False), (B, H * W, groups, C // groups))
    centred = x4 - xp.mean(x4, axis=(1, 3), keepdims=True)
    rstd = 1.0 / xp.sqrt(xp.mean(centred * centred, axis=(1, 3), keepdims=True) + eps)
    x_hat = xp.reshape(centred * rstd, (B, H * W, C))
    y = x_hat * xp.astype(scale, wide, copy=False) + xp.astype(bias, wide, copy=False)
    return xp.reshape(xp.astype(y, x.dtype, copy=False), x.shape), (x_hat, rstd, scale, groups, x.shape)


def group_norm_backward_plain(dy, cache):
    """Plain form (array API) of :func:`group_norm_backward`; computed in float32 for float16 ``dy``."""
    x_hat, rstd, scale, groups, shape = cache
    xp = namespace(dy, x_hat, scale)
    wide = x_hat.dtype
    B, HW, C = x_hat.shape
    dy3 = xp.reshape(xp.astype(dy, wide, copy=False), (B, HW, C))
    g = xp.reshape(dy3 * xp.astype(scale, wide, copy=False), (B, HW, groups, C // groups))
    xh = xp.reshape(x_hat, (B, HW, groups, C // groups))
    dx = rstd * (g - xp.mean(g, axis=(1, 3), keepdims=True) - xh * xp.mean(g * xh, axis=(1, 3), keepdims=True))
    dscale = xp.astype(xp.sum(dy3 * x_hat, axis=(0, 1)), scale.dtype)
    dbias = xp.astype(xp.sum(dy3, axis=(0, 1)), scale.dtype)
    return xp.reshape(xp.astype(dx, dy.dtype, copy=False), shape), dscale, dbias


def _group_means(per_channel, groups, n):
    """(B, C) per-channel sums -> (B, 1, C): the mean of each channel's group, repeated over its channels."""
    B, C = per_channel.shape
    m = per_channel.reshape(B, groups, C // groups).sum(-1) / n
    return np.repeat(m, C // groups, axis=1)[:, None, :]


def _group_norm_forward_numpy(x, scale, bias, groups, eps):
    _check(x, scale, groups)
    B, H, W, C = x.shape
    n = H * W * (C // groups)
    x3 = x.reshape(B, H * W, C)
    x_hat = x3 - _group_means(x3.sum(axis=1), groups, n)
    var = _group_means(np.einsum("bpc,bpc->bc", x_hat, x_hat), groups, n)
    var += eps
    rstd = np.sqrt(var, out=var)
    np.divide(1.0, rstd, out=rstd)
    x_hat *= rstd
    y = x_hat * scale
    y += bias
    return y.reshape(x.shape), (x_hat, rstd, scale, groups, x.shape)


def _group_norm_backward_numpy(dy, cache):
    x_hat, rstd, scale, groups, shape = cache
    B, HW, C = x_hat.shape
    n = HW * (C // groups)
    dy3 = dy.reshape(B, HW, C)
    # two reductions over the pixels give everything: per (image, channel) sums of dy and of dy * x_hat;
    # their sums over the images are dbias and dscale, their scale-weighted group sums the two means of g
    s1 = dy3.sum(axis=1)  # (B, C)
    s2 = np.einsum("bpc,bpc->bc", dy3, x_hat)
    dscale, dbias = s2.sum(axis=0), s1.sum(axis=0)
    mean_g = _group_means(s1 * scale, groups, n)  # mean_bg(g), g = dy * scale, repeated per channel
    mean_gx = _group_means(s2 * scale, groups, n)  # mean_bg(g * x_hat)
    # dx = rstd * (dy * scale - mean_g - x_hat * mean_gx), per-channel factors folded first
    dx = dy3 * (rstd * scale)
    dx -= x_hat * (rstd * mean_gx)
    dx -= rstd * mean_g
    return dx.reshape(shape), dscale, dbias


def group_norm_forward(x, scale, bias, groups: int = GROUPS, eps: float = EPS):
    """Normalise each image's groups of channels, then scale and shift per channel (Wu & He 2018; Flax
    ``nn.GroupNorm`` defaults; vit_jax ``models_vit`` ``gn_root``, ``models_resnet.ResidualUnit``).

    Args:
        x: (B, H, W, C) float16/float32/float64, C a multiple of ``groups``.
        scale, bias: (C,), same namespace and device.
        groups: G, 32 in Flax and vit_jax.
        eps: added to the variance under the root (Flax: 1e-6).

    Returns:
        y (B, H, W, C), x's dtype, and the cache for :func:`group_norm_backward`: (x_hat (B, H*W, C),
        rstd, scale, groups, shape), x_hat and rstd in float32 for a float16 ``x``.

    Raises:
        ValueError: x not 4-D, C not a multiple of ``groups``, scale not (C,); (array-api-strict) arrays
            on different devices. TypeError: arrays of different libraries.
    """
    if fast_form(namespace(x, scale, bias), x, scale, bias):
        return _group_norm_forward_numpy(x, scale, bias, groups, eps)
    return group_norm_forward_plain(x, scale, bias, groups, eps)


def group_norm_backward(dy, cache):
    """Gradients of :func:`group_norm_forward` (closed form in the module docstring).

    Returns:
        (dx (B, H, W, C), dy's dtype; dscale (C,), dbias (C,), the scale's dtype).

    Raises:
        TypeError / ValueError: ``dy`` of another library / device than the cache.
    """
    x_hat, _, scale, _, _ = cache
    if fast_form(namespace(dy, x_hat, scale), dy, x_hat, scale):
        return _group_norm_backward_numpy(dy, cache)
    return group_norm_backward_plain(dy, cache)
