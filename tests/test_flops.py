"""The analytic FLOP count of the benchmarks (bench/flops.py)."""
from __future__ import annotations

import pytest

from bench import flops
from scratchvit.configs import get_config


def test_vit_b16_224_is_17_6_gmacs():
    cfg = get_config("ViT-B_16", image_size=224, num_classes=1000)
    macs = flops.forward_flops(cfg) / 2
    assert macs == pytest.approx(17.6e9, rel=0.01)
    assert flops.forward_macs(cfg) * 2 == flops.forward_flops(cfg)


def test_exact_count_small_geometry():
    # 32 px, patch 8 -> N=16, T=17; D=32, 2 layers, mlp 64, 10 classes.
    cfg = get_config("ViT-Ti_16", image_size=32, patch_size=8, hidden_size=32, num_layers=2,
                     num_heads=4, mlp_dim=64, num_classes=10)
    n, t, d, m = 16, 17, 32, 64
    per_block = 4 * t * d * d + 2 * t * t * d + 2 * t * d * m
    expected = n * 8 * 8 * 3 * d + 2 * per_block + d * 10
    assert flops.forward_macs(cfg) == expected
    assert flops.train_step_flops(cfg, 5) == 3 * 5 * 2 * expected


def test_pre_logits_and_gap():
    base = get_config("ViT-Ti_16", image_size=64, num_classes=10)
    rep = base.replace(representation_size=100)
    assert flops.forward_macs(rep) - flops.forward_macs(base) == 192 * 100 + (100 - 192) * 10
    gap = base.replace(classifier="gap")  # one token fewer (no class token)
    br, bg = flops.forward_macs_breakdown(base), flops.forward_macs_breakdown(gap)
    assert bg["mlp"] * 17 == br["mlp"] * 16


def test_scaling_with_tokens():
    # Matmuls over tokens scale linearly in T, attention's two products quadratically.
    small = get_config("ViT-B_16", image_size=224)
    big = small.replace(image_size=448)  # N: 196 -> 784, T: 197 -> 785
    bs, bb = flops.forward_macs_breakdown(small), flops.forward_macs_breakdown(big)
    for part in ("qkv", "attention_out", "mlp"):
        assert bb[part] * 197 == bs[part] * 785
    for part in ("attention_scores", "attention_values"):
        assert bb[part] * 197 ** 2 == bs[part] * 785 ** 2
    assert bb["patch_embedding"] == 4 * bs["patch_embedding"]
    assert bb["head"] == bs["head"]
    ratio = flops.forward_flops(big) / flops.forward_flops(small)
    assert 4.0 < ratio < (785 / 197) ** 2
    # Linear in the batch.
    assert flops.train_step_flops(small, 64) == 2 * flops.train_step_flops(small, 32)


def test_accepts_dict():
    cfg = get_config("ViT-S_16", image_size=224)
    assert flops.forward_flops(cfg.to_dict()) == flops.forward_flops(cfg)


def test_hybrids_count_the_resnet_and_cut_patches_from_its_map():
    """R50+ViT-B_16 at 224 px: the ResNet's convolutions (root, 16 units) plus ViT-B/16's 196-token
    encoder on the 14x14 map of 1024 channels; a root alone, by hand."""
    cfg = get_config("R50+ViT-B_16")
    b = flops.forward_macs_breakdown(cfg)
    vit = flops.forward_macs_breakdown(get_config("ViT-B_16"))
    for part in ("qkv", "attention_scores", "attention_values", "attention_out", "mlp", "head"):
        assert b[part] == vit[part]  # the same 197 tokens of width 768
    assert b["patch_embedding"] == 196 * 1024 * 768
    assert 3.8e9 < b["resnet"] < 4.1e9  # the 3-4-9 ResNet at 224 px: 3.93 GMACs (timm lists the model at 21.5-21.7)
    root = get_config("ViT-Ti_16", image_size=28, patch_size=1, hidden_size=64, num_heads=4, num_classes=10,
                      resnet=dict(num_layers=(), width_factor=0.5))
    r = flops.forward_macs_breakdown(root)
    assert r["resnet"] == 14 * 14 * 7 * 7 * 3 * 32 and r["patch_embedding"] == 49 * 32 * 64
    assert flops.forward_flops(root.to_dict()) == flops.forward_flops(root)
