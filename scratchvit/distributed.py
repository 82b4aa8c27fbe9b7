"""Data-parallel training over MPI ranks: ``mpiexec -n N python -m scratchvit.train ...``.

:func:`init` returns the object the training loop talks to: :class:`Single` (one process; every
call is free) or :class:`MPI` (mpi4py, the optional extra ``scratchvit[mpi]``). The scheme is plain
synchronous data parallelism (as ``pmap`` + ``lax.pmean`` in the official vit_jax):

- every rank builds the same global batch of ``--batch-size`` images (same order and augmentation
  as one process) and takes its contiguous 1/N of the rows (:meth:`MPI.split_range`; a batch that
  ``--skip-bad-images`` left short splits unevenly, and each rank then weights its mean by its share
  before the allreduce, :func:`scratchvit.step.train_step`); the data work is therefore repeated on every rank,
  the model work is divided;
- each rank's flat gradient buffer (:mod:`scratchvit.flat`) and loss go into one contiguous buffer, summed
  with ONE allreduce per step and divided by N (:meth:`MPI.allreduce_mean`); on ``--device gpu`` the sum
  runs on NCCL through CuPy (``cupy.cuda.nccl``, its unique id broadcast over MPI);
- every rank then applies the same update, so the parameters stay identical without broadcasts;
- rank 0 alone writes files; evaluation is split across ranks and its sums reduced.

Collectives are non-blocking and polled against ``--mpi-timeout`` seconds: a rank that died or hangs
makes the others print an error naming the step and call ``MPI_Abort`` rather than wait forever.

Ctrl-C reaches the ranks at slightly different moments; a rank that stopped on its own would leave
the others waiting in the next allreduce. So each rank's "stop" flag travels in the gradient
buffer (:func:`flatten`), and all ranks stop together after the step in which any rank asked.

Data sets are fetched once: :meth:`MPI.main_first` loads on rank 0 first (which downloads into the
shared cache where needed) while the other ranks wait, then they load what it fetched.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from .backend import namespace

# How long the other ranks wait for rank 0 to fetch a data set (a download can outlast --mpi-timeout).
FETCH_TIMEOUT = 3600.0

# Environment variables set by the launchers (Open MPI, MPICH/Hydra and Intel MPI, PMIx, Slurm's PMI).
SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")
LOCAL_RANK_VARS = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMIX_LOCAL_RANK", "SLURM_LOCALID")


def launched_size() -> int:
    """The number of processes the MPI launcher started (1 when not under a launcher)."""
    for var in SIZE_VARS:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


class Single:
    """One process: the same interface as :class:`MPI`, doing nothing."""

    rank, size, is_main = 0, 1, True

    def split_range(self, n: int) -> tuple[int, int]:
        return 0, n

    def allreduce_mean(self, buf, step=None):
        return buf

    def allreduce_sum(self, values: np.ndarray, what: str) -> np.ndarray:
        return values

    def main_first(self, fn, what: str):
        return fn()

    def check_same(self, digest: str):
        pass


class MPI:
    """``size`` ranks over ``MPI.COMM_WORLD`` (mpi4py); see the module docstring.

    Args:
        timeout: seconds any collective may wait before the run is aborted.
        device: "cpu" (gradients reduced by MPI) or "gpu" (by NCCL through CuPy).
    """

    def __init__(self, comm, timeout: float, device: str = "cpu"):
        from mpi4py import MPI as _mpi  # noqa: PLC0415  (optional extra scratchvit[mpi]; importing it starts MPI)

        self._mpi, self.comm, self.timeout = _mpi, comm, timeout
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.is_main = self.rank == 0
        self.nccl = _NcclSum(self) if device == "gpu" else None

    # ------------------------------------------------------------------ data
    def split_range(self, n: int) -> tuple[int, int]:
        """[lo, hi) of this rank's contiguous share of n items (a training batch's rows, an evaluation
        set), as equal as possible: n // size or one more."""
        return self.rank * n // self.size, (self.rank + 1) * n // self.size

    # ------------------------------------------------------------------ collectives
    def _wait(self, request, what: str, timeout: float | None = None):
        """Poll a non-blocking request until it completes, or abort the whole job after ``timeout`` s
        (default: --mpi-timeout)."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while not request.Test():
            if time.monotonic() > deadline:
                flag_hint = " (--mpi-timeout)" if timeout == self.timeout else ""
                self.abort(f"{what} did not complete within {timeout:g} s{flag_hint}: "
                           "another rank died or hangs; aborting all ranks")
            time.sleep(0.0005)

    def abort(self, message: str):
        print(f"error: rank {self.rank}/{self.size}: {message}", file=sys.stderr, flush=True)
        self.comm.Abort(1)

    def allreduce_mean(self, buf, step=None):
        """In place: buf <- (sum over ranks of buf) / size, one allreduce. ``buf``: a contiguous 1-D float array
        (NumPy; CuPy on --device gpu). Returns buf."""
        what = f"step {step}: the gradient allreduce" if step is not None else "an allreduce"
        if self.nccl is not None:
            self.nccl.sum(buf, what)
        else:
            self._wait(self.comm.Iallreduce(self._mpi.IN_PLACE, buf, op=self._mpi.SUM), what)
        buf /= self.size
        return buf

    def allreduce_sum(self, values: np.ndarray, what: str) -> np.ndarray:
        """Sum of a small float64 host array over ranks (evaluation's loss sum and correct count)."""
        values = np.ascontiguousarray(values, np.float64)
        self._wait(self.comm.Iallreduce(self._mpi.IN_PLACE, values, op=self._mpi.SUM), what)
        return values

    def main_first(self, fn, what: str):
        """``fn()`` on rank 0 first, then on the other ranks once rank 0 succeeded (they wait up to
        :data:`FETCH_TIMEOUT` s): a data set is downloaded once, by rank 0, into the cache the others
        then read, instead of by every rank at once. Returns ``fn()``'s result.

        Raises:
            whatever ``fn`` raises on rank 0 (there); RuntimeError on the other ranks when rank 0 failed.
        """
        ok = np.zeros(1, np.int64)
        if self.is_main:
            try:
                result = fn()
                ok[0] = 1
            finally:  # tell the others either way, so that they never wait for a rank 0 that gave up
                self._wait(self.comm.Ibcast(ok, root=0), what, max(self.timeout, FETCH_TIMEOUT))
            return result
        self._wait(self.comm.Ibcast(ok, root=0), what, max(self.timeout, FETCH_TIMEOUT))
        if not ok[0]:
            raise RuntimeError(f"{what} failed on rank 0 (its error says why)")
        return fn()

    def check_same(self, digest: str):
        """Refuse to start when the ranks' settings differ (every rank raises the same error).

        Raises:
            ValueError: naming the ranks whose settings differ from rank 0's.
        """
        mine = np.frombuffer(bytes.fromhex(digest)[:8], np.uint64).copy()
        everyone = np.empty(self.size, np.uint64)
        self._wait(self.comm.Iallgather(mine, everyone), "the settings check")
        odd = [r for r in range(self.size) if everyone[r] != everyone[0]]
        if odd:
            raise ValueError(f"distributed: the settings of rank(s) {odd} differ from rank 0's; every rank must be "
                             "started with the same command line")


class _NcclSum:
    """Sum of a CuPy buffer over ranks with NCCL (``cupy.cuda.nccl``), the communicator set up over MPI.

    Each rank uses GPU ``local_rank % device_count``. Untested without GPUs (the tests are marked gpu).
    """

    def __init__(self, dist: MPI):
        import cupy  # noqa: PLC0415  (only for --device gpu under MPI: the optional GPU extra)
        from cupy.cuda import nccl  # noqa: PLC0415  (as cupy)

        local = next((int(os.environ[v]) for v in LOCAL_RANK_VARS if os.environ.get(v, "").isdigit()), dist.rank)
        cupy.cuda.Device(local % cupy.cuda.runtime.getDeviceCount()).use()
        uid = dist.comm.bcast(nccl.get_unique_id() if dist.is_main else None, root=0)
        self.cupy, self.nccl, self.dist = cupy, nccl, dist
        self.comm = nccl.NcclCommunicator(dist.size, uid, dist.rank)
        self.types = {np.dtype("float32"): nccl.NCCL_FLOAT32, np.dtype("float64"): nccl.NCCL_FLOAT64}

    def sum(self, buf, what: str):
        stream = self.cupy.cuda.get_current_stream()
        self.comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self.types[buf.dtype], self.nccl.NCCL_SUM,
                            stream.ptr)
        done = stream.record()
        deadline = time.monotonic() + self.dist.timeout
        while not done.done:
            if time.monotonic() > deadline:
                self.comm.abort()
                self.dist.abort(f"{what} (NCCL) did not complete within {self.dist.timeout:g} s")
            time.sleep(0.0005)


def init(distributed: str = "auto", timeout: float = 300.0, device: str = "cpu"):
    """:class:`MPI` when started by an MPI launcher with more than one process and ``distributed`` is "auto",
    else :class:`Single`.

    Raises:
        RuntimeError: more than one process asked for, but mpi4py is not installed.
    """
    if distributed == "off" or launched_size() <= 1:
        return Single()
    try:
        from mpi4py import MPI as _mpi  # noqa: PLC0415  (optional extra; imported only under a launcher, it starts MPI)
    except ImportError as e:
        raise RuntimeError(f"started as {launched_size()} MPI processes but mpi4py is not installed: "
                           "pip install 'scratchvit[mpi]' (needs an MPI library, e.g. apt-get install mpich "
                           "libmpich-dev), or pass --distributed off") from e
    if _mpi.COMM_WORLD.Get_size() <= 1:
        return Single()
    return MPI(_mpi.COMM_WORLD, timeout, device)


def flatten(grads, loss, stop):
    """The allreduce's payload: one contiguous 1-D buffer on the gradients' device, in their dtype: the flat
    gradient buffer (:mod:`scratchvit.flat`), then the loss (0-d array), then ``stop`` (0-d array: 1.0 where
    this rank was asked to stop, by Ctrl-C; after the allreduce it is above 0 when any rank was). One
    ``concat`` of three arrays."""
    xp = namespace(grads)
    tail = [xp.reshape(xp.astype(v, grads.dtype), (1,)) for v in (loss, stop)]
    return xp.concat([grads] + tail)


def unflatten(buf, size: int):
    """(loss, grads, stop): the inverse of :func:`flatten` for a gradient buffer of ``size`` elements; grads a
    view of ``buf``, the loss and stop flag 0-d arrays on its device (nothing is read back to the host)."""
    return buf[size], buf[:size], buf[size + 1]
