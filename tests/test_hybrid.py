"""The hybrid (paper Sec. 3.1: a ResNet's feature map as the ViT's input): parity with the official vit_jax
model, gradient checks, parameter names and counts, checkpoints, position-embedding resize."""
import json

import numpy as np
import pytest
from conftest import load_reference
from gradcheck import check_model_gradients

import scratchvit as sv
from scratchvit import checkpoint
from scratchvit.params import POSEMB

TOL = 1e-6


@pytest.fixture(params=["hybrid_stem", "hybrid_stages"])
def hybrid_case(request):
    return load_reference(request.param)


def test_parity_with_official_vit_jax(hybrid_case):
    """Logits and loss to 1e-10, every gradient to 1e-9 of its tensor's largest value, float64, against the
    official vit_jax hybrid (root alone; root and two stages with projections), geometry read from the file."""
    params, ref_grads, d = hybrid_case
    meta = json.loads(str(d["meta"]))
    config = checkpoint.infer_config(params)
    assert (config.image_size, config.patch_size, config.hidden_size, config.num_heads, config.num_layers,
            config.mlp_dim, config.num_classes, config.representation_size) == (
        meta["image"], meta["patch"], meta["hidden"], meta["heads"], meta["layers"], meta["mlp"],
        meta["classes"], meta["representation_size"])
    assert config.resnet == sv.ResNetConfig(tuple(meta["resnet"]["num_layers"]), meta["resnet"]["width_factor"])
    model = sv.ViT(config, dtype="float64", params=params)
    np.testing.assert_allclose(model.forward(d["images"]), d["logits"], rtol=0, atol=1e-10)
    loss, grads = model.loss_and_grads(d["images"], d["labels"])
    assert abs(loss - float(d["loss"])) <= 1e-10
    assert set(grads) == set(ref_grads) and list(grads) == list(params)  # official names; params order
    largest = max(np.abs(g).max() for g in ref_grads.values())
    for name, ref in ref_grads.items():
        if name.endswith("key/bias"):  # mathematically zero (softmax ignores a row's shift): rounding noise
            assert np.abs(grads[name]).max() < 1e-14 * largest and np.abs(ref).max() < 1e-14 * largest
            continue
        err = np.abs(grads[name] - ref).max() / np.abs(ref).max()
        assert err <= 1e-9, f"{name}: {err:.2e} relative to the tensor's largest value"


def random_hybrid(rng, **overrides):
    geometry = dict(image_size=16, patch_size=1, hidden_size=8, num_layers=1, num_heads=2, mlp_dim=12,
                    num_classes=3, resnet=dict(num_layers=(1, 1), width_factor=0.5))
    cfg = sv.get_config("ViT-Ti_16", **{**geometry, **overrides})
    params = {k: rng.standard_normal(s) * 0.5 for k, s in sv.param_shapes(cfg).items()}
    for k in params:
        if k.endswith("/scale"):  # group-norm scales near 1: the activations stay O(1) through the ReLUs
            params[k] = 1.0 + 0.2 * params[k]
    return sv.ViT(cfg, dtype="float64", params=params)


@pytest.mark.parametrize("overrides", [
    dict(),  # root + two stages (projections, a stride-2 unit), 16 px -> 2 x 2 map
    # root alone, 20 px -> 5 x 5 map: patch 2 drops the last row and column; gap pooling, pre-logits
    dict(image_size=20, patch_size=2, classifier="gap", representation_size=4, resnet=dict(num_layers=())),
])
def test_model_gradient_check(rng, overrides):
    model = random_hybrid(rng, **overrides)
    size = model.config.image_size
    images, labels = rng.uniform(-1, 1, (2, size, size, 3)), np.array([0, 2])
    check_model_gradients(model, images, labels, rng, samples=12, floor=1e-7, tol=TOL)


@pytest.mark.parametrize("name,count", [("R50+ViT-B_16", 98_659_112), ("R+ViT-Ti_16", 6_337_704),
                                        ("R26+ViT-S_32", 36_431_912), ("R26+ViT-B_32", 101_383_976),
                                        ("R50+ViT-L_32", 328_994_856)])
def test_official_parameter_counts(name, count):
    """vit_jax's counts at 224 px, 1000 classes, no pre-logits."""
    assert sv.count_params(sv.get_config(name)) == count


def test_official_names_and_geometry_of_r50_vit_b16():
    c = sv.get_config("R50+ViT-B_16")
    shapes = sv.param_shapes(c)
    assert list(shapes)[:3] == ["conv_root/kernel", "gn_root/scale", "gn_root/bias"]
    assert shapes["conv_root/kernel"] == (7, 7, 3, 64)
    assert shapes["block1/unit1/conv_proj/kernel"] == (1, 1, 64, 256)
    assert shapes["block1/unit1/conv2/kernel"] == (3, 3, 64, 64)
    assert shapes["block3/unit1/gn_proj/bias"] == (1024,)
    assert shapes["block3/unit9/conv3/kernel"] == (1, 1, 256, 1024)
    assert "block3/unit9/gn_proj/bias" not in shapes and "block3/unit10/conv1/kernel" not in shapes
    assert "block1/unit2/conv_proj/kernel" not in shapes  # same channels, stride 1: no projection
    assert shapes["embedding/kernel"] == (1, 1, 1024, 768)
    assert (c.feature_size, c.grid_size, c.effective_patch_size, c.seq_len) == (14, 14, 16, 197)
    assert all(sv.params.is_official_name(k) for k in shapes)
    assert sv.get_config("R+ViT-Ti_16").grid_size == 7  # root stride 4 x patch 8: 32 px per patch at 224
    assert sv.get_config("R50+ViT-B_16").dropout_rate == 0.1  # as vit_jax's get_r50_b16_config


def test_initialisation_of_the_resnet():
    p = sv.ViT(sv.get_config("R+ViT-Ti_16", image_size=32, num_classes=4, resnet=dict(num_layers=(1,))),
               dtype="float64").params
    assert not p["block1/unit1/gn3/scale"].any()  # each unit starts as its residual path
    assert (p["block1/unit1/gn1/scale"] == 1).all() and not p["gn_root/bias"].any()
    k = p["conv_root/kernel"]
    assert abs(k.std() - np.sqrt(1 / 147)) < 0.1 * np.sqrt(1 / 147)  # LeCun normal


@pytest.mark.parametrize("kwargs,msg", [
    (dict(resnet=dict(num_layers=(2,), width_factor=0.3)), "multiple of 32"),
    (dict(resnet=dict(num_layers=(0,))), "positive integers"),
    (dict(image_size=16, patch_size=8, resnet=dict(num_layers=())), "4x4 map, smaller than patch_size 8"),
])
def test_bad_hybrid_configs_are_rejected(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        sv.get_config("ViT-Ti_16", **kwargs)


def test_checkpoint_round_trip_infers_the_hybrid(rng, tmp_path):
    model = random_hybrid(rng)
    checkpoint.save_checkpoint(tmp_path / "h.npz", model.params, dtype=None)
    back = sv.ViT.from_checkpoint(tmp_path / "h.npz", dtype="float64")
    assert back.config == model.config
    for k, v in model.params.items():
        np.testing.assert_array_equal(back.params[k], v)


def test_a_vit_checkpoint_is_not_taken_for_a_hybrid_and_back(tmp_path, rng):
    params = random_hybrid(rng).params
    bad = {k: v for k, v in params.items() if not k.startswith(("conv_root", "gn_root", "block"))}
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(ValueError, match=r"expected \(P, P, 3, D\)"):
        checkpoint.load_checkpoint(tmp_path / "bad.npz")


@pytest.mark.parametrize("size,grid", [(48, 6), (40, 5), (36, 5)])  # 36 -> 18 -> 9 -> 9 -> 5 ('SAME': ceil)
def test_fine_tuning_resizes_the_position_grid_of_a_hybrid(tmp_path, size, grid):
    params, _, d = load_reference("hybrid_stages")
    np.savez(tmp_path / "h.npz", **params)
    config, p = checkpoint.load_checkpoint(tmp_path / "h.npz", num_classes=7, image_size=size)
    assert config.grid_size == grid and p[POSEMB].shape == (1, grid * grid + 1, 32)
    expected = checkpoint.resize_linear_align_corners(params[POSEMB][0, 1:].reshape(4, 4, 32), grid, grid)
    np.testing.assert_allclose(p[POSEMB][0, 1:], expected.reshape(-1, 32), rtol=1e-12)
    np.testing.assert_array_equal(p[POSEMB][0, :1], params[POSEMB][0, :1])
    assert not p["head/kernel"].any() and p["head/kernel"].shape == (32, 7) and "pre_logits/kernel" not in p
    model = sv.ViT(config, dtype="float64", params=p)
    assert model.forward(np.zeros((1, size, size, 3))).shape == (1, 7)
