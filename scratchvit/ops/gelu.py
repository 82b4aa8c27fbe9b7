"""GELU activation (Hendrycks & Gimpel, 2016), both forms.

- ``"tanh"`` (the official vit_jax model: Flax ``nn.gelu`` default ``approximate=True``):
      gelu(x) = 0.5 x (1 + tanh(c (x + 0.044715 x^3))),  c = sqrt(2 / pi)
      gelu'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 * 0.044715 x^2),  t = tanh(...)
- ``"erf"`` (exact; PyTorch ``nn.GELU()`` and timm weights):
      gelu(x) = 0.5 x (1 + erf(x / sqrt 2)),  gelu'(x) = Phi(x) + x phi(x)

The cache keeps only the pre-activation; the backward recomputes tanh / erf (as PyTorch does),
which halves the memory the activation holds.
"""
from __future__ import annotations

import math

from ..backend import get_xp

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
INV_SQRT_2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
GELU_TANH_COEF = 0.044715


def erf(x):
    """Elementwise error function for NumPy or CuPy arrays, same dtype as ``x``.

    NumPy has no erf: SciPy's ``scipy.special.erf`` is used where SciPy is installed, otherwise
    Python's ``math.erf`` element by element (exact, but slow). CuPy uses ``cupyx.scipy.special.erf``.
    """
    xp = get_xp(x)
    if xp.__name__ == "cupy":
        from cupyx.scipy.special import erf as cupy_erf  # noqa: PLC0415

        return cupy_erf(x)
    try:
        from scipy.special import erf as scipy_erf  # noqa: PLC0415
    except ImportError:
        return xp.vectorize(math.erf, otypes=[x.dtype])(x)
    return scipy_erf(x).astype(x.dtype, copy=False)


def gelu_forward(x, approximate="tanh"):
    """GELU of ``x`` (any shape, float32/float64).

    Args:
        approximate: "tanh" (official default) or "erf" (exact).

    Returns:
        y (same shape) and the cache for :func:`gelu_backward`.

    Raises:
        ValueError: unknown ``approximate``.
    """
    if approximate == "tanh":
        inner = x * x
        inner *= GELU_TANH_COEF
        inner += 1.0
        inner *= x
        inner *= SQRT_2_OVER_PI
        t = get_xp(x).tanh(inner, out=inner)
        t += 1.0
        t *= x
        t *= 0.5
        return t, (x, approximate)
    if approximate == "erf":
        y = erf(x * INV_SQRT_2)
        y += 1.0
        y *= x
        y *= 0.5
        return y, (x, approximate)
    raise ValueError(f"gelu: approximate must be 'tanh' or 'erf', got {approximate!r}")


def gelu_backward(dy, cache):
    """dx = dy * gelu'(x) for the form used in the forward pass."""
    x, approximate = cache
    xp = get_xp(x)
    x2 = x * x
    if approximate == "tanh":
        t = x2 * GELU_TANH_COEF
        t += 1.0
        t *= x
        t *= SQRT_2_OVER_PI
        xp.tanh(t, out=t)
        # d = 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 a x^2)
        x2 *= 3.0 * GELU_TANH_COEF
        x2 += 1.0
        x2 *= SQRT_2_OVER_PI
        x2 *= x
        sech2 = t * t
        xp.subtract(1.0, sech2, out=sech2)
        x2 *= sech2
        x2 += t
        x2 += 1.0
        x2 *= 0.5
        x2 *= dy
        return x2
    # exact: Phi(x) + x phi(x)
    x2 *= -0.5
    xp.exp(x2, out=x2)
    x2 *= INV_SQRT_2PI
    x2 *= x
    cdf = erf(x * INV_SQRT_2)
    cdf += 1.0
    cdf *= 0.5
    x2 += cdf
    x2 *= dy
    return x2
