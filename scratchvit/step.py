"""The training step: one global batch in, one optimiser update out.

:func:`train_step` is what ``python -m scratchvit.train`` runs per batch. Under MPI each rank takes its
contiguous rows of the global batch (``dist.split_range``); its loss and gradients, weighted by its share
of the batch, come from :func:`scratchvit.accumulate.flat_loss_and_grads` (micro-batches and CPU threads),
and one allreduce sums the ranks' parts (the official code's ``jax.lax.pmean``). The host batch moves to
the model's device once, here; gradients, clipping and the optimiser update stay on the device; the
loss, the gradient norm and the stop flag come back to the host in one read per step. The gradients
are summed in one flat buffer of the parameters' layout (:mod:`scratchvit.flat`), so the unscaling,
the norm, the clipping, the MPI allreduce and the optimiser update each run over one array.

Mixed precision (``precision="fp16"``; Micikevicius et al., ICLR 2018): the model keeps float32
master parameters and optimiser state; each step runs forward and backward on a float16 copy of
the parameters (the ops keep layer-norm statistics, softmax and the loss in float32), with the
loss scaled by :class:`LossScale`; the float16 gradients are summed in float32, unscaled, checked
for inf/NaN (a step with one is skipped and the scale halved), clipped and applied to the masters.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from . import accumulate, distributed
from .backend import PRECISIONS, to_device, to_numpy
from .ops.cross_entropy import check_targets as check_labels
from .optim import clip_by_global_norm, global_norm
from .rng import RngKey

COMPUTE_DTYPES = {"fp32": None, "fp16": "float16"}  # None: the model's own dtype


@dataclasses.dataclass
class LossScale:
    """Dynamic loss scaling (Micikevicius et al., ICLR 2018, Sec. 3.3; as ``torch.cuda.amp.GradScaler``).

    The loss is multiplied by ``scale`` before the backward pass so that small float16 gradients do
    not flush to zero; the gradients are divided by it again in float32. A step whose gradients
    hold inf or NaN is skipped and the scale halved; after ``growth_interval`` clean steps in a row
    the scale doubles. Host-side Python numbers: the decision uses the step's one host read.

    Attributes:
        scale: the current loss scale (starts at 2**16).
        clean_steps: clean steps since the scale last changed.
        skipped: steps skipped for an overflow, over the whole run.
    """

    scale: float = 2.0 ** 16
    clean_steps: int = 0
    skipped: int = 0
    growth_interval: int = 2000
    min_scale: float = 1.0

    def update(self, finite: bool) -> None:
        """Record a step: halve the scale after an overflow, double it after ``growth_interval`` clean steps.

        Raises:
            FloatingPointError: an overflow at the smallest scale (``min_scale``): the loss itself is
                not finite, no scale will help.
        """
        if finite:
            self.clean_steps += 1
            if self.clean_steps >= self.growth_interval:
                self.scale *= 2.0
                self.clean_steps = 0
            return
        if self.scale <= self.min_scale:
            raise FloatingPointError(f"gradients are not finite even at loss scale {self.scale:g}")
        self.scale /= 2.0
        self.clean_steps = 0
        self.skipped += 1

    def state(self) -> dict:
        """The resume state: {"loss_scale/scale", "loss_scale/clean_steps", "loss_scale/skipped"} as NumPy scalars."""
        return {"loss_scale/scale": np.float64(self.scale), "loss_scale/clean_steps": np.int64(self.clean_steps),
                "loss_scale/skipped": np.int64(self.skipped)}

    def restore(self, arrays: dict) -> None:
        """Take back what :meth:`state` saved (keys missing in an fp32 run's state: left as they are)."""
        if "loss_scale/scale" in arrays:
            self.scale = float(arrays["loss_scale/scale"])
            self.clean_steps = int(arrays["loss_scale/clean_steps"])
            self.skipped = int(arrays["loss_scale/skipped"])


@dataclasses.dataclass
class StepResult:
    """What one :func:`train_step` gives back to the host (Python numbers).

    Attributes:
        loss: the global batch's mean cross-entropy.
        grad_norm: the global gradient norm before clipping (unscaled).
        skipped: True when fp16 found inf/NaN gradients and nothing was updated.
        stop: this rank or, under MPI, any rank asked to stop (Ctrl-C).
    """

    loss: float
    grad_norm: float
    skipped: bool = False
    stop: bool = False


def train_step(model, optimizer, opt_state: dict, images, labels, lr: float, *, dist=None, accum_steps: int = 1,
               label_smoothing: float = 0.0, grad_clip: float | None = 1.0, precision: str = "fp32",
               loss_scale: LossScale | None = None, step: int = 0, stop: bool = False, seed: int = 0) -> StepResult:
    """One optimiser step on this rank's share of a global batch.

    Args:
        model: a :class:`scratchvit.ViT` (its parameters, float32 or float64, are the masters).
        optimizer, opt_state: from :mod:`scratchvit.optim`; ``opt_state`` = ``optimizer.init(model.flat)``, on
            the model's device.
        images: (B, H, W, 3) host (NumPy) array of the global batch, pixels in [-1, 1]; labels: (B,) int,
            or (B, K) float soft targets (mixup / CutMix).
        lr: this step's learning rate.
        dist: :mod:`scratchvit.distributed` object (None: one process).
        accum_steps, label_smoothing: see :func:`scratchvit.accumulate.loss_and_grads`.
        grad_clip: global-norm clipping threshold (None or 0: off).
        precision: "fp32" (the model's dtype throughout) or "fp16" (mixed precision; needs ``loss_scale``).
        loss_scale: the :class:`LossScale` of an fp16 run (updated here).
        step: the step number (for messages, the allreduce's timeout message and the dropout masks).
        seed: the run's seed; with ``step`` and each row's global index it fixes the dropout and drop-path
            masks (:class:`scratchvit.ops.RngKey`), so ranks, micro-batches, threads and resumed runs agree.
        stop: this rank was asked to stop (Ctrl-C); under MPI the flag travels with the gradients, so
            that every rank learns in the same step whether any rank was.

    Returns:
        :class:`StepResult`. One device-to-host read per step (loss, norm, stop flag together).

    Raises:
        ValueError: bad labels or precision. FloatingPointError: the loss or the gradients are not finite
        (fp32; fp16 at the smallest loss scale); nothing was updated.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp16" and loss_scale is None:
        raise ValueError("precision fp16 needs a LossScale")
    dist = dist or distributed.Single()
    batch = len(labels)
    lo, hi = dist.split_range(batch)  # this rank's rows: all of them in one process
    check_labels(labels[lo:hi], model.config.num_classes)
    key = RngKey(seed, step, lo)  # this rank's first row is row lo of the global batch
    compute = model if precision == "fp32" else model.cast(COMPUTE_DTYPES[precision])
    x = to_device(images[lo:hi], model.device, compute.dtype)  # the step's one host-to-device copy
    y = to_device(labels[lo:hi], model.device)
    scale = loss_scale.scale if precision == "fp16" else 1.0
    loss, grads, _ = accumulate.flat_loss_and_grads(compute, x, y, total=batch / dist.size,
                                                    accum_steps=accum_steps, label_smoothing=label_smoothing,
                                                    loss_scale=scale, train=True, key=key,
                                                    grad_dtype=None if compute is model else model.xp.float32)
    # grads: the flat buffer of model.layout, in the masters' dtype
    xp = model.xp
    flag = xp.asarray(float(stop), dtype=xp.float64, device=model.device_object)
    if dist.size > 1:
        buf = dist.allreduce_mean(distributed.flatten(grads, loss, flag), step)  # one allreduce, one buffer
        loss, grads, flag = distributed.unflatten(buf, model.layout.size)
    if scale != 1.0:
        grads *= 1.0 / scale
    norm = global_norm(grads)
    loss_f, norm_f, stop_f = (float(v) for v in to_numpy(xp.stack(
        [xp.astype(loss, xp.float64), norm, xp.astype(flag, xp.float64)])))  # the one device-to-host read
    stop = stop_f > 0
    finite = math.isfinite(loss_f) and math.isfinite(norm_f)
    if precision == "fp16":
        loss_scale.update(finite)  # raises at the smallest scale
        if not finite:
            return StepResult(loss_f, norm_f, skipped=True, stop=stop)
    elif not finite:
        raise FloatingPointError(f"loss is {loss_f} (gradient norm {norm_f}) at step {step}")
    clip_by_global_norm(grads, grad_clip, norm=norm)
    optimizer.update(model.flat, grads, opt_state, lr)
    return StepResult(loss_f, norm_f, stop=stop)
