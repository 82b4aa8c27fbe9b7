"""Array namespaces and devices: NumPy on the CPU, CuPy on the GPU, array-api-strict for proofs.

Every op asks its inputs for their namespace with :func:`namespace` (``array_api_compat``'s
``array_namespace``), so one plain form of each op runs on any array-API library; on NumPy
arrays an op may take its NumPy fast form instead (:func:`is_numpy`). Three devices are known:

* ``"cpu"``: NumPy arrays.
* ``"gpu"``: CuPy arrays on the current CUDA device (CuPy is imported only when asked for).
* ``"strict"``: ``array_api_strict`` arrays on its ``Device("device1")``, a device that is not
  the CPU, simulated on the CPU. It refuses to mix devices, refuses conversion to NumPy and
  knows only the standard's functions: the GPU path is proven on it where no GPU is at hand
  (SciPy and scikit-learn test their CuPy paths the same way). Not offered by the command line.

Moving arrays between devices goes through :func:`to_device` and :func:`to_numpy` only, so a
device-to-host copy is always visible at its call site. CPU tuning (threads, BLAS, malloc) lives
in :mod:`scratchvit.cpu`.
"""
from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace, is_array_api_strict_namespace, is_cupy_namespace, is_numpy_namespace
from array_api_compat import device as device_of
from array_api_compat import to_device as _move

from . import cpu

DEVICES = ("cpu", "gpu")  # what the command line offers
ALL_DEVICES = DEVICES + ("strict",)
DTYPES = ("float32", "float64")
PRECISIONS = ("fp32", "fp16")

_NUMPY = array_namespace(np.empty(0))  # array_api_compat.numpy

__all__ = ["ALL_DEVICES", "DEVICES", "DTYPES", "PRECISIONS", "check_dtype", "cupy_or_error", "device_object",
           "device_of", "dtype_of", "is_cupy", "is_numpy", "module_for", "namespace", "to_device", "to_numpy"]


def namespace(*arrays):
    """The array-API namespace of ``arrays`` (``array_api_compat.array_namespace``): a wrapped NumPy
    (named ``array_api_compat.numpy``), a wrapped CuPy, or ``array_api_strict``. Python scalars and
    None are ignored.

    NumPy arrays alone (the CPU's every op call) are answered without ``array_namespace``, whose
    checks cost about 10 us a call: a few percent of a small model's training step.

    Raises:
        TypeError: arrays of different libraries, or no array at all.
    """
    arrays = [a for a in arrays if a is not None and type(a) not in (bool, int, float)]
    if arrays and all(type(a) is np.ndarray for a in arrays):
        return _NUMPY
    return array_namespace(*arrays)


def is_numpy(xp) -> bool:
    """True for NumPy's namespace (plain ``numpy`` or ``array_api_compat.numpy``): the fast forms apply."""
    return is_numpy_namespace(xp)


def is_cupy(xp) -> bool:
    """True for CuPy's namespace: the CuPy-only branches (erf from ``cupyx``) apply."""
    return is_cupy_namespace(xp)


def check_dtype(dtype) -> np.dtype:
    """Validate a floating dtype name ("float32" or "float64" for parameters; "float16" for the compute
    copy of mixed precision); return it as ``np.dtype``.

    Raises:
        ValueError: for any other dtype.
    """
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES + ("float16",):
        raise ValueError(f"dtype must be one of {DTYPES} (or float16 for mixed precision), got {dtype!r}")
    return np.dtype(name)


def dtype_of(xp, name):
    """The dtype object of namespace ``xp`` named ``name`` ("float16", "float32", "float64", "int64", ...;
    a NumPy dtype is taken by its name). The array API has dtypes as namespace attributes, not strings."""
    return getattr(xp, np.dtype(name).name)


def cupy_or_error():
    """Import and return CuPy, or raise a RuntimeError that says how to get a GPU backend.

    Raises:
        RuntimeError: CuPy is not installed, or no CUDA GPU is visible to it.
    """
    try:
        import cupy  # noqa: PLC0415  (only for --device gpu: CuPy needs CUDA and is an optional extra)
    except ImportError as e:
        raise RuntimeError(
            "--device gpu needs CuPy, which is not installed. Install the GPU extra, e.g. "
            "`pip install -e \".[gpu]\"` (cupy-cuda12x for CUDA 12) or `pip install cupy-cuda13x` (CUDA 13), "
            "on a machine with an NVIDIA GPU."
        ) from e
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # noqa: BLE001  (CuPy raises its own CUDA error types: driver missing or broken)
        raise RuntimeError(f"--device gpu: CuPy is installed but no CUDA GPU is usable ({e}).") from e
    if n < 1:
        raise RuntimeError("--device gpu: CuPy is installed but no CUDA GPU was found.")
    return cupy


def _strict():
    import array_api_strict  # noqa: PLC0415  (only for device "strict": a test dependency, not a runtime one)

    return array_api_strict


def module_for(device: str):
    """The array-API namespace of ``device``: "cpu" -> ``array_api_compat.numpy``, "gpu" -> CuPy's
    (``array_api_compat.cupy``), "strict" -> ``array_api_strict``. The first "cpu" applies the CPU
    settings (:func:`scratchvit.cpu.configure`), whatever the entry point: a model built in a notebook
    runs as fast as the command line's.

    Raises:
        ValueError: unknown device name.
        RuntimeError: "gpu" asked for without CuPy or a GPU (see :func:`cupy_or_error`).
    """
    if device not in ALL_DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cpu":
        cpu.configure()  # selecting the CPU applies its process-wide settings, once (scratchvit/cpu.py)
        return _NUMPY
    if device == "gpu":
        return array_namespace(cupy_or_error().empty(0))
    return _strict()


def device_object(device: str):
    """The namespace's device object for ``device`` (the ``device=`` of array creation): "cpu",
    CuPy's current ``Device``, or ``array_api_strict.Device("device1")``."""
    if device == "strict":
        return _strict().Device("device1")
    if device == "gpu":
        return cupy_or_error().cuda.Device()
    return "cpu"


def _device_name(array) -> str:
    xp = namespace(array)
    if is_numpy(xp):
        return "cpu"
    if is_cupy(xp):
        return "gpu"
    if is_array_api_strict_namespace(xp) and device_of(array) == _strict().Device("device1"):
        return "strict"
    return "host"  # array_api_strict's CPU_DEVICE and other libraries: read via DLPack


def to_numpy(array) -> np.ndarray:
    """``array`` (NumPy, CuPy or array-api-strict, any shape) as a NumPy array: a device-to-host copy
    for device arrays, the array itself for a NumPy one. The one place data leaves a device."""
    if isinstance(array, np.ndarray):
        return array
    if isinstance(array, np.generic):  # a NumPy scalar (a 0-d result of NumPy): no __dlpack__
        return np.asarray(array)
    name = _device_name(array)
    if name == "gpu":
        return array.get()
    if name == "strict":
        strict = _strict()
        return np.asarray(_move(array, strict.Device("CPU_DEVICE")))
    return np.from_dlpack(array)


def to_device(array, device: str, dtype=None):
    """Copy ``array`` (NumPy, CuPy or array-api-strict, any shape; or a Python scalar/list) to
    ``device`` ("cpu", "gpu" or "strict"), optionally casting to ``dtype`` (a name or NumPy dtype).

    Returns the input itself, not a copy, when it already lives there with that dtype: writing to
    the result then writes to the caller's array.

    Raises:
        ValueError: unknown ``device``. RuntimeError: ``device="gpu"`` without CuPy or a GPU.
    """
    xp = module_for(device)
    here = None if isinstance(array, (int, float, list, tuple)) else _device_name(array)
    if here != device:
        host = to_numpy(array) if here is not None else np.asarray(array)
        if device == "cpu":
            array = host
        elif device == "gpu":
            array = xp.asarray(host)
        else:
            array = xp.asarray(host, device=device_object(device))
    if dtype is not None and array.dtype != dtype_of(xp, dtype):
        array = xp.astype(array, dtype_of(xp, dtype))
    return array

