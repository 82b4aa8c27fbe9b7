"""scratchvit/step.py and scratchvit/accumulate.py: the batch split (micro-batches, threads, MPI shares), the
training step, loss scaling."""
import numpy as np
import pytest

import scratchvit as sv
from scratchvit import accumulate, distributed, optim, step


def small_model(rng, dtype="float64", classes=5):
    model = sv.ViT(sv.get_config("ViT-Ti_16", image_size=16, patch_size=8, hidden_size=16, num_heads=2,
                                 num_layers=1, mlp_dim=32, num_classes=classes), dtype=dtype, seed=1)
    for k in model.params:
        model.params[k] += (rng.standard_normal(model.params[k].shape) * 0.1).astype(dtype)
    return model


def test_shares_cover_the_rows_in_order():
    assert accumulate.shares(7, 3) == [(0, 2), (2, 4), (4, 7)]
    assert accumulate.shares(8, 4) == [(0, 2), (2, 4), (4, 6), (6, 8)]


@pytest.mark.parametrize("batch,accum", [(8, 4), (7, 2), (7, 3), (5, 5)])
def test_micro_batches_equal_one_big_batch(rng, batch, accum):
    """loss_and_grads over `accum` micro-batches equals one pass over the batch, also when the batch does not
    divide (a short batch of --skip-bad-images: micro-batches of 3+4, 2+2+3)."""
    model = small_model(rng)
    images, labels = rng.uniform(-1, 1, (batch, 16, 16, 3)), rng.integers(0, 5, batch)
    loss, big = model.loss_and_grads(images, labels)
    loss_acc, acc = accumulate.loss_and_grads(model, images, labels, accum_steps=accum)
    assert float(loss_acc) == pytest.approx(loss, rel=1e-12)
    for k in big:
        np.testing.assert_allclose(acc[k], big[k], rtol=1e-9, atol=1e-15)


def test_needs_an_image_per_micro_batch(rng):
    with pytest.raises(ValueError, match="a batch of 3 images cannot make 4 micro-batches"):
        accumulate.loss_and_grads(small_model(rng), rng.uniform(-1, 1, (3, 16, 16, 3)), np.zeros(3, int), accum_steps=4)


class FakeRank:
    """Rank ``rank`` of ``size``: records the buffer it would send to the allreduce, returns it unchanged."""

    is_main = True

    def __init__(self, rank, size=2):
        self.rank, self.size, self.sent = rank, size, None

    def split_range(self, n):
        return self.rank * n // self.size, (self.rank + 1) * n // self.size

    def allreduce_mean(self, buf, step=None):
        self.sent = buf.copy()
        return buf


def test_ranks_of_a_short_batch_average_to_the_batch_mean(rng):
    """train_step on 2 ranks with a batch of 7 (shares 3 and 4): each rank weights its part by its share, so
    the allreduce's mean over ranks is the whole batch's mean gradient and loss."""
    images, labels = rng.uniform(-1, 1, (7, 16, 16, 3)), rng.integers(0, 5, 7)
    loss, big = small_model(np.random.default_rng(5)).loss_and_grads(images, labels)
    sent = []
    for r in (0, 1):
        model, dist = small_model(np.random.default_rng(5)), FakeRank(r)
        opt = optim.make_optimizer("sgd")
        step.train_step(model, opt, opt.init(model.flat), images, labels, 0.0, dist=dist, grad_clip=0.0)
        sent.append(dist.sent)
    assert sent[0].shape == (model.layout.size + 2,)  # one buffer: the flat gradients, the loss, the stop flag
    loss_mean, flat, stop = distributed.unflatten((sent[0] + sent[1]) / 2, model.layout.size)
    grads = model.layout.views(flat)
    assert float(loss_mean) == pytest.approx(loss, rel=1e-12) and float(stop) == 0.0
    for k in big:
        np.testing.assert_allclose(grads[k], big[k], rtol=1e-9, atol=1e-15)


def test_train_step_refuses_labels_out_of_range_before_computing(rng):
    model = small_model(rng)
    opt = optim.make_optimizer("sgd")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\), got min 0 max 5"):
        step.train_step(model, opt, opt.init(model.flat), rng.uniform(-1, 1, (2, 16, 16, 3)), np.array([0, 5]), 0.1)


def test_train_step_raises_on_a_non_finite_loss_and_updates_nothing(rng):
    model = small_model(rng)
    before = {k: v.copy() for k, v in model.params.items()}
    model.params["head/bias"][0] = np.inf
    opt = optim.make_optimizer("sgd")
    with pytest.raises(FloatingPointError, match="at step 3"):
        step.train_step(model, opt, opt.init(model.flat), rng.uniform(-1, 1, (2, 16, 16, 3)), np.array([0, 1]),
                        0.1, step=3)
    for k in before:
        if k != "head/bias":
            np.testing.assert_array_equal(model.params[k], before[k])


def test_loss_scale_halves_on_overflow_and_doubles_after_clean_steps():
    s = step.LossScale(scale=8.0, growth_interval=3)
    s.update(True)
    s.update(False)
    assert (s.scale, s.clean_steps, s.skipped) == (4.0, 0, 1)
    for _ in range(3):
        s.update(True)
    assert (s.scale, s.clean_steps) == (8.0, 0)
    restored = step.LossScale()
    restored.restore(s.state())
    assert (restored.scale, restored.clean_steps, restored.skipped) == (8.0, 0, 1)
    s = step.LossScale(scale=1.0)
    with pytest.raises(FloatingPointError, match="not finite even at loss scale 1"):
        s.update(False)
