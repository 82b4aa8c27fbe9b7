"""Optimisers against hand-computed updates, clipping, the official schedule formula, accumulation."""
import numpy as np
import pytest

from scratchvit import optim


def test_sgd_momentum_by_hand():
    p = np.array([1.0, -2.0])
    opt = optim.SGD(momentum=0.9)
    s = opt.init(p)
    opt.update(p, np.array([0.5, 1.0]), s, lr=0.1)
    np.testing.assert_allclose(p, [1.0 - 0.05, -2.0 - 0.1])
    opt.update(p, np.array([0.5, 1.0]), s, lr=0.1)
    # m = 0.9 * [0.5, 1] + [0.5, 1] = [0.95, 1.9]
    np.testing.assert_allclose(s["momentum"], [0.95, 1.9])
    np.testing.assert_allclose(p, [0.95 - 0.095, -2.1 - 0.19])


def test_sgd_decoupled_weight_decay():
    p = np.array([2.0])
    opt = optim.SGD(momentum=0.0, weight_decay=0.1)
    opt.update(p, np.array([1.0]), opt.init(p), lr=0.5)
    np.testing.assert_allclose(p, [2.0 * (1 - 0.05) - 0.5])


def test_adamw_by_hand():
    p = np.array([1.0, 0.0])
    opt = optim.AdamW(b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)
    s = opt.init(p)
    g1, g2 = np.array([0.2, -1.0]), np.array([0.4, 3.0])
    w = p.copy()
    m = v = np.zeros(2)
    for t, g in enumerate([g1, g2], start=1):
        opt.update(p, g, s, lr=0.01)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        w = w * (1 - 0.01 * 0.01) - 0.01 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        np.testing.assert_allclose(p, w, rtol=1e-12)
    assert int(s["count"]) == 2


def test_optimizers_want_the_flat_buffer_not_the_dict():
    for opt in (optim.SGD(), optim.AdamW()):
        with pytest.raises(TypeError, match=r"flat parameter buffer, model.flat\), got dict"):
            opt.init({"w": np.zeros(2)})


def test_clip_by_global_norm():
    g = np.array([3.0, 4.0])
    assert optim.clip_by_global_norm(g, 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(g, [0.6, 0.8])
    g = np.array([0.3, 0.4])
    assert optim.clip_by_global_norm(g, 1.0) == pytest.approx(0.5)
    np.testing.assert_allclose(g, [0.3, 0.4])  # below the bound: untouched


def test_global_norm_of_a_flat_buffer_sums_rows_in_float64():
    """A float32 buffer of ROW-element rows: the norm equals the float64 one to float32 rounding of each row's dot
    product, where one float32 dot over the whole buffer drifts (BLAS sums in float32)."""
    from scratchvit.flat import ROW

    rng = np.random.default_rng(0)
    g = (rng.standard_normal(2000 * ROW) * rng.uniform(0, 1, 2000 * ROW) ** 4).astype(np.float32)
    exact = np.sqrt(np.sum(g.astype(np.float64) ** 2))
    norm = optim.global_norm(g)
    assert norm.dtype == np.float64
    assert abs(float(norm) - exact) <= 1e-7 * exact


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


@pytest.mark.parametrize("make", [lambda: optim.SGD(weight_decay=0.1), lambda: optim.AdamW(weight_decay=0.1)],
                         ids=["sgd", "adamw"])
def test_numpy_update_in_pieces_equals_one_piece(monkeypatch, make):
    """On NumPy the update runs over pieces of CHUNK elements (optim.in_pieces): bit for bit the one-piece update
    that a GPU runs, on a buffer of 3.5 pieces (float32 and float64), over 3 steps."""
    n = 3 * optim.CHUNK + optim.CHUNK // 2
    for dtype in (np.float32, np.float64):
        rng = np.random.default_rng(1)
        p0, grads = rng.standard_normal(n).astype(dtype), [rng.standard_normal(n).astype(dtype) for _ in range(3)]
        runs = []
        for chunk in (optim.CHUNK, 10 * n):  # pieces, then one piece
            monkeypatch.setattr(optim, "CHUNK", chunk)
            opt, p = make(), p0.copy()
            state = opt.init(p)
            for g in grads:
                opt.update(p, g, state, 0.01)
            runs.append((p, state))
        (p_a, s_a), (p_b, s_b) = runs
        assert not np.array_equal(p_a, p0)
        np.testing.assert_array_equal(p_a, p_b)
        for k in s_a:
            np.testing.assert_array_equal(s_a[k], s_b[k])
