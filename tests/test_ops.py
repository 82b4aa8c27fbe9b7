"""Gradient checks of every hand-written op, float64, central finite differences: rel. error <= 1e-6."""
import numpy as np
import pytest
from gradcheck import numerical_grad, relative_error

from scratchvit import ops

TOL = 1e-6


def check(forward, inputs, backward_grads, rng):
    """forward(**inputs) -> output array; loss = sum(output * R). backward_grads(R) -> dict name -> grad."""
    R = rng.standard_normal(forward(**inputs).shape)

    def loss():
        return float((forward(**inputs) * R).sum())

    analytic = backward_grads(R)
    for name, x in inputs.items():
        if name not in analytic:
            continue
        _, num = numerical_grad(loss, x)
        err = relative_error(analytic[name].reshape(-1), num)
        assert err <= TOL, f"{name}: relative error {err:.2e}"
        assert np.abs(num).max() > 1e-3, f"{name}: gradient is trivially small, check is vacuous"


def test_dense(rng):
    inp = {"x": rng.standard_normal((2, 3, 5)), "kernel": rng.standard_normal((5, 4)), "bias": rng.standard_normal(4)}

    def grads(R):
        _, cache = ops.dense_forward(**inp)
        dx, dw, db = ops.dense_backward(R, cache)
        return {"x": dx, "kernel": dw, "bias": db}

    check(lambda **a: ops.dense_forward(**a)[0], inp, grads, rng)


def test_patch_embedding(rng):
    inp = {"images": rng.standard_normal((2, 8, 12, 3)), "kernel": rng.standard_normal((4, 4, 3, 5)),
           "bias": rng.standard_normal(5)}

    def grads(R):
        _, cache = ops.patch_embedding_forward(**inp)
        dx, dk, db = ops.patch_embedding_backward(R, cache, need_dx=True)
        return {"images": dx, "kernel": dk, "bias": db}

    check(lambda **a: ops.patch_embedding_forward(**a)[0], inp, grads, rng)


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


def test_layer_norm(rng):
    inp = {"x": rng.standard_normal((2, 3, 6)) * 3 + 1, "scale": rng.standard_normal(6), "bias": rng.standard_normal(6)}

    def grads(R):
        _, cache = ops.layer_norm_forward(**inp)
        dx, ds, db = ops.layer_norm_backward(R, cache)
        return {"x": dx, "scale": ds, "bias": db}

    check(lambda **a: ops.layer_norm_forward(**a)[0], inp, grads, rng)


def test_layer_norm_statistics(rng):
    x = rng.standard_normal((4, 7)) * 5 + 3
    y, _ = ops.layer_norm_forward(x, np.ones(7), np.zeros(7))
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(-1), 1 / (1 + 1e-6 / x.var(-1)), rtol=1e-12)


def attention_params(rng, D, H, scale=1.0):
    """Random official-layout attention parameters; kernels and q/k/v biases times ``scale``."""
    p = {}
    for n in ("query", "key", "value"):
        p[f"{n}/kernel"] = rng.standard_normal((D, H, D // H)) * scale
        p[f"{n}/bias"] = rng.standard_normal((H, D // H)) * scale
    p["out/kernel"] = rng.standard_normal((H, D // H, D)) * scale
    p["out/bias"] = rng.standard_normal(D)
    return p


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_attention(rng, heads):
    D = 8
    inp = {"x": rng.standard_normal((2, 5, D))}
    p = attention_params(rng, D, heads, scale=0.5)
    inp.update({f"p:{k}": v for k, v in p.items()})

    def fwd(**a):
        return ops.attention_forward(a["x"], {k[2:]: v for k, v in a.items() if k.startswith("p:")})

    def grads(R):
        _, cache = fwd(**inp)
        dx, g = ops.attention_backward(R, cache)
        out = {"x": dx, **{f"p:{k}": v for k, v in g.items() if k != "key/bias"}}
        # softmax is invariant to a shift shared by a row, so the key bias has exactly zero gradient.
        assert np.abs(g["key/bias"]).max() < 1e-12
        return out

    check(lambda **a: fwd(**a)[0], inp, grads, rng)


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


def test_softmax(rng):
    inp = {"s": rng.standard_normal((2, 3, 5))}

    def grads(R):
        p = ops.softmax_forward(inp["s"].copy())
        return {"s": ops.softmax_backward(R.copy(), p)}

    check(lambda **a: ops.softmax_forward(a["s"].copy()), inp, grads, rng)


@pytest.mark.parametrize("approximate", ["tanh", "erf"])
def test_gelu(rng, approximate):
    inp = {"x": rng.standard_normal((3, 7)) * 2}

    def grads(R):
        _, cache = ops.gelu_forward(inp["x"], approximate)
        return {"x": ops.gelu_backward(R, cache)}

    check(lambda **a: ops.gelu_forward(a["x"], approximate)[0], inp, grads, rng)


def test_gelu_values():
    from math import erf, pi, sqrt, tanh
    x = np.array([-3.0, -1.0, -0.1, 0.0, 0.5, 2.0])
    exact = np.array([0.5 * v * (1 + erf(v / sqrt(2))) for v in x])
    approx = np.array([0.5 * v * (1 + tanh(sqrt(2 / pi) * (v + 0.044715 * v ** 3))) for v in x])
    np.testing.assert_allclose(ops.gelu_forward(x.copy(), "erf")[0], exact, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(ops.gelu_forward(x.copy(), "tanh")[0], approx, rtol=1e-14, atol=1e-15)
    with pytest.raises(ValueError, match="approximate"):
        ops.gelu_forward(x, "relu")


def test_tanh(rng):
    inp = {"x": rng.standard_normal((3, 4))}

    def grads(R):
        _, cache = ops.tanh_forward(inp["x"])
        return {"x": ops.tanh_backward(R, cache)}

    check(lambda **a: ops.tanh_forward(a["x"])[0], inp, grads, rng)


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_pooling(rng, classifier):
    inp = {"x": rng.standard_normal((2, 5, 3))}

    def grads(R):
        _, cache = ops.pool_forward(inp["x"], classifier)
        return {"x": ops.pool_backward(R, cache)}

    check(lambda **a: ops.pool_forward(a["x"], classifier)[0], inp, grads, rng)


def test_cross_entropy(rng):
    logits, labels = rng.standard_normal((4, 5)) * 3, np.array([0, 4, 2, 2])
    loss, cache = ops.softmax_cross_entropy_forward(logits, labels)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert abs(float(loss) - (-np.log(p[np.arange(4), labels]).mean())) < 1e-14
    d = ops.softmax_cross_entropy_backward(cache)
    _, num = numerical_grad(lambda: float(ops.softmax_cross_entropy_forward(logits, labels)[0]), logits)
    assert relative_error(d.reshape(-1), num) <= TOL


def test_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [-5e4, 5e4, 0.0]])
    loss, cache = ops.softmax_cross_entropy_forward(logits, np.array([1, 1]))
    assert np.isfinite(float(loss)) and abs(float(loss) - 500.0) < 1e-9
    assert np.isfinite(ops.softmax_cross_entropy_backward(cache)).all()


@pytest.mark.parametrize("labels,msg", [(np.array([0, 5]), r"\[0, 5\)"), (np.array([-1, 0]), r"\[0, 5\)"),
                                        (np.array([0, 1, 2]), "shape"), (np.array([0.0, 1.0]), "integers")])
def test_cross_entropy_rejects_bad_labels(labels, msg):
    with pytest.raises(ValueError, match=msg):
        ops.softmax_cross_entropy_forward(np.zeros((2, 5)), labels)


def test_blocked_and_chunked_paths_match_the_whole_array_path(rng, monkeypatch):
    """The CPU paths cut work into row blocks (over threads) and attention into row chunks; with
    blocks of one row and chunks of one query/key row, every result must be the same."""
    from scratchvit import backend
    from scratchvit.ops import attention

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
        for approximate in ("tanh", "erf"):
            gy, gc = ops.gelu_forward(h, approximate)
            out += [gy, ops.gelu_backward(dh, gc)]
        return out

    whole = run()
    monkeypatch.setattr(backend, "BLOCK_ELEMENTS", 1)  # one row (one image for attention) per block
    for a, b in zip(whole, run()):  # blocks on threads, BLAS held to one thread where it is OpenBLAS
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-13)
    monkeypatch.setattr(backend, "_blas_thread_fns", False)  # as with a BLAS that cannot be held...
    monkeypatch.setattr(attention, "SMALL_PRODUCT", 1)  # ...the products go by one query / key row
    assert len(attention._row_chunks(7, 7, 4, np)) == 7
    for a, b in zip(whole, run()):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-13)
    monkeypatch.setattr(backend, "NUM_THREADS", 1)
    for a, b in zip(whole, run()):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-13)


def test_single_threaded_blas_restores_the_thread_count():
    from scratchvit import backend

    with backend.single_threaded_blas() as held:
        if not held:
            pytest.skip("the BLAS here is not an OpenBLAS reachable through ctypes")
        get, _ = backend._blas_thread_fns
        assert get() == 1
    before = get()
    with pytest.raises(RuntimeError), backend.single_threaded_blas():
        assert get() == 1
        raise RuntimeError
    assert get() == before
