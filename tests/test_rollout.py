"""Attention rollout (Abnar & Zuidema 2020): the formula by hand, the attention probabilities
against the attention op, and a model forced to look at one patch."""
import numpy as np
import pytest

import scratchvit as sv
from scratchvit import ops
from scratchvit.params import ATTN, POSEMB, block_prefix
from scratchvit.rollout import attention_rollout, overlay_panel, save_png_atomic


def row_stochastic(rng, shape):
    a = rng.uniform(0.01, 1.0, shape)
    return a / a.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_two_layer_rollout_by_hand(rng, classifier):
    B, H, N = 2, 3, 5 if classifier == "token" else 4
    a1, a2 = row_stochastic(rng, (B, H, N, N)), row_stochastic(rng, (B, H, N, N))
    got = attention_rollout([a1, a2], classifier)
    for b in range(B):
        # Â_l[i, j] = (mean_h A_l[h, i, j] + [i == j]) / 2, written out element by element.
        hat = [[[(sum(a[b, h, i, j] for h in range(H)) / H + (i == j)) / 2 for j in range(N)] for i in range(N)]
               for a in (a1, a2)]
        roll = [[sum(hat[1][i][m] * hat[0][m][j] for m in range(N)) for j in range(N)] for i in range(N)]
        if classifier == "token":
            want = [roll[0][j] for j in range(1, N)]
        else:
            want = [sum(roll[i][j] for i in range(N)) / N for j in range(N)]
        np.testing.assert_allclose(got[b].ravel(), want, rtol=1e-12)
    assert got.shape == (B, 2, 2)
    if classifier == "gap":
        np.testing.assert_allclose(got.sum(axis=(1, 2)), 1.0)


def test_rollout_rejects_bad_input(rng):
    with pytest.raises(ValueError, match="no attention"):
        attention_rollout([], "token")
    with pytest.raises(ValueError, match="classifier"):
        attention_rollout([row_stochastic(rng, (1, 1, 5, 5))], "mean")
    with pytest.raises(ValueError, match="square grid"):
        attention_rollout([row_stochastic(rng, (1, 1, 5, 5))], "gap")
    with pytest.raises(ValueError, match="expected"):
        attention_rollout([np.ones((1, 5, 5))], "token")


def test_attention_weights_are_the_softmax_of_the_scores_and_give_the_output(rng):
    B, N, D, H, hd = 2, 5, 8, 2, 4
    h = rng.standard_normal((B, N, D))
    p = {f"{n}/kernel": rng.standard_normal((D, H, hd)) * 0.5 for n in ("query", "key", "value")}
    p.update({f"{n}/bias": rng.standard_normal((H, hd)) * 0.5 for n in ("query", "key", "value")})
    p["out/kernel"], p["out/bias"] = rng.standard_normal((H, hd, D)), rng.standard_normal(D)
    y, cache = ops.attention_forward(h, p)
    a = ops.attention_weights(cache)
    # softmax(q k^T / sqrt(hd)), computed here independently of the op.
    q = np.einsum("bnd,dhe->bnhe", h, p["query/kernel"]) + p["query/bias"]
    k = np.einsum("bnd,dhe->bnhe", h, p["key/kernel"]) + p["key/bias"]
    s = np.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(hd)
    expected = np.exp(s - s.max(axis=-1, keepdims=True))
    expected /= expected.sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(a, expected, atol=1e-12)
    v = np.einsum("bnd,dhe->bnhe", h, p["value/kernel"]) + p["value/bias"]
    np.testing.assert_allclose(np.einsum("bhqk,bkhe,hed->bqd", a, v, p["out/kernel"]) + p["out/bias"], y, atol=1e-12)


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_model_attention_probabilities_one_per_block(rng, classifier):
    cfg = sv.get_config("ViT-Ti_16", image_size=12, patch_size=4, hidden_size=8, num_layers=2, num_heads=2,
                        mlp_dim=12, num_classes=3, classifier=classifier)
    model = sv.ViT(cfg, dtype="float64", params={k: rng.standard_normal(s) * 0.5
                                                 for k, s in sv.param_shapes(cfg).items()})
    probs = model.attention_probabilities(rng.uniform(-1, 1, (2, 12, 12, 3)))
    assert len(probs) == 2
    for a in probs:
        assert a.shape == (2, 2, cfg.seq_len, cfg.seq_len)
        np.testing.assert_allclose(a.sum(axis=-1), 1.0)
    assert not np.allclose(probs[0], probs[1])  # each block's own


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_model_forced_to_look_at_one_patch(classifier):
    """Zero patch embedding and zero value/MLP branches: the residual stream is the position
    embedding in every block. Only the target patch has a non-zero embedding (along feature 0), and
    every query points along feature 0 of the key space, so every token attends to that patch."""
    cfg = sv.get_config("ViT-Ti_16", image_size=16, patch_size=4, hidden_size=8, num_layers=3, num_heads=2,
                        mlp_dim=12, num_classes=3, classifier=classifier)
    params = {k: np.zeros(s) for k, s in sv.param_shapes(cfg).items()}
    target = 9  # patch (row 2, column 1) of the 4x4 grid
    n_tok = 1 if classifier == "token" else 0
    params[POSEMB][0, n_tok + target, 0] = 5.0
    for i in range(cfg.num_layers):
        b = f"{block_prefix(i)}"
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            params[f"{b}{ln}/scale"][:] = 1.0
        params[f"{b}{ATTN}/key/kernel"][0, :, 0] = 1.0
        params[f"{b}{ATTN}/query/bias"][:, 0] = 20.0
    params["Transformer/encoder_norm/scale"][:] = 1.0
    model = sv.ViT(cfg, dtype="float64", params=params)
    images = np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 3))
    probs = model.attention_probabilities(images)
    assert all((a[..., n_tok + target] > 0.99).all() for a in probs)
    maps = attention_rollout(probs, classifier)
    assert maps.shape == (2, 4, 4)
    assert (maps.reshape(2, -1).argmax(axis=1) == target).all()
    assert (maps.reshape(2, -1)[:, target] > 0.8).all()


def test_overlay_panel_and_atomic_png(tmp_path, rng):
    image = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
    heat = np.zeros((4, 4))
    heat[3, 0] = 1.0
    panel = overlay_panel(image, heat, display=112)
    assert panel.shape == (112, 2 * 112 + 8, 3) and panel.dtype == np.uint8
    right = panel[:, 120:].astype(int)
    # the hot patch (bottom-left) is redder than the opposite corner
    assert right[-10:, :10, 0].mean() > right[:10, -10:, 0].mean() + 50
    save_png_atomic(tmp_path / "m.png", panel)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.png"]
    from PIL import Image
    with Image.open(tmp_path / "m.png") as im:
        assert im.size == (232, 112)
    with pytest.raises(ValueError, match=".png"):
        save_png_atomic(tmp_path / "m.jpg", panel)
