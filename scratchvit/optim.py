"""Hand-written optimisers, gradient clipping and learning-rate schedules: nothing else.

- :class:`SGD`: SGD with momentum (the paper's fine-tuning optimiser, Appendix B.1.1), optional
  decoupled weight decay.
- :class:`AdamW`: Adam (Kingma & Ba, 2015) with decoupled weight decay (Loshchilov & Hutter, 2019);
  the paper pre-trains with Adam, beta1 0.9, beta2 0.999.
- :func:`clip_by_global_norm`: the official fine-tuning clips the global gradient norm at 1.
- :func:`learning_rate`: linear warmup then cosine or linear decay, as the official
  ``vit_jax/utils.py: create_learning_rate_schedule``.

Optimiser state is a flat dict of arrays keyed by ``"<slot>/<parameter name>"`` (plus ``"count"``
for AdamW), so it is saved and restored like the parameters. All state lives on the parameters'
device and every update is in place, written on the array API: nothing here reads a value back to
the host (the step count, the bias corrections and the clipping factor are device arrays too).
How a batch is split and its gradients summed is :mod:`scratchvit.step`'s business.
"""
from __future__ import annotations

import math

from .backend import device_of, namespace


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
        """Zero momentum buffers: {"momentum/<name>": zeros like params[name]}, on its device."""
        return {f"momentum/{k}": namespace(v).zeros_like(v) for k, v in params.items()}

    def update(self, params: dict, grads: dict, state: dict, lr: float) -> None:
        """One step, in place on ``params`` and ``state`` (arrays on one device, ``grads`` in the
        parameters' dtype). ``lr``: the step's learning rate, a Python float."""
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
        """{"mu/<name>": zeros, "nu/<name>": zeros, "count": 0 (int64 0-d array)}, all on the parameters' device."""
        state = {}
        for k, v in params.items():
            xp = namespace(v)
            state[f"mu/{k}"] = xp.zeros_like(v)
            state[f"nu/{k}"] = xp.zeros_like(v)
            state["count"] = xp.zeros((), dtype=xp.int64, device=device_of(v))
        return state

    def update(self, params: dict, grads: dict, state: dict, lr: float) -> None:
        """One step, in place on ``params`` and ``state``. The step count t and the bias corrections
        1 - b^t are device arrays (float64, then cast to each parameter's dtype): no host read."""
        count = state["count"]
        xp = namespace(count)
        count += 1
        t = xp.astype(count, xp.float64)
        c1, c2 = 1.0 - self.b1 ** t, 1.0 - self.b2 ** t
        for k, p in params.items():
            g, m, v = grads[k], state[f"mu/{k}"], state[f"nu/{k}"]
            m *= self.b1
            m += (1.0 - self.b1) * g
            v *= self.b2
            v += (1.0 - self.b2) * (g * g)
            denom = xp.sqrt(v / xp.astype(c2, v.dtype))
            denom += self.eps
            if self.weight_decay:
                p *= 1.0 - lr * self.weight_decay
            step = m / denom
            step *= xp.astype(lr / c1, m.dtype)
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


def global_norm(grads: dict):
    """sqrt(sum over all arrays of sum(g^2)), a float64 0-d array on the gradients' device.

    Each array's sum of squares is one dot product ``g @ g`` in the array's dtype (BLAS on the CPU),
    the sum over the arrays is in float64. Nothing is read back to the host: the caller reads the
    norm (with the loss) once per step. NaN or inf if any gradient is.
    """
    total = None
    for g in grads.values():
        xp = namespace(g)
        flat = xp.reshape(g, (-1,))
        sq = xp.astype(flat @ flat, xp.float64)
        total = sq if total is None else total + sq
    return xp.sqrt(total)


def clip_by_global_norm(grads: dict, max_norm: float, norm=None):
    """Scale all gradients in place by min(1, max_norm / global_norm) (optax ``clip_by_global_norm``),
    the factor a device array: no host read, no branch on the norm's value.

    Args:
        grads: {name: array}, float arrays on one device.
        max_norm: the largest allowed global norm; None or <= 0 disables clipping.
        norm: the global norm if already computed (:func:`global_norm`), else computed here.

    Returns:
        The global norm before clipping, a float64 0-d array on the gradients' device (NaN or inf if
        a gradient is; then the gradients are left as they are).
    """
    if norm is None:
        norm = global_norm(grads)
    if max_norm and max_norm > 0:
        xp = namespace(norm)
        factor = max_norm / xp.maximum(norm, xp.asarray(max_norm, dtype=norm.dtype, device=device_of(norm)))
        factor = xp.where(xp.isfinite(factor), factor, xp.ones_like(factor))
        for g in grads.values():
            g *= xp.astype(factor, g.dtype)
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
