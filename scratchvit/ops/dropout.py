"""Dropout (Srivastava et al., JMLR 2014) with inverted scaling.

    y = x * m / (1 - p),   m_i ~ Bernoulli(1 - p)        dx = dy * m / (1 - p)

as Flax ``nn.Dropout`` (the official vit_jax ``models_vit.py`` drops after the position embeddings, on
the attention output, after the MLP's GELU and after its second dense layer; attention dropout on the
attention probabilities, inside :func:`scratchvit.ops.attention_forward`, takes a mask of
:func:`scratchvit.rng.keep_mask`).

Its masks come from the counter-based generator of :mod:`scratchvit.rng` (:func:`~scratchvit.rng.keep_mask`):
a pure function of (seed, step, site, global row, column), so a part of a batch draws for its rows what
the whole batch draws, on every namespace, and a resumed run redraws the masks of its step.

One form: the plain array-API one runs on every namespace, NumPy included. A NumPy-only form would
save little (the hash is a handful of whole-array integer ops, the product one multiply), so none is
written: :func:`dropout_forward` is :func:`dropout_forward_plain`.
"""
from __future__ import annotations

from ..rng import RngKey, drop_mask


def dropout_forward_plain(x, rate: float, key: RngKey | None, site_id: int):
    """Plain form (array API) of :func:`dropout_forward`, the only form (see the module docstring)."""
    mask = drop_mask(x, key, site_id, tuple(x.shape), rate)
    return (x, None) if mask is None else (x * mask, mask)


def dropout_backward_plain(dy, cache):
    """Plain form (array API) of :func:`dropout_backward`."""
    return dy if cache is None else dy * cache


def dropout_forward(x, rate: float, key: RngKey | None, site_id: int):
    """Inverted dropout of ``x`` (Srivastava et al. 2014; Flax ``nn.Dropout``, as vit_jax ``models_vit.py``):
    each entry kept with probability 1 - ``rate`` and divided by 1 - ``rate``, its mask drawn by
    :func:`keep_mask` from (``key``, ``site_id``), the rows of ``x`` being global rows ``key.row + i``.

    Args:
        x: (rows, ...) float16/float32/float64, any namespace and device.
        rate: drop probability in [0, 1); 0 (or ``key`` None, evaluation) returns ``x`` itself.
        key: the :class:`RngKey` of the part, or None (no dropout).
        site_id: which draw of the model this is (:func:`site`, :data:`EMBEDDING_SITE`).

    Returns:
        y (x's shape, dtype, namespace; ``x`` itself when nothing is dropped) and the cache of
        :func:`dropout_backward` (the mask, or None).

    Raises:
        ValueError: ``rate`` outside [0, 1).
    """
    return dropout_forward_plain(x, rate, key, site_id)


def dropout_backward(dy, cache):
    """dx = dy * mask / (1 - rate) (the forward's multiplier); ``dy`` itself when nothing was dropped."""
    return dropout_backward_plain(dy, cache)
