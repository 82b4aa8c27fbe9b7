"""Stochastic depth (Huang et al., ECCV 2016), per sample, with inverted scaling: a residual branch
``x + f(x)`` becomes ``x + drop_path(f(x))``,

    drop_path(h)_b = h_b * m_b / (1 - p),   m_b ~ Bernoulli(1 - p), one draw per sample b
    dh_b = dy_b * m_b / (1 - p)

as timm's ``drop_path`` (``timm/layers/drop.py``). The model gives block i of L the rate
``drop_path_rate * i / (L - 1)`` (timm / DeiT: ``linspace(0, drop_path_rate, L)``), Huang et al.'s linear
decay rule (Sec. 3, rate rising linearly with depth) indexed so that the first block is never dropped
(:meth:`scratchvit.configs.ViTConfig.drop_path_rate_of`). The draws come from the
counter-based generator of :mod:`scratchvit.rng` (one column per row), so a part of a batch
draws for its rows what the whole batch draws, on every namespace.

One form: the plain array-API one, NumPy included (the op is one multiply by a (rows, 1, ...) array;
a NumPy-only form would gain nothing).
"""
from __future__ import annotations

from ..backend import namespace
from ..rng import RngKey, drop_mask


def drop_path_forward_plain(x, rate: float, key: RngKey | None, site_id: int):
    """Plain form (array API) of :func:`drop_path_forward`, the only form (see the module docstring)."""
    mask = drop_mask(x, key, site_id, (x.shape[0], 1), rate)
    if mask is None:
        return x, None
    mask = namespace(x).reshape(mask, (x.shape[0],) + (1,) * (x.ndim - 1))
    return x * mask, mask


def drop_path_backward_plain(dy, cache):
    """Plain form (array API) of :func:`drop_path_backward`."""
    return dy if cache is None else dy * cache


def drop_path_forward(x, rate: float, key: RngKey | None, site_id: int):
    """Drop whole samples of a residual branch's output ``x`` (Huang et al. 2016; timm ``drop_path``):
    sample b (row b, global row ``key.row + b``) is kept with probability 1 - ``rate`` and divided by
    1 - ``rate``, or zeroed.

    Args:
        x: (rows, ...) float16/float32/float64, any namespace and device.
        rate: drop probability in [0, 1); 0 (or ``key`` None, evaluation) returns ``x`` itself.
        key: the part's :class:`~scratchvit.rng.RngKey`, or None.
        site_id: the draw's site (:func:`scratchvit.rng.site`).

    Returns:
        y (x's shape and dtype; ``x`` itself when nothing is dropped) and the cache of
        :func:`drop_path_backward` (the (rows, 1, ...) multiplier, or None).

    Raises:
        ValueError: ``rate`` outside [0, 1).
    """
    return drop_path_forward_plain(x, rate, key, site_id)


def drop_path_backward(dy, cache):
    """dx = dy * m_b / (1 - rate) per sample (the forward's multiplier); ``dy`` itself when nothing was dropped."""
    return drop_path_backward_plain(dy, cache)
