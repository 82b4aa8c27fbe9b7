"""A batch's mean loss and gradients as a sum of parts: micro-batches, and threads on the CPU.

The official code's ``vit_jax/utils.py: accumulate_gradient`` runs the micro-batches of a batch one
after the other and averages their gradients; here the same idea covers every split of a batch:

* **micro-batches** (``--accum-steps``): parts run one after the other, with the activation memory of one;
* **threads** (CPU only): each micro-batch's rows run forward and backward on scratchvit's threads
  (:func:`scratchvit.cpu.split_batch`), OpenBLAS held to one thread meanwhile;
* **MPI ranks** (:func:`scratchvit.step.train_step`): each rank calls :func:`flat_loss_and_grads` on its rows,
  weighted by its share through ``total``, and the allreduce sums the ranks.

Each part computes the mean loss of its rows and its gradients (:meth:`scratchvit.ViT.part_loss_and_grads`),
weighted by its share ``rows / total``, and the parts are summed: the mean over the batch whatever the part
sizes. The weight enters once, as the upstream gradient of the cross-entropy (``dloss = rows / total``),
so the parts' gradients need no rescaling and are summed as they come, into one flat buffer of the
parameters' layout (:mod:`scratchvit.flat`).

This module takes the model as an argument and imports none of its own: :mod:`scratchvit.model` (for
:meth:`~scratchvit.ViT.loss_and_grads`) and :mod:`scratchvit.step` (for the training step) both build on it.
"""
from __future__ import annotations

from . import cpu
from .backend import is_numpy, namespace


def shares(n: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous (start, stop) row ranges of ``parts`` parts of ``n`` rows, sizes differing by at most one."""
    return [(n * i // parts, n * (i + 1) // parts) for i in range(parts)]


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
        model: a :class:`scratchvit.ViT` (its :meth:`~scratchvit.ViT.part_loss_and_grads` runs one part).
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
