"""Flat buffers: every parameter of a model (and every gradient, every optimiser slot) in one 1-D array.

On a GPU each array operation is a kernel launch with microseconds of Python and driver time. An
optimiser that walks the ~200 parameter arrays of a ViT one at a time issues thousands of launches per
step; over one contiguous buffer it issues a handful (the approach of Apex's and DeepSpeed's contiguous
buffers and of PyTorch's "foreach"/fused optimisers). So a model keeps its parameters in one 1-D array,
``model.flat``, and ``model.params`` holds each official name as a view into it (a reshaped slice): the
ops, checkpoints, :mod:`scratchvit.checkpoint` and the tools read and write the named views, the
optimiser, the gradient norm, the clipping and the MPI allreduce work on the whole buffer.

A :class:`Layout` says where each array lives: names (the parameter schema's order), shapes, offsets.
It is built from whatever names and shapes the schema gives (:func:`scratchvit.params.param_shapes`),
so new parameters need nothing here.

Offsets are multiples of :data:`ALIGN` elements (64 bytes in float32), so every view starts on an aligned
address (as cuBLAS's fastest kernels and vector loads want); the total size is a multiple of :data:`ROW`
elements, so the buffer reshapes to rows for an accurate gradient norm (:func:`scratchvit.optim.global_norm`).
The gaps hold zeros: their gradient is zero, so every optimiser keeps them zero and they add nothing to
the norm.

What the code relies on, beyond the array API standard (which leaves it to the library whether a slice
or a reshape is a view or a copy, Sec. "Copy-view behaviour and mutability"): a basic slice ``buf[a:b]``
of a contiguous 1-D array and ``reshape`` of that slice to any shape are views, and writing into such a
view (``v[...] = x``, ``v += x``) writes into ``buf``. NumPy and CuPy give that by design (slices and
reshapes of contiguous arrays never copy); array-api-strict gives it because it wraps NumPy, and
``tests/test_flat.py`` checks it on its ``Device("device1")``.
"""
from __future__ import annotations

import dataclasses
import math

from .backend import device_of, namespace

ALIGN = 16  # elements: every array starts at a multiple (64 bytes in float32, 32 in float16)
ROW = 1024  # elements: the buffer's size is a multiple, for the norm's row-wise dot products


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where each named array lives in a flat buffer.

    Attributes:
        names: the names, in the order given (the official order for parameters).
        shapes: each name's shape.
        offsets: each name's first element in the buffer (a multiple of :data:`ALIGN`).
        size: the buffer's length in elements (a multiple of :data:`ROW`; gaps hold zeros).
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    size: int

    @classmethod
    def of(cls, shapes: dict) -> "Layout":
        """The layout of ``shapes`` ({name: shape tuple}, in buffer order), each array aligned to ALIGN elements."""
        offsets, end = [], 0
        for shape in shapes.values():
            offsets.append(_round_up(end, ALIGN))
            end = offsets[-1] + math.prod(shape)
        return cls(tuple(shapes), tuple(tuple(int(d) for d in s) for s in shapes.values()), tuple(offsets),
                   max(_round_up(end, ROW), ROW))

    def views(self, buffer) -> dict:
        """{name: view of ``buffer`` shaped like the name's array}, in layout order (2 operations per name:
        a slice and a reshape; both views, see the module docstring).

        Args:
            buffer: 1-D array of ``size`` elements (any dtype, any device).

        Raises:
            ValueError: a buffer of another shape.
        """
        if tuple(buffer.shape) != (self.size,):
            raise ValueError(f"flat buffer: expected shape ({self.size},), got {tuple(buffer.shape)}")
        xp = namespace(buffer)
        return {k: xp.reshape(buffer[o:o + math.prod(s)], s) for k, s, o in zip(self.names, self.shapes, self.offsets)}

    def gather(self, arrays: dict):
        """A new flat buffer holding ``arrays`` ({name: array} with at least the layout's names, each of its
        shape; other keys are ignored), zeros in the gaps: one ``concat`` of the flattened arrays.

        Returns:
            1-D array of ``size`` elements, in the arrays' dtype (they share one), on their device.

        Raises:
            ValueError: a missing name or a wrong shape (naming it, with both shapes).
        """
        missing = [k for k in self.names if k not in arrays]
        if missing:
            raise ValueError(f"flat buffer: arrays missing for {missing[:5]}")
        first = arrays[self.names[0]]
        xp, dtype, device = namespace(first), first.dtype, device_of(first)
        parts, end = [], 0
        for k, s, o in zip(self.names, self.shapes, self.offsets):
            a = arrays[k]
            if tuple(a.shape) != s:
                raise ValueError(f"flat buffer: {k!r} has shape {tuple(a.shape)}, the layout's is {s}")
            if o > end:
                parts.append(xp.zeros(o - end, dtype=dtype, device=device))
            parts.append(xp.reshape(a, (-1,)))
            end = o + math.prod(s)
        if self.size > end:
            parts.append(xp.zeros(self.size - end, dtype=dtype, device=device))
        return xp.concat(parts)
