"""Softmax cross-entropy, mean over the batch (the official ``train.py`` loss), forward and backward.

    loss = mean_b [ logsumexp(z_b) - sum_k t_bk z_bk ],   t_b = (1 - eps) onehot(y_b) + eps / K
    dloss/dz = (softmax(z) - t) / B

``eps`` is label smoothing (Szegedy et al., 2016, Sec. 7; 0 by default, the plain cross-entropy
against one-hot labels). The log-sum-exp subtracts each row's maximum first, so large logits do not
overflow.
"""
from __future__ import annotations

from ..backend import get_xp


def softmax_cross_entropy_forward(logits, labels, label_smoothing: float = 0.0):
    """Mean cross-entropy of ``logits`` (B, K) against integer ``labels`` (B,) in [0, K).

    Args:
        label_smoothing: eps in [0, 1): the target puts 1 - eps on the label and eps / K on every class.

    Returns:
        loss (0-d array, the logits' dtype) and the cache (softmax probabilities, labels, eps).

    Raises:
        ValueError: shapes that do not match, labels outside [0, K), or eps outside [0, 1).
    """
    xp = get_xp(logits)
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"cross-entropy: label_smoothing must lie in [0, 1), got {label_smoothing}")
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
    target_logit = z[rows, labels]  # sum_k t_k z_k
    if label_smoothing:
        target_logit = (1.0 - label_smoothing) * target_logit + label_smoothing * z.mean(axis=1)
    loss = (xp.log(sum_p[:, 0]) - target_logit).mean()
    p /= sum_p
    return loss, (p, labels, label_smoothing)


def softmax_cross_entropy_backward(cache, dloss=1.0):
    """dlogits (B, K) = dloss * (softmax - t) / B, t the (smoothed) target of the forward pass."""
    p, labels, label_smoothing = cache
    xp = get_xp(p)
    B, K = p.shape
    d = p.copy()
    if label_smoothing:
        d -= label_smoothing / K
    d[xp.arange(B), labels] -= 1.0 - label_smoothing
    d *= dloss / B
    return d
