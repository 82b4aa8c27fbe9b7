"""GELU activation (Hendrycks & Gimpel, 2016), both forms.

- ``"tanh"`` (the official vit_jax model: Flax ``nn.gelu`` default ``approximate=True``):
      gelu(x) = 0.5 x (1 + tanh(c (x + 0.044715 x^3))),  c = sqrt(2 / pi)
      gelu'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 * 0.044715 x^2),  t = tanh(...)
- ``"erf"`` (exact; PyTorch ``nn.GELU()`` and timm weights):
      gelu(x) = 0.5 x (1 + erf(x / sqrt 2)),  gelu'(x) = Phi(x) + x phi(x)

The cache keeps only the pre-activation; the backward recomputes tanh / erf (as PyTorch does),
which halves the memory the activation holds. The tanh form is computed through the identity
0.5 (1 + tanh z) = 1 / (1 + exp(-2 z)) = s, so that with t = tanh z, 1 - t^2 = 4 s (1 - s):

      gelu(x) = x s,   gelu'(x) = s (1 + (1 - s) 2 x c (1 + 3 * 0.044715 x^2))

the same function, but NumPy's ``exp`` is vectorised where its ``tanh`` is not: GELU's forward and
backward take about 40% less time.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_xp
from ..cpu import blockwise

GELU_FORMS = ("tanh", "erf")  # the forms every module offers (configs, settings, the CLIs)
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


def _tanh_forward_rows(x, y):
    """y = x * sigmoid(2 z), z = c (x + a x^3): the tanh form, as 0.5 (1 + tanh z) = 1 / (1 + exp(-2 z))."""
    xp = get_xp(x)
    xp.multiply(x, x, out=y)
    y *= -2.0 * GELU_TANH_COEF * SQRT_2_OVER_PI
    y -= 2.0 * SQRT_2_OVER_PI
    y *= x  # -2 z
    with np.errstate(over="ignore"):  # exp(-2z) = inf for z << 0 gives y = x / inf = 0, the limit
        xp.exp(y, out=y)
    y += 1.0
    xp.divide(x, y, out=y)


def _erf_forward_rows(x, y):
    y[...] = erf(x * INV_SQRT_2)
    y += 1.0
    y *= x
    y *= 0.5


def _tanh_backward_rows(x, dy, dx):
    """dx = dy * gelu'(x) = dy * s (1 + (1 - s) 2 x c (1 + 3 a x^2)), s = sigmoid(2 z) = 0.5 (1 + tanh z)."""
    xp = get_xp(x)
    u = x * x
    s = u * (-2.0 * GELU_TANH_COEF * SQRT_2_OVER_PI)
    s -= 2.0 * SQRT_2_OVER_PI
    s *= x  # -2 z
    with np.errstate(over="ignore"):
        xp.exp(s, out=s)
    s += 1.0
    xp.reciprocal(s, out=s)  # s = 0.5 (1 + t)
    u *= 6.0 * GELU_TANH_COEF * SQRT_2_OVER_PI
    u += 2.0 * SQRT_2_OVER_PI
    u *= x  # 2 x c (1 + 3 a x^2)
    xp.subtract(1.0, s, out=dx)
    dx *= u
    dx += 1.0
    dx *= s
    dx *= dy


def _erf_backward_rows(x, dy, dx):
    xp = get_xp(x)
    pdf = x * x
    pdf *= -0.5
    xp.exp(pdf, out=pdf)
    pdf *= INV_SQRT_2PI
    pdf *= x  # x phi(x)
    dx[...] = erf(x * INV_SQRT_2)
    dx += 1.0
    dx *= 0.5  # Phi(x)
    dx += pdf
    dx *= dy


def _rows(a):
    return a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)


def gelu_forward(x, approximate="tanh"):
    """GELU of ``x`` (any shape, float32/float64), computed block by block (``backend.blockwise``).

    Args:
        approximate: "tanh" (official default) or "erf" (exact).

    Returns:
        y (same shape) and the cache (x, approximate) for :func:`gelu_backward`.

    Raises:
        ValueError: unknown ``approximate``.
    """
    if approximate not in ("tanh", "erf"):
        raise ValueError(f"gelu: approximate must be 'tanh' or 'erf', got {approximate!r}")
    y = get_xp(x).empty_like(x)
    blockwise(_tanh_forward_rows if approximate == "tanh" else _erf_forward_rows, _rows(x), _rows(y))
    return y, (x, approximate)


def gelu_backward(dy, cache):
    """dx = dy * gelu'(x) for the form used in the forward pass."""
    x, approximate = cache
    dx = get_xp(x).empty_like(x)
    blockwise(_tanh_backward_rows if approximate == "tanh" else _erf_backward_rows, _rows(x), _rows(dy), _rows(dx))
    return dx
