"""The GPU path without a GPU: the model, the training step, checkpoints and evaluation on array-api-strict's
Device("device1"), a device that is not the CPU and refuses host arrays, NumPy calls and conversion to NumPy.

Each run equals the NumPy run to 1e-12 (float64); the official reference cases hold to the same 1e-10 as on
NumPy; a training step reads the device back to the host once; a host array slipped into the step raises.
"""
import numpy as np
import pytest
from strict_device import DEVICE, Array, to_host

import scratchvit as sv
from scratchvit import accumulate, checkpoint, evaluate, optim, runs, step

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def small_config(classifier="token", rep=None, gelu="tanh", classes=5):
    return sv.get_config("ViT-Ti_16", image_size=16, patch_size=8, hidden_size=16, num_heads=2, num_layers=2,
                         mlp_dim=32, num_classes=classes, classifier=classifier, representation_size=rep, gelu=gelu)


def twin_models(config, seed=1):
    """The same parameters on NumPy and on the strict device (float64)."""
    host = sv.ViT(config, dtype="float64", seed=seed)
    rng = np.random.default_rng(seed)
    for k in host.params:  # a head that is not zero, so that every gradient is
        host.params[k] += rng.standard_normal(host.params[k].shape) * 0.05
    dev = sv.ViT(config, dtype="float64", params={k: v.copy() for k, v in host.params.items()}, device="strict")
    return host, dev


def assert_close(dev, host, tol=1e-12, what="", key_bias_abs=None):
    """max |dev - host| <= tol * max |host|. The key bias has a gradient that is mathematically zero (softmax
    ignores a shift shared by a row), so its gradient, optimiser state and updates are rounding noise of
    each form (about 1e-18); with ``key_bias_abs`` they are compared to that absolute bound instead."""
    dev = to_host(dev)
    if key_bias_abs is not None and what.endswith("key/bias"):
        assert np.abs(dev - host).max() <= key_bias_abs, what
        return
    scale = max(np.abs(host).max(), 1e-300)
    assert np.abs(dev - host).max() <= tol * scale, f"{what}: {np.abs(dev - host).max() / scale:.2e}"


def test_parameters_live_on_the_device():
    _, dev = twin_models(small_config())
    assert all(isinstance(v, Array) and v.device == DEVICE for v in dev.params.values())
    assert all(v.device == DEVICE for v in optim.AdamW().init(dev.flat).values())


def assert_reference_case_on_the_device(params, ref_grads, d):
    """A vit_jax reference case (ViT or hybrid) on the device, to the NumPy tolerances: logits and loss 1e-10,
    every gradient 1e-9 relative (the key bias, mathematically zero, below 1e-14 of the largest gradient)."""
    model = sv.ViT(sv.checkpoint.infer_config(params), dtype="float64", params=params, device="strict")
    np.testing.assert_allclose(to_host(model.forward(d["images"])), d["logits"], rtol=0, atol=1e-10)
    loss, grads = model.loss_and_grads(d["images"], d["labels"])
    assert abs(loss - float(d["loss"])) <= 1e-10
    largest = max(np.abs(g).max() for g in ref_grads.values())
    for name, ref in ref_grads.items():
        g = to_host(grads[name])
        if name.endswith("key/bias"):  # mathematically zero: rounding noise on both sides
            assert np.abs(g).max() < 1e-14 * largest
            continue
        assert np.abs(g - ref).max() / np.abs(ref).max() <= 1e-9, name


def test_official_reference_cases(reference_case):
    """Logits, loss and every gradient of the official vit_jax cases, on the device, to the NumPy tolerances."""
    assert_reference_case_on_the_device(*reference_case)


@pytest.mark.parametrize("classifier,rep,gelu", [("token", None, "tanh"), ("gap", 8, "erf")])
def test_forward_and_gradients_equal_numpy(rng, classifier, rep, gelu):
    host, dev = twin_models(small_config(classifier, rep, gelu))
    images, labels = rng.uniform(-1, 1, (3, 16, 16, 3)), np.array([0, 4, 2])
    assert_close(dev.forward(images), host.forward(images), what="logits")
    loss_h, g_h = host.loss_and_grads(images, labels, need_dinput=True, label_smoothing=0.1)
    loss_d, g_d = dev.loss_and_grads(images, labels, need_dinput=True, label_smoothing=0.1)
    assert loss_d == pytest.approx(loss_h, rel=1e-12)
    for k in g_h:
        if k.endswith("key/bias"):  # mathematically zero (softmax ignores a shift of a row): rounding noise
            assert np.abs(to_host(g_d[k])).max() < 1e-14 and np.abs(g_h[k]).max() < 1e-14
            continue
        assert_close(g_d[k], g_h[k], what=k)


def run_steps(model, opt_name, images, labels, steps=20, accum=2, clip=0.5, precision="fp32"):
    opt = optim.make_optimizer(opt_name, weight_decay=0.01)
    state = opt.init(model.flat)
    scale = step.LossScale() if precision == "fp16" else None
    losses = []
    for i in range(steps):
        lr = optim.learning_rate(i, 0.05 if opt_name == "sgd" else 0.003, steps, 3)
        r = step.train_step(model, opt, state, images[i % 2::2], labels[i % 2::2], lr, accum_steps=accum,
                            grad_clip=clip, precision=precision, loss_scale=scale, step=i)
        losses.append((r.loss, r.grad_norm))
    return losses, optim.state_by_name(state, model.layout)  # per parameter: the key bias's has its own bound


@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
def test_twenty_training_steps_equal_numpy(rng, opt_name):
    """20 steps of step.train_step with gradient accumulation 2 and clipping (the norm exceeds 0.5, so it
    clips): parameters, optimiser state, losses and norms equal the NumPy run to 1e-12."""
    host, dev = twin_models(small_config())
    images, labels = rng.uniform(-1, 1, (16, 16, 16, 3)), rng.integers(0, 5, 16)
    losses_h, state_h = run_steps(host, opt_name, images, labels)
    losses_d, state_d = run_steps(dev, opt_name, images, labels)
    assert max(n for _, n in losses_h) > 0.5  # clipping took place
    np.testing.assert_allclose(losses_d, losses_h, rtol=1e-12)
    # The key bias's gradient is rounding noise of each form (below 1e-14: test_forward_and_gradients_equal_numpy),
    # and AdamW divides its moment by sqrt(v) + eps with v ~ noise^2 << eps^2: each step moves it by at most
    # lr * |noise| / eps in each run. So the two runs' key biases differ by at most 2 * sum(lr) * 1e-14 / eps
    # (1.2e-7 here; measured 1.8e-12 on an AMD EPYC whose OpenBLAS rounds differently from the plain form),
    # however equal the rest is. SGD moves it by lr * noise: 1e-12 holds.
    key_bias_abs = 1e-12
    if opt_name == "adamw":
        lrs = [optim.learning_rate(i, 0.003, 20, 3) for i in range(20)]
        key_bias_abs = 2 * sum(lrs) * 1e-14 / optim.AdamW().eps
    for k in host.params:
        assert_close(dev.params[k], host.params[k], what=k, key_bias_abs=key_bias_abs)
    for k in state_h:  # the moments of a noise gradient are noise (m ~ 1e-18, v ~ 1e-36): 1e-12 holds
        assert_close(state_d[k], state_h[k], what=k, key_bias_abs=1e-12)


def test_checkpoint_and_resume_state_round_trip(rng, tmp_path):
    host, dev = twin_models(small_config())
    checkpoint.save_checkpoint(tmp_path / "dev.npz", dev.params, dtype=None)
    config, loaded = checkpoint.load_checkpoint(tmp_path / "dev.npz")
    for k in host.params:
        np.testing.assert_array_equal(loaded[k], host.params[k])
    back = sv.ViT.from_checkpoint(tmp_path / "dev.npz", device="strict", dtype="float64")
    assert all(back.params[k].device == DEVICE for k in back.params)

    opt = optim.make_optimizer("adamw")
    state = opt.init(dev.flat)
    images, labels = rng.uniform(-1, 1, (4, 16, 16, 3)), rng.integers(0, 5, 4)
    step.train_step(dev, opt, state, images, labels, 0.01)
    scale = step.LossScale(scale=1024.0, clean_steps=7, skipped=2)
    runs.save_state(tmp_path, dev, state, 1, 0.5, 0, scale)
    fresh = sv.ViT(small_config(), dtype="float64", device="strict")
    fresh_state, fresh_scale = opt.init(fresh.flat), step.LossScale()
    assert runs.load_state(tmp_path, fresh, fresh_state, fresh_scale) == (1, 0.5)
    assert (fresh_scale.scale, fresh_scale.clean_steps, fresh_scale.skipped) == (1024.0, 7, 2)
    for k in dev.params:
        np.testing.assert_array_equal(to_host(fresh.params[k]), to_host(dev.params[k]))
    for k in state:
        assert fresh_state[k].device == DEVICE
        np.testing.assert_array_equal(to_host(fresh_state[k]), to_host(state[k]))


def test_evaluation_pass_equals_numpy(rng):
    host, dev = twin_models(small_config(classes=10))
    images, labels = rng.integers(0, 256, (37, 16, 16, 3), dtype=np.uint8), rng.integers(0, 10, 37)
    r_h = evaluate.evaluate(host, images, labels, batch_size=16, workers=1)
    r_d = evaluate.evaluate(dev, images, labels, batch_size=16, workers=1)
    assert r_d["loss"] == pytest.approx(r_h["loss"], rel=1e-12)
    np.testing.assert_array_equal(r_d["predictions"], r_h["predictions"])


def test_a_training_step_reads_the_device_once(rng, monkeypatch):
    """Every way a strict array reaches the host (float/int/bool/index, a move off the device, DLPack)
    is counted: a training step with accumulation and clipping (SGD and AdamW) makes one read."""
    reads = []
    for name in ("__float__", "__int__", "__bool__", "__index__", "__dlpack__", "__complex__"):
        real = getattr(Array, name)

        def counted(self, *a, _real=real, _name=name, **k):
            if self.device == DEVICE:
                reads.append(_name)
            return _real(self, *a, **k)

        monkeypatch.setattr(Array, name, counted)
    real_to_device = Array.to_device

    def to_device(self, device, /, **k):
        if self.device == DEVICE and device != DEVICE:
            reads.append("to_device")
        return real_to_device(self, device, **k)

    monkeypatch.setattr(Array, "to_device", to_device)
    _, dev = twin_models(small_config())
    images, labels = rng.uniform(-1, 1, (8, 16, 16, 3)), rng.integers(0, 5, 8)
    for opt_name in ("sgd", "adamw"):
        opt = optim.make_optimizer(opt_name)
        state = opt.init(dev.flat)
        for i in range(3):
            reads.clear()
            step.train_step(dev, opt, state, images, labels, 0.01, accum_steps=2, grad_clip=0.1, step=i)
            assert reads == ["to_device"], (opt_name, i, reads)


def test_a_host_array_slipped_into_the_step_raises(rng):
    """The device check can fail: NumPy labels (not moved to the device) in the loss, a NumPy gradient in
    the optimiser update."""
    _, dev = twin_models(small_config())
    images = dev._images(rng.uniform(-1, 1, (2, 16, 16, 3)))
    with pytest.raises((TypeError, ValueError)):
        accumulate.loss_and_grads(dev, images, np.array([0, 1]))
    opt = optim.make_optimizer("sgd")
    state = opt.init(dev.flat)
    grads = np.zeros(tuple(dev.flat.shape))
    with pytest.raises((TypeError, ValueError)):
        opt.update(dev.flat, grads, state, 0.1)


# ------------------------------------------------------------------ the hybrid (paper Sec. 3.1) on the device
def hybrid_config(classifier="token", rep=None):
    """16 px -> root (32 channels) -> 4x4 -> block1 (128) -> block2 (stride 2, 256) -> 2x2 map, patch 1."""
    return sv.get_config("ViT-Ti_16", image_size=16, patch_size=1, hidden_size=16, num_heads=2, num_layers=1,
                         mlp_dim=32, num_classes=5, classifier=classifier, representation_size=rep,
                         resnet=dict(num_layers=(1, 1), width_factor=0.5))


@pytest.mark.parametrize("name", ["hybrid_stem", "hybrid_stages"])
def test_official_hybrid_reference_cases(name):
    """The vit_jax hybrid cases on the device, to the NumPy tolerances (logits, loss 1e-10; gradients 1e-9)."""
    from conftest import load_reference

    assert_reference_case_on_the_device(*load_reference(name))


@pytest.mark.parametrize("classifier,rep", [("token", None), ("gap", 8)])
def test_hybrid_forward_and_gradients_equal_numpy(rng, classifier, rep):
    host, dev = twin_models(hybrid_config(classifier, rep))
    images, labels = rng.uniform(-1, 1, (3, 16, 16, 3)), np.array([0, 4, 2])
    assert_close(dev.forward(images), host.forward(images), what="logits")
    loss_h, g_h = host.loss_and_grads(images, labels, need_dinput=True)
    loss_d, g_d = dev.loss_and_grads(images, labels, need_dinput=True)
    assert loss_d == pytest.approx(loss_h, rel=1e-12)
    for k in g_h:
        if k.endswith("key/bias"):
            assert np.abs(to_host(g_d[k])).max() < 1e-14 and np.abs(g_h[k]).max() < 1e-14
            continue
        assert_close(g_d[k], g_h[k], what=k)


def test_twenty_training_steps_of_a_hybrid_equal_numpy(rng):
    """As test_twenty_training_steps_equal_numpy, for a hybrid (root and two stages): SGD, accumulation 2,
    clipping; parameters, optimiser state, losses and norms equal the NumPy run to 1e-12."""
    host, dev = twin_models(hybrid_config())
    images, labels = rng.uniform(-1, 1, (16, 16, 16, 3)), rng.integers(0, 5, 16)
    losses_h, state_h = run_steps(host, "sgd", images, labels)
    losses_d, state_d = run_steps(dev, "sgd", images, labels)
    assert max(n for _, n in losses_h) > 0.5  # clipping took place
    np.testing.assert_allclose(losses_d, losses_h, rtol=1e-12)
    for k in host.params:
        assert_close(dev.params[k], host.params[k], what=k, key_bias_abs=1e-12)
    for k in state_h:
        assert_close(state_d[k], state_h[k], what=k, key_bias_abs=1e-12)
