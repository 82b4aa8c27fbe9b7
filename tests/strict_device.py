"""The non-CPU device of the tests: array_api_strict's Device("device1"), at the array API standard 2023.12.

It refuses to mix its arrays with CPU (or NumPy) arrays, refuses conversion to NumPy, and has only the
standard's functions: code that runs here runs on CuPy too, short of CuPy-only branches. Import this
module (instead of array_api_strict) so that the standard's version is set before any array is made.
"""
import numpy as np
import pytest

xs = pytest.importorskip("array_api_strict", reason="array-api-strict is in the [test] extra")
xs.set_array_api_strict_flags(api_version="2023.12")

DEVICE = xs.Device("device1")
Array = type(xs.ones(1))  # array_api_strict._array_object.Array: not exported by the package


def to_strict(a):
    """A NumPy array (or a dict of them, or a scalar) as array_api_strict arrays on DEVICE, same dtype."""
    if isinstance(a, dict):
        return {k: to_strict(v) for k, v in a.items()}
    return xs.asarray(np.asarray(a), device=DEVICE)


def to_host(a):
    """An array on DEVICE (or a dict of them) back as NumPy: the tests' only device-to-host copy."""
    if isinstance(a, dict):
        return {k: to_host(v) for k, v in a.items()}
    if a is None or isinstance(a, np.ndarray):
        return a
    assert a.device == DEVICE, f"expected an array on {DEVICE}, got one on {a.device}"
    return np.asarray(a.to_device(xs.Device("CPU_DEVICE")))
