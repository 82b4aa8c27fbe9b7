"""The training step: one global batch in, one optimiser update out.

A global batch of B images is split, and every split is the same idea: each part computes the
mean loss of its rows and its gradients, weighted by its share ``rows / B``, and the parts are
summed. That gives the mean over the B images whatever the part sizes. Three kinds of part:

* **MPI ranks** (``dist.split_range``): each rank takes its contiguous rows; the allreduce sums
  the ranks' weighted parts (the official code's ``jax.lax.pmean``).
* **micro-batches** (``--accum-steps``, the official ``vit_jax/utils.py: accumulate_gradient``):
  parts run one after the other, with the activation memory of one.
* **threads** (CPU only): each micro-batch's rows run forward and backward on scratchvit's threads
  (:func:`scratchvit.cpu.split_batch`), OpenBLAS held to one thread meanwhile.

The weight enters once, as the upstream gradient of the cross-entropy (``dloss = rows / B``), so
the parts' gradients need no rescaling and are summed as they come.

:func:`train_step` is what ``python -m scratchvit.train`` runs per batch: the host batch moves to
the model's device once, here; gradients, clipping and the optimiser update stay on the device;
the loss, the gradient norm and the stop flag come back to the host in one read per step. The
gradients are summed in one flat buffer of the parameters' layout (:mod:`scratchvit.flat`), so the
unscaling, the norm, the clipping, the MPI allreduce and the optimiser update each run over one array.

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

from . import cpu, distributed
from .backend import PRECISIONS, is_numpy, namespace, to_device, to_numpy
from .ops.cross_entropy import check_targets as check_labels
from .ops.dropout import RngKey
from .optim import clip_by_global_norm, global_norm

COMPUTE_DTYPES = {"fp32": None, "fp16": "float16"}  # None: the model's own dtype


def shares(n: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous (start, stop) row ranges of ``parts`` parts of ``n`` rows, sizes differing by at most one."""
    return [(n * i // parts, n * (i + 1) // parts) for i in range(parts)]


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


def _add(total, part, dtype):
    """total += part (flat gradient buffers), in place; the first part becomes the total (cast to ``dtype``)."""
    if total is None:
        return part if dtype is None else namespace(part).astype(part, dtype)
    if part.dtype == total.dtype:
        total += part
    else:
        total += namespace(part).astype(part, total.dtype)
    return total


def loss_and_grads(model, images, labels, *, total: float | None = None, accum_steps: int = 1,
                   label_smoothing: float = 0.0, loss_scale: float = 1.0, grad_dtype=None,
                   need_dinput: bool = False, train: bool = False, key=None):
    """The weighted sum over parts of (mean loss, gradients): micro-batches, and threads on the CPU.

    Args:
        model: a :class:`scratchvit.ViT` (its ``part_loss_and_grads`` runs one part).
        images: (B, H, W, 3) on the model's device, in its dtype; labels: (B,) integers there, or (B, K)
            soft targets.
        total: the number of images the weights divide by (default B; under MPI the global batch
            over the number of ranks, whose allreduce then averages).
        accum_steps: micro-batches, run one after the other (sizes differ by one where B does not divide).
        label_smoothing: as :func:`scratchvit.ops.softmax_cross_entropy_forward`.
        loss_scale: multiplies the gradients (not the loss): fp16 loss scaling.
        grad_dtype: the dtype the gradients are summed in (the namespace's float32 for fp16), None: as computed.
        need_dinput: also return d loss / d images under "images".
        train, key: a training pass (dropout, drop path); ``key`` (:class:`scratchvit.ops.RngKey`) holds the
            seed, the step and the global index of row 0 of ``images`` (this MPI rank's offset); each part
            gets it moved on by the part's offset (micro-batch + thread shard), so every row draws the same
            masks however the batch is split.

    Returns:
        (loss, grads): the mean loss over ``total`` images as a 0-d array on the device (no host read),
        and {name: array} shaped like the parameters, times ``loss_scale``: views into one flat gradient
        buffer (:func:`flat_loss_and_grads`), plus "images" when ``need_dinput``.

    Raises:
        ValueError: fewer images than micro-batches.
    """
    loss, grads, dimages = flat_loss_and_grads(model, images, labels, total=total, accum_steps=accum_steps,
                                               label_smoothing=label_smoothing, loss_scale=loss_scale,
                                               grad_dtype=grad_dtype, need_dinput=need_dinput, train=train, key=key)
    named = model.layout.views(grads)
    if need_dinput:
        named["images"] = dimages
    return loss, named


def flat_loss_and_grads(model, images, labels, *, total: float | None = None, accum_steps: int = 1,
                        label_smoothing: float = 0.0, loss_scale: float = 1.0, grad_dtype=None,
                        need_dinput: bool = False, train: bool = False, key=None):
    """:func:`loss_and_grads` with the gradients in one flat buffer of ``model.layout`` (:mod:`scratchvit.flat`).

    Each part's gradients (a dict from the backward pass) are copied into a flat buffer once
    (:meth:`~scratchvit.flat.Layout.gather`: one ``concat``), and the parts' buffers are summed, one
    operation per part; the sums are those of the named arrays, element for element.

    Returns:
        (loss, grads, dimages): the loss as :func:`loss_and_grads`; the 1-D gradient buffer (``model.layout.size``
        elements, ``grad_dtype`` or the model's, on its device); d loss / d images ((B, H, W, 3)) when
        ``need_dinput``, else None.

    Raises:
        ValueError: fewer images than micro-batches.
    """
    B = images.shape[0]
    if B < accum_steps:
        raise ValueError(f"a batch of {B} images cannot make {accum_steps} micro-batches (--accum-steps)")
    total = B if total is None else total
    on_cpu = is_numpy(model.xp)
    loss, grads, dimages = None, None, None
    for lo, hi in shares(B, accum_steps):
        def part(s, e, lo=lo):
            return model.part_loss_and_grads(images[lo + s:lo + e, ...], labels[lo + s:lo + e, ...], (e - s) / total,
                                             label_smoothing=label_smoothing, loss_scale=loss_scale,
                                             need_dinput=need_dinput, train=train,
                                             key=None if key is None else key.offset(lo + s))

        for part_loss, part_grads in cpu.split_batch(part, hi - lo, on_cpu=on_cpu):
            loss = part_loss if loss is None else loss + part_loss
            grads = _add(grads, model.layout.gather(part_grads), grad_dtype)
            if need_dinput:  # an input gradient: the parts' rows, side by side
                d = part_grads["images"]
                dimages = d if dimages is None else namespace(d).concat([dimages, d], axis=0)
    return loss, grads, dimages


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
        accum_steps, label_smoothing: see :func:`loss_and_grads`.
        grad_clip: global-norm clipping threshold (None or 0: off).
        precision: "fp32" (the model's dtype throughout) or "fp16" (mixed precision; needs ``loss_scale``).
        loss_scale: the :class:`LossScale` of an fp16 run (updated here).
        step: the step number (for messages, the MPI test hooks and the dropout masks).
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
    loss, grads, _ = flat_loss_and_grads(compute, x, y, total=batch / dist.size, accum_steps=accum_steps,
                                         label_smoothing=label_smoothing, loss_scale=scale,
                                         grad_dtype=None if compute is model else model.xp.float32, train=True,
                                         key=key)  # grads: the flat buffer of model.layout, the masters' dtype
    xp = model.xp
    flag = xp.asarray(float(stop), dtype=xp.float64, device=model.device_object)
    if dist.size > 1:
        dist.stall_hook(step)
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
