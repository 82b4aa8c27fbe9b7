"""The CuPy path against the NumPy float64 path. Skipped (with the reason shown) without CuPy and a GPU."""
import numpy as np
import pytest

import scratchvit as sv
from scratchvit import ops, optim, step
from scratchvit.ops.gelu import GELU_FORMS

cupy = pytest.importorskip("cupy", reason="CuPy is not installed: GPU tests need it and a CUDA GPU")
try:
    HAVE_GPU = cupy.cuda.runtime.getDeviceCount() > 0
except Exception:  # noqa: BLE001  (no driver)
    HAVE_GPU = False
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAVE_GPU, reason="no CUDA GPU visible to CuPy")]


def tiny_config(**kw):
    return sv.get_config("ViT-Ti_16", **{**dict(image_size=16, patch_size=4, hidden_size=16, num_layers=2,
                                                num_heads=4, mlp_dim=32, num_classes=5), **kw})


@pytest.mark.parametrize("classifier,rep,gelu", [("token", None, "tanh"), ("gap", 6, "erf")])
def test_model_on_gpu_float64_matches_numpy(classifier, rep, gelu):
    rng = np.random.default_rng(0)
    cfg = tiny_config(classifier=classifier, representation_size=rep, gelu=gelu)
    params = {k: rng.standard_normal(s) * 0.3 for k, s in sv.param_shapes(cfg).items()}
    images, labels = rng.uniform(-1, 1, (3, 16, 16, 3)), np.array([0, 4, 2])
    cpu = sv.ViT(cfg, dtype="float64", params=params)
    gpu = sv.ViT(cfg, dtype="float64", params=params, device="gpu")
    assert isinstance(gpu.params["head/kernel"], cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(gpu.forward(images)), cpu.forward(images), rtol=0, atol=1e-10)
    l_cpu, g_cpu = cpu.loss_and_grads(images, labels)
    l_gpu, g_gpu = gpu.loss_and_grads(images, labels)
    assert abs(l_cpu - l_gpu) < 1e-10
    for k in g_cpu:
        scale = max(np.abs(g_cpu[k]).max(), 1e-12)
        assert np.abs(cupy.asnumpy(g_gpu[k]) - g_cpu[k]).max() <= 1e-10 * max(scale, 1.0), k


def test_model_on_gpu_float32_within_1e_4():
    rng = np.random.default_rng(1)
    cfg = tiny_config()
    params = {k: rng.standard_normal(s) * 0.3 for k, s in sv.param_shapes(cfg).items()}
    images = rng.uniform(-1, 1, (4, 16, 16, 3))
    ref = sv.ViT(cfg, dtype="float64", params=params).forward(images)
    out = cupy.asnumpy(sv.ViT(cfg, dtype="float32", params=params, device="gpu").forward(images))
    assert np.abs(out - ref).max() / np.abs(ref).max() <= 1e-4


def test_official_reference_on_gpu(reference_case):
    params, ref_grads, d = reference_case
    model = sv.ViT(sv.checkpoint.infer_config(params), dtype="float64", params=params, device="gpu")
    np.testing.assert_allclose(cupy.asnumpy(model.forward(d["images"])), d["logits"], atol=1e-10, rtol=0)
    loss, grads = model.loss_and_grads(d["images"], d["labels"])
    assert abs(loss - float(d["loss"])) <= 1e-10
    for k, ref in ref_grads.items():
        if not k.endswith("key/bias"):
            assert np.abs(cupy.asnumpy(grads[k]) - ref).max() <= 1e-9 * np.abs(ref).max(), k


def test_ops_on_gpu_match_numpy():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 5, 8))
    for approximate in GELU_FORMS:
        y, c = ops.gelu_forward(x.copy(), approximate)
        yg, cg = ops.gelu_forward(cupy.asarray(x), approximate)
        np.testing.assert_allclose(cupy.asnumpy(yg), y, atol=1e-12)
        np.testing.assert_allclose(cupy.asnumpy(ops.gelu_backward(cupy.asarray(x), cg)), ops.gelu_backward(x, c),
                                   atol=1e-12)
    s = rng.standard_normal((2, 3, 4, 4))
    np.testing.assert_allclose(cupy.asnumpy(ops.softmax_forward(cupy.asarray(s))), ops.softmax_forward(s.copy()),
                               atol=1e-14)


def test_optimizer_and_clipping_on_gpu():
    rng = np.random.default_rng(3)
    p = rng.standard_normal(10)
    g = rng.standard_normal(10) * 5
    pg, gg = cupy.asarray(p), cupy.asarray(g)
    for opt in (optim.SGD(), optim.AdamW(weight_decay=0.1)):
        s, sg = opt.init(p), opt.init(pg)
        assert optim.clip_by_global_norm(g, 1.0) == pytest.approx(float(optim.clip_by_global_norm(gg, 1.0)))
        opt.update(p, g, s, 0.1)
        opt.update(pg, gg, sg, 0.1)
        np.testing.assert_allclose(cupy.asnumpy(pg), p, atol=1e-12)


def test_a_few_training_steps_give_the_cpu_loss_curve():
    rng = np.random.default_rng(4)
    cfg = tiny_config()
    params = sv.init_params(cfg, 0)
    models = [sv.ViT(cfg, dtype="float32", params=params, device=d) for d in ("cpu", "gpu")]
    opts = [optim.SGD() for _ in models]
    states = [o.init(m.flat) for o, m in zip(opts, models, strict=True)]
    images, labels = rng.uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32), rng.integers(0, 5, 8)
    curves = [[], []]
    for _ in range(5):
        for i, (m, o, s) in enumerate(zip(models, opts, states, strict=True)):
            r = step.train_step(m, o, s, images, labels, 0.05, grad_clip=1.0)
            curves[i].append(r.loss)
    np.testing.assert_allclose(curves[1], curves[0], rtol=1e-4)
    assert curves[0][-1] < curves[0][0]
