"""Layer normalisation over the last axis (Ba et al., 2016), as Flax ``nn.LayerNorm`` (epsilon 1e-6).

    y = (x - mean) / sqrt(var + eps) * scale + bias

The backward pass uses the standard closed form (x_hat the normalised input, g = dy * scale):

    dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat))
"""
from __future__ import annotations

EPS = 1e-6


def layer_norm_forward(x, scale, bias, eps=EPS):
    """Normalise each row of ``x`` (..., D) to zero mean and unit variance, then scale and shift.

    Returns:
        y (..., D) and the cache (x_hat, rstd, scale) for :func:`layer_norm_backward`.
    """
    xp_mean = x.mean(axis=-1, keepdims=True)
    xc = x - xp_mean
    var = (xc * xc).mean(axis=-1, keepdims=True)
    var += eps
    rstd = var ** -0.5
    xc *= rstd  # xc is now x_hat
    y = xc * scale
    y += bias
    return y, (xc, rstd, scale)


def layer_norm_backward(dy, cache):
    """Gradients of :func:`layer_norm_forward`.

    Returns:
        (dx (..., D), dscale (D,), dbias (D,)).
    """
    x_hat, rstd, scale = cache
    D = x_hat.shape[-1]
    dy2d = dy.reshape(-1, D)
    xh2d = x_hat.reshape(-1, D)
    dbias = dy2d.sum(axis=0)
    dscale = (dy2d * xh2d).sum(axis=0)
    g = dy * scale
    mean_g = g.mean(axis=-1, keepdims=True)
    mean_gx = (g * x_hat).mean(axis=-1, keepdims=True)
    g -= mean_g
    g -= x_hat * mean_gx
    g *= rstd
    return g, dscale, dbias
