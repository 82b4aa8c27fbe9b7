"""Hand-written optimisers, gradient clipping and learning-rate schedules.

- :class:`SGD`: SGD with momentum (the paper's fine-tuning optimiser, Appendix B.1.1), optional
  decoupled weight decay.
- :class:`AdamW`: Adam (Kingma & Ba, 2015) with decoupled weight decay (Loshchilov & Hutter, 2019);
  the paper pre-trains with Adam, beta1 0.9, beta2 0.999.
- :func:`clip_by_global_norm`: the official fine-tuning clips the global gradient norm at 1.
- :func:`learning_rate`: linear warmup then cosine or linear decay, as the official
  ``vit_jax/utils.py: create_learning_rate_schedule``.

Optimiser state is a flat dict of arrays keyed by ``"<slot>/<parameter name>"`` (plus ``"count"``
for AdamW), so it is saved and restored like the parameters. All updates are in place.
"""
from __future__ import annotations

import math

import numpy as np

from .backend import get_xp


class SGD:
    """SGD with momentum (heavy ball, as optax ``sgd(momentum=...)`` / Flax ``optim.Momentum``).

        m <- momentum * m + g
        p <- p - lr * m - lr * weight_decay * p        (weight decay decoupled, off by default)
    """

    def __init__(self, momentum: float = 0.9, weight_decay: float = 0.0):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"SGD: momentum must lie in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"SGD: weight_decay must be >= 0, got {weight_decay}")
        self.momentum, self.weight_decay = momentum, weight_decay

    def init(self, params: dict) -> dict:
        """Zero momentum buffers: {"momentum/<name>": zeros like params[name]}."""
        return {f"momentum/{k}": get_xp(v).zeros_like(v) for k, v in params.items()}

    def update(self, params: dict, grads: dict, state: dict, lr: float) -> None:
        """One step, in place on ``params`` and ``state``. ``lr`` is the step's learning rate."""
        for k, p in params.items():
            m = state[f"momentum/{k}"]
            m *= self.momentum
            m += grads[k]
            if self.weight_decay:
                p *= 1.0 - lr * self.weight_decay
            p -= lr * m


class AdamW:
    """Adam with bias correction and decoupled weight decay (Loshchilov & Hutter, 2019, Algorithm 2).

        m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;  t <- t + 1
        p <- p - lr * ( m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps) + weight_decay * p )
    """

    def __init__(self, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0):
        for name, v in (("b1", b1), ("b2", b2)):
            if not 0.0 <= v < 1.0:
                raise ValueError(f"AdamW: {name} must lie in [0, 1), got {v}")
        if eps <= 0 or weight_decay < 0:
            raise ValueError(f"AdamW: eps must be > 0 and weight_decay >= 0, got {eps}, {weight_decay}")
        self.b1, self.b2, self.eps, self.weight_decay = b1, b2, eps, weight_decay

    def init(self, params: dict) -> dict:
        """{"mu/<name>": zeros, "nu/<name>": zeros, "count": 0 (int64 0-d array)}."""
        xp = get_xp(*params.values())
        state = {}
        for k, v in params.items():
            state[f"mu/{k}"] = xp.zeros_like(v)
            state[f"nu/{k}"] = xp.zeros_like(v)
        state["count"] = np.zeros((), np.int64)
        return state

    def update(self, params: dict, grads: dict, state: dict, lr: float) -> None:
        """One step, in place on ``params`` and ``state``."""
        state["count"] = state["count"] + 1
        t = int(state["count"])
        c1, c2 = 1.0 - self.b1 ** t, 1.0 - self.b2 ** t
        xp = get_xp(*params.values())
        for k, p in params.items():
            g, m, v = grads[k], state[f"mu/{k}"], state[f"nu/{k}"]
            m *= self.b1
            m += (1.0 - self.b1) * g
            v *= self.b2
            v += (1.0 - self.b2) * (g * g)
            denom = xp.sqrt(v / c2)
            denom += self.eps
            if self.weight_decay:
                p *= 1.0 - lr * self.weight_decay
            step = m / denom
            step *= lr / c1
            p -= step


OPTIMIZERS = {"sgd": SGD, "adamw": AdamW}


def make_optimizer(name: str, weight_decay: float = 0.0, **kwargs):
    """"sgd" (momentum 0.9 by default) or "adamw" (b1 0.9, b2 0.999).

    Raises:
        ValueError: unknown name.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](weight_decay=weight_decay, **kwargs)


def global_norm(grads: dict) -> float:
    """sqrt(sum over all arrays of sum(g^2)): each array's sum of squares is one dot product in the
    array's dtype (BLAS), the sum over the arrays is a Python float (float64) on the host."""
    total = 0.0
    for g in grads.values():
        flat = g.reshape(-1)
        total += float(flat @ flat)
    return math.sqrt(total)


def clip_by_global_norm(grads: dict, max_norm: float) -> float:
    """Scale all gradients in place by min(1, max_norm / global_norm) (optax ``clip_by_global_norm``).

    Args:
        max_norm: the largest allowed global norm; None or <= 0 disables clipping.

    Returns:
        The global norm before clipping (a float; NaN or inf if a gradient is).
    """
    norm = global_norm(grads)
    if max_norm and max_norm > 0 and norm > max_norm:
        scale = max_norm / norm
        for g in grads.values():
            g *= scale
    return norm


SCHEDULES = ("cosine", "linear", "constant")


def learning_rate(step: int, base_lr: float, total_steps: int, warmup_steps: int = 0,
                  decay_type: str = "cosine", linear_end: float = 1e-5) -> float:
    """The learning rate of step ``step`` (0-based), as ``create_learning_rate_schedule`` (vit_jax/utils.py).

        progress = clip((step - warmup) / (total - warmup), 0, 1)
        cosine:   lr = base * 0.5 * (1 + cos(pi * progress))
        linear:   lr = linear_end + (base - linear_end) * (1 - progress)
        constant: lr = base
        lr *= min(1, step / warmup)        (if warmup > 0)

    Raises:
        ValueError: unknown ``decay_type``, or warmup_steps >= total_steps with a decay.
    """
    if decay_type not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {decay_type!r}; choose from {SCHEDULES}")
    lr = base_lr
    if decay_type != "constant":
        if total_steps <= warmup_steps:
            raise ValueError(f"schedule: total steps ({total_steps}) must exceed warmup steps ({warmup_steps})")
        progress = min(max((step - warmup_steps) / float(total_steps - warmup_steps), 0.0), 1.0)
        if decay_type == "cosine":
            lr = base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            lr = linear_end + (base_lr - linear_end) * (1.0 - progress)
    if warmup_steps:
        lr = lr * min(1.0, step / warmup_steps)
    return lr


def weight_share(loss: float, grads: dict, rows: int, total: int, parts: int) -> float:
    """Weight the mean loss and gradients of ``rows`` of ``total`` images, one of ``parts`` parts whose
    plain average is taken next (micro-batches, MPI ranks), by ``rows * parts / total``: the average
    is then the mean over all ``total`` images even when the parts differ in size. Scales ``grads``
    in place; returns the weighted loss."""
    w = rows * parts / total
    for g in grads.values():
        g *= w
    return loss * w


def accumulate_gradient(model, images, labels, accum_steps: int, label_smoothing: float = 0.0):
    """Mean loss and gradients of a batch computed in ``accum_steps`` equal micro-batches, as the official
    ``vit_jax/utils.py: accumulate_gradient``: the same result as one pass over the whole batch (up to
    rounding), with the activation memory of one micro-batch.

    Args:
        model: a :class:`scratchvit.ViT` (``loss_and_grads(images, labels) -> (float, {name: array})``).
        images: (B, H, W, 3); labels: (B,) int, B >= ``accum_steps``. When B does not divide (a batch
            that ``--skip-bad-images`` left shorter), the micro-batches differ by one image and each
            is weighted by its size, so the result is still the mean over the B images.
        label_smoothing: passed on to ``model.loss_and_grads``.

    Returns:
        (loss: float, grads: {name: array like the parameter}), both means over the B images.

    Raises:
        ValueError: fewer images than micro-batches.
    """
    if accum_steps == 1:
        return model.loss_and_grads(images, labels, label_smoothing=label_smoothing)
    b = len(labels)
    if b < accum_steps:
        raise ValueError(f"a batch of {b} images cannot make {accum_steps} micro-batches (--accum-steps)")
    bounds = [b * i // accum_steps for i in range(accum_steps + 1)]
    total_loss, total = 0.0, None
    for lo, hi in zip(bounds, bounds[1:]):
        loss, grads = model.loss_and_grads(images[lo:hi], labels[lo:hi], label_smoothing=label_smoothing)
        if b % accum_steps:  # unequal micro-batches: weight each mean by its share (1 when equal)
            loss = weight_share(loss, grads, hi - lo, b, accum_steps)
        total_loss += loss
        if total is None:
            total = grads
        else:
            for k, g in grads.items():
                total[k] += g
    for g in total.values():
        g /= accum_steps
    return total_loss / accum_steps, total
