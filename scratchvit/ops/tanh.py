"""tanh, the activation of the official pre-logits layer (vit_jax ``VisionTransformer.__call__``:
``pre_logits`` Dense then ``nn.tanh``).

    y = tanh(x),   dx = dy (1 - y^2)

One form: the plain array-API one (:func:`tanh_forward_plain`, array API 2023.12) runs on every namespace,
NumPy included. A NumPy fast form (in place) saved nothing measurable on the pre-logits' (B, D) arrays
(``bench/op_profile.py --compare-forms``: bench/RESULTS.md, "The two forms of each op"), so it was removed.
"""
from __future__ import annotations

from ..backend import namespace


def tanh_forward_plain(x):
    """Plain form (array API) of :func:`tanh_forward`."""
    y = namespace(x).tanh(x)
    return y, y


def tanh_backward_plain(dy, y):
    """Plain form (array API) of :func:`tanh_backward`."""
    return dy * (1.0 - y * y)


def tanh_forward(x):
    """y = tanh(x), any shape, float16/float32/float64. The cache is y itself (d tanh / dx = 1 - y^2).

    Raises:
        TypeError: ``x`` is not an array of a known array-API library.
    """
    return tanh_forward_plain(x)


def tanh_backward(dy, y):
    """dx = dy * (1 - y^2), the shape and dtype of ``y`` (the forward's output).

    Raises:
        TypeError / ValueError: ``dy`` of another library / device than ``y``.
    """
    return tanh_backward_plain(dy, y)
