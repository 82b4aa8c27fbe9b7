"""The masked-patch ops (paper Sec. 4.6, App. B.1.2): the corruption plan, the corruption's forward and
backward, the mean-colour targets and the token cross-entropy; gradient-checked in float64 on NumPy and on
array-api-strict's Device("device1"), where every result equals NumPy's."""
import numpy as np
import pytest
from gradcheck import numerical_grad, relative_error

from scratchvit.ops import masked_patch as mp
from scratchvit.rng import RngKey

SITE = 1000
KEY = RngKey(0, 1, 0)


def plan_np(batch=3, tokens=8, key=KEY, **kw):
    return mp.corruption_plan(np, key, SITE, batch, tokens, np.float64, **kw)


def test_the_plan_corrupts_exactly_half_of_each_image_in_the_papers_proportions():
    b, n = 4000, 16
    p = plan_np(b, n)
    np.testing.assert_array_equal(p.corrupted.sum(1), np.full(b, 8.0))  # round(0.5 * 16) in every image
    assert np.all(p.use_mask + p.use_random <= p.corrupted)
    share = p.corrupted.sum()
    assert abs(p.use_mask.sum() / share - 0.8) < 0.01 and abs(p.use_random.sum() / share - 0.1) < 0.01
    position = np.arange(n)[None, :]
    assert np.all(p.source != position) and p.source.min() >= 0 and p.source.max() < n
    hits = np.bincount((p.source - position - (p.source > position) + n).ravel() % n, minlength=n)[: n - 1]
    assert hits.min() > 0.9 * hits.mean()  # every other patch is a source about as often
    q = plan_np(5, 7, mask_ratio=0.3)
    np.testing.assert_array_equal(q.corrupted.sum(1), np.full(5, 2.0))  # round(2.1)


def test_a_part_of_the_batch_draws_its_rows_of_the_whole_batchs_plan():
    whole = plan_np(6, 9, RngKey(3, 7, 10))
    part = plan_np(2, 9, RngKey(3, 7, 14))  # global rows 14, 15 = rows 4, 5 of the whole
    for f in ("corrupted", "use_mask", "use_random", "source"):
        np.testing.assert_array_equal(getattr(part, f), getattr(whole, f)[4:6], err_msg=f)
    other_step = plan_np(6, 9, RngKey(3, 8, 10))
    assert not np.array_equal(other_step.corrupted, whole.corrupted)


@pytest.mark.parametrize("bad", [dict(mask_ratio=1.5), dict(mask_fraction=0.95, random_fraction=0.1),
                                 dict(random_fraction=-0.1)])
def test_bad_fractions_are_refused(bad):
    with pytest.raises(ValueError, match="masked patch: mask_ratio must lie in"):
        plan_np(**bad)


def test_corruption_is_its_definition(rng):
    p = plan_np(3, 8)
    x, e = rng.standard_normal((3, 8, 5)), rng.standard_normal((1, 1, 5))
    y, _ = mp.corrupt_forward(x, e, p)
    for b in range(3):
        for i in range(8):
            want = e[0, 0] if p.use_mask[b, i] else x[b, p.source[b, i]] if p.use_random[b, i] else x[b, i]
            np.testing.assert_array_equal(y[b, i], want)


def test_corruption_gradients(rng):
    p = plan_np(3, 8)
    x, e, g = rng.standard_normal((3, 8, 5)), rng.standard_normal((1, 1, 5)), rng.standard_normal((3, 8, 5))

    def f():
        return float((mp.corrupt_forward(x, e, p)[0] * g).sum())

    dx, de = mp.corrupt_backward(g, mp.corrupt_forward(x, e, p)[1])
    assert relative_error(dx.ravel(), numerical_grad(f, x)[1]) < 1e-6
    assert relative_error(de.ravel(), numerical_grad(f, e)[1]) < 1e-6
    assert de.shape == (1, 1, 5)


def test_token_cross_entropy_gradient_and_accuracy(rng):
    p = plan_np(3, 8)
    z, t = rng.standard_normal((3, 8, 6)) * 3, rng.integers(0, 6, (3, 8))
    loss, acc, cache = mp.token_cross_entropy_forward(z, t, p.corrupted)
    w = p.corrupted.astype(bool)
    lse = np.log(np.exp(z).sum(-1))
    nll = lse - np.take_along_axis(z, t[..., None], -1)[..., 0]
    assert float(loss) == pytest.approx(nll[w].mean(), rel=1e-13)
    assert float(acc) == pytest.approx((z.argmax(-1) == t)[w].mean(), rel=1e-15)
    dz = mp.token_cross_entropy_backward(cache)
    assert np.all(dz[~w] == 0)  # the loss reads the corrupted tokens only

    def f():
        return float(mp.token_cross_entropy_forward(z, t, p.corrupted)[0])

    assert relative_error(dz.ravel(), numerical_grad(f, z)[1]) < 1e-6


def test_colour_targets():
    img = np.full((1, 4, 8, 3), -1.0)
    img[:, :, 4:] = 1.0  # two 4x4 patches: black, white
    np.testing.assert_array_equal(mp.colour_targets(img, 4), [[0, 511]])
    img = np.zeros((1, 2, 2, 3))
    img[..., 0], img[..., 1], img[..., 2] = -0.8, 0.1, 0.74  # levels floor((m + 1) * 4): 0, 4, 6
    np.testing.assert_array_equal(mp.colour_targets(img, 2), [[0 * 64 + 4 * 8 + 6]])
    np.testing.assert_array_equal(mp.colour_targets(img, 2, channels=1), [[0]])
    grey = np.linspace(-1, 1, 8 * 4 * 4).reshape(8, 4, 4, 1)
    assert sorted(set(mp.colour_targets(np.repeat(grey, 3, -1), 4, channels=1).ravel())) == list(range(8))
    assert mp.num_colour_classes(3) == 512 and mp.num_colour_classes(1) == 8
    with pytest.raises(ValueError, match="multiples of the token's 3 pixels"):
        mp.colour_targets(img, 3)


def test_on_the_device_every_result_equals_numpy(rng):
    from strict_device import DEVICE, to_host, to_strict, xs

    key = RngKey(2, 5, 3)
    p = plan_np(3, 8, key)
    q = mp.corruption_plan(xs, key, SITE, 3, 8, xs.float64, DEVICE)
    for f in ("corrupted", "use_mask", "use_random", "source"):
        np.testing.assert_array_equal(to_host(getattr(q, f)), getattr(p, f), err_msg=f)
    x, e, g = rng.standard_normal((3, 8, 5)), rng.standard_normal((1, 1, 5)), rng.standard_normal((3, 8, 5))
    y, c = mp.corrupt_forward(x, e, p)
    yd, cd = mp.corrupt_forward(to_strict(x), to_strict(e), q)
    np.testing.assert_allclose(to_host(yd), y, rtol=0, atol=1e-15)
    for a, b in zip(mp.corrupt_backward(to_strict(g), cd), mp.corrupt_backward(g, c)):
        np.testing.assert_allclose(to_host(a), b, rtol=1e-12, atol=1e-15)
    z, t = rng.standard_normal((3, 8, 6)), rng.integers(0, 6, (3, 8))
    loss, acc, cc = mp.token_cross_entropy_forward(z, t, p.corrupted)
    loss_d, acc_d, ccd = mp.token_cross_entropy_forward(to_strict(z), to_strict(t), q.corrupted)
    assert float(to_host(loss_d)) == pytest.approx(float(loss), rel=1e-13) and float(to_host(acc_d)) == float(acc)
    np.testing.assert_allclose(to_host(mp.token_cross_entropy_backward(ccd)), mp.token_cross_entropy_backward(cc),
                               rtol=1e-12, atol=1e-16)
    imgs = rng.uniform(-1, 1, (2, 8, 8, 3))
    np.testing.assert_array_equal(to_host(mp.colour_targets(to_strict(imgs), 4)), mp.colour_targets(imgs, 4))


def test_float16_corruption_and_loss_stay_close_to_float64(rng):
    p64, p16 = plan_np(2, 8), mp.corruption_plan(np, RngKey(0, 1, 0), SITE, 2, 8, np.float16)
    x, e = rng.standard_normal((2, 8, 4)), rng.standard_normal((1, 1, 4))
    y16, _ = mp.corrupt_forward(x.astype(np.float16), e.astype(np.float16), p16)
    np.testing.assert_allclose(y16, mp.corrupt_forward(x, e, p64)[0], atol=2e-3)
    z, t = rng.standard_normal((2, 8, 512)) * 20, rng.integers(0, 512, (2, 8))
    loss16 = mp.token_cross_entropy_forward(z.astype(np.float16), t, p16.corrupted)[0]
    assert loss16.dtype == np.float32 and np.isfinite(loss16)
    assert float(loss16) == pytest.approx(float(mp.token_cross_entropy_forward(z, t, p64.corrupted)[0]), rel=1e-3)
