"""Softmax cross-entropy, mean over the batch (the official ``train.py`` loss), forward and backward.

    loss = mean_b [ logsumexp(z_b) - z_b[y_b] ]
    dloss/dz = (softmax(z) - onehot(y)) / B

The log-sum-exp subtracts each row's maximum first, so large logits do not overflow.
"""
from __future__ import annotations

from ..backend import get_xp


def softmax_cross_entropy_forward(logits, labels):
    """Mean cross-entropy of ``logits`` (B, K) against integer ``labels`` (B,) in [0, K).

    Returns:
        loss (0-d array, the logits' dtype) and the cache (softmax probabilities, labels).

    Raises:
        ValueError: shapes that do not match, or labels outside [0, K).
    """
    xp = get_xp(logits)
    if logits.ndim != 2:
        raise ValueError(f"cross-entropy: logits must be (B, K), got shape {tuple(logits.shape)}")
    B, K = logits.shape
    labels = xp.asarray(labels)
    if labels.shape != (B,):
        raise ValueError(f"cross-entropy: labels must have shape ({B},), got {tuple(labels.shape)}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"cross-entropy: labels must be integers, got dtype {labels.dtype}")
    if B and (int(labels.min()) < 0 or int(labels.max()) >= K):
        raise ValueError(
            f"cross-entropy: labels must lie in [0, {K}), got min {int(labels.min())} max {int(labels.max())}"
        )
    z = logits - logits.max(axis=1, keepdims=True)
    p = xp.exp(z)
    sum_p = p.sum(axis=1, keepdims=True)
    rows = xp.arange(B)
    loss = (xp.log(sum_p[:, 0]) - z[rows, labels]).mean()
    p /= sum_p
    return loss, (p, labels)


def softmax_cross_entropy_backward(cache, dloss=1.0):
    """dlogits (B, K) = dloss * (softmax - onehot) / B."""
    p, labels = cache
    xp = get_xp(p)
    B = p.shape[0]
    d = p.copy()
    d[xp.arange(B), labels] -= 1.0
    d *= dloss / B
    return d
