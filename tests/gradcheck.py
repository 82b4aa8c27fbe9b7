"""Central finite differences for the gradient checks (float64 throughout)."""
from __future__ import annotations

import numpy as np

EPS = 1e-6


def numerical_grad(f, x, indices=None, eps=EPS):
    """d f / d x by central differences, where f() -> float reads ``x`` (modified in place and restored).

    ``indices``: flat indices to probe (default: every element). Returns (indices, values).
    """
    flat = x.reshape(-1)
    if indices is None:
        indices = np.arange(flat.size)
    out = np.empty(len(indices))
    for j, i in enumerate(indices):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        out[j] = (fp - fm) / (2 * eps)
    return indices, out


def relative_error(analytic, numeric):
    """max |analytic - numeric| / max |numeric|: the error relative to the tensor's largest entry."""
    scale = np.abs(numeric).max()
    return np.abs(analytic - numeric).max() / scale


def sample_indices(size, k, rng):
    """All indices if size <= k, else k random distinct ones."""
    return np.arange(size) if size <= k else rng.choice(size, k, replace=False)
