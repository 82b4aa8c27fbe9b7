"""tanh, the activation of the official pre-logits layer (vit_jax ``VisionTransformer.__call__``:
``pre_logits`` Dense then ``nn.tanh``).

    y = tanh(x),   dx = dy (1 - y^2)

Plain form (:func:`tanh_forward_plain`, array API 2023.12: CuPy, any namespace, float16) and NumPy
fast form (float32/float64 NumPy, computed in place where it can).
"""
from __future__ import annotations

import numpy as np

from ..backend import namespace
from .common import fast_form


def tanh_forward_plain(x):
    """Plain form (array API) of :func:`tanh_forward`."""
    y = namespace(x).tanh(x)
    return y, y


def tanh_backward_plain(dy, y):
    """Plain form (array API) of :func:`tanh_backward`."""
    return dy * (1.0 - y * y)


def _tanh_forward_numpy(x):
    y = np.tanh(x)
    return y, y


def _tanh_backward_numpy(dy, y):
    dx = np.multiply(y, y)
    np.subtract(1.0, dx, out=dx)
    dx *= dy
    return dx


def tanh_forward(x):
    """y = tanh(x), any shape, float16/float32/float64. The cache is y itself (d tanh / dx = 1 - y^2).

    Raises:
        TypeError: ``x`` is not an array of a known array-API library.
    """
    if fast_form(namespace(x), x):
        return _tanh_forward_numpy(x)
    return tanh_forward_plain(x)


def tanh_backward(dy, y):
    """dx = dy * (1 - y^2), the shape and dtype of ``y`` (the forward's output).

    Raises:
        TypeError / ValueError: ``dy`` of another library / device than ``y``.
    """
    if fast_form(namespace(dy, y), dy, y):
        return _tanh_backward_numpy(dy, y)
    return tanh_backward_plain(dy, y)
