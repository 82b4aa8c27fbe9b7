"""Softmax cross-entropy, mean over the batch (the official ``train.py`` loss), forward and backward.

    loss = mean_b [ logsumexp(z_b) - sum_k t_bk z_bk ],   t_b = (1 - eps) s_b + eps / K
    dloss/dz = (softmax(z) - t) / B

``s_b`` is the target of row b: onehot(y_b) for an integer label, or a given row of probabilities
(soft targets, (B, K) floats: mixup, Zhang et al. ICLR 2018; CutMix, Yun et al. ICCV 2019; as timm's
``SoftTargetCrossEntropy``). ``eps`` is label smoothing (Szegedy et al., 2016, Sec. 7; 0 by default,
the plain cross-entropy). Smoothing is affine and the mixing weights sum to 1, so smoothing a mixed
target equals mixing the smoothed one-hots (timm's ``mixup_target``): mixup and label smoothing
combine. The log-sum-exp subtracts each row's maximum first, so large logits do not overflow.

Two forms: the NumPy fast form (float32/float64 NumPy logits: fancy indexing of the label column)
and the plain form (:func:`softmax_cross_entropy_forward_plain`, array API 2023.12: CuPy, any
namespace, float16), whose one-hot target is a comparison with ``arange(K)``. Mixed precision: the
plain form computes the log-sum-exp, the loss and the softmax in float32 for float16 logits, returns
the loss as a float32 0-d array and the gradient in float16.

Labels are checked for shape and dtype (integer (B,) or floating (B, K)) always, for their range
[0, K) (soft targets: rows of probabilities summing to 1) only when they are a NumPy array: reading a
device array back to the host would stall the device, so callers with labels on a device check them
on the host before moving them there (:func:`check_targets`, which :mod:`scratchvit.step` calls).
"""
from __future__ import annotations

import numpy as np
from array_api_compat import is_array_api_obj

from ..backend import device_of, is_numpy, namespace
from .common import fast_form, wide_dtype

SOFT_TOL = 1e-4  # soft-target rows must sum to 1 within this (float32 mixing)


def check_targets(labels, num_classes: int) -> None:
    """Refuse host (NumPy) targets that are not (B,) integers in [0, num_classes) nor (B, num_classes)
    soft targets (floats, finite, >= 0, each row summing to 1 within SOFT_TOL: mixup / CutMix), so
    that labels can be checked before they move to a device, which then never has to answer.

    Raises:
        ValueError: naming the shape, dtype, range or row sum found.
    """
    labels = np.asarray(labels)
    if labels.ndim == 2:
        if labels.dtype.kind != "f" or labels.shape[1] != num_classes:
            raise ValueError(f"soft targets must be a (B, {num_classes}) float array, got shape {labels.shape} "
                             f"dtype {labels.dtype}")
        if labels.size:
            err = float(np.abs(labels.sum(axis=1, dtype=np.float64) - 1.0).max())
            if not (np.isfinite(labels).all() and labels.min() >= 0 and err <= SOFT_TOL):
                raise ValueError(f"soft targets must be rows of probabilities (finite, >= 0, summing to 1), got "
                                 f"min {labels.min()} and a row sum off by {err:.3g}")
        return
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be a (B,) integer array, got shape {labels.shape} dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got min {labels.min()} max {labels.max()}")


def _check_host(labels, num_classes: int) -> None:
    """:func:`check_targets` with the op's name in front of its message."""
    try:
        check_targets(labels, num_classes)
    except ValueError as e:
        raise ValueError(f"cross-entropy: {e}") from None


def is_soft(labels) -> bool:
    """True for soft targets: a (B, K) array (integer labels are (B,))."""
    return labels.ndim == 2


def _checked_labels(logits, labels, label_smoothing):
    """``labels`` as an array of ``logits``' namespace (lists are converted), after the checks of
    :func:`softmax_cross_entropy_forward`; soft targets are cast to the logits' dtype (float32 for
    float16 logits); no device value is read."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"cross-entropy: label_smoothing must lie in [0, 1), got {label_smoothing}")
    if logits.ndim != 2:
        raise ValueError(f"cross-entropy: logits must be (B, K), got shape {tuple(logits.shape)}")
    B, K = logits.shape
    if not is_array_api_obj(labels):
        labels = namespace(logits).asarray(labels, device=device_of(logits))
    xp = namespace(logits, labels)
    if is_soft(labels):
        if tuple(labels.shape) != (B, K):
            raise ValueError(f"cross-entropy: soft targets must have shape ({B}, {K}), got {tuple(labels.shape)}")
        if not xp.isdtype(labels.dtype, "real floating"):
            raise ValueError(f"cross-entropy: soft targets must be floats, got dtype {labels.dtype}")
        if B and is_numpy(xp):  # host targets: free to check (check_targets); device ones the caller's
            _check_host(labels, K)
        return xp.astype(labels, wide_dtype(xp, logits.dtype), copy=False)
    if tuple(labels.shape) != (B,):
        raise ValueError(f"cross-entropy: labels must have shape ({B},) (or ({B}, {K}) soft targets), "
                         f"got {tuple(labels.shape)}")
    if not xp.isdtype(labels.dtype, "integral"):
        raise ValueError(f"cross-entropy: labels must be integers, got dtype {labels.dtype}")
    if B and is_numpy(xp):  # host labels: free to check; device labels are the caller's to check on the host
        _check_host(labels, K)
    return labels


def softmax_cross_entropy_forward_plain(logits, labels, label_smoothing: float = 0.0):
    """Plain form (array API) of :func:`softmax_cross_entropy_forward`; float32 inside for float16
    logits, whose loss is float32. Its cache is a dict, for :func:`softmax_cross_entropy_backward_plain`."""
    labels = _checked_labels(logits, labels, label_smoothing)
    xp = namespace(logits, labels)
    B, K = logits.shape
    eps = label_smoothing
    z = xp.astype(logits, wide_dtype(xp, logits.dtype), copy=False)
    z = z - xp.max(z, axis=1, keepdims=True)
    lse = xp.log(xp.sum(xp.exp(z), axis=1))  # logsumexp of the shifted row
    if is_soft(labels):
        onehot = labels
    else:
        onehot = xp.astype(labels[:, None] == xp.arange(K, dtype=labels.dtype, device=device_of(logits)), z.dtype)
    target = (1.0 - eps) * onehot + eps / K
    loss = xp.mean(lse - xp.sum(target * z, axis=1))
    p = xp.exp(z - lse[:, None])  # softmax
    return loss, {"p": p, "target": target, "dtype": logits.dtype}


def softmax_cross_entropy_backward_plain(cache, dloss=1.0):
    """Plain form (array API) of :func:`softmax_cross_entropy_backward`: dloss * (p - t) / B, cast to the
    logits' dtype."""
    p, target = cache["p"], cache["target"]
    xp = namespace(p)
    return xp.astype((p - target) * (dloss / p.shape[0]), cache["dtype"], copy=False)


def _softmax_cross_entropy_forward_numpy(logits, labels, label_smoothing):
    xp = namespace(logits)
    B, K = logits.shape
    z = logits - logits.max(axis=1, keepdims=True)
    p = xp.exp(z)
    sum_p = p.sum(axis=1, keepdims=True)
    target_logit = (labels * z).sum(axis=1) if labels.ndim == 2 else z[xp.arange(B), labels]  # sum_k t_k z_k
    if label_smoothing:
        target_logit = (1.0 - label_smoothing) * target_logit + label_smoothing * z.mean(axis=1)
    loss = (xp.log(sum_p[:, 0]) - target_logit).mean()
    p /= sum_p
    return loss, (p, labels, label_smoothing)


def _softmax_cross_entropy_backward_numpy(cache, dloss=1.0):
    p, labels, label_smoothing = cache
    B, K = p.shape
    d = p.copy()
    if label_smoothing:
        d -= label_smoothing / K
    if labels.ndim == 2:  # soft targets
        d -= (1.0 - label_smoothing) * labels
    else:
        d[namespace(p).arange(B), labels] -= 1.0 - label_smoothing
    d *= dloss / B
    return d


def softmax_cross_entropy_forward(logits, labels, label_smoothing: float = 0.0):
    """Mean cross-entropy of ``logits`` (B, K) against integer ``labels`` (B,) in [0, K) or soft targets
    (B, K) (official vit_jax ``train.py`` loss, ``cross_entropy_loss``, which takes one-hot or soft
    targets; label smoothing as Szegedy et al. 2016 Sec. 7; soft targets as timm ``SoftTargetCrossEntropy``).

    Args:
        logits: (B, K) float16/float32/float64.
        labels: (B,) integer array of the logits' namespace and device (or a list), or (B, K) float soft
            targets there (rows of probabilities, e.g. mixup / CutMix targets; cast to the logits' dtype).
        label_smoothing: eps in [0, 1): the target is (1 - eps) times the label's one-hot (or the soft
            target) plus eps / K on every class.

    Returns:
        loss (0-d array: the logits' dtype, float32 for float16 logits) and the cache for the backward.

    Raises:
        ValueError: shapes that do not match, non-integer (B,) labels or non-float (B, K) targets, NumPy
            labels outside [0, K) or NumPy soft targets that are not rows of probabilities (arrays on a
            device are not value-checked here: the caller checks them on the host), or eps outside
            [0, 1); (array-api-strict) arrays on different devices.
        TypeError: logits and labels of different libraries.
    """
    labels = _checked_labels(logits, labels, label_smoothing)
    if fast_form(namespace(logits, labels), logits):
        return _softmax_cross_entropy_forward_numpy(logits, labels, label_smoothing)
    return softmax_cross_entropy_forward_plain(logits, labels, label_smoothing)


def softmax_cross_entropy_backward(cache, dloss=1.0):
    """dlogits (B, K) = dloss * (softmax - t) / B, t the (smoothed) target of the forward pass; the
    logits' dtype. ``dloss``: a float or a 0-d array of the logits' namespace and device."""
    if isinstance(cache, dict):
        return softmax_cross_entropy_backward_plain(cache, dloss)
    return _softmax_cross_entropy_backward_numpy(cache, dloss)
