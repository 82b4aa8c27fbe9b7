"""tanh, the activation of the official pre-logits layer (``pre_logits``: Dense then tanh)."""
from __future__ import annotations

from ..backend import get_xp


def tanh_forward(x):
    """y = tanh(x), any shape. The cache is y itself (d tanh / dx = 1 - y^2)."""
    y = get_xp(x).tanh(x)
    return y, y


def tanh_backward(dy, y):
    """dx = dy * (1 - y^2)."""
    return dy * (1.0 - y * y)
