"""scratchvit/cpu.py: the process-wide CPU settings are applied once, honour the opt-out, take
effect whatever was imported first, and the batch split computes what the whole batch does."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import scratchvit as sv
from scratchvit import cpu

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh(monkeypatch):
    """cpu's once-only state reset for the test (restored afterwards by monkeypatch)."""
    monkeypatch.setattr(cpu, "_configured", None)
    monkeypatch.setattr(cpu, "_controller", None)
    monkeypatch.delenv(cpu.OPT_OUT_ENV, raising=False)
    calls = []
    monkeypatch.setattr(cpu, "keep_freed_memory", lambda: calls.append(1) or True)
    return calls


def test_configure_applies_malloc_settings_once(fresh):
    first = cpu.configure()
    assert first["enabled"] and first["malloc"]
    assert cpu.configure() is first and len(fresh) == 1
    sv.ViT(sv.get_config("ViT-Ti_16", image_size=8, patch_size=4, hidden_size=8, num_layers=1, num_heads=2,
                         mlp_dim=8, num_classes=2))
    assert len(fresh) == 1


def test_building_a_cpu_model_configures(fresh):
    sv.ViT(sv.get_config("ViT-Ti_16", image_size=8, patch_size=4, hidden_size=8, num_layers=1, num_heads=2,
                         mlp_dim=8, num_classes=2))
    assert len(fresh) == 1 and cpu._configured["enabled"]


def test_opt_out_changes_nothing(fresh, monkeypatch):
    monkeypatch.setenv(cpu.OPT_OUT_ENV, "1")
    out = cpu.configure()
    assert out == {"enabled": False, "malloc": False, "openblas_thread_timeout": False, "blas_thread_control": False}
    assert fresh == [] and cpu.blas_controller() is None
    with cpu.blas_threads(1) as held:
        assert not held
    calls = []
    assert cpu.split_batch(lambda s, e: calls.append((s, e)) or e - s, 8) == [8] and calls == [(0, 8)]


@pytest.mark.parametrize("opt_out", [False, True])
def test_settings_hold_when_numpy_was_imported_first(opt_out):
    """A plain script (NumPy first, no CLI): building a model applies the settings, or none with the opt-out."""
    code = ("import numpy, os, json\nimport scratchvit as sv\nfrom scratchvit import cpu\n"
            "sv.ViT(sv.get_config('ViT-Ti_16', image_size=8, patch_size=4, hidden_size=8, num_layers=1, "
            "num_heads=2, mlp_dim=8, num_classes=2))\n"
            "print(json.dumps({**cpu.configure(), 'env': os.environ.get('OPENBLAS_THREAD_TIMEOUT')}))\n")
    env = {k: v for k, v in os.environ.items() if k not in (cpu.OPT_OUT_ENV, "OPENBLAS_THREAD_TIMEOUT")}
    env["PYTHONPATH"] = str(REPO)
    if opt_out:
        env[cpu.OPT_OUT_ENV] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["openblas_thread_timeout"] is False and res["env"] is None  # too late for the variable...
    if opt_out:
        assert res["enabled"] is False and res["malloc"] is False
    else:  # ...but malloc is set, and OpenBLAS's threads are held at run time instead (where it is OpenBLAS)
        assert res["enabled"] and res["malloc"] is True and res["blas_thread_control"] in (True, False)


def test_split_batch_covers_the_batch_in_order(monkeypatch):
    monkeypatch.setattr(cpu, "NUM_THREADS", 3)
    monkeypatch.setattr(cpu, "_pool", None)
    if not cpu.blas_controller():
        pytest.skip("no BLAS threadpoolctl can steer: the batch is not split")
    inner = []

    def fn(s, e):
        inner.append(cpu.blockwise(lambda a: a.sum(), np.ones((4, 1 << 17)))[0])  # serial inside a shard
        return (s, e)

    assert cpu.split_batch(fn, 10) == [(0, 3), (3, 6), (6, 10)] and len(inner) == 3
    assert cpu.split_batch(fn, 1) == [(0, 1)]


def test_split_step_equals_the_whole_batch_step(rng, monkeypatch):
    if not cpu.blas_controller() or not cpu.tuning_enabled():
        pytest.skip("the batch is not split here (no BLAS threadpoolctl can steer, or CPU tuning off)")
    monkeypatch.setattr(cpu, "NUM_THREADS", 3)  # split into 3 shards, whatever the core count
    monkeypatch.setattr(cpu, "_pool", None)
    real_split, shards = cpu.split_batch, []

    def counting_split(*a, **k):
        out = real_split(*a, **k)
        shards.append(len(out))
        return out

    monkeypatch.setattr(cpu, "split_batch", counting_split)
    cfg = sv.get_config("ViT-Ti_16", image_size=8, patch_size=4, hidden_size=8, num_layers=2, num_heads=2,
                        mlp_dim=12, num_classes=3)
    params = {k: rng.standard_normal(s) * 0.5 for k, s in sv.param_shapes(cfg).items()}
    model = sv.ViT(cfg, dtype="float64", params=params)
    images, labels = rng.uniform(-1, 1, (5, 8, 8, 3)), np.array([0, 2, 1, 1, 0])
    loss, grads = model.loss_and_grads(images, labels, need_dinput=True)
    monkeypatch.setattr(cpu, "NUM_THREADS", 1)  # no split
    loss1, grads1 = model.loss_and_grads(images, labels, need_dinput=True)
    assert shards == [3, 1]
    assert abs(loss - loss1) <= 1e-14
    for k in grads1:
        np.testing.assert_allclose(grads[k], grads1[k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_blas_threads_holds_and_restores_the_count_through_threadpoolctl():
    """blas_threads sets the thread count of every BLAS threadpoolctl finds (OpenBLAS, MKL, BLIS,
    FlexiBLAS) and puts the previous one back, also when the body raises."""
    controller = cpu.blas_controller()
    if controller is None:
        pytest.skip("no BLAS threadpoolctl can steer here, or CPU tuning off")

    def counts():
        return [lib["num_threads"] for lib in controller.info()]

    before = counts()
    with cpu.blas_threads(1) as held:
        assert held and counts() == [1] * len(before)
        with cpu.blas_threads(2):
            assert counts() == [2] * len(before)
        assert counts() == [1] * len(before)
    assert counts() == before
    with pytest.raises(RuntimeError), cpu.single_threaded_blas():
        raise RuntimeError
    assert counts() == before
    assert cpu.blas_controller() is controller  # created once
