"""Gradient checks of every hand-written op, float64, central finite differences: rel. error <= 1e-6, each in three
forms: the NumPy fast form, the plain (array API) form on NumPy, and the plain form on array-api-strict's
Device("device1")."""
import numpy as np
import pytest
from gradcheck import numerical_grad, relative_error, sample_indices

from scratchvit import ops
from scratchvit.ops.gelu import GELU_FORMS

TOL = 1e-6
STRICT_PROBES = 24  # elements probed per input on the strict device (each probe runs the op there twice)


def attention_params(rng, D, H, scale=1.0):
    """Random official-layout attention parameters; kernels and q/k/v biases times ``scale``."""
    p = {}
    for n in ("query", "key", "value"):
        p[f"{n}/kernel"] = rng.standard_normal((D, H, D // H)) * scale
        p[f"{n}/bias"] = rng.standard_normal((H, D // H)) * scale
    p["out/kernel"] = rng.standard_normal((H, D // H, D)) * scale
    p["out/bias"] = rng.standard_normal(D)
    return p


class Form:
    """One way to run the ops in a gradient check: "numpy_fast" (the public functions on float64 NumPy,
    which take the NumPy fast forms), "numpy_plain" (the ``*_plain`` functions on NumPy) or "strict_plain"
    (the public functions on array-api-strict's Device("device1"), where only the plain forms can run).
    ``o.dense_forward`` etc. is the op of that form; ``move`` / ``host`` carry arrays to and from its device."""

    def __init__(self, name):
        self.name = name
        self.suffix = "_plain" if name == "numpy_plain" else ""
        self.strict = name == "strict_plain"

    def __getattr__(self, op):
        return getattr(ops, op + self.suffix)

    def move(self, a):
        if not self.strict:
            return a
        from strict_device import to_strict

        return to_strict(a)

    def host(self, a):
        if not self.strict:
            return a
        from strict_device import to_host

        return to_host(a)

    def copy(self, a):
        """A copy for the in-place fast softmax; the plain forms (and device arrays) need none."""
        return a.copy() if isinstance(a, np.ndarray) else a


FORMS = ("numpy_fast", "numpy_plain", "strict_plain")


def _attention_case(heads):
    def make(rng):
        return {"x": rng.standard_normal((2, 5, 12)), **attention_params(rng, 12, heads, scale=0.5)}

    def fwd(o, x, **p):
        return o.attention_forward(x, p)

    def bwd(o, R, cache):
        dx, g = o.attention_backward(R, cache)
        return {"x": dx, **g}

    return make, fwd, bwd


def _attention_dropout_case(heads):
    """Attention dropout at rate 0.3: the op draws its mask from a fixed key and site, the same at every call."""
    def make(rng):
        return {"x": rng.standard_normal((2, 5, 12)), **attention_params(rng, 12, heads, scale=0.5)}

    def fwd(o, x, **p):
        return o.attention_forward(x, p, 0.3, KEY, 4)

    def bwd(o, R, cache):
        dx, g = o.attention_backward(R, cache)
        return {"x": dx, **g}

    return make, fwd, bwd


def _pre_logits_forward(o, x, kernel, bias):
    """The official pre-logits layer: Dense then tanh."""
    h, c1 = o.dense_forward(x, kernel, bias)
    y, c2 = o.tanh_forward(h)
    return y, (c1, c2)


def _pre_logits_backward(o, R, cache):
    c1, c2 = cache
    return dict(zip(("x", "kernel", "bias"), o.dense_backward(o.tanh_backward(R, c2), c1), strict=True))


def _named(names, grads):
    return dict(zip(names, grads, strict=True))


# name -> (x shape, kernel shape, with bias, stride, padding)
CONV_CASES = {
    "7x7_s2_same": ((2, 9, 10, 3), (7, 7, 3, 4), False, 2, "SAME"),  # the root: odd/even sizes, pad 2-3 / 2-3
    "3x3_s2_same_even": ((2, 8, 6, 3), (3, 3, 3, 2), False, 2, "SAME"),  # pad 0 before, 1 after
    "3x3_s1_same_bias": ((2, 5, 6, 4), (3, 3, 4, 3), True, 1, "SAME"),
    "1x1_s1": ((2, 5, 6, 4), (1, 1, 4, 3), False, 1, "SAME"),
    "1x1_s2": ((2, 5, 6, 4), (1, 1, 4, 3), False, 2, "SAME"),  # conv_proj of a strided unit
    "2x2_s2_valid_bias": ((2, 5, 7, 3), (2, 2, 3, 4), True, 2, "VALID"),  # the embedding, remainder dropped
}


def _conv2d_case(x_shape, k_shape, bias, stride, padding):
    def make(rng):
        d = {"x": rng.standard_normal(x_shape), "kernel": rng.standard_normal(k_shape)}
        if bias:
            d["bias"] = rng.standard_normal(k_shape[-1])
        return d

    def fwd(o, x, kernel, bias=None):
        return o.conv2d_forward(x, kernel, bias, stride, padding)

    def bwd(o, R, cache):
        dx, dk, db = o.conv2d_backward(R, cache)
        return {"x": dx, "kernel": dk, **({"bias": db} if bias else {})}

    return make, fwd, bwd


def _std_conv_forward(o, x, kernel):
    """StdConv (vit_jax ``models_resnet.StdConv``): the convolution of the standardised kernel."""
    w, c1 = o.weight_standardize_forward(kernel)
    y, c2 = o.conv2d_forward(x, w, None, 2, "SAME")
    return y, (c1, c2)


def _std_conv_backward(o, R, cache):
    c1, c2 = cache
    dx, dw, _ = o.conv2d_backward(R, c2)
    return {"x": dx, "kernel": o.weight_standardize_backward(dw, c1)}


LABELS = np.array([0, 4, 2, 2])
# soft targets (mixup / CutMix), dyadic so that they are exact rows of probabilities in float16 too
SOFT = np.array([[0.5, 0.25, 0.125, 0.125, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0],
                 [0.0, 0.75, 0.25, 0.0, 0.0], [0.0625, 0.0625, 0.125, 0.25, 0.5]])
KEY = ops.RngKey(seed=7, step=3, row=5)  # a fixed key: a fixed dropout / drop-path mask
# id -> (make(rng) -> inputs, forward(form, **inputs) -> (output, cache), backward(form, R, cache) -> {input: grad})
CASES = {
    "dense": (lambda r: {"x": r.standard_normal((2, 3, 5)), "kernel": r.standard_normal((5, 4)),
                         "bias": r.standard_normal(4)},
              lambda o, **i: o.dense_forward(**i),
              lambda o, R, c: _named(("x", "kernel", "bias"), o.dense_backward(R, c))),
    "pre_logits": (lambda r: {"x": r.standard_normal((3, 5)), "kernel": r.standard_normal((5, 4)) * 0.5,
                              "bias": r.standard_normal(4)},
                   _pre_logits_forward, _pre_logits_backward),
    "patch_embedding": (lambda r: {"images": r.standard_normal((2, 8, 12, 3)),
                                   "kernel": r.standard_normal((4, 4, 3, 5)), "bias": r.standard_normal(5)},
                        lambda o, **i: o.patch_embedding_forward(**i),
                        lambda o, R, c: _named(("images", "kernel", "bias"),
                                               o.patch_embedding_backward(R, c, need_dx=True))),
    "layer_norm": (lambda r: {"x": r.standard_normal((2, 3, 6)) * 3 + 1, "scale": r.standard_normal(6),
                              "bias": r.standard_normal(6)},
                   lambda o, **i: o.layer_norm_forward(**i),
                   lambda o, R, c: _named(("x", "scale", "bias"), o.layer_norm_backward(R, c))),
    **{f"attention_{h}_heads": _attention_case(h) for h in (1, 2, 3, 4)},
    "softmax": (lambda r: {"s": r.standard_normal((2, 3, 5))},
                lambda o, s: (o.softmax_forward(o.copy(s)),) * 2,
                lambda o, R, p: {"s": o.softmax_backward(o.copy(R), p)}),
    **{f"gelu_{a}": (lambda r: {"x": r.standard_normal((3, 7)) * 2},
                     lambda o, x, a=a: o.gelu_forward(x, a),
                     lambda o, R, c: {"x": o.gelu_backward(R, c)}) for a in GELU_FORMS},
    "tanh": (lambda r: {"x": r.standard_normal((3, 4))}, lambda o, x: o.tanh_forward(x),
             lambda o, R, c: {"x": o.tanh_backward(R, c)}),
    **{f"pool_{cl}": (lambda r: {"x": r.standard_normal((2, 5, 3))},
                      lambda o, x, cl=cl: o.pool_forward(x, cl),
                      lambda o, R, c: {"x": o.pool_backward(R, c)}) for cl in ("token", "gap")},
    **{f"cross_entropy{name}": (lambda r: {"logits": r.standard_normal((4, 5)) * 3},
                                lambda o, logits, eps=eps: o.softmax_cross_entropy_forward(logits, o.move(LABELS), eps),
                                lambda o, R, c: {"logits": o.softmax_cross_entropy_backward(c, R)})
       for name, eps in (("", 0.0), ("_label_smoothing", 0.1))},
    **{f"cross_entropy_soft{name}": (lambda r: {"logits": r.standard_normal((4, 5)) * 3, "targets": SOFT},
                                     lambda o, logits, targets, eps=eps: o.softmax_cross_entropy_forward(
                                         logits, targets, eps),
                                     lambda o, R, c: {"logits": o.softmax_cross_entropy_backward(c, R)})
       for name, eps in (("", 0.0), ("_label_smoothing", 0.1))},
    **{f"attention_dropout_{h}_heads": _attention_dropout_case(h) for h in (1, 3)},
    "dropout": (lambda r: {"x": r.standard_normal((3, 4, 6))},
                lambda o, x: o.dropout_forward(x, 0.3, KEY, 2),
                lambda o, R, c: {"x": o.dropout_backward(R, c)}),
    "drop_path": (lambda r: {"x": r.standard_normal((8, 3, 4))},
                  lambda o, x: o.drop_path_forward(x, 0.4, KEY, 3),
                  lambda o, R, c: {"x": o.drop_path_backward(R, c)}),
    # the hybrid's ResNet (paper Sec. 3.1): convolutions of every kind the model runs, XLA 'SAME' and 'VALID'
    **{f"conv2d_{name}": _conv2d_case(x_shape, k_shape, bias, stride, padding)
       for name, (x_shape, k_shape, bias, stride, padding) in CONV_CASES.items()},
    "weight_standardize": (lambda r: {"w": r.standard_normal((3, 3, 2, 4)) + 0.3},
                           lambda o, w: o.weight_standardize_forward(w),
                           lambda o, R, c: {"w": o.weight_standardize_backward(R, c)}),
    "std_conv": (lambda r: {"x": r.standard_normal((2, 6, 5, 3)), "kernel": r.standard_normal((3, 3, 3, 4))},
                 _std_conv_forward, _std_conv_backward),
    **{f"group_norm_{groups}_groups": (lambda r, c=channels: {"x": r.standard_normal((2, 3, 4, c)) * 2 + 0.5,
                                                                 "scale": r.standard_normal(c),
                                                                 "bias": r.standard_normal(c)},
                                       lambda o, groups=groups, **i: o.group_norm_forward(**i, groups=groups),
                                       lambda o, R, c: _named(("x", "scale", "bias"), o.group_norm_backward(R, c)))
       for groups, channels in ((1, 3), (4, 8), (32, 64))},
    "relu": (lambda r: {"x": r.standard_normal((3, 4, 5))}, lambda o, x: o.relu_forward(x),
             lambda o, R, c: {"x": o.relu_backward(R, c)}),
    # distinct values 0.02 apart (distinct in float16 too): no ties, a unique maximum in every window
    **{f"max_pool_{h}x{w}": (lambda r, h=h, w=w: {"x": r.permutation(2 * h * w * 3).reshape(2, h, w, 3) * 0.02 - 3},
                             lambda o, x: o.max_pool_forward(x, 3, 2),
                             lambda o, R, c: {"x": o.max_pool_backward(R, c)}) for h, w in ((7, 8), (8, 6))},
}


# Cases of ops written in the plain form only (the public function calls it on NumPy too): nothing to compare
# between forms on NumPy (tests/test_ops_forms.py), everything else as for any op.
ONE_FORM = {case for case in CASES
            if case.startswith(("dense", "pre_logits", "tanh", "dropout", "drop_path", "weight_standardize"))}


def run_case(case, form, rng, dtype=np.float64):
    """Inputs of ``case`` (cast to ``dtype``), its forward output, a random upstream gradient R (the output's
    shape) and the backward's gradients, all as host NumPy arrays; the op runs in ``form``."""
    o = Form(form) if isinstance(form, str) else form
    make, forward, backward = CASES[case]
    inputs = {k: v.astype(dtype) for k, v in make(rng).items()}
    out, cache = forward(o, **{k: o.move(v) for k, v in inputs.items()})
    out = o.host(out)
    R = np.asarray(rng.standard_normal(np.shape(out)), dtype=dtype)
    grads = {k: o.host(v) for k, v in backward(o, o.move(R), cache).items()}
    return inputs, out, R, grads


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("case", list(CASES))
def test_gradient(rng, case, form):
    """loss = sum(forward(inputs) * R) for a random R; every input's analytic gradient against
    central differences. The numerical gradient perturbs host copies; for "strict_plain" every
    evaluation moves the inputs to the device, runs the op there and reads the output back (and only
    STRICT_PROBES random elements of each input are probed there, for time)."""
    o = Form(form)
    _, forward, _ = CASES[case]
    inputs, _, R, analytic = run_case(case, o, rng)

    def loss():
        return float((o.host(forward(o, **{k: o.move(v) for k, v in inputs.items()})[0]) * R).sum())

    if "key/bias" in analytic:
        # softmax is invariant to a shift shared by a row, so the key bias has exactly zero gradient.
        assert np.abs(analytic.pop("key/bias")).max() < 1e-12
    assert set(analytic) <= set(inputs) and analytic, case
    for name, grad in analytic.items():
        probes = sample_indices(grad.size, STRICT_PROBES, rng) if o.strict else None
        idx, num = numerical_grad(loss, inputs[name], probes)
        err = relative_error(grad.reshape(-1)[idx], num)
        assert err <= TOL, f"{case} {name}: relative error {err:.2e}"
        assert np.abs(num).max() > 1e-3, f"{case} {name}: gradient is trivially small, check is vacuous"


def test_cross_entropy_value(rng):
    logits = rng.standard_normal((4, 5)) * 3
    loss, _ = ops.softmax_cross_entropy_forward(logits, LABELS)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert abs(float(loss) - (-np.log(p[np.arange(4), LABELS]).mean())) < 1e-14


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_cross_entropy_with_label_smoothing_is_the_cross_entropy_of_the_smoothed_target(rng, eps):
    logits = rng.standard_normal((4, 5)) * 3
    loss, _ = ops.softmax_cross_entropy_forward(logits, LABELS, eps)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    target = np.full((4, 5), eps / 5)
    target[np.arange(4), LABELS] += 1 - eps
    assert abs(float(loss) - (-(target * log_p).sum(1)).mean()) < 1e-14
    with pytest.raises(ValueError, match="label_smoothing"):
        ops.softmax_cross_entropy_forward(logits, LABELS, 1.0)


def test_patch_embedding_is_a_strided_convolution(rng):
    """Token (i, j) = sum over the (i, j)-th P x P window of image * kernel, i.e. a stride-P conv."""
    images, kernel, bias = rng.standard_normal((2, 8, 12, 3)), rng.standard_normal((4, 4, 3, 5)), rng.standard_normal(5)
    tokens, _ = ops.patch_embedding_forward(images, kernel, bias)
    assert tokens.shape == (2, 6, 5)
    for i in range(2):
        for j in range(3):
            window = images[:, 4 * i:4 * i + 4, 4 * j:4 * j + 4, :]
            expected = np.einsum("bhwc,hwcd->bd", window, kernel) + bias
            np.testing.assert_allclose(tokens[:, i * 3 + j], expected, rtol=1e-12, atol=1e-12)


def test_layer_norm_statistics(rng):
    x = rng.standard_normal((4, 7)) * 5 + 3
    y, _ = ops.layer_norm_forward(x, np.ones(7), np.zeros(7))
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(-1), 1 / (1 + 1e-6 / x.var(-1)), rtol=1e-12)


def test_attention_matches_naive_per_head_loop(rng):
    B, N, D, H = 2, 4, 6, 3
    x = rng.standard_normal((B, N, D))
    p = attention_params(rng, D, H)
    y, _ = ops.attention_forward(x, p)
    expected = np.zeros((B, N, D)) + p["out/bias"]
    for h in range(H):
        q, k, v = (x @ p[f"{n}/kernel"][:, h] + p[f"{n}/bias"][h] for n in ("query", "key", "value"))
        s = q @ k.transpose(0, 2, 1) / np.sqrt(D // H)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        expected += (a @ v) @ p["out/kernel"][h]
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_gelu_values():
    from math import erf, pi, sqrt, tanh
    x = np.array([-3.0, -1.0, -0.1, 0.0, 0.5, 2.0])
    exact = np.array([0.5 * v * (1 + erf(v / sqrt(2))) for v in x])
    approx = np.array([0.5 * v * (1 + tanh(sqrt(2 / pi) * (v + 0.044715 * v ** 3))) for v in x])
    np.testing.assert_allclose(ops.gelu_forward(x.copy(), "erf")[0], exact, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(ops.gelu_forward(x.copy(), "tanh")[0], approx, rtol=1e-14, atol=1e-15)
    with pytest.raises(ValueError, match="approximate"):
        ops.gelu_forward(x, "relu")


def test_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [-5e4, 5e4, 0.0]])
    loss, cache = ops.softmax_cross_entropy_forward(logits, np.array([1, 1]))
    assert np.isfinite(float(loss)) and abs(float(loss) - 500.0) < 1e-9
    assert np.isfinite(ops.softmax_cross_entropy_backward(cache)).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shift", [0.0, 60.0, 100.0, -100.0, 1e4, -1e4])
def test_softmax_is_exact_and_finite_on_both_sides_of_the_exp_range_check(shift, dtype, rng):
    """Rows inside [-EXP_SAFE, EXP_SAFE] take exp directly, others subtract the row max first; both
    give softmax to rounding. A row shifted by +-1e4 would overflow or underflow to 0/0 without the max."""
    from scratchvit.ops.attention import EXP_SAFE

    s = rng.standard_normal((3, 4, 9)) * 2.0 + shift
    s[1, 2] = shift - 50.0  # a constant row: uniform weights, even far below the others
    s = s.astype(dtype)
    expected = np.exp(s - s.max(axis=-1, keepdims=True), dtype=np.float64)  # float64 reference of the same input
    expected /= expected.sum(axis=-1, keepdims=True)
    assert (np.abs(s).max() <= EXP_SAFE) == (shift == 0.0)  # both paths are taken
    out = ops.softmax_forward(s.copy())
    assert out.dtype == dtype and np.isfinite(out).all()
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)
    np.testing.assert_allclose(out[1, 2], np.full(9, 1 / 9), rtol=tol)


def test_softmax_propagates_nan_instead_of_hiding_it():
    s = np.array([[0.0, 1.0, np.nan], [0.0, 1.0, 2.0]])
    out = ops.softmax_forward(s.copy())
    assert np.isnan(out[0]).all() and np.isfinite(out[1]).all()


@pytest.mark.parametrize("labels,msg", [(np.array([0, 5]), r"\[0, 5\)"), (np.array([-1, 0]), r"\[0, 5\)"),
                                        (np.array([0, 1, 2]), "shape"), (np.array([0.0, 1.0]), "integers")])
def test_cross_entropy_rejects_bad_labels(labels, msg):
    with pytest.raises(ValueError, match=msg):
        ops.softmax_cross_entropy_forward(np.zeros((2, 5)), labels)


def test_blocked_and_chunked_paths_match_the_whole_array_path(rng, monkeypatch):
    """The CPU paths cut work into row blocks (over threads) and attention into row chunks; with
    blocks of one row and chunks of one query/key row, every result must be the same."""
    from scratchvit import cpu

    x, dy = rng.standard_normal((3, 7, 8)), rng.standard_normal((3, 7, 8))
    h, dh = rng.standard_normal((3, 7, 20)), rng.standard_normal((3, 7, 20))
    p = attention_params(rng, 8, 2, scale=0.5)
    scale, bias = rng.standard_normal(8), rng.standard_normal(8)

    def run():
        y, c = ops.attention_forward(x, p)
        dx, g = ops.attention_backward(dy, c)
        ln, lc = ops.layer_norm_forward(x, scale, bias)
        lg = ops.layer_norm_backward(dy, lc)
        out = [y, dx, *g.values(), ln, *lg]
        for approximate in GELU_FORMS:
            gy, gc = ops.gelu_forward(h, approximate)
            out += [gy, ops.gelu_backward(dh, gc)]
        return out

    whole = run()
    monkeypatch.setattr(cpu, "BLOCK_ELEMENTS", 1)  # one row (one image for attention) per block
    # blocks on threads, BLAS held to one thread where it is OpenBLAS
    for a, b in zip(whole, run(), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-13)
    monkeypatch.setattr(cpu, "_controller", False)  # as with a BLAS that cannot be held...
    monkeypatch.setattr(cpu, "SMALL_PRODUCT", 1)  # ...the products go by one query / key row
    from scratchvit.ops import attention

    assert len(attention._row_chunks(7, 7, 4)) == 7
    for a, b in zip(whole, run(), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-13)
    monkeypatch.setattr(cpu, "NUM_THREADS", 1)
    for a, b in zip(whole, run(), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-13)


def test_single_threaded_blas_restores_the_thread_count():
    from scratchvit import cpu

    if not cpu.blas_controller():
        pytest.skip("no BLAS here that threadpoolctl can steer")

    def get():
        return cpu.blas_controller().info()[0]["num_threads"]

    before = get()
    with cpu.single_threaded_blas() as held:
        assert held and get() == 1
    assert get() == before
    with pytest.raises(RuntimeError), cpu.single_threaded_blas():
        assert get() == 1
        raise RuntimeError
    assert get() == before
