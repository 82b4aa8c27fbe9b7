"""The two forms of every op agree: the plain array-API form equals the NumPy fast form (float64, to 1e-12
of each array's largest entry), the plain form gives the same on array-api-strict's Device("device1") as on
NumPy, a host array among device arrays is refused, erf_plain is SciPy's erf, and the float16 contract
holds (float16 results near the float64 ones; statistics that would overflow float16 stay finite)."""
import numpy as np
import pytest
from test_ops import CASES, LABELS, ONE_FORM, attention_params, run_case

from scratchvit import ops

REL = 1e-12


def assert_same(a, b, what, rel=REL):
    """max |a - b| <= rel * max |b|."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    scale = np.abs(b).max() if b.size else 0.0
    err = np.abs(a - b).max() if b.size else 0.0
    assert err <= rel * scale, f"{what}: max abs difference {err:.2e} > {rel:g} x {scale:.2e}"


def compare(case, form, reference, rel=REL, dtype=np.float64, ref_dtype=np.float64):
    """Run ``case`` in two forms on the same inputs and upstream gradient; compare output and gradients."""
    _, out, _, grads = run_case(case, form, np.random.default_rng(1), dtype)
    _, ref_out, _, ref_grads = run_case(case, reference, np.random.default_rng(1), ref_dtype)
    assert_same(out, ref_out, f"{case} output", rel)
    assert set(grads) == set(ref_grads)
    for name, g in grads.items():
        if name == "key/bias":  # exactly zero in exact arithmetic: rounding noise, small next to dkey/kernel
            assert np.abs(np.asarray(g, dtype=np.float64)).max() <= rel * np.abs(ref_grads["key/kernel"]).max()
            continue
        assert_same(g, ref_grads[name], f"{case} d{name}", rel)
    return out, grads


@pytest.mark.parametrize("case", [c for c in CASES if c not in ONE_FORM])
def test_plain_form_equals_numpy_fast_form(case):
    compare(case, "numpy_plain", "numpy_fast")


@pytest.mark.parametrize("case", list(CASES))
def test_plain_form_on_the_device_equals_plain_form_on_numpy(case):
    compare(case, "strict_plain", "numpy_plain")


def test_attention_weights_from_either_cache(rng):
    x, p = rng.standard_normal((2, 5, 12)), attention_params(rng, 12, 3)
    _, fast = ops.attention_forward(x, p)
    _, plain = ops.attention_forward_plain(x, p)
    assert ops.attention_weights(plain).shape == (2, 3, 5, 5)
    assert_same(ops.attention_weights(plain), ops.attention_weights(fast), "attention weights")
    np.testing.assert_allclose(ops.attention_weights(plain).sum(-1), 1.0, rtol=1e-14)


def test_softmax_on_the_device_returns_the_softmax(rng):
    from strict_device import to_host, to_strict

    s = rng.standard_normal((3, 7)) * 50
    out = to_host(ops.softmax_forward(to_strict(s)))
    assert_same(out, ops.softmax_forward(s.copy()), "softmax")


def test_a_host_array_among_device_arrays_is_refused(rng):
    from strict_device import DEVICE, to_strict, xs

    x, kernel, bias = rng.standard_normal((2, 3, 5)), rng.standard_normal((5, 4)), rng.standard_normal(4)
    with pytest.raises(TypeError):  # a NumPy kernel with device arrays: two libraries
        ops.dense_forward(to_strict(x), kernel, to_strict(bias))
    host_strict = xs.asarray(kernel, device=xs.Device("CPU_DEVICE"))
    with pytest.raises(ValueError, match="device"):  # same library, another device
        ops.dense_forward(to_strict(x), host_strict, to_strict(bias))
    p = {k: to_strict(v) for k, v in attention_params(rng, 12, 2).items()}
    p["out/bias"] = np.zeros(12)
    with pytest.raises(TypeError):
        ops.attention_forward(xs.zeros((1, 3, 12), dtype=xs.float64, device=DEVICE), p)
    with pytest.raises(TypeError):  # host labels with device logits
        ops.softmax_cross_entropy_forward(to_strict(rng.standard_normal((4, 5))), LABELS)


def test_device_labels_are_checked_for_shape_and_dtype_but_not_read_back():
    from strict_device import to_strict

    logits = to_strict(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="shape"):
        ops.softmax_cross_entropy_forward(logits, to_strict(np.array([0, 1, 2])))
    with pytest.raises(ValueError, match="integers"):
        ops.softmax_cross_entropy_forward(logits, to_strict(np.array([0.0, 1.0])))
    loss, _ = ops.softmax_cross_entropy_forward(logits, to_strict(np.array([0, 4])))  # no range check, no read
    assert loss.device == logits.device


def test_erf_plain_matches_scipy():
    from scipy.special import erf
    from strict_device import to_host, to_strict

    from scratchvit.ops.gelu import erf_plain

    x = np.concatenate([np.linspace(-8.0, 8.0, 100_001), [0.0, -0.0, 2.5, -2.5, 1e-300, 40.0, -40.0]])
    assert np.abs(erf_plain(x) - erf(x)).max() <= 1e-13
    assert np.abs(to_host(erf_plain(to_strict(x))) - erf(x)).max() <= 1e-13
    assert np.isnan(erf_plain(np.array([np.nan]))).all()


# ------------------------------------------------------------------ float16 (mixed precision) contract
@pytest.mark.parametrize("case", list(CASES))
def test_float16_is_close_to_float64(case):
    """Every op in float16 (the public function takes the plain form) against float64 on the same float16
    inputs: 1e-2 of each array's largest entry. Outputs and gradients are float16; the loss is float32."""
    out, grads = compare(case, "numpy_fast", "numpy_fast", rel=1e-2, dtype=np.float16, ref_dtype=np.float64)
    assert np.asarray(out).dtype == (np.float32 if case.startswith("cross_entropy") else np.float16)
    assert all(g.dtype == np.float16 for g in grads.values()), {k: g.dtype for k, g in grads.items()}


def _ref64(a):
    return np.asarray(a, dtype=np.float16).astype(np.float64)


def test_float16_layer_norm_of_values_whose_squares_overflow(rng):
    """Rows of mean 300 and spread 300: x^2 and (x - mean)^2 reach 9e4 and more, past float16's 65504, so
    float16 variances would be inf (and y 0 or NaN); the statistics are float32."""
    x = (300.0 + rng.standard_normal((4, 64)) * 300).astype(np.float16)
    with np.errstate(over="ignore"):
        assert not np.isfinite(np.mean((x - x.mean(-1, keepdims=True)) ** 2, axis=-1, dtype=np.float16)).any()
    scale, bias = rng.standard_normal(64).astype(np.float16), rng.standard_normal(64).astype(np.float16)
    dy = rng.standard_normal((4, 64)).astype(np.float16)
    y, cache = ops.layer_norm_forward(x, scale, bias)
    dx, dscale, dbias = ops.layer_norm_backward(dy, cache)
    y64, c64 = ops.layer_norm_forward(_ref64(x), _ref64(scale), _ref64(bias))
    ref = (y64, *ops.layer_norm_backward(_ref64(dy), c64))
    for name, a, b in zip(("y", "dx", "dscale", "dbias"), (y, dx, dscale, dbias), ref):
        assert a.dtype == np.float16 and np.isfinite(a).all(), name
        assert_same(a, b, name, rel=1e-2)


def test_float16_cross_entropy_of_huge_logits():
    """Logits of +-4e4: max - min = 8e4 overflows float16; the loss (~4e4 a row) is float32, finite, right."""
    logits = np.array([[4e4, 0.0, -4e4], [-4e4, 4e4, 1.0], [1.0, 2.0, 3.0]], dtype=np.float16)
    labels = np.array([2, 1, 0])
    loss, cache = ops.softmax_cross_entropy_forward(logits, labels, 0.1)
    d = ops.softmax_cross_entropy_backward(cache)
    loss64, c64 = ops.softmax_cross_entropy_forward(_ref64(logits), labels, 0.1)
    assert loss.dtype == np.float32 and loss.ndim == 0 and np.isfinite(loss)
    assert abs(float(loss) - float(loss64)) <= 1e-6 * abs(float(loss64))
    assert d.dtype == np.float16 and np.isfinite(d).all()
    assert_same(d, ops.softmax_cross_entropy_backward(c64), "dlogits", rel=1e-2)


def test_float16_gelu_of_large_values():
    """x ~ 300: x^2 = 9e4 overflows float16 in gelu'(x) (and x^3 in the tanh form); computed in float32."""
    x = np.array([-300.0, -50.0, -3.0, 0.0, 1.0, 50.0, 300.0, 6e4], dtype=np.float16)
    dy = np.ones_like(x)
    for approximate in ("tanh", "erf"):
        y, cache = ops.gelu_forward(x, approximate)
        dx = ops.gelu_backward(dy, cache)
        y64, c64 = ops.gelu_forward(_ref64(x), approximate)
        assert y.dtype == dx.dtype == np.float16 and np.isfinite(y).all() and np.isfinite(dx).all()
        assert_same(y, y64, f"gelu {approximate}", rel=1e-3)
        assert_same(dx, ops.gelu_backward(_ref64(dy), c64), f"gelu' {approximate}", rel=1e-3)


def test_float16_softmax_and_attention_weights_are_taken_in_float32(rng):
    s = (rng.standard_normal((2, 3, 50)) * 3e3).astype(np.float16)  # scores of +-1e4: exp overflows without the max
    p = ops.softmax_forward(s)
    assert p.dtype == np.float16 and np.isfinite(p).all()
    assert_same(p, ops.softmax_forward(_ref64(s)), "softmax", rel=1e-2)
    x = rng.standard_normal((2, 7, 12)).astype(np.float16)
    params = {k: v.astype(np.float16) for k, v in attention_params(rng, 12, 3, scale=2.0).items()}
    _, cache = ops.attention_forward(x, params)
    a = ops.attention_weights(cache)
    assert a.dtype == np.float16 and np.abs(a.astype(np.float64).sum(-1) - 1).max() < 1e-2


def test_float16_bias_gradients_are_summed_in_float32(rng):
    """4096 rows of dy in [0, 1): a float16 running sum stalls near 2048 (spacing 2); float32 does not."""
    dy = rng.random((4096, 3)).astype(np.float16)
    x = rng.standard_normal((4096, 2)).astype(np.float16)
    kernel, bias = np.ones((2, 3), np.float16), np.zeros(3, np.float16)
    _, cache = ops.dense_forward(x, kernel, bias)
    _, _, dbias = ops.dense_backward(dy, cache)
    assert dbias.dtype == np.float16
    assert_same(dbias, dy.astype(np.float64).sum(0), "dbias", rel=1e-3)
