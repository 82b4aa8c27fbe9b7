"""Data-parallel training over MPI ranks (scratchvit.distributed), run as ``mpiexec -n 2 python -m scratchvit.train``.

The multi-process tests skip only where mpiexec or mpi4py is absent (.ci/run installs both). They use
a tiny model on a tiny IDX dataset; each launches Python twice on 2 cores (seconds).
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_train import fmnist_dir, interrupt_on_call  # noqa: F401  (fmnist_dir: the fixture of a small Fashion-MNIST)

from scratchvit import accumulate, distributed, train

ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = shutil.which("mpiexec") or shutil.which("mpirun")
needs_mpi = pytest.mark.skipif(MPIEXEC is None or importlib.util.find_spec("mpi4py") is None,
                               reason="needs mpiexec and mpi4py (pip install 'scratchvit[mpi]'; apt-get install mpich)")
TINY = ["--config", "fashion-mnist-vit",
        "--model", "ViT-Ti_16", "--image-size", "16", "--patch-size", "8", "--hidden-size", "16", "--num-layers", "1",
        "--num-heads", "2", "--mlp-dim", "32", "--batch-size", "16", "--warmup-steps", "1", "--augment", "flip",
        "--eval-every", "2", "--eval-batch-size", "16", "--no-progress", "--workers", "1", "--optimizer", "sgd",
        "--lr", "0.1", "--grad-clip", "5"]


def mpiexec(n: int) -> list[str]:
    """The launcher's command line for n ranks; Open MPI refuses root and more ranks than cores without flags."""
    version = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True).stdout
    extra = ["--allow-run-as-root", "--oversubscribe"] if "Open MPI" in version or "OpenRTE" in version else []
    return [MPIEXEC, *extra, "-n", str(n)]


def launch(n, args, stall=None, timeout=120) -> subprocess.CompletedProcess:
    """``mpiexec -n n python -m scratchvit.train args`` (one BLAS thread per rank); ``args`` may hold ":" (MPMD).
    ``stall`` ("RANK:STEP[:exit|:sigint]"): run tests/mpi_stall.py instead, which makes that rank fail there."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SCRATCHVIT_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    entry = ["-m", "scratchvit.train"] if stall is None else [str(ROOT / "tests" / "mpi_stall.py"), stall]
    cmd = mpiexec(n) + [sys.executable, *entry, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


def data_args(d, out, *extra):
    return ["--dataset", "fashion-mnist", "--data-dir", str(d), "--out", str(out), *TINY, *extra]


def assert_params_close(a_path, b_path, rtol):
    """Every parameter equal to ``rtol`` relative to the largest parameter magnitude (an array whose gradient is
    zero in exact arithmetic, as the attention key bias, holds rounding noise only; its own scale means nothing)."""
    with np.load(a_path) as a, np.load(b_path) as b:
        assert set(a.files) == set(b.files)
        scale = max(float(np.abs(a[k]).max()) for k in a.files)
        for k in a.files:
            err = float(np.abs(a[k].astype(np.float64) - b[k]).max()) / scale
            assert err <= rtol, f"{k}: difference {err:.3g} of the largest parameter > {rtol:g}"


REGULARISERS = ("--dropout", "0.1", "--attention-dropout", "0.1", "--drop-path", "0.2",
                "--augment", "pad-crop-flip", "--pad", "2", "--random-erasing", "0.5",
                "--mixup", "0.8", "--cutmix", "1.0", "--label-smoothing", "0.1")


@needs_mpi
@pytest.mark.parametrize("dtype,rtol,regularisers", [("float32", 1e-6, ()), ("float64", 1e-12, ()),
                                                     ("float64", 1e-12, REGULARISERS),
                                                     ("float64", 1e-12, ("--objective", "masked-patch"))],
                         ids=["float32", "float64", "float64-regularised", "float64-masked-patch"])
def test_two_ranks_equal_one_process(fmnist_dir, tmp_path, dtype, rtol, regularisers):  # noqa: F811
    """2 ranks train as one process, also with every regulariser on (dropout, attention dropout, drop path,
    pad-crop-flip, random erasing, mixup/CutMix): masks and augmentation follow global rows, not ranks."""
    extra = ("--steps", "4", "--dtype", dtype, "--accum-steps", "2", *regularisers)
    assert train.main(data_args(fmnist_dir, tmp_path / "one", *extra)) == 0
    r = launch(2, data_args(fmnist_dir, tmp_path / "two", *extra))
    assert r.returncode == 0, r.stderr
    assert "over 2 MPI ranks (8 images each)" in r.stdout
    assert r.stdout.count("done: test ") == 1  # rank 0 alone reports
    assert_params_close(tmp_path / "one" / "last.npz", tmp_path / "two" / "last.npz", rtol)
    one = (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()
    two = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(one) == len(two) == 5  # one writer: train+val at steps 2 and 4, then test
    for x, y in zip(one, two, strict=True):
        x, y = json.loads(x), json.loads(y)
        assert (x["step"], x["split"]) == (y["step"], y["split"])
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
        assert y.get("accuracy") == x.get("accuracy")  # the split evaluation counts every image once


@needs_mpi
def test_resume_on_two_ranks_a_run_stopped_on_one(fmnist_dir, tmp_path, monkeypatch):  # noqa: F811
    extra = ("--steps", "8", "--dtype", "float64")
    assert train.main(data_args(fmnist_dir, tmp_path / "straight", *extra)) == 0
    with monkeypatch.context() as m:
        interrupt_on_call(m, accumulate, "flat_loss_and_grads", 5)
        assert train.main(data_args(fmnist_dir, tmp_path / "stopped", *extra)) == 130
    r = launch(2, ["--out", str(tmp_path / "stopped"), "--resume", "--no-progress"])
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout and "at step 4 of 8" in r.stdout
    assert_params_close(tmp_path / "straight" / "last.npz", tmp_path / "stopped" / "last.npz", 1e-12)


@needs_mpi
def test_ctrl_c_on_one_rank_stops_all_ranks_at_the_same_step(fmnist_dir, tmp_path):  # noqa: F811
    """SIGINT reaches rank 1 alone, during step 3: its flag travels with step 4's gradients, every rank stops
    after step 4 and rank 0 saves step 5 (none waits in an allreduce the other never joins); resuming
    gives the parameters of a run that never stopped."""
    extra = ("--steps", "8", "--dtype", "float64", "--mpi-timeout", "20")
    assert train.main(data_args(fmnist_dir, tmp_path / "straight", *extra)) == 0
    r = launch(2, data_args(fmnist_dir, tmp_path / "stopped", *extra), stall="1:3:sigint")
    assert r.returncode == 130, r.stderr[-2000:]
    assert "interrupted at step 5" in r.stdout
    with np.load(tmp_path / "stopped" / "state.npz") as st:
        assert int(st["step"]) == 5
    r = launch(2, ["--out", str(tmp_path / "stopped"), "--resume", "--no-progress"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert_params_close(tmp_path / "straight" / "last.npz", tmp_path / "stopped" / "last.npz", 1e-12)


@needs_mpi
@pytest.mark.parametrize("how", ["hang", "exit"])
def test_a_rank_that_hangs_or_dies_stops_the_others(fmnist_dir, tmp_path, how):  # noqa: F811
    hook = "1:2" if how == "hang" else "1:2:exit"
    # 10 s: long enough for the ranks' start-up skew on a loaded 2-core machine, short for a test
    r = launch(2, data_args(fmnist_dir, tmp_path / "o", "--steps", "4", "--mpi-timeout", "10"),
               stall=hook, timeout=120)
    assert r.returncode != 0
    err = r.stderr + r.stdout
    if how == "hang":  # our deadline fires
        assert "rank 0/2: step 2: the gradient allreduce did not complete within 10 s" in err, err[-2000:]
    # a rank that exits is either noticed by the launcher (which ends the job) or by rank 0's deadline
    assert not (tmp_path / "o" / "metrics.jsonl").read_text().count('"step": 4')


@needs_mpi
def test_a_time_limited_run_fits_one_step_count_on_every_rank(fmnist_dir, tmp_path):  # noqa: F811
    """--time-limit under MPI: the ranks' calibrations (and their times left: they start apart) are averaged, so
    every rank runs the same number of steps and the run ends (a rank with one step more would wait forever)."""
    out = tmp_path / "o"
    extra = ("--time-limit", "0.1", "--warmup-steps", "12", "--eval-every", "40", "--mpi-timeout", "30")
    r = launch(2, data_args(fmnist_dir, out, *extra))
    assert r.returncode == 0, r.stderr[-2000:]
    total = json.loads((out / "config.json").read_text())["total_steps"]
    assert total > 12 and f"-> {total} steps" in r.stdout and r.stdout.count("done: test ") == 1


@needs_mpi
def test_mismatched_settings_across_ranks_are_refused(fmnist_dir, tmp_path):  # noqa: F811
    base = data_args(fmnist_dir, tmp_path / "o", "--steps", "4")
    r = launch(1, [*base, "--lr", "0.1", ":", "-n", "1", sys.executable, "-m", "scratchvit.train", *base,
                   "--lr", "0.2"])
    assert r.returncode != 0
    assert "the settings of rank(s) [1] differ from rank 0's" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "o" / "last.npz").exists()


@needs_mpi
def test_batch_must_split_over_ranks_and_micro_batches(fmnist_dir, tmp_path):  # noqa: F811
    r = launch(2, data_args(fmnist_dir, tmp_path / "o", "--steps", "4", "--batch-size", "12", "--accum-steps", "4"))
    assert r.returncode != 0
    assert "--batch-size 12 is not divisible by 2 MPI ranks x --accum-steps 4" in r.stderr


def test_missing_mpi4py_under_a_launcher_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import fails
    with pytest.raises(RuntimeError, match=r"started as 2 MPI processes but mpi4py is not installed"):
        distributed.init("auto")
    assert isinstance(distributed.init("off"), distributed.Single)


def test_single_process_is_the_identity():
    d = distributed.Single()
    assert d.split_range(7) == (0, 7) and (d.rank, d.size, d.is_main) == (0, 1, True)
    assert d.main_first(lambda: 5, "x") == 5


def test_the_stall_launcher_reads_rank_step_and_how():
    from mpi_stall import parse

    assert parse("1:3") == (1, 3, "stall")
    assert parse("0:2:exit") == (0, 2, "exit")
    assert parse("1:3:sigint") == (1, 3, "sigint")
    with pytest.raises(ValueError, match="'1:x': expected RANK:STEP"):
        parse("1:x")


MAIN_FIRST = """
import sys, time
from pathlib import Path
from scratchvit import distributed
dist = distributed.init("auto", 20.0)
marker = Path(sys.argv[1])
def fetch():
    if dist.is_main:
        if sys.argv[2] == "fail":
            raise RuntimeError("no network")
        time.sleep(1.0)  # a slow download: the other rank must not start meanwhile
        marker.write_text("fetched")
        return "downloaded"
    return "read " + marker.read_text()  # fails if rank 0 has not fetched yet
try:
    print(f"rank {dist.rank}: {dist.main_first(fetch, 'loading the data')}", flush=True)
except RuntimeError as e:
    print(f"rank {dist.rank} error: {e}", flush=True)
"""


@needs_mpi
@pytest.mark.parametrize("case", ["ok", "fail"])
def test_rank_0_fetches_the_data_first_and_the_others_wait(tmp_path, case):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
    r = subprocess.run(mpiexec(2) + [sys.executable, "-c", MAIN_FIRST, str(tmp_path / "m"), case],
                       capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    if case == "ok":
        assert "rank 0: downloaded" in r.stdout and "rank 1: read fetched" in r.stdout, r.stdout
    else:  # rank 0's failure reaches rank 1 as an error, not as a wait or a second download
        assert "rank 0 error: no network" in r.stdout
        assert "rank 1 error: loading the data failed on rank 0" in r.stdout, r.stdout


def test_flatten_then_unflatten_round_trips(rng):
    grads = rng.standard_normal(21)  # a flat gradient buffer
    buf = distributed.flatten(grads, np.asarray(1.25), np.asarray(1.0))
    assert buf.shape == (21 + 2,) and buf.flags.c_contiguous and buf[-1] == 1.0
    buf *= 2  # the views must see changes to the buffer (the allreduce works in place)
    loss, view, stop = distributed.unflatten(buf, 21)
    assert loss == 2.5 and stop == 2.0
    np.testing.assert_array_equal(view, 2 * grads)
    assert np.shares_memory(view, buf)


@pytest.mark.gpu
@needs_mpi
def test_two_gpu_ranks_reduce_with_nccl(fmnist_dir, tmp_path):  # noqa: F811
    cupy = pytest.importorskip("cupy")
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("NCCL needs one GPU per rank: fewer than 2 CUDA devices")
    extra = ("--steps", "4", "--dtype", "float64", "--device", "gpu")
    assert train.main(data_args(fmnist_dir, tmp_path / "one", *extra)) == 0
    r = launch(2, data_args(fmnist_dir, tmp_path / "two", *extra))
    assert r.returncode == 0, r.stderr
    assert_params_close(tmp_path / "one" / "last.npz", tmp_path / "two" / "last.npz", 1e-12)


@needs_mpi
def test_two_ranks_equal_one_process_for_a_hybrid(fmnist_dir, tmp_path):  # noqa: F811
    """The hybrid (paper Sec. 3.1; root and one stage, group norms per image) trains on 2 ranks as in one
    process: its group-norm statistics are per image, so a rank's rows need nothing from the other's."""
    extra = ("--steps", "4", "--dtype", "float64", "--accum-steps", "2", "--resnet", "1", "--resnet-width", "0.5",
             "--patch-size", "1")
    assert train.main(data_args(fmnist_dir, tmp_path / "one", *extra)) == 0
    r = launch(2, data_args(fmnist_dir, tmp_path / "two", *extra))
    assert r.returncode == 0, r.stderr
    assert "over 2 MPI ranks (8 images each)" in r.stdout and "ResNet (1,)" in r.stdout
    assert_params_close(tmp_path / "one" / "last.npz", tmp_path / "two" / "last.npz", 1e-12)
