"""Weight standardisation (Qiao et al. 2019; Kolesnikov et al. 2020, BiT), the kernel transform of the hybrid's
``StdConv`` (vit_jax ``models_resnet.weight_standardize(w, axis=[0, 1, 2], eps=1e-5)``).

Each output channel's filter w[:, :, :, o] of a (kh, kw, C, O) kernel is standardised over its n = kh*kw*C
entries, with the population standard deviation and the epsilon added to the std (not under the root):

    c = w - mean(w),   std = sqrt(mean(c^2)),   d = std + eps,   w_hat = c / d

The convolution then uses w_hat; the stored parameter stays w. Backward, for g = dL/dw_hat (sums and
means over the filter's n entries; d std / d c_i = c_i / (n std); the mean subtraction projects out the
mean, and mean(c) = 0):

    dL/dc = g / d - c * sum(g * c) / (n * std * d^2)
    dL/dw = dL/dc - mean(dL/dc) = (g - mean(g)) / d - c * sum(g * c) / (n * std * d^2)

A constant filter (std = 0) has no defined gradient (the division by std): a trained or freshly initialised
kernel is never constant. The kernels are small (at most 3*3*512*512 numbers), so there is one form: the
plain array-API one, for every namespace and dtype; for float16 kernels the statistics and the backward
run in float32 (:func:`~scratchvit.ops.common.wide_dtype`) and the results are cast back.
"""
from __future__ import annotations

from ..backend import namespace
from .common import wide_dtype

EPS = 1e-5


def weight_standardize_forward_plain(w, eps: float = EPS):
    """Plain form (array API) of :func:`weight_standardize_forward`, the only form (see the module docstring)."""
    if w.ndim != 4:
        raise ValueError(f"weight standardisation: kernel must be (kh, kw, C, O), got shape {tuple(w.shape)}")
    xp = namespace(w)
    wide = wide_dtype(xp, w.dtype)
    w64 = xp.astype(w, wide, copy=False)
    c = w64 - xp.mean(w64, axis=(0, 1, 2), keepdims=True)
    std = xp.sqrt(xp.mean(c * c, axis=(0, 1, 2), keepdims=True))
    w_hat = c / (std + eps)
    return xp.astype(w_hat, w.dtype, copy=False), (c, std, eps, w.dtype)


def weight_standardize_backward_plain(dw_hat, cache):
    """Plain form (array API) of :func:`weight_standardize_backward`."""
    c, std, eps, dtype = cache
    xp = namespace(dw_hat, c)
    g = xp.astype(dw_hat, c.dtype, copy=False)
    n = c.shape[0] * c.shape[1] * c.shape[2]
    d = std + eps
    gc = xp.sum(g * c, axis=(0, 1, 2), keepdims=True)
    dw = (g - xp.mean(g, axis=(0, 1, 2), keepdims=True)) / d - c * (gc / (n * std * d * d))
    return xp.astype(dw, dtype, copy=False)


def weight_standardize_forward(w, eps: float = EPS):
    """Standardise each output filter of ``w`` to zero mean and unit std (module docstring).

    Args:
        w: (kh, kw, C, O) float16/float32/float64 kernel, HWIO (any array-API namespace).
        eps: added to the std (vit_jax: 1e-5).

    Returns:
        w_hat (kh, kw, C, O), w's dtype, and the cache for :func:`weight_standardize_backward`
        (c, std, in float32 for a float16 kernel).

    Raises:
        ValueError: ``w`` not 4-D.
    """
    return weight_standardize_forward_plain(w, eps)


def weight_standardize_backward(dw_hat, cache):
    """Gradient with respect to the stored kernel, given ``dw_hat`` = dL/dw_hat (kh, kw, C, O).

    Returns:
        dw (kh, kw, C, O), the kernel's dtype.

    Raises:
        TypeError / ValueError: ``dw_hat`` of another library / device than the cache.
    """
    return weight_standardize_backward_plain(dw_hat, cache)
