"""Optimisers against hand-computed updates, clipping, the official schedule formula, accumulation."""
import numpy as np
import pytest

import scratchvit as sv
from scratchvit import optim


def test_sgd_momentum_by_hand():
    p = {"w": np.array([1.0, -2.0])}
    opt = optim.SGD(momentum=0.9)
    s = opt.init(p)
    opt.update(p, {"w": np.array([0.5, 1.0])}, s, lr=0.1)
    np.testing.assert_allclose(p["w"], [1.0 - 0.05, -2.0 - 0.1])
    opt.update(p, {"w": np.array([0.5, 1.0])}, s, lr=0.1)
    # m = 0.9 * [0.5, 1] + [0.5, 1] = [0.95, 1.9]
    np.testing.assert_allclose(s["momentum/w"], [0.95, 1.9])
    np.testing.assert_allclose(p["w"], [0.95 - 0.095, -2.1 - 0.19])


def test_sgd_decoupled_weight_decay():
    p = {"w": np.array([2.0])}
    opt = optim.SGD(momentum=0.0, weight_decay=0.1)
    opt.update(p, {"w": np.array([1.0])}, opt.init(p), lr=0.5)
    np.testing.assert_allclose(p["w"], [2.0 * (1 - 0.05) - 0.5])


def test_adamw_by_hand():
    p = {"w": np.array([1.0, 0.0])}
    opt = optim.AdamW(b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)
    s = opt.init(p)
    g1, g2 = np.array([0.2, -1.0]), np.array([0.4, 3.0])
    w = p["w"].copy()
    m = v = np.zeros(2)
    for t, g in enumerate([g1, g2], start=1):
        opt.update(p, {"w": g}, s, lr=0.01)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        w = w * (1 - 0.01 * 0.01) - 0.01 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        np.testing.assert_allclose(p["w"], w, rtol=1e-12)
    assert int(s["count"]) == 2


def test_clip_by_global_norm():
    g = {"a": np.array([3.0]), "b": np.array([[4.0]])}
    assert optim.clip_by_global_norm(g, 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(g["a"], [0.6])
    np.testing.assert_allclose(g["b"], [[0.8]])
    g = {"a": np.array([0.3]), "b": np.array([0.4])}
    assert optim.clip_by_global_norm(g, 1.0) == pytest.approx(0.5)
    np.testing.assert_allclose(g["a"], [0.3])  # below the bound: untouched


def official_schedule(step, base, total, warmup, decay_type, linear_end=1e-5):
    """vit_jax/utils.py create_learning_rate_schedule, transcribed with numpy for the check."""
    lr = base
    progress = np.clip((step - warmup) / float(total - warmup), 0.0, 1.0)
    if decay_type == "linear":
        lr = linear_end + (lr - linear_end) * (1.0 - progress)
    elif decay_type == "cosine":
        lr = lr * 0.5 * (1.0 + np.cos(np.pi * progress))
    if warmup:
        lr = lr * np.minimum(1.0, step / warmup)
    return float(lr)


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_schedule_matches_official_formula(decay):
    for step in [0, 1, 50, 99, 100, 101, 500, 999, 1000, 1200]:
        assert optim.learning_rate(step, 0.03, 1000, 100, decay) == pytest.approx(
            official_schedule(step, 0.03, 1000, 100, decay), rel=1e-12, abs=1e-15)
    assert optim.learning_rate(0, 0.03, 1000, 100, decay) == 0.0  # warmup starts at zero
    assert optim.learning_rate(100, 0.03, 1000, 100, decay) == pytest.approx(0.03)


def test_schedule_shapes():
    assert optim.learning_rate(550, 1.0, 1000, 100, "cosine") == pytest.approx(0.5)
    assert optim.learning_rate(1000, 1.0, 1000, 100, "cosine") == pytest.approx(0.0, abs=1e-15)
    assert optim.learning_rate(500, 0.1, 1000, 0, "constant") == 0.1
    with pytest.raises(ValueError, match="schedule"):
        optim.learning_rate(0, 0.1, 10, 0, "step")


def test_unknown_optimizer():
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        optim.make_optimizer("lamb")


def _small_model(rng):
    model = sv.ViT(sv.get_config("ViT-Ti_16", image_size=16, patch_size=8, hidden_size=16, num_heads=2,
                                 num_layers=1, mlp_dim=32, num_classes=5), dtype="float64", seed=1)
    for k in model.params:
        model.params[k] += rng.standard_normal(model.params[k].shape) * 0.1
    return model


@pytest.mark.parametrize("batch,accum", [(8, 4), (7, 2), (7, 3), (5, 5)])
def test_accumulate_gradient_equals_one_big_batch(rng, batch, accum):
    """optim.accumulate_gradient over `accum` micro-batches equals one pass over the batch, also when the
    batch does not divide (a short batch of --skip-bad-images: micro-batches of 4+3, 2+2+3)."""
    model = _small_model(rng)
    images, labels = rng.uniform(-1, 1, (batch, 16, 16, 3)), rng.integers(0, 5, batch)
    loss, big = model.loss_and_grads(images, labels)
    loss_acc, acc = optim.accumulate_gradient(model, images, labels, accum)
    assert loss_acc == pytest.approx(loss, rel=1e-12)
    for k in big:
        np.testing.assert_allclose(acc[k], big[k], rtol=1e-9, atol=1e-15)


def test_accumulate_gradient_needs_an_image_per_micro_batch(rng):
    with pytest.raises(ValueError, match="a batch of 3 images cannot make 4 micro-batches"):
        optim.accumulate_gradient(_small_model(rng), rng.uniform(-1, 1, (3, 16, 16, 3)), np.zeros(3, int), 4)


def test_ranks_of_a_short_batch_average_to_the_batch_mean(rng):
    """train.train_step on 2 ranks with a batch of 7 (shares 3 and 4): each rank weights its mean by its
    share, so the allreduce's mean over ranks is the whole batch's mean gradient and loss."""
    import types

    from scratchvit import distributed, train

    class Rank:
        size, is_main = 2, True

        def __init__(self, rank):
            self.rank, self.sent = rank, None

        def split_range(self, n):
            return self.rank * n // self.size, (self.rank + 1) * n // self.size

        def stall_hook(self, step):
            pass

        def allreduce_mean(self, buf, step=None):
            self.sent = buf.copy()
            return buf

    images, labels = rng.uniform(-1, 1, (7, 16, 16, 3)), rng.integers(0, 5, 7)
    loss, big = _small_model(np.random.default_rng(5)).loss_and_grads(images, labels)
    sent = []
    for r in (0, 1):
        model, dist = _small_model(np.random.default_rng(5)), Rank(r)
        opt = optim.make_optimizer("sgd")
        s = types.SimpleNamespace(accum_steps=1, label_smoothing=0.0, grad_clip=0.0)
        run = types.SimpleNamespace(model=model, dist=dist, settings=s, opt=opt, opt_state=opt.init(model.params),
                                    lr=lambda step: 0.0)
        train.train_step(run, images, labels, 0)
        sent.append(dist.sent)
    mean = (sent[0] + sent[1]) / 2
    loss_mean, grads = distributed.unflatten(mean, big)
    assert loss_mean == pytest.approx(loss, rel=1e-12)
    for k in big:
        np.testing.assert_allclose(grads[k], big[k], rtol=1e-9, atol=1e-15)
