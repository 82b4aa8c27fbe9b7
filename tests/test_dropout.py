"""Dropout, attention dropout and drop path (issue 17): the counter-based mask generator (the same on NumPy and
the strict device, the same for a row whichever part holds it), the ops' statistics, the model (rates 0 change
nothing bit for bit, evaluation never drops, masks follow rows across micro-batches, thread shards and ranks,
gradients of the dropped network by finite differences), and soft targets in the training step."""
import numpy as np
import pytest
from gradcheck import relative_error

import scratchvit as sv
from scratchvit import accumulate, cpu, ops, optim, step
from scratchvit.rng import RngKey, keep_mask, random_bits, site, uniform

RATES = dict(dropout_rate=0.2, attention_dropout_rate=0.3, drop_path_rate=0.4)


def small_model(rng, dtype="float64", classes=5, layers=2, **rates):
    config = sv.get_config("ViT-Ti_16", image_size=16, patch_size=8, hidden_size=16, num_heads=2, num_layers=layers,
                           mlp_dim=32, num_classes=classes, **rates)
    model = sv.ViT(config, dtype=dtype, seed=1)
    for k in model.params:
        model.params[k] += (rng.standard_normal(model.params[k].shape) * 0.1).astype(dtype)
    return model


def with_rates(model, **rates):
    """The same parameters (shared arrays) under another config."""
    return sv.ViT(model.config.replace(**rates), dtype=model.dtype, params=model.params)


# ------------------------------------------------------------------ the generator
def test_mask_generator_is_the_same_on_numpy_and_the_strict_device():
    from strict_device import DEVICE, to_host, xs

    from scratchvit.backend import module_for

    xp = module_for("cpu")
    for key, shape in ((RngKey(0, 0), (3, 7)), (RngKey(2 ** 40 + 3, 123456, 64), (5, 2, 3, 4)),
                       (RngKey(7, 1, 2 ** 32 - 2), (4, 1))):  # row counters wrapping past 2^32
        a = random_bits(xp, key, 9, shape)
        b = to_host(random_bits(xs, key, 9, shape, DEVICE))
        assert a.dtype == np.uint32 and np.array_equal(a, b)
        np.testing.assert_array_equal(keep_mask(xp, key, 4, shape, 0.3, xp.float64),
                                      to_host(keep_mask(xs, key, 4, shape, 0.3, xs.float64, DEVICE)))


def test_a_row_draws_the_same_whichever_part_holds_it():
    from scratchvit.backend import module_for

    xp = module_for("cpu")
    whole = random_bits(xp, RngKey(5, 9, 0), 3, (10, 4, 6))
    for lo, hi in ((0, 3), (3, 10), (6, 7)):
        np.testing.assert_array_equal(random_bits(xp, RngKey(5, 9, lo), 3, (hi - lo, 4, 6)), whole[lo:hi])


def test_keys_and_sites_give_independent_looking_uniforms():
    from scratchvit.backend import module_for

    xp = module_for("cpu")
    draws = [uniform(xp, key, s, (200, 500)) for key, s in
             ((RngKey(0, 0), 1), (RngKey(1, 0), 1), (RngKey(0, 1), 1), (RngKey(0, 0), 2), (RngKey(0, 0, 1), 1))]
    n = draws[0].size
    for u in draws:
        assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / n) and abs(u.var() - 1 / 12) < 2e-3
    for i in range(len(draws)):
        for j in range(i + 1, len(draws)):
            assert abs(np.corrcoef(draws[i].ravel(), draws[j].ravel())[0, 1]) < 5 / np.sqrt(n)
    # neighbouring rows of one draw are not shifted copies of each other
    assert not np.array_equal(draws[0][1:, :-1], draws[0][:-1, 1:])


def test_rng_key_refuses_negative_counters():
    with pytest.raises(ValueError, match="RngKey.step"):
        RngKey(0, -1)
    assert RngKey(1, 2, 3).offset(4) == RngKey(1, 2, 7)


# ------------------------------------------------------------------ the ops
@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_dropout_keeps_the_mean_and_drops_the_rate(rate):
    x = np.full((400, 50, 10), 2.0)
    y, mask = ops.dropout_forward(x, rate, RngKey(3, 4), 1)
    n = x.size
    sigma = np.sqrt(rate / (1 - rate) / n) * 2.0  # std of the mean of y
    assert abs(y.mean() - 2.0) < 5 * sigma
    assert abs((y == 0).mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / n)
    np.testing.assert_allclose(y[y != 0], 2.0 / (1 - rate), rtol=1e-15)
    np.testing.assert_array_equal(ops.dropout_backward(np.ones_like(x), mask), y / 2.0)


@pytest.mark.parametrize("rate", [0.2, 0.6])
def test_drop_path_drops_whole_samples_and_keeps_the_mean(rate):
    x = np.full((20000, 3, 4), 1.5)
    y, _ = ops.drop_path_forward(x, rate, RngKey(1, 2), 5)
    per_sample = y.reshape(len(y), -1)
    assert (per_sample == per_sample[:, :1]).all()  # a sample is dropped or kept whole
    n = len(y)
    assert abs(y.mean() - 1.5) < 5 * np.sqrt(rate / (1 - rate) / n) * 1.5
    assert abs((per_sample[:, 0] == 0).mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / n)


def test_rate_zero_or_no_key_is_the_identity_and_bad_rates_are_refused(rng):
    x = rng.standard_normal((3, 4))
    for fwd, bwd in ((ops.dropout_forward, ops.dropout_backward), (ops.drop_path_forward, ops.drop_path_backward)):
        y, cache = fwd(x, 0.0, RngKey(0, 0), 1)
        assert y is x and cache is None
        y, cache = fwd(x, 0.5, None, 1)
        assert y is x and cache is None and bwd(x, None) is x
        with pytest.raises(ValueError, match=r"rate must lie in \[0, 1\)"):
            fwd(x, 1.0, RngKey(0, 0), 1)


def test_attention_dropout_draws_its_mask_from_key_and_site_in_both_forms(rng):
    """attention_forward draws its (B, H, N, N) mask as dropout does (keep_mask of the key and site): the fast and
    the plain form drop the same weights; no key (evaluation) or rate 0 drops nothing."""
    from test_ops import attention_params

    x, p = rng.standard_normal((4, 5, 12)), attention_params(rng, 12, 3, scale=0.5)
    key, where = RngKey(1, 2, 3), site(0, "attention_probs")
    y0, _ = ops.attention_forward(x, p)
    np.testing.assert_array_equal(ops.attention_forward(x, p, 0.3)[0], y0)  # no key: nothing drops
    np.testing.assert_array_equal(ops.attention_forward(x, p, 0.0, key, where)[0], y0)
    y_fast, c_fast = ops.attention_forward(x, p, 0.3, key, where)
    y_plain, c_plain = ops.attention_forward_plain(x, p, 0.3, key, where)
    keep = keep_mask(np, key, where, (4, 3, 5, 5), 0.3, np.float64)
    np.testing.assert_array_equal(c_fast[-1], keep)
    np.testing.assert_array_equal(c_plain["keep"], keep)
    assert 0.15 < float((keep == 0).mean()) < 0.45 and not np.allclose(y_fast, y0)
    np.testing.assert_allclose(y_plain, y_fast, rtol=1e-12, atol=1e-13)
    dy = rng.standard_normal(y0.shape)
    dx_f, g_f = ops.attention_backward(dy, c_fast)
    dx_p, g_p = ops.attention_backward(dy, c_plain)
    np.testing.assert_allclose(dx_p, dx_f, rtol=1e-11, atol=1e-12)
    for k in g_f:
        np.testing.assert_allclose(g_p[k], g_f[k], rtol=1e-11, atol=1e-12)


# ------------------------------------------------------------------ the model
def test_block_drop_path_rates_rise_linearly():
    c = sv.get_config("ViT-Ti_16", num_layers=5, drop_path_rate=0.2)
    assert [c.drop_path_rate_of(i) for i in range(5)] == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert sv.get_config("ViT-Ti_16", num_layers=1, drop_path_rate=0.2).drop_path_rate_of(0) == 0.0
    with pytest.raises(ValueError, match="dropout_rate"):
        sv.get_config("ViT-Ti_16", dropout_rate=1.0)


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_rates_zero_give_todays_logits_and_gradients_bit_for_bit(rng, classifier):
    model = small_model(rng, classifier=classifier)
    images, labels = rng.uniform(-1, 1, (6, 16, 16, 3)), rng.integers(0, 5, 6)
    loss0, g0 = model.part_loss_and_grads(images, labels, 1.0)
    loss1, g1 = model.part_loss_and_grads(images, labels, 1.0, train=True, key=RngKey(3, 7, 11))
    assert float(loss0) == float(loss1)
    for k in g0:
        np.testing.assert_array_equal(g1[k], g0[k], err_msg=k)


def test_five_training_steps_with_every_rate_zero_match_the_code_without_the_new_arguments(rng, monkeypatch):
    """train_step (which now passes train=True, the seed and the row offsets) against the same steps with
    part_loss_and_grads called without the new arguments: the same parameters, bit for bit."""
    images, labels = rng.uniform(-1, 1, (5, 8, 16, 16, 3)), rng.integers(0, 5, (5, 8))

    def run(strip):
        model = small_model(np.random.default_rng(2), dtype="float32")
        if strip:
            original = model.part_loss_and_grads
            monkeypatch.setattr(model, "part_loss_and_grads",
                                lambda *a, train=None, key=None, **k: original(*a, **k))
        opt = optim.make_optimizer("adamw", weight_decay=0.05)
        state = opt.init(model.flat)
        for s in range(5):
            step.train_step(model, opt, state, images[s], labels[s], 1e-3, accum_steps=2, label_smoothing=0.1,
                            step=s, seed=3)
        return model.params

    new, old = run(False), run(True)
    for k in old:
        np.testing.assert_array_equal(new[k], old[k], err_msg=k)


def test_evaluation_predict_and_attention_maps_never_drop(rng):
    model = small_model(rng, **RATES)
    plain = with_rates(model)  # every rate 0, the same parameters
    images, labels = rng.uniform(-1, 1, (4, 16, 16, 3)), rng.integers(0, 5, 4)
    np.testing.assert_array_equal(model.forward(images), plain.forward(images))
    for a, b in zip(model.attention_probabilities(images), plain.attention_probabilities(images), strict=True):
        np.testing.assert_array_equal(a, b)
    loss, g = model.loss_and_grads(images, labels)  # the gradient-check entry point: no dropout
    loss_plain, g_plain = plain.loss_and_grads(images, labels)
    assert loss == loss_plain
    from scratchvit.evaluate import evaluate

    r, r_plain = (evaluate(m, (images * 127.5 + 127.5).astype(np.uint8), labels, 2, workers=1)
                  for m in (model, plain))
    assert r["loss"] == r_plain["loss"]
    # ... while a training pass does drop
    train_loss, _ = model.part_loss_and_grads(images, labels, 1.0, train=True, key=RngKey(0, 0))
    assert float(train_loss) != float(loss)


def test_masks_follow_rows_across_micro_batches_thread_shards_and_ranks(rng, monkeypatch):
    """One part, 2 micro-batches, 2 and 3 thread shards, and 2 'ranks' (two calls with their row offsets)
    give the same loss and gradients: every row draws the masks the whole batch draws for it."""
    model = small_model(rng, **RATES)
    images, labels = rng.uniform(-1, 1, (8, 16, 16, 3)), rng.integers(0, 5, 8)
    key = RngKey(4, 21, 0)
    monkeypatch.setattr(cpu, "NUM_THREADS", 1)
    ref_loss, ref = accumulate.loss_and_grads(model, images, labels, train=True, key=key)
    # the masks are on: the loss differs from an evaluation pass
    assert abs(float(ref_loss) - float(accumulate.loss_and_grads(model, images, labels)[0])) > 1e-6

    def same(loss, grads):
        assert float(loss) == pytest.approx(float(ref_loss), rel=1e-12)
        for k in ref:
            np.testing.assert_allclose(grads[k], ref[k], rtol=1e-9, atol=1e-14, err_msg=k)

    same(*accumulate.loss_and_grads(model, images, labels, accum_steps=2, train=True, key=key))
    if cpu.blas_controller():
        for threads in (2, 3):
            monkeypatch.setattr(cpu, "NUM_THREADS", threads)
            same(*accumulate.loss_and_grads(model, images, labels, accum_steps=2, train=True, key=key))
        monkeypatch.setattr(cpu, "NUM_THREADS", 1)
    parts = [accumulate.loss_and_grads(model, images[lo:hi], labels[lo:hi], total=8, train=True, key=key.offset(lo))
             for lo, hi in ((0, 3), (3, 8))]  # two ranks of shares 3 and 5, summed as the allreduce does
    same(parts[0][0] + parts[1][0], {k: parts[0][1][k] + parts[1][1][k] for k in ref})


def test_train_step_ranks_draw_the_masks_of_their_global_rows(rng):
    """train_step on 2 fake ranks: the mean of what they send equals one process's step on the whole batch."""
    from test_step import FakeRank

    from scratchvit import distributed

    images, labels = rng.uniform(-1, 1, (6, 16, 16, 3)), rng.integers(0, 5, 6)
    loss, big = accumulate.loss_and_grads(small_model(np.random.default_rng(5), **RATES), images, labels, train=True,
                                    key=RngKey(2, 3, 0))
    opt = optim.make_optimizer("sgd")
    sent = []
    for r in (0, 1):
        model, dist = small_model(np.random.default_rng(5), **RATES), FakeRank(r)
        step.train_step(model, opt, opt.init(model.flat), images, labels, 0.0, dist=dist, grad_clip=0.0,
                        step=3, seed=2)
        sent.append(dist.sent)
    loss_mean, flat, _ = distributed.unflatten((sent[0] + sent[1]) / 2, model.layout.size)
    grads = model.layout.views(flat)
    assert float(loss_mean) == pytest.approx(float(loss), rel=1e-12)
    for k in big:
        np.testing.assert_allclose(grads[k], big[k], rtol=1e-9, atol=1e-14, err_msg=k)


def test_gradients_of_the_dropped_network_match_finite_differences(rng):
    """With every regulariser on and a fixed key (fixed masks), the model's analytic gradients against central
    differences of its training loss, for entries of every kind of parameter and of the input."""
    model = small_model(rng, **{k: 0.3 for k in RATES})
    images, labels = rng.uniform(-1, 1, (4, 16, 16, 3)), rng.integers(0, 5, 4)
    key = RngKey(1, 5, 8)
    _, grads = model.part_loss_and_grads(images, labels, 1.0, train=True, key=key, need_dinput=True)

    def loss():
        return float(model.part_loss_and_grads(images, labels, 1.0, train=True, key=key)[0])

    names = ["Transformer/posembed_input/pos_embedding", "embedding/kernel", "head/kernel",
             "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel",
             "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel",
             "Transformer/encoderblock_1/LayerNorm_2/scale"]
    for name in names:
        p = model.params[name].reshape(-1)
        idx = rng.choice(p.size, 6, replace=False)
        num = []
        for i in idx:
            old = p[i]
            p[i] = old + 1e-5
            up = loss()
            p[i] = old - 1e-5
            down = loss()
            p[i] = old
            num.append((up - down) / 2e-5)
        err = relative_error(grads[name].reshape(-1)[idx], np.array(num))
        assert err <= 1e-6, f"{name}: relative error {err:.2e}"


def test_the_mask_of_a_site_is_reproducible_and_sites_differ():
    from scratchvit.backend import module_for

    xp = module_for("cpu")
    a = keep_mask(xp, RngKey(0, 3), site(1, "mlp_hidden"), (4, 9), 0.5, xp.float64)
    b = keep_mask(xp, RngKey(0, 3), site(1, "mlp_hidden"), (4, 9), 0.5, xp.float64)
    c = keep_mask(xp, RngKey(0, 3), site(1, "mlp_out"), (4, 9), 0.5, xp.float64)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# ------------------------------------------------------------------ soft targets in the step
def test_soft_targets_of_one_hot_rows_equal_integer_labels(rng):
    model = small_model(rng)
    images, labels = rng.uniform(-1, 1, (5, 16, 16, 3)), rng.integers(0, 5, 5)
    soft = np.eye(5)[labels]
    loss, g = accumulate.loss_and_grads(model, images, labels, label_smoothing=0.1, accum_steps=2)
    loss_s, g_s = accumulate.loss_and_grads(model, images, soft, label_smoothing=0.1, accum_steps=2)
    assert float(loss_s) == pytest.approx(float(loss), rel=1e-13)
    for k in g:
        np.testing.assert_allclose(g_s[k], g[k], rtol=1e-10, atol=1e-15)
    step.check_labels(soft.astype(np.float32), 5)


@pytest.mark.parametrize("bad,msg", [(np.full((2, 5), 0.3), "summing to 1"), (np.full((2, 4), 0.25), r"\(B, 5\)"),
                                     (np.array([[1.5, -0.5, 0, 0, 0]] * 2), ">= 0"),
                                     (np.eye(5, dtype=int)[:2], "float")])
def test_check_labels_refuses_bad_soft_targets(bad, msg):
    with pytest.raises(ValueError, match=msg):
        step.check_labels(bad, 5)


def test_the_dropped_model_on_the_strict_device_equals_numpy(rng):
    """Every regulariser on: the model on array-api-strict's Device("device1") draws the same masks as on NumPy
    (loss and gradients to 1e-12), and its soft targets go through the same loss."""
    from strict_device import to_host, to_strict

    host = small_model(rng, **RATES)
    dev = sv.ViT(host.config, dtype="float64", params={k: v.copy() for k, v in host.params.items()}, device="strict")
    images, soft = rng.uniform(-1, 1, (3, 16, 16, 3)), rng.dirichlet(np.ones(5), 3)
    key = RngKey(6, 2, 40)
    loss, grads = host.part_loss_and_grads(images, soft, 1.0, label_smoothing=0.1, train=True, key=key)
    loss_d, grads_d = dev.part_loss_and_grads(to_strict(images), to_strict(soft), 1.0, label_smoothing=0.1,
                                              train=True, key=key)
    assert float(to_host(loss_d)) == pytest.approx(float(loss), rel=1e-12)
    for k in grads:
        g = to_host(grads_d[k])
        # the key bias has a mathematically zero gradient (softmax ignores a shift shared by a row): an absolute bound
        ref = grads[k.replace("key/bias", "key/kernel")]
        assert np.abs(g - grads[k]).max() <= 1e-12 * np.abs(ref).max(), k


def test_fp16_training_step_draws_the_fp32_masks(rng):
    """Mixed precision with every regulariser on: the float16 pass draws the masks of the float32 one (the same
    key), so its loss is close to the float32 loss (float16 rounding only) and the step is finite."""
    images, labels = rng.uniform(-1, 1, (6, 16, 16, 3)), rng.integers(0, 5, 6)
    model = small_model(np.random.default_rng(3), dtype="float32", **RATES)
    key = RngKey(1, 4, 0)
    loss32, _ = accumulate.loss_and_grads(model, images.astype(np.float32), labels, train=True, key=key)
    half = model.cast("float16")
    loss16, grads16 = accumulate.loss_and_grads(half, images.astype(np.float16), labels, train=True, key=key,
                                          grad_dtype=np.float32)
    assert abs(float(loss16) - float(loss32)) < 1e-2 * abs(float(loss32))
    assert all(np.isfinite(g).all() for g in grads16.values())
    opt = optim.make_optimizer("adamw")
    result = step.train_step(model, opt, opt.init(model.flat), images, labels, 1e-3, precision="fp16",
                             loss_scale=step.LossScale(), step=4, seed=1)
    assert np.isfinite(result.loss) and not result.skipped
