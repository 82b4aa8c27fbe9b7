"""Hand-written optimisers, gradient clipping and learning-rate schedules: nothing else.

- :class:`SGD`: SGD with momentum (the paper's fine-tuning optimiser, Appendix B.1.1), optional
  decoupled weight decay.
- :class:`AdamW`: Adam (Kingma & Ba, 2015) with decoupled weight decay (Loshchilov & Hutter, 2019);
  the paper pre-trains with Adam, beta1 0.9, beta2 0.999.
- :func:`clip_by_global_norm`: the official fine-tuning clips the global gradient norm at 1.
- :func:`learning_rate`: linear warmup then cosine or linear decay, as the official
  ``vit_jax/utils.py: create_learning_rate_schedule``.

Everything here works on whole arrays: the training step passes the model's flat parameter buffer
(``model.flat``) and the flat gradient buffer of the same layout (:mod:`scratchvit.flat`), so an update,
the global norm and the clipping are each a handful of array operations, however many parameters the
model has (on a GPU each operation is a kernel launch). The formulas are elementwise, so any array works
(a single parameter, in the tests). Weight decay applies to every element, as before the flat buffers.

Optimiser state is a dict of arrays shaped like the parameter buffer, keyed by slot ("momentum";
"mu", "nu" and AdamW's step "count"); :func:`state_by_name` gives it per parameter name
("<slot>/<parameter name>") for the resume point, the layout state.npz has always had. All state lives
on the parameters' device and every update is in place, written on the array API: nothing here reads a
value back to the host (the step count, the bias corrections and the clipping factor are device arrays
too). How a batch is split and its gradients summed is :mod:`scratchvit.step`'s business.
"""
from __future__ import annotations

import math

from .backend import device_of, is_numpy, namespace
from .flat import ROW

CHUNK = 1 << 16  # elements: NumPy runs an update over pieces this long (256 KiB in float32), see in_pieces


def in_pieces(update, *arrays) -> None:
    """``update(*arrays)``: on NumPy over consecutive pieces of :data:`CHUNK` elements of the 1-D ``arrays``
    (views, written in place), elsewhere in one piece.

    The same elementwise operations on the same elements, so the same results bit for bit. On a GPU one piece
    is one kernel per operation. On a CPU a whole-buffer operation streams the buffer through memory and makes
    whole-buffer temporaries (freshly mapped pages for large ones); pieces keep both in the cache (AdamW on
    ViT-B/16's parameters: several times faster than in one piece; ``bench/update_pieces.py``, bench/RESULTS.md).
    """
    first = arrays[0]
    if first.ndim != 1 or first.shape[0] <= CHUNK or not is_numpy(namespace(first)):
        update(*arrays)
        return
    for start in range(0, first.shape[0], CHUNK):
        update(*(a[start:start + CHUNK] for a in arrays))


def _array(params, who: str):
    """``params`` itself if it is an array; a TypeError that says what to pass otherwise."""
    if isinstance(params, dict) or not hasattr(params, "shape"):
        raise TypeError(f"{who}: expected an array (the model's flat parameter buffer, model.flat), got "
                        f"{type(params).__name__}")
    return params


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

    def init(self, params) -> dict:
        """{"momentum": zeros like ``params``} (the flat parameter buffer), on its device.

        Raises:
            TypeError: ``params`` is not an array (e.g. the dict ``model.params``: pass ``model.flat``).
        """
        params = _array(params, "SGD.init")
        return {"momentum": namespace(params).zeros_like(params)}

    def update(self, params, grads, state: dict, lr: float) -> None:
        """One step, in place on ``params`` and ``state``: 4 array operations (5 with weight decay; on NumPy
        per piece, :func:`in_pieces`).

        Args:
            params: the parameters (the flat buffer); grads: their gradients, same shape and dtype, same device.
            state: from :meth:`init`. lr: the step's learning rate, a Python float.
        """
        def update(p, g, m):
            m *= self.momentum
            m += g
            if self.weight_decay:
                p *= 1.0 - lr * self.weight_decay
            p -= lr * m

        in_pieces(update, params, grads, state["momentum"])


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

    def init(self, params) -> dict:
        """{"mu": zeros, "nu": zeros like ``params`` (the flat parameter buffer), "count": 0 (int64 0-d array)},
        all on the parameters' device.

        Raises:
            TypeError: ``params`` is not an array (e.g. the dict ``model.params``: pass ``model.flat``).
        """
        params = _array(params, "AdamW.init")
        xp = namespace(params)
        return {"mu": xp.zeros_like(params), "nu": xp.zeros_like(params),
                "count": xp.zeros((), dtype=xp.int64, device=device_of(params))}

    def update(self, params, grads, state: dict, lr: float) -> None:
        """One step, in place on ``params`` and ``state``: about 23 array operations, whatever the size (on
        NumPy the elementwise part per piece, :func:`in_pieces`). The step count t and the bias corrections
        1 - b^t are device arrays (float64, then cast to the parameters' dtype): no host read.

        Args:
            params: the parameters (the flat buffer); grads: their gradients, same shape and dtype, same device.
            state: from :meth:`init`. lr: the step's learning rate, a Python float.
        """
        count = state["count"]
        xp = namespace(count)
        count += 1
        t = xp.astype(count, xp.float64)
        c1, c2 = 1.0 - self.b1 ** t, 1.0 - self.b2 ** t
        c2, lr_c1 = xp.astype(c2, params.dtype), xp.astype(lr / c1, params.dtype)

        def update(p, g, m, v):
            m *= self.b1
            m += (1.0 - self.b1) * g
            v *= self.b2
            v += (1.0 - self.b2) * (g * g)
            denom = xp.sqrt(v / c2)
            denom += self.eps
            if self.weight_decay:
                p *= 1.0 - lr * self.weight_decay
            step = m / denom
            step *= lr_c1
            p -= step

        in_pieces(update, params, grads, state["mu"], state["nu"])


OPTIMIZERS = {"sgd": SGD, "adamw": AdamW}


def make_optimizer(name: str, weight_decay: float = 0.0, **kwargs):
    """"sgd" (momentum 0.9 by default) or "adamw" (b1 0.9, b2 0.999).

    Raises:
        ValueError: unknown name.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](weight_decay=weight_decay, **kwargs)


def global_norm(grads):
    """sqrt(sum(g^2)) over every element of ``grads``, a float64 0-d array on the gradients' device.

    The flat gradient buffer (its size a multiple of :data:`scratchvit.flat.ROW`) is read as rows of ROW
    elements: each row's sum of squares is a dot product in the gradients' dtype (``vecdot``), the sum
    of the rows' in float64: 5 array operations. One dot product over a whole float32 buffer would lose
    digits (BLAS sums in float32: about 1e-3 relative error over ViT-B/16's 86M elements); rows of 1024
    stay near 1e-8. Other arrays are one row. Nothing is read back to the host: the caller reads the
    norm (with the loss) once per step. NaN or inf if any gradient is.
    """
    xp = namespace(grads)
    size = math.prod(grads.shape)
    rows = xp.reshape(grads, (-1, ROW) if size % ROW == 0 else (1, size))
    return xp.sqrt(xp.sum(xp.astype(xp.vecdot(rows, rows), xp.float64)))


def clip_by_global_norm(grads, max_norm: float, norm=None):
    """Scale the gradients in place by min(1, max_norm / global_norm) (optax ``clip_by_global_norm``),
    the factor a device array: no host read, no branch on the norm's value. 8 array operations.

    Args:
        grads: float array (the flat gradient buffer).
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
        grads *= xp.astype(factor, grads.dtype)
    return norm


def state_by_name(state: dict, layout) -> dict:
    """The optimiser state per parameter, as the resume point (state.npz) stores it: {"<slot>/<name>": view
    of the slot's buffer shaped like the parameter (:meth:`scratchvit.flat.Layout.views`)} for every slot
    shaped like the flat buffer, other entries ("count") as they are. Writing into a view writes the state.
    """
    out = {}
    for slot, v in state.items():
        if tuple(v.shape) == (layout.size,):
            out.update({f"{slot}/{k}": a for k, a in layout.views(v).items()})
        else:
            out[slot] = v
    return out


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
