"""The whole ViT: gradient checks, parity with the official vit_jax model, parameter counts, input errors."""
import json

import numpy as np
import pytest
from gradcheck import check_model_gradients

import scratchvit as sv
from scratchvit.params import ATTN, POSEMB

TOL = 1e-6


def random_model(rng, **overrides):
    """A tiny float64 model whose every parameter (head and position embedding included) is random."""
    geometry = dict(image_size=8, patch_size=4, hidden_size=8, num_layers=2, num_heads=2, mlp_dim=12, num_classes=3)
    cfg = sv.get_config("ViT-Ti_16", **{**geometry, **overrides})
    params = {k: rng.standard_normal(s) * 0.5 for k, s in sv.param_shapes(cfg).items()}
    return sv.ViT(cfg, dtype="float64", params=params)


@pytest.mark.parametrize("overrides", [
    dict(classifier="token"),
    dict(classifier="gap"),
    dict(classifier="token", representation_size=5),
    dict(classifier="gap", representation_size=5, gelu="erf"),
    dict(classifier="token", gelu="erf", num_heads=4),
    dict(classifier="token", num_heads=1),
])
def test_model_gradient_check(rng, overrides):
    model = random_model(rng, **overrides)
    images = rng.uniform(-1, 1, (2, 8, 8, 3))
    labels = np.array([0, 2])
    check_model_gradients(model, images, labels, rng, samples=24, floor=1e-6, tol=TOL)


def test_parity_with_official_vit_jax(reference_case):
    """Logits, loss and every gradient against the official JAX model, float64."""
    params, ref_grads, d = reference_case
    meta = json.loads(str(d["meta"]))
    config = sv.checkpoint.infer_config(params)
    assert (config.image_size, config.patch_size, config.hidden_size, config.num_heads, config.num_layers,
            config.mlp_dim, config.num_classes, config.representation_size) == (
        meta["image"], meta["patch"], meta["hidden"], meta["heads"], meta["layers"], meta["mlp"],
        meta["classes"], meta["representation_size"])
    model = sv.ViT(config, dtype="float64", params=params)
    logits = model.forward(d["images"])
    np.testing.assert_allclose(logits, d["logits"], rtol=0, atol=1e-10)
    loss, grads = model.loss_and_grads(d["images"], d["labels"])
    assert abs(loss - float(d["loss"])) <= 1e-10
    assert set(grads) == set(ref_grads)
    largest = max(np.abs(g).max() for g in ref_grads.values())
    for name, ref in ref_grads.items():
        if name.endswith("key/bias"):  # mathematically zero (see test_model_gradient_check): both are rounding noise
            assert np.abs(grads[name]).max() < 1e-14 * largest and np.abs(ref).max() < 1e-14 * largest
            continue
        err = np.abs(grads[name] - ref).max() / np.abs(ref).max()
        assert err <= 1e-9, f"{name}: {err:.2e} relative to the tensor's largest value"


@pytest.mark.parametrize("name,count", [("ViT-Ti_16", 5_717_416), ("ViT-S_16", 22_050_664),
                                        ("ViT-B_16", 86_567_656), ("ViT-L_16", 304_326_632)])
def test_official_parameter_counts(name, count):
    assert sv.count_params(sv.get_config(name)) == count


def test_fresh_model_matches_its_parameter_count():
    model = sv.ViT(sv.get_config("ViT-Ti_16", image_size=32, num_classes=10))
    assert model.num_params() == sv.count_params(model.config)
    assert all(v.dtype == np.float32 for v in model.params.values())


def test_initialisation_follows_the_official_code():
    cfg = sv.get_config("ViT-S_16", image_size=64, num_classes=7)
    p = sv.ViT(cfg, seed=3, dtype="float64").params
    assert not p["cls"].any() and not p["head/kernel"].any() and not p["head/bias"].any()
    assert abs(p[POSEMB].std() - 0.02) < 0.002
    k = p[f"Transformer/encoderblock_0/{ATTN}/query/kernel"]
    limit = np.sqrt(6 / (384 + 384))
    assert np.abs(k).max() <= limit and np.abs(k).max() > 0.95 * limit  # xavier uniform
    b = p["Transformer/encoderblock_0/MlpBlock_3/Dense_0/bias"]
    assert 0 < b.std() < 1e-5  # normal(1e-6)
    assert (p["Transformer/encoderblock_0/LayerNorm_0/scale"] == 1).all()
    e = p["embedding/kernel"]
    assert abs(e.std() - np.sqrt(1 / (16 * 16 * 3))) < 0.1 * np.sqrt(1 / (16 * 16 * 3))  # lecun normal
    same = sv.ViT(cfg, seed=3, dtype="float64").params
    other = sv.ViT(cfg, seed=4, dtype="float64").params
    assert all(np.array_equal(p[k], same[k]) for k in p)
    assert not np.array_equal(p["embedding/kernel"], other["embedding/kernel"])


def test_float32_forward_is_close_to_float64(rng):
    cfg = sv.get_config("ViT-Ti_16", image_size=32, patch_size=8, num_classes=10)
    params = {k: v + rng.standard_normal(v.shape) * 0.02 for k, v in sv.init_params(cfg, 0).items()}
    images = rng.uniform(-1, 1, (4, 32, 32, 3))
    l64 = sv.ViT(cfg, dtype="float64", params=params).forward(images)
    l32 = sv.ViT(cfg, dtype="float32", params=params).forward(images)
    assert l32.dtype == np.float32
    assert np.abs(l32 - l64).max() / np.abs(l64).max() <= 1e-4


def test_float32_gradients_are_float32(rng):
    model = sv.ViT(sv.get_config("ViT-Ti_16", image_size=16, patch_size=8, num_classes=4, num_layers=1))
    loss, grads = model.loss_and_grads(rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32), np.array([1, 3]))
    assert isinstance(loss, float)
    assert all(grads[k].dtype == np.float32 and grads[k].shape == v.shape for k, v in model.params.items())


@pytest.mark.parametrize("shape,msg", [((2, 16, 16), r"\(B, H, W, 3\)"), ((2, 16, 16, 1), r"\(B, H, W, 3\)"),
                                       ((2, 24, 24, 3), "24x24 px but the model takes 16x16")])
def test_bad_images_are_rejected(shape, msg):
    model = sv.ViT(sv.get_config("ViT-Ti_16", image_size=16, patch_size=8, num_classes=4, num_layers=1))
    with pytest.raises(ValueError, match=msg):
        model.forward(np.zeros(shape, np.float32))


def test_bad_labels_are_rejected():
    model = sv.ViT(sv.get_config("ViT-Ti_16", image_size=16, patch_size=8, num_classes=4, num_layers=1))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        model.loss_and_grads(np.zeros((2, 16, 16, 3), np.float32), np.array([0, 4]))


@pytest.mark.parametrize("kwargs,msg", [
    (dict(image_size=30), "not a multiple of patch_size"),
    (dict(num_heads=5), "not divisible by num_heads"),
    (dict(classifier="mean"), "classifier"),
    (dict(width=3), "unknown ViTConfig field"),
])
def test_bad_configs_are_rejected(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        sv.get_config("ViT-Ti_16", **kwargs)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'ViT-X_16'.*ViT-B_16"):
        sv.get_config("ViT-X_16")


def test_gpu_without_cupy_is_a_clear_error():
    pytest.importorskip("numpy")
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed here; this test checks the error on machines without it")
    except ImportError:
        pass
    with pytest.raises(RuntimeError, match="needs CuPy"):
        sv.ViT(sv.get_config("ViT-Ti_16", image_size=16, num_layers=1), device="gpu")


def test_public_training_forward_matches_loss_and_grads(rng):
    model = random_model(rng)
    c = model.config
    images = rng.uniform(-1, 1, (2, c.image_size, c.image_size, 3))
    labels = np.array([1, 2])
    logits, caches = model.forward(images, keep_cache=True)
    np.testing.assert_array_equal(logits, model.forward(images))
    assert isinstance(caches, dict) and "Transformer/encoderblock_0/" in caches
    loss, ce = sv.ops.softmax_cross_entropy_forward(logits, labels)
    grads = model.backward(sv.ops.softmax_cross_entropy_backward(ce), caches)
    assert "Transformer/encoderblock_0/" not in caches  # backward consumes the block caches
    # loss_and_grads may split the batch over threads (cpu.split_batch): the same sums in another order.
    loss2, grads2 = model.loss_and_grads(images, labels)
    np.testing.assert_allclose(float(loss), loss2, rtol=1e-13)
    scale = max(np.abs(g).max() for g in grads2.values())  # key/bias's gradient is zero up to rounding
    for k in grads2:
        np.testing.assert_allclose(grads[k], grads2[k], rtol=1e-11, atol=1e-13 * scale, err_msg=k)


def test_schema_names_are_official():
    from scratchvit.params import ATTN_KEYS, is_official_name
    cfg = sv.get_config("ViT-B_16", representation_size=768)
    names = sv.param_shapes(cfg)
    assert all(is_official_name(k) for k in names)
    assert sum(f"/{ATTN}/" in k for k in names) == len(ATTN_KEYS) * cfg.num_layers
    assert not is_official_name("Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel")
    assert not is_official_name("Transformer/encoderblock_x/LayerNorm_0/scale")


def test_reference_generator_describes_the_committed_files():
    """tests/reference/make_reference.py (needs vit_jax, not run here) writes the cases the tests read."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).parent / "reference" / "make_reference.py"
    spec = importlib.util.spec_from_file_location("make_reference", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name, meta in mod.CASES.items():
        with np.load(path.parent / f"{name}.npz") as f:
            assert json.loads(str(f["meta"])) == meta
            assert str(f["meta"]) == json.dumps(meta)
            params = [k for k in f.files if k.startswith("params/")]
            grads = [k for k in f.files if k.startswith("grads/")]
            assert {k[len("params/"):] for k in params} == {k[len("grads/"):] for k in grads}
            assert set(f.files) - set(params) - set(grads) == {"images", "labels", "logits", "loss", "meta"}
