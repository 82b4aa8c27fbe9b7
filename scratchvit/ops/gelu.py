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
backward take about 40% less time. That is the NumPy fast form (float32/float64 NumPy arrays).

Every other array (CuPy, any array-API namespace, float16 NumPy) takes the plain form
(:func:`gelu_forward_plain`): the first two equations as written, on the array API standard 2023.12,
computed in float32 for float16 inputs (x^3 and the x^2 of the derivative overflow float16 from |x| ~ 40
and 256) and cast back. The array API has no erf: CuPy's comes from ``cupyx.scipy.special``, NumPy's
from SciPy, and any other namespace gets :func:`erf_plain` (series and continued fraction, 1e-13 in float64).
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import is_cupy, is_numpy, namespace
from ..cpu import blockwise
from .common import fast_form, wide_dtype

GELU_FORMS = ("tanh", "erf")  # the forms every module offers (configs, settings, the CLIs)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
INV_SQRT_2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
GELU_TANH_COEF = 0.044715
INV_SQRT_PI = 1.0 / math.sqrt(math.pi)
ERF_SPLIT = 2.5  # erf_plain: the series below, the continued fraction above
ERF_TERMS = 40  # terms of each (both converge to float64 rounding with these: 1.3e-15 on [-8, 8])


def erf_plain(x):
    """The error function in plain array-API arithmetic, for namespaces without one (array-api-strict);
    same dtype as ``x``, any shape. Float64 error below 1e-13 absolute (1.3e-15 against SciPy on [-8, 8]).

    erf is odd: erf(x) = sign(x) erf(|x|). For |x| < 2.5 the series of Abramowitz & Stegun 7.1.6, all terms
    positive (no cancellation):

        erf(a) = 2/sqrt(pi) exp(-a^2) sum_{n>=0} 2^n a^(2n+1) / (1 * 3 * ... * (2n+1))

    and for |x| >= 2.5 the continued fraction of A&S 7.1.14, evaluated from its 40th term back:

        erfc(a) = exp(-a^2) / sqrt(pi) / (a + (1/2) / (a + (2/2) / (a + (3/2) / (a + ...)))),  erf = 1 - erfc
    """
    xp = namespace(x)
    a = xp.abs(x)
    s = xp.clip(a, max=ERF_SPLIT)  # series argument, kept where it converges fast
    s2 = s * s
    term, total = s, s
    for n in range(1, ERF_TERMS):
        term = term * (2.0 * s2 / (2 * n + 1))
        total = total + term
    series = (2.0 * INV_SQRT_PI) * xp.exp(-s2) * total
    c = xp.clip(a, min=ERF_SPLIT)  # continued-fraction argument
    f = c
    for n in range(ERF_TERMS, 0, -1):
        f = c + (0.5 * n) / f
    erfc = INV_SQRT_PI * xp.exp(-c * c) / f
    return xp.sign(x) * xp.where(a < ERF_SPLIT, series, 1.0 - erfc)


def erf(x):
    """Elementwise error function, any shape, same dtype as ``x``, for any array-API namespace.

    CuPy: ``cupyx.scipy.special.erf``. NumPy: SciPy's ``scipy.special.erf`` where SciPy is installed,
    otherwise Python's ``math.erf`` element by element (exact, but slow). Any other namespace:
    :func:`erf_plain`.
    """
    xp = namespace(x)
    if is_cupy(xp):
        from cupyx.scipy.special import erf as cupy_erf  # noqa: PLC0415  (CuPy only: cupyx needs CUDA)

        return cupy_erf(x)
    if not is_numpy(xp):
        return erf_plain(x)
    try:
        from scipy.special import erf as scipy_erf  # noqa: PLC0415  (SciPy is optional)
    except ImportError:
        return np.vectorize(math.erf, otypes=[x.dtype])(x)
    return scipy_erf(x).astype(x.dtype, copy=False)


def _check(approximate):
    if approximate not in GELU_FORMS:
        raise ValueError(f"gelu: approximate must be 'tanh' or 'erf', got {approximate!r}")


def gelu_forward_plain(x, approximate="tanh"):
    """Plain form (array API) of :func:`gelu_forward`: the module docstring's equations as written,
    in float32 for float16 ``x``."""
    _check(approximate)
    xp = namespace(x)
    w = xp.astype(x, wide_dtype(xp, x.dtype), copy=False)
    if approximate == "tanh":
        y = 0.5 * w * (1.0 + xp.tanh(SQRT_2_OVER_PI * (w + GELU_TANH_COEF * w * w * w)))
    else:
        y = 0.5 * w * (1.0 + erf(w * INV_SQRT_2))
    return xp.astype(y, x.dtype, copy=False), (x, approximate)


def gelu_backward_plain(dy, cache):
    """Plain form (array API) of :func:`gelu_backward`: dx = dy * gelu'(x), in float32 for float16."""
    x, approximate = cache
    xp = namespace(dy, x)
    wide = wide_dtype(xp, x.dtype)
    w = xp.astype(x, wide, copy=False)
    if approximate == "tanh":
        t = xp.tanh(SQRT_2_OVER_PI * (w + GELU_TANH_COEF * w * w * w))
        d = 0.5 * (1.0 + t) + 0.5 * w * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_COEF * w * w)
    else:
        d = 0.5 * (1.0 + erf(w * INV_SQRT_2)) + w * INV_SQRT_2PI * xp.exp(-0.5 * w * w)  # Phi(x) + x phi(x)
    return xp.astype(xp.astype(dy, wide, copy=False) * d, x.dtype, copy=False)


def _rows(a):
    return a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)


def _tanh_forward_rows(x, y):
    """y = x * sigmoid(2 z), z = c (x + a x^3): the tanh form, as 0.5 (1 + tanh z) = 1 / (1 + exp(-2 z))."""
    xp = np
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
    xp = np
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
    xp = np
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


def _gelu_forward_numpy(x, approximate):
    y = np.empty_like(x)
    blockwise(_tanh_forward_rows if approximate == "tanh" else _erf_forward_rows, _rows(x), _rows(y))
    return y, (x, approximate)


def _gelu_backward_numpy(dy, cache):
    x, approximate = cache
    dx = np.empty_like(x)
    blockwise(_tanh_backward_rows if approximate == "tanh" else _erf_backward_rows, _rows(x), _rows(dy), _rows(dx))
    return dx


def gelu_forward(x, approximate="tanh"):
    """GELU of ``x`` (any shape, float16/float32/float64; vit_jax ``MlpBlock``, Flax ``nn.gelu``). NumPy
    float32/float64 is computed block by block (``cpu.blockwise``), anything else by :func:`gelu_forward_plain`.

    Args:
        approximate: "tanh" (official default) or "erf" (exact).

    Returns:
        y (same shape and dtype) and the cache (x, approximate) for :func:`gelu_backward`.

    Raises:
        ValueError: unknown ``approximate``.
    """
    _check(approximate)
    if fast_form(namespace(x), x):
        return _gelu_forward_numpy(x, approximate)
    return gelu_forward_plain(x, approximate)


def gelu_backward(dy, cache):
    """dx = dy * gelu'(x) for the form used in the forward pass; x's shape and dtype.

    Raises:
        TypeError / ValueError: ``dy`` of another library / device than the cache.
    """
    x = cache[0]
    if fast_form(namespace(dy, x), dy, x):
        return _gelu_backward_numpy(dy, cache)
    return gelu_backward_plain(dy, cache)
