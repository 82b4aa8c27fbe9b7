"""ReLU, the activation of the hybrid's ResNet (vit_jax ``models_vit``'s root and ``models_resnet.ResidualUnit``:
``nn.relu``).

    y = max(x, 0),   dx = dy * [y > 0]

The derivative at x = 0 is taken as 0, as JAX's ``jax.nn.relu`` does. The cache is y itself (y > 0
exactly where x > 0). Plain form (:func:`relu_forward_plain`, array API 2023.12: CuPy, any namespace,
float16) and NumPy fast form (float32/float64 NumPy).
"""
from __future__ import annotations

import numpy as np

from ..backend import namespace
from .common import fast_form


def relu_forward_plain(x):
    """Plain form (array API) of :func:`relu_forward`."""
    xp = namespace(x)
    y = xp.where(x > 0, x, xp.zeros_like(x))
    return y, y


def relu_backward_plain(dy, y):
    """Plain form (array API) of :func:`relu_backward`."""
    xp = namespace(dy, y)
    return xp.where(y > 0, dy, xp.zeros_like(dy))


def _relu_forward_numpy(x):
    y = np.maximum(x, 0)
    return y, y


def _relu_backward_numpy(dy, y):
    return np.multiply(dy, y > 0)


def relu_forward(x):
    """y = max(x, 0), any shape, float16/float32/float64; the cache is y.

    Raises:
        TypeError: ``x`` is not an array of a known array-API library.
    """
    if fast_form(namespace(x), x):
        return _relu_forward_numpy(x)
    return relu_forward_plain(x)


def relu_backward(dy, y):
    """dx = dy where y > 0, else 0 (the shape and dtype of ``dy``).

    Raises:
        TypeError / ValueError: ``dy`` of another library / device than ``y``.
    """
    if fast_form(namespace(dy, y), dy, y):
        return _relu_backward_numpy(dy, y)
    return relu_backward_plain(dy, y)
