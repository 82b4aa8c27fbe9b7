"""python -m scratchvit.inspect: the numbers of the paper's Fig. 7 against answers known by hand, the CLI
end to end on a tiny checkpoint, and its one-line errors."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import scratchvit as sv
from scratchvit import inspect as si
from scratchvit.data import to_float
from scratchvit.params import ATTN, MLP, POSEMB, block_prefix
from scratchvit.predict import _load_image

S, P = 16, 4  # tiny models: 16 px images, 4 px patches, a 4 x 4 grid


def tiny_model(classifier="token", rng=None, image_size=S, patch=P, hidden=8, heads=2, layers=2):
    cfg = sv.get_config("ViT-Ti_16", image_size=image_size, patch_size=patch, hidden_size=hidden,
                        num_layers=layers, num_heads=heads, mlp_dim=12, num_classes=3, classifier=classifier)
    rng = rng if rng is not None else np.random.default_rng(0)
    params = {k: rng.standard_normal(s) * 0.5 for k, s in sv.param_shapes(cfg).items()}
    return sv.ViT(cfg, params=params)


# ------------------------------------------------------------------------------------ position similarity
@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_identical_position_embeddings_are_similar_everywhere(classifier):
    e = np.array([0.3, -1.2, 2.0, 0.7])
    posemb = np.tile(e, (1, 9 + (classifier == "token"), 1))
    if classifier == "token":
        posemb[0, 0] = -e  # the class token's row is left out: it would give -1
    sim = si.position_similarity(posemb, classifier)
    assert sim.shape == (9, 9)
    np.testing.assert_allclose(sim, 1.0, atol=1e-12)


def test_position_embeddings_of_row_and_column_give_the_expected_grid():
    # 2 x 2 grid, e(r, c) = one-hot(row r) ++ one-hot(column c): |e| = sqrt(2) and e.e' = [r = r'] + [c = c'],
    # so the cosine is 1 on itself, 1/2 for the same row or the same column, 0 for the diagonal neighbour.
    # Positions in row-major order: 0 = (0, 0), 1 = (0, 1), 2 = (1, 0), 3 = (1, 1).
    posemb = np.array([[[9.0, 9, 9, 9],  # the class token (left out)
                        [1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0], [0, 1, 0, 1]]])
    expected = np.array([[1, .5, .5, 0],
                         [.5, 1, 0, .5],
                         [.5, 0, 1, .5],
                         [0, .5, .5, 1]])
    np.testing.assert_allclose(si.position_similarity(posemb, "token"), expected, atol=1e-12)


def test_position_embeddings_that_turn_with_the_row_give_a_cosine_of_the_row_distance():
    # 3 x 3 grid, e(r, c) = (cos(r pi/2), sin(r pi/2)): the cosine between rows r and r' is cos((r - r') pi/2):
    # 1 for the same row, 0 one row apart, -1 two rows apart, whatever the columns.
    rows = np.repeat(np.arange(3), 3)
    posemb = np.stack([np.cos(rows * np.pi / 2), np.sin(rows * np.pi / 2)], axis=1)
    by_row = np.array([[1, 0, -1], [0, 1, 0], [-1, 0, 1]])
    expected = np.kron(by_row, np.ones((3, 3)))
    np.testing.assert_allclose(si.position_similarity(posemb, "gap"), expected, atol=1e-12)


def test_a_zero_position_embedding_has_no_cosine():
    posemb = np.ones((4, 3))
    posemb[2] = 0
    sim = si.position_similarity(posemb, "gap")
    assert np.isnan(sim[2]).all() and np.isnan(sim[:, 2]).all()
    np.testing.assert_allclose(np.delete(np.delete(sim, 2, 0), 2, 1), 1.0)


def test_position_similarity_refuses_a_grid_that_is_not_square():
    with pytest.raises(ValueError, match="square grid"):
        si.position_similarity(np.ones((1, 6, 3)), "token")  # 5 patch tokens


# ------------------------------------------------------------------------------------ attention distance
def test_patch_distances_by_hand():
    # 2 x 2 grid of 4 px patches: centres (2, 2), (6, 2), (2, 6), (6, 6) px.
    r2 = 4 * math.sqrt(2)
    np.testing.assert_allclose(si.patch_distances(2, 4), [[0, 4, 4, r2], [4, 0, r2, 4], [4, r2, 0, 4], [r2, 4, 4, 0]])


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_attending_only_to_itself_is_distance_zero(classifier):
    k = classifier == "token"
    a = np.broadcast_to(np.eye(16 + k), (3, 2, 16 + k, 16 + k))
    dist, share = si.attention_distance(a, P, classifier)
    np.testing.assert_array_equal(dist, np.zeros((3, 2)))
    assert share is None if not k else (share == 0).all()


def test_uniform_attention_is_the_mean_pairwise_patch_distance():
    # 2 x 2 grid of 4 px patches: from any patch, the 4 keys are 0, 4, 4 and 4 sqrt(2) px away.
    mean_pairwise = (0 + 4 + 4 + 4 * math.sqrt(2)) / 4
    dist, _ = si.attention_distance(np.full((1, 3, 4, 4), 0.25), 4, "gap")
    np.testing.assert_allclose(dist, mean_pairwise)
    # With a class token, uniform attention over 5 tokens gives each patch key 1/5 and the class token
    # 1/5 that is not renormalised away: 4/5 of the mean pairwise distance, class-token share 1/5.
    dist, share = si.attention_distance(np.full((2, 3, 5, 5), 0.2), 4, "token")
    np.testing.assert_allclose(dist, 0.8 * mean_pairwise)
    np.testing.assert_allclose(share, 0.2)


def test_attention_distance_weights_each_key_by_its_probability():
    # 1 x 2 grid is not square; use 2 x 2: query 0 puts 0.75 on key 3 (4 sqrt(2) px) and 0.25 on itself;
    # the other queries attend to themselves. Mean over the 4 queries: 0.75 * 4 sqrt(2) / 4.
    a = np.eye(4)[None, None].copy()
    a[0, 0, 0] = [0.25, 0, 0, 0.75]
    dist, _ = si.attention_distance(a, 4, "gap")
    np.testing.assert_allclose(dist, [[0.75 * 4 * math.sqrt(2) / 4]])


def test_attention_distance_runs_on_the_arrays_device():
    from strict_device import to_strict  # array_api_strict on a device that is not the CPU

    rng = np.random.default_rng(1)
    a = rng.random((2, 3, 17, 17)).astype(np.float32)
    a /= a.sum(axis=-1, keepdims=True)
    want = si.attention_distance(a, P, "token")
    got = si.attention_distance(to_strict(a), P, "token")
    for w, g in zip(want, got, strict=True):
        assert isinstance(g, np.ndarray)
        np.testing.assert_allclose(g, w, rtol=1e-12)


def _identity_attention_params(model):
    """Parameters under which every block attends only to itself (D = 8, 2 heads of 4): the patch embedding
    (kernel and bias) and every block's attention output and MLP output are zero, so the tokens stay their position
    embeddings; token i's is (cos t, sin t, -cos t, -sin t) in each head's 4 values (t = 2 pi i / 16 in
    head 1, 3 t in head 2): zero mean and the same norm in every head, so layer norm only scales them
    all alike (its scale 1, bias 0), and with query = key = 30 * I a token's score with itself beats
    every other by > 100."""
    c, p = model.config, model.params
    assert (c.hidden_size, c.num_heads, c.classifier) == (8, 2, "gap")
    t = 2 * np.pi * np.arange(16) / 16
    head = lambda t: np.stack([np.cos(t), np.sin(t), -np.cos(t), -np.sin(t)], axis=1)  # noqa: E731
    p[POSEMB][0] = np.concatenate([head(t), head(3 * t)], axis=1)
    eye = 30 * np.eye(c.hidden_size).reshape(c.hidden_size, c.num_heads, -1)
    p["embedding/kernel"][...] = 0
    p["embedding/bias"][...] = 0
    for i in range(c.num_layers):
        b = block_prefix(i)
        p[b + "LayerNorm_0/scale"][...] = 1
        p[b + "LayerNorm_0/bias"][...] = 0
        for name in ("query", "key"):
            p[f"{b}{ATTN}/{name}/kernel"][...] = eye
            p[f"{b}{ATTN}/{name}/bias"][...] = 0
        for name in (f"{ATTN}/out/kernel", f"{ATTN}/out/bias", f"{MLP}/Dense_1/kernel", f"{MLP}/Dense_1/bias"):
            p[b + name][...] = 0


def test_a_model_that_attends_only_to_itself_has_distance_zero(rng):
    model = tiny_model("gap")
    _identity_attention_params(model)
    probs = model.attention_probabilities(rng.uniform(-1, 1, (2, S, S, 3)))
    for a in probs:  # it does attend to itself only, in every block and head
        np.testing.assert_allclose(a, np.broadcast_to(np.eye(16), a.shape), atol=1e-6)
    dist, share, n = si.mean_attention_distance(model, [rng.uniform(-1, 1, (3, S, S, 3))])
    assert n == 3 and share is None and dist.shape == (2, 2)
    np.testing.assert_allclose(dist, 0, atol=1e-4)


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_a_model_with_zero_queries_attends_uniformly(rng, classifier):
    # q = 0 makes every score 0: uniform attention over the T tokens, in the model's own attention op.
    model = tiny_model(classifier)
    for i in range(2):
        model.params[f"{block_prefix(i)}{ATTN}/query/kernel"][...] = 0
        model.params[f"{block_prefix(i)}{ATTN}/query/bias"][...] = 0
    d = si.patch_distances(4, P)
    mean_pairwise = d.mean()
    # by hand, 4 x 4 grid of 4 px patches: the mean over ordered pairs of sqrt(dx^2 + dy^2) * 4 px
    steps = np.arange(-3, 4)
    pairs = (4 - np.abs(steps))[:, None] * (4 - np.abs(steps))[None, :]  # how many pairs have offset (dy, dx)
    by_hand = (pairs * 4 * np.hypot(steps[:, None], steps[None, :])).sum() / 256
    assert mean_pairwise == pytest.approx(by_hand)
    batches = [rng.uniform(-1, 1, (2, S, S, 3)), rng.uniform(-1, 1, (1, S, S, 3))]  # batches of unequal size
    dist, share, n = si.mean_attention_distance(model, batches)
    t = 16 + (classifier == "token")
    np.testing.assert_allclose(dist, 16 / t * by_hand, rtol=1e-5)
    assert n == 3
    if classifier == "token":
        np.testing.assert_allclose(share, 1 / t, rtol=1e-5)


# ------------------------------------------------------------------------------------ patch-embedding PCA
def test_principal_components_are_orthonormal_in_decreasing_variance(rng):
    comps, var, ratio = si.embedding_components(rng.standard_normal((4, 4, 3, 64)))
    assert comps.shape == (28, 4, 4, 3) and var.shape == ratio.shape == (28,)
    flat = comps.reshape(28, -1)
    np.testing.assert_allclose(flat @ flat.T, np.eye(28), atol=1e-10)
    assert (np.diff(var) <= 0).all() and (var > 0).all()
    assert 0 < ratio.sum() <= 1 + 1e-12
    # at most min(D, P*P*C) components
    assert len(si.embedding_components(rng.standard_normal((2, 2, 3, 5)))[0]) == 5


def test_principal_components_of_filters_along_two_known_directions(rng):
    # D = 200 filters f_d = a_d u + b_d v + m with orthonormal u, v, a common mean m, var(a) = 9 var(b):
    # the components are u and v (up to sign), with the variances of a and b, 90% and 10% of the total.
    u, v = np.linalg.qr(rng.standard_normal((12, 2)))[0].T
    a = rng.standard_normal(200)
    a = (a - a.mean()) / a.std(ddof=1) * 3
    b = rng.standard_normal(200)
    b -= b.mean() + (b @ a) / (a @ a) * a  # uncorrelated with a
    b = b / b.std(ddof=1)
    filters = np.outer(u, a) + np.outer(v, b) + rng.standard_normal((12, 1))  # (P*P*C, D)
    comps, var, ratio = si.embedding_components(filters.reshape(2, 2, 3, 200), n_components=2)
    np.testing.assert_allclose(var, [9, 1], rtol=1e-10)
    np.testing.assert_allclose(ratio, [0.9, 0.1], rtol=1e-10)
    np.testing.assert_allclose(np.abs(comps.reshape(2, 12) @ np.stack([u, v]).T), np.eye(2), atol=1e-10)


def test_principal_components_of_the_filters_summed_over_the_channels(rng):
    # Per-channel parts that cancel in the sum (r, g, -r - g) are invisible on grey images: summed over the
    # channels, the filters are a_d u (a P*P pattern u), one component u with all the variance.
    u = rng.standard_normal((3, 3))
    u /= np.linalg.norm(u)
    a = rng.standard_normal(50)
    r, g = rng.standard_normal((2, 3, 3, 50))
    kernel = np.stack([r + a * u[..., None], g, -r - g], axis=2)  # (3, 3, 3, 50)
    comps, var, ratio = si.embedding_components(kernel, sum_channels=True)
    assert comps.shape == (9, 3, 3, 1)
    np.testing.assert_allclose(np.abs(comps[0, ..., 0]), np.abs(u), atol=1e-10)
    np.testing.assert_allclose(var[0], np.var(a, ddof=1), rtol=1e-10)
    np.testing.assert_allclose(ratio[0], 1, rtol=1e-10)


# ------------------------------------------------------------------------------------ the CLI
def write_checkpoint(tmp_path, classifier="token", image_size=S, patch=P):
    model = tiny_model(classifier, image_size=image_size, patch=patch)
    ckpt = tmp_path / "run" / "best.npz"
    sv.save_checkpoint(ckpt, model.params)
    return ckpt


def write_images(tmp_path, rng, n=3):
    paths = []
    for i in range(n):
        paths.append(str(tmp_path / f"im{i}.png"))
        Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def check_outputs(out, blocks=2, heads=2, grid=4, images=3):
    for name in si.FILES[:3]:
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 300
            assert len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 20
    doc = json.loads((out / "inspect.json").read_text())
    d = np.array(doc["attention_distance"]["mean_attention_distance"])
    assert d.shape == (blocks, heads) and (d >= 0).all()
    assert np.array(doc["position_similarity"]["cosine_similarity"]).shape == (grid ** 2, grid ** 2)
    assert len(doc["embedding_filters"]["explained_variance"]) == 8  # min(28, D = 8, P*P*3)
    assert doc["settings"]["images"] == images
    return doc


def test_cli_end_to_end_on_image_files(tmp_path, rng):
    """``python -m scratchvit.inspect`` in a subprocess: 3 images in batches of 2, the numbers of the functions."""
    pytest.importorskip("matplotlib")
    ckpt = write_checkpoint(tmp_path)
    files = write_images(tmp_path, rng, n=3)
    out = tmp_path / "out" / "new"  # created
    r = subprocess.run([sys.executable, "-m", "scratchvit.inspect", "--checkpoint", str(ckpt), "--out", str(out),
                        *files, "--batch-size", "2"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "MPLBACKEND": "Agg"})
    assert r.returncode == 0, r.stderr
    assert f"wrote {out / 'inspect.json'}" in r.stdout
    doc = check_outputs(out)
    assert doc["settings"]["source"] == {"files": files} and doc["settings"]["batch_size"] == 2
    assert doc["settings"]["filters"] == "rgb"  # no config.json saying the model saw grey images
    model = sv.ViT.from_checkpoint(ckpt)
    x = to_float(np.stack([_load_image(f, S) for f in files]))
    dist, share, _ = si.mean_attention_distance(model, [x])
    np.testing.assert_allclose(doc["attention_distance"]["mean_attention_distance"], dist, rtol=1e-6)
    np.testing.assert_allclose(doc["attention_distance"]["class_token_attention"], share, rtol=1e-6)
    comps, var, ratio = si.embedding_components(model.params["embedding/kernel"])
    np.testing.assert_allclose(doc["embedding_filters"]["explained_variance_ratio"], ratio, rtol=1e-9)
    sim = si.position_similarity(model.params[POSEMB], "token")
    np.testing.assert_allclose(doc["position_similarity"]["cosine_similarity"], sim, rtol=1e-9)


def test_cli_end_to_end_on_a_dataset_with_resized_position_embeddings(tmp_path, isolated_data, capsys):
    pytest.importorskip("matplotlib")
    from data_helpers import make_idx

    make_idx(tmp_path / "fm", n_test=5)
    ckpt = write_checkpoint(tmp_path, "gap", image_size=28, patch=7)
    out = tmp_path / "out"
    assert si.main(["--checkpoint", str(ckpt), "--out", str(out), "--dataset", "fashion-mnist",
                    "--data-dir", str(tmp_path / "fm"), "--images", "4", "--image-size", "42"]) == 0
    doc = check_outputs(out, grid=6, images=4)  # 42 / 7: a 6 x 6 grid
    assert doc["settings"]["source"] == {"dataset": "fashion-mnist", "split": "test", "first": 4}
    assert doc["attention_distance"]["class_token_attention"] is None
    assert doc["settings"]["filters"] == "grey"  # Fashion-MNIST: the filters summed over R, G, B


def run_error(capsys, argv):
    code = si.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("inspect: error: "), err
    return err


def test_one_line_errors(tmp_path, rng, capsys):
    pytest.importorskip("matplotlib")
    ckpt = write_checkpoint(tmp_path)
    files = write_images(tmp_path, rng, n=1)
    out = str(tmp_path / "out")
    assert "checkpoint not found" in run_error(capsys, ["--checkpoint", str(tmp_path / "no.npz"), "--out", out,
                                                        *files])
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    assert "bad.npz" in run_error(capsys, ["--checkpoint", str(bad), "--out", out, *files])
    assert "image not found" in run_error(capsys, ["--checkpoint", str(ckpt), "--out", out, "missing.png"])
    (tmp_path / "text.png").write_text("not an image")
    assert "text.png" in run_error(capsys, ["--checkpoint", str(ckpt), "--out", out, str(tmp_path / "text.png")])
    (tmp_path / "file").write_text("")
    run_error(capsys, ["--checkpoint", str(ckpt), "--out", str(tmp_path / "file" / "sub"), *files])
    assert not (tmp_path / "out").exists()  # nothing written on bad input


def test_missing_dataset_is_one_line(tmp_path, isolated_data, capsys):
    pytest.importorskip("matplotlib")
    ckpt = write_checkpoint(tmp_path, image_size=28, patch=7)
    run_error(capsys, ["--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), "--dataset", "fashion-mnist",
                       "--data-dir", str(tmp_path / "nowhere")])


def test_missing_matplotlib_is_one_line(tmp_path, rng, no_matplotlib, capsys):
    ckpt = write_checkpoint(tmp_path)
    files = write_images(tmp_path, rng, n=1)
    err = run_error(capsys, ["--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), *files])
    assert 'pip install -e ".[plot]"' in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv", [[], ["x.png", "--dataset", "mnist"], ["x.png", "--images", "0"]])
def test_bad_arguments_exit_2(tmp_path, argv):
    with pytest.raises(SystemExit) as e:
        si.parse_args(["--checkpoint", "c.npz", "--out", str(tmp_path), *argv])
    assert e.value.code == 2
