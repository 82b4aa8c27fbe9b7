"""What every op of :mod:`scratchvit.ops` shares: which of its two forms runs, the dtype statistics are
computed in, the bias gradients' row sums and the plain forms' matrix product.

Every op has two forms (:mod:`scratchvit.ops`): the plain form, on the Python array API standard 2023.12
(CuPy, array-api-strict, float16 NumPy), and a NumPy fast form for float32/float64 NumPy arrays.
:func:`fast_form` is the one test of which runs; each op's public pair calls it.
"""
from __future__ import annotations

import numpy as np

from ..backend import dtype_of, is_numpy, namespace

FAST_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def fast_form(xp, *arrays) -> bool:
    """True where the NumPy fast form applies: namespace ``xp`` is NumPy's and every array (None
    skipped) is float32 or float64. Float16 NumPy arrays, and every other namespace, take the plain form."""
    return is_numpy(xp) and all(a is None or a.dtype in FAST_DTYPES for a in arrays)


def wide_dtype(xp, dtype):
    """The dtype statistics of a ``dtype`` array are computed in: float64 for float64, float32 for
    float32 and float16 (mixed precision: float16 sums of squares and exponentials overflow at 65504)."""
    f64 = dtype_of(xp, "float64")
    return f64 if dtype == f64 else dtype_of(xp, "float32")


def sum_rows(a2d):
    """NumPy fast form: column sums of a 2-D array (rows, n) -> (n,), as one BLAS matrix-vector product ones @ a2d.

    Used for every bias gradient: on the CPU a gemv is 2-4x faster than ``a2d.sum(axis=0)``
    (measured on (3136, 64-192) float32 blocks, one thread); the same sum in another order.
    """
    return np.ones(a2d.shape[0], dtype=a2d.dtype) @ a2d


def sum_rows_plain(a2d, dtype):
    """Plain form: column sums of ``a2d`` (rows, n) -> (n,), sum_i a2d[i, :], accumulated in
    :func:`wide_dtype` (float32 for float16) and returned as ``dtype`` (the parameter's dtype)."""
    xp = namespace(a2d)
    return xp.astype(xp.sum(a2d, axis=0, dtype=wide_dtype(xp, a2d.dtype)), dtype)


def matmul(a, b):
    """The plain forms' matrix product ``a @ b`` (array API ``matmul``: 2-D or stacked, broadcast as there).

    Float16 NumPy inputs: the float16 values multiplied and summed in float32 and the sum rounded to float16
    once, as a GPU does it (cuBLAS with a float32 compute type; Micikevicius et al. 2018, "arithmetic
    precision": float16 products accumulated into float32), computed as BLAS sgemm on the inputs cast up
    (a float16 product is exact in float32). NumPy's own float16 ``matmul`` accumulates in float32 too but
    runs without BLAS, many times slower (bench/RESULTS.md, "fp16 on the CPU"). Every other case
    (float32/float64, CuPy, array-api-strict): ``xp.matmul`` itself.

    Returns:
        the product, the inputs' dtype, namespace and device.

    Raises:
        TypeError / ValueError: as ``xp.matmul`` (arrays of different libraries or devices, shapes that
        do not fit).
    """
    xp = namespace(a, b)
    if is_numpy(xp) and a.dtype == np.float16 and b.dtype == np.float16:
        return np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(np.float16)
    return xp.matmul(a, b)
