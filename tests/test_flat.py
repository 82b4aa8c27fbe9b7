"""Flat parameter, gradient and optimiser-state buffers (scratchvit/flat.py, issue 29).

- the layout: aligned offsets, views that are views (NumPy and array-api-strict's Device("device1")), any
  names and shapes;
- the model: ``params`` are views into ``flat``; checkpoints, resize and ``cast`` see the same arrays;
- training equals an independent per-parameter reference written here (SGD, AdamW, weight decay,
  accumulation, clipping, fp16 float32 masters) to 1e-12 in float64;
- resume points written before the flat buffers (tests/reference/old_state_*, by make_old_state.py
  from the commit before) load and train on as the reference does, or are refused with the reason;
- 2 MPI ranks (one allreduce of the flat gradient buffer) equal the reference (skipped without MPI).

The count of array operations per step is bounded in tests/test_launch_count.py.
"""
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

import scratchvit as sv
from scratchvit import checkpoint, optim, runs, step
from scratchvit.flat import ALIGN, ROW, Layout

REFERENCE = Path(__file__).resolve().parent / "reference"


def tiny_config(layers=2, classes=5):
    return sv.get_config("ViT-Ti_16", image_size=16, patch_size=8, hidden_size=16, num_heads=2, num_layers=layers,
                         mlp_dim=32, num_classes=classes)


# ------------------------------------------------------------------ the layout
def test_layout_of_any_names_aligns_every_array_and_round_trips(rng):
    """Names the ViT schema does not have (a hybrid's ResNet stem, a 0-d scale), odd sizes: every offset a
    multiple of ALIGN, the size a multiple of ROW, gather then views gives the arrays back, the gaps are zero."""
    shapes = {"conv_root/kernel": (7, 7, 3, 5), "gn_root/scale": (5,), "odd": (3, 1, 1), "scalar": (),
              "head/bias": (10,)}
    layout = Layout.of(shapes)
    assert layout.names == tuple(shapes)
    assert all(o % ALIGN == 0 for o in layout.offsets) and layout.size % ROW == 0
    assert all(b >= a + math.prod(s) for a, b, s in zip(layout.offsets, layout.offsets[1:], layout.shapes))
    arrays = {k: rng.standard_normal(s) for k, s in shapes.items()}
    buf = layout.gather(arrays)
    assert buf.shape == (layout.size,)
    views = layout.views(buf)
    used = np.zeros(layout.size, bool)
    for k, s in shapes.items():
        np.testing.assert_array_equal(views[k], arrays[k])
        assert np.shares_memory(views[k], buf)
        o = layout.offsets[layout.names.index(k)]
        used[o:o + math.prod(s)] = True
    assert not buf[~used].any()  # the gaps hold zeros


def test_layout_refuses_a_wrong_shape_or_buffer(rng):
    layout = Layout.of({"a": (2, 3), "b": (4,)})
    with pytest.raises(ValueError, match=r"'a' has shape \(3, 2\), the layout's is \(2, 3\)"):
        layout.gather({"a": np.zeros((3, 2)), "b": np.zeros(4)})
    with pytest.raises(ValueError, match=r"arrays missing for \['b'\]"):
        layout.gather({"a": np.zeros((2, 3))})
    with pytest.raises(ValueError, match=rf"expected shape \({layout.size},\), got \(7,\)"):
        layout.views(np.zeros(7))


def test_views_write_into_the_buffer_on_the_strict_device():
    """What the flat buffers rely on beyond the array API standard (scratchvit/flat.py): on array-api-strict's
    Device("device1") a slice of a 1-D array reshaped is a view, and ``[...] =``, ``+=``, ``*=`` and ``-=`` on
    it write into the buffer; so do the model's parameters and an optimiser update of the buffer reaches them."""
    from strict_device import DEVICE, to_host, to_strict

    layout = Layout.of({"a": (2, 3), "b": (5,)})
    buf = layout.gather(to_strict({"a": np.ones((2, 3)), "b": np.arange(5.0)}))
    assert buf.device == DEVICE
    v = layout.views(buf)
    v["a"][...] = to_strict(np.full((2, 3), 2.0))
    v["a"] += 1.0
    v["b"] *= 2.0
    v["b"] -= 1.0
    host = to_host(buf)
    np.testing.assert_array_equal(host[:6], 3.0)
    o = layout.offsets[1]
    np.testing.assert_array_equal(host[o:o + 5], 2 * np.arange(5.0) - 1)
    assert not host[6:o].any() and not host[o + 5:].any()

    model = sv.ViT(tiny_config(), dtype="float64", device="strict")
    model.params["head/bias"][...] = to_strict(np.arange(5.0))
    o = model.layout.offsets[model.layout.names.index("head/bias")]
    np.testing.assert_array_equal(to_host(model.flat)[o:o + 5], np.arange(5.0))
    model.flat *= 3.0
    np.testing.assert_array_equal(to_host(model.params["head/bias"]), 3 * np.arange(5.0))


# ------------------------------------------------------------------ the model
def test_model_params_are_views_of_one_buffer(rng):
    model = sv.ViT(tiny_config(), dtype="float32")
    assert model.flat.shape == (model.layout.size,) and model.flat.dtype == np.float32
    assert model.layout.names == tuple(sv.param_shapes(model.config))
    for k, v in model.params.items():
        assert np.shares_memory(v, model.flat) and v.dtype == np.float32, k
    model.flat += 1.0  # one update of the buffer is an update of every named parameter
    fresh = sv.ViT(tiny_config(), dtype="float32")
    for k in model.params:
        np.testing.assert_array_equal(model.params[k], fresh.params[k] + 1.0)
    half = model.cast("float16")
    assert half.flat.dtype == np.float16 and not np.shares_memory(half.flat, model.flat)
    for k in model.params:
        assert np.shares_memory(half.params[k], half.flat)
        np.testing.assert_array_equal(half.params[k], model.params[k].astype(np.float16))


def test_given_params_are_copied_into_the_buffer(rng):
    params = {k: rng.standard_normal(s) for k, s in sv.param_shapes(tiny_config()).items()}
    model = sv.ViT(tiny_config(), dtype="float64", params=params)
    for k in params:
        np.testing.assert_array_equal(model.params[k], params[k])
        assert not np.shares_memory(model.params[k], params[k])


def test_checkpoints_and_resize_see_the_named_arrays(rng, tmp_path):
    """save_checkpoint writes the official layout from the views (names and shapes as before), and
    from_checkpoint with a resized position grid and a new head builds a model whose views hold what
    load_checkpoint returns."""
    model = sv.ViT(tiny_config(), dtype="float64")
    model.flat[...] = rng.standard_normal(model.layout.size)
    checkpoint.save_checkpoint(tmp_path / "m.npz", model.params)
    with np.load(tmp_path / "m.npz") as z:
        assert sorted(z.files) == sorted(sv.param_shapes(model.config))
        for k in z.files:
            assert z[k].shape == model.params[k].shape and z[k].dtype == np.float32
    config, loaded = checkpoint.load_checkpoint(tmp_path / "m.npz", num_classes=3, image_size=24, new_head=True)
    resized = sv.ViT.from_checkpoint(tmp_path / "m.npz", num_classes=3, image_size=24, new_head=True,
                                     dtype="float64")
    assert resized.config.seq_len == 10 and resized.params["head/kernel"].shape == (16, 3)
    for k in loaded:
        np.testing.assert_array_equal(resized.params[k], loaded[k])
        assert np.shares_memory(resized.params[k], resized.flat)


# ------------------------------------------------------------------ equal results: a per-parameter reference
def reference_training(config, params, opt_name, batches, lrs, *, accum, clip, weight_decay, precision="fp32",
                       scale=1.0, state=None, steps_done=0):
    """Training written per parameter, the textbook way: a dict of arrays, a loop over the names for each formula.

    Gradients of a micro-batch come from ``ViT.part_loss_and_grads`` (the backward pass, checked elsewhere);
    the summing, unscaling, norm, clipping, weight decay and the optimiser are this function's own. ``state``
    ({"<slot>/<name>": array}) and ``steps_done`` (AdamW's step count) continue a run; default: a fresh one.
    Returns (params, {"<slot>/<name>": state}, [(loss, norm) per step])."""
    dtype = np.float64 if precision == "fp32" and params[next(iter(params))].dtype == np.float64 else np.float32
    p = {k: np.array(v, dtype) for k, v in params.items()}
    slots = ("momentum",) if opt_name == "sgd" else ("mu", "nu")
    state = {f"{s}/{k}": np.array(state[f"{s}/{k}"], dtype) if state else np.zeros_like(v)
             for s in slots for k, v in p.items()}
    history = []
    for t, ((x, y), lr) in enumerate(zip(batches, lrs), start=steps_done + 1):
        compute = "float16" if precision == "fp16" else dtype
        model = sv.ViT(config, dtype=compute, params=p)
        B = len(y)
        g = {k: np.zeros_like(v) for k, v in p.items()}
        loss = None
        for i in range(accum):
            lo, hi = B * i // accum, B * (i + 1) // accum
            part_loss, part = model.part_loss_and_grads(x[lo:hi].astype(compute), y[lo:hi], (hi - lo) / B,
                                                        loss_scale=scale)
            loss = part_loss if loss is None else loss + part_loss  # in the loss's dtype, as step.py sums
            for k in g:
                g[k] += part[k].astype(dtype)
        for k in g:
            g[k] *= 1.0 / scale
        norm = math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in g.values()))
        factor = min(1.0, clip / norm) if clip else 1.0
        for k in g:
            g[k] *= dtype(factor)
        for k in p:
            if opt_name == "sgd":
                m = state[f"momentum/{k}"] = 0.9 * state[f"momentum/{k}"] + g[k]
                p[k] = p[k] * (1.0 - lr * weight_decay) - lr * m
            else:
                m = state[f"mu/{k}"] = 0.9 * state[f"mu/{k}"] + (1.0 - 0.9) * g[k]
                v = state[f"nu/{k}"] = 0.999 * state[f"nu/{k}"] + (1.0 - 0.999) * (g[k] * g[k])
                c1, c2 = 1.0 - 0.9 ** t, 1.0 - 0.999 ** t
                p[k] = p[k] * (1.0 - lr * weight_decay) - (m / (np.sqrt(v / c2) + 1e-8)) * (lr / c1)
        history.append((float(loss), norm))
    return p, state, history


def scratchvit_training(config, params, opt_name, batches, lrs, *, accum, clip, weight_decay, precision="fp32",
                        scale=1.0):
    """The same run through step.train_step (flat buffers); returns what reference_training returns."""
    dtype = "float64" if precision == "fp32" and params[next(iter(params))].dtype == np.float64 else "float32"
    model = sv.ViT(config, dtype=dtype, params=params)
    opt = optim.make_optimizer(opt_name, weight_decay=weight_decay)
    state = opt.init(model.flat)
    loss_scale = step.LossScale(scale=scale) if precision == "fp16" else None
    history = []
    for i, ((x, y), lr) in enumerate(zip(batches, lrs)):
        r = step.train_step(model, opt, state, x, y, lr, accum_steps=accum, grad_clip=clip, precision=precision,
                            loss_scale=loss_scale, step=i)
        assert not r.skipped
        history.append((r.loss, r.grad_norm))
    named = {k: v for k, v in optim.state_by_name(state, model.layout).items() if k != "count"}
    return model.params, named, history


def key_bias_bound(opt_name, lrs):
    """The attention key bias has a gradient that is zero in exact arithmetic (softmax ignores a shift of a row):
    each run's is rounding noise below 1e-14, summed in another order here and there. SGD moves it by lr * noise;
    AdamW by up to lr * noise / eps per step (v ~ noise^2 << eps^2). So the two runs' key biases may differ by
    that much, however equal the rest is."""
    return 1e-12 if opt_name == "sgd" else 2 * sum(lrs) * 1e-14 / 1e-8


def assert_runs_equal(ours, ref, rtol, bound, norm_rtol=None):
    """Losses to ``rtol``, gradient norms to ``norm_rtol`` (default ``rtol``), every parameter and optimiser
    array to ``rtol`` of the largest magnitude of its kind, the key bias to ``bound`` (:func:`key_bias_bound`)."""
    (p, s, h), (rp, rs, rh) = ours, ref
    np.testing.assert_allclose([x for x, _ in h], [x for x, _ in rh], rtol=rtol)
    np.testing.assert_allclose([n for _, n in h], [n for _, n in rh], rtol=norm_rtol or rtol)
    for named, ref_named in ((p, rp), (s, rs)):
        assert set(named) == set(ref_named)
        scale = max(float(np.abs(v).max()) for v in ref_named.values())
        for k, v in ref_named.items():
            err = float(np.abs(np.asarray(named[k], np.float64) - v).max())
            if k.endswith("key/bias"):
                assert err <= bound, (k, err)
            else:
                assert err <= rtol * scale, (k, err / scale)


def batches_of(rng, n, size, image=16, classes=5):
    return [(rng.uniform(-1, 1, (size, image, image, 3)), rng.integers(0, classes, size)) for _ in range(n)]


@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
@pytest.mark.parametrize("accum,batch,clip", [(1, 8, 0.0), (3, 7, 0.5)], ids=["plain", "accumulated-clipped"])
def test_training_equals_a_per_parameter_reference(rng, opt_name, accum, batch, clip):
    """6 float64 steps with weight decay, a warmup-cosine schedule; with 3 micro-batches of a batch of 7 (2+2+3)
    and clipping at 0.5 (it clips: the norms are above 0.5): losses, norms, parameters and optimiser state
    equal the reference to 1e-12."""
    config = tiny_config()
    params = {k: v + rng.standard_normal(v.shape) * 0.05 for k, v in sv.init_params(config, 1).items()}
    batches = batches_of(rng, 6, batch)
    lrs = [optim.learning_rate(i, 0.1 if opt_name == "sgd" else 0.01, 6, 2) for i in range(6)]
    kw = dict(accum=accum, clip=clip, weight_decay=0.05)
    ref = reference_training(config, params, opt_name, batches, lrs, **kw)
    ours = scratchvit_training(config, params, opt_name, batches, lrs, **kw)
    if clip:
        assert min(n for _, n in ref[2]) > clip  # every step clipped
    assert_runs_equal(ours, ref, 1e-12, key_bias_bound(opt_name, lrs))


def one_thread(monkeypatch):
    """Micro-batches in one piece, as the reference runs them: on scratchvit's threads each shard's float16
    gradients would round in float16 before the float32 sum (in float64 that is 1e-16 noise, in float16 not)."""
    monkeypatch.setattr(sv.cpu, "NUM_THREADS", 1)


@pytest.mark.parametrize("clip", [100.0, 0.5], ids=["unclipped", "clipped"])
def test_fp16_float32_masters_equal_a_per_parameter_reference(rng, monkeypatch, clip):
    """fp16: float16 forward and backward, gradients summed in float32 over 2 micro-batches, unscaled, AdamW on
    float32 masters. Without clipping every float32 operation is the reference's, so the runs agree to 1e-12
    (bit for bit, in float32). With clipping the norms are summed in another order (rows of the flat buffer
    against one array at a time), which can move the float32 clipping factor by one rounding step: then the
    runs agree to float32 rounding (1e-6 of the largest value)."""
    one_thread(monkeypatch)
    config = tiny_config()
    params = {k: (v + rng.standard_normal(v.shape) * 0.05).astype(np.float32)
              for k, v in sv.init_params(config, 1).items()}
    batches = [(x.astype(np.float32), y) for x, y in batches_of(rng, 5, 8)]
    lrs = [optim.learning_rate(i, 0.01, 5, 1) for i in range(5)]
    kw = dict(accum=2, clip=clip, weight_decay=0.05, precision="fp16", scale=1024.0)
    ref = reference_training(config, params, "adamw", batches, lrs, **kw)
    ours = scratchvit_training(config, params, "adamw", batches, lrs, **kw)
    assert (min(n for _, n in ref[2]) > clip) == (clip < 1)
    assert all(v.dtype == np.float32 for v in ours[0].values())
    rtol = 1e-12 if clip > 1 else 1e-6
    # the norm itself: float32 dot products of rows summed in float64 against the reference's float64 sum
    assert_runs_equal(ours, ref, rtol, key_bias_bound("adamw", lrs) if clip < 1 else 0.0, norm_rtol=1e-6)


# ------------------------------------------------------------------ resume points from before the flat buffers
@pytest.mark.parametrize("name,opt_name,precision", [("sgd", "sgd", "fp32"), ("adamw", "adamw", "fp32"),
                                                     ("adamw_fp16", "adamw", "fp16")])
def test_a_resume_point_written_before_the_flat_buffers_loads_and_trains_on(rng, tmp_path, monkeypatch, name,
                                                                            opt_name, precision):
    """tests/reference/old_state_<name>/state.npz was written by the commit before the flat buffers
    (make_old_state.py). It loads: every parameter and optimiser array lands in its view of the flat buffers,
    the step, the best accuracy and the loss scale come back; 3 more steps equal the per-parameter reference
    started from the file's arrays (1e-12 in float64; fp16 with clipping: float32 rounding)."""
    one_thread(monkeypatch)
    out = tmp_path / "run"
    shutil.copytree(REFERENCE / f"old_state_{name}", out)
    with np.load(out / "state.npz") as z:
        saved = {k: z[k] for k in z.files}
    config = tiny_config(layers=1)
    dtype = "float32" if precision == "fp16" else "float64"
    model = sv.ViT(config, dtype=dtype, seed=5)
    opt = optim.make_optimizer(opt_name, weight_decay=0.05)
    state = opt.init(model.flat)
    scale = step.LossScale() if precision == "fp16" else None
    assert runs.load_state(out, model, state, scale) == (2, 0.25)
    for k, v in model.params.items():
        np.testing.assert_array_equal(v, saved[f"params/{k}"])
        assert np.shares_memory(v, model.flat)
    for k, v in optim.state_by_name(state, model.layout).items():
        np.testing.assert_array_equal(v, saved[f"opt/{k}"])
    if scale is not None:
        assert scale.scale == float(saved["loss_scale/scale"])

    # 3 more steps of the loaded run against the reference started from the file (AdamW's step count carried on)
    batches = [(x.astype(dtype), y) for x, y in batches_of(rng, 3, 8)]
    lrs = [0.01, 0.008, 0.006]
    history = []
    for i, ((x, y), lr) in enumerate(zip(batches, lrs)):
        r = step.train_step(model, opt, state, x, y, lr, accum_steps=2, grad_clip=0.5, precision=precision,
                            loss_scale=scale, step=2 + i)
        assert not r.skipped
        history.append((r.loss, r.grad_norm))
    named = {k: v for k, v in optim.state_by_name(state, model.layout).items() if k != "count"}
    ours = (model.params, named, history)
    params = {k: saved[f"params/{k}"] for k in model.params}
    slots = {k[len("opt/"):]: v for k, v in saved.items() if k.startswith("opt/") and k != "opt/count"}
    ref = reference_training(config, params, opt_name, batches, lrs, accum=2, clip=0.5, weight_decay=0.05,
                             precision=precision, scale=float(saved.get("loss_scale/scale", 1.0)), state=slots,
                             steps_done=int(saved.get("opt/count", 0)))
    rtol = 1e-6 if precision == "fp16" else 1e-12
    assert_runs_equal(ours, ref, rtol, key_bias_bound(opt_name, lrs), norm_rtol=1e-6 if precision == "fp16" else None)


def test_a_resume_point_of_another_optimizer_or_shape_is_refused_with_the_reason(tmp_path):
    out = tmp_path / "run"
    shutil.copytree(REFERENCE / "old_state_sgd", out)
    model = sv.ViT(tiny_config(layers=1), dtype="float64")
    adamw = optim.make_optimizer("adamw")
    with pytest.raises(ValueError, match=r"lacks optimiser state \['mu/.*was the run started with another "
                                         r"--optimizer\?"):
        runs.load_state(out, model, adamw.init(model.flat))
    with np.load(out / "state.npz") as z:
        saved = {k: z[k] for k in z.files}
    saved["opt/momentum/head/bias"] = np.zeros(7)
    np.savez(out / "state.npz", **saved)
    sgd = optim.make_optimizer("sgd")
    with pytest.raises(ValueError, match=r"optimiser state momentum/head/bias of shape \(7,\), this run's is \(5,\)"):
        runs.load_state(out, model, sgd.init(model.flat))


# ------------------------------------------------------------------ 2 MPI ranks
RANK_SCRIPT = """
import sys
import numpy as np
import scratchvit as sv
from scratchvit import distributed, optim, step
data, out, opt_name = np.load(sys.argv[1]), sys.argv[2], sys.argv[3]
dist = distributed.init("auto")
assert dist.size == 2
config = sv.get_config("ViT-Ti_16", image_size=16, patch_size=8, hidden_size=16, num_heads=2, num_layers=2,
                       mlp_dim=32, num_classes=5)
model = sv.ViT(config, dtype="float64", params={k[7:]: data[k] for k in data.files if k.startswith("params/")})
opt = optim.make_optimizer(opt_name, weight_decay=0.05)
state = opt.init(model.flat)
history = []
for i, lr in enumerate(data["lrs"]):
    r = step.train_step(model, opt, state, data[f"x{i}"], data[f"y{i}"], float(lr), dist=dist, accum_steps=2,
                        grad_clip=0.5, step=i)
    history.append((r.loss, r.grad_norm))
if dist.is_main:
    named = optim.state_by_name(state, model.layout)
    np.savez(out, history=np.array(history), **{f"params/{k}": v for k, v in model.params.items()},
             **{f"opt/{k}": v for k, v in named.items() if k != "count"})
"""


@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
def test_two_mpi_ranks_equal_the_per_parameter_reference(rng, tmp_path, opt_name):
    """``mpiexec -n 2``: each rank takes 4 of the 8 rows in 2 micro-batches and the flat gradient buffer (with the
    loss and the stop flag) is averaged in one allreduce; 4 float64 steps with clipping equal the reference run
    over the whole batch in 4 micro-batches (the same rows per micro-batch) to 1e-12."""
    import os
    import subprocess
    import sys

    from test_distributed import MPIEXEC, ROOT, mpiexec, needs_mpi

    if needs_mpi.args[0]:
        pytest.skip(needs_mpi.kwargs["reason"])
    assert MPIEXEC
    config = tiny_config()
    params = {k: v + rng.standard_normal(v.shape) * 0.05 for k, v in sv.init_params(config, 1).items()}
    batches = batches_of(rng, 4, 8)
    lrs = [optim.learning_rate(i, 0.1 if opt_name == "sgd" else 0.01, 4, 1) for i in range(4)]
    data = {f"params/{k}": v for k, v in params.items()}
    for i, (x, y) in enumerate(batches):
        data[f"x{i}"], data[f"y{i}"] = x, y
    np.savez(tmp_path / "data.npz", lrs=np.array(lrs), **data)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SCRATCHVIT_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    r = subprocess.run(mpiexec(2) + [sys.executable, "-c", RANK_SCRIPT, str(tmp_path / "data.npz"),
                                     str(tmp_path / "out.npz"), opt_name],
                       capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    with np.load(tmp_path / "out.npz") as z:
        ours = ({k[7:]: z[k] for k in z.files if k.startswith("params/")},
                {k[4:]: z[k] for k in z.files if k.startswith("opt/")}, [tuple(h) for h in z["history"]])
    ref = reference_training(config, params, opt_name, batches, lrs, accum=4, clip=0.5, weight_decay=0.05)
    assert min(n for _, n in ref[2]) > 0.5  # it clipped
    assert_runs_equal(ours, ref, 1e-12, key_bias_bound(opt_name, lrs))
