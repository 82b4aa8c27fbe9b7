"""A peer reads scratchvit's hybrid checkpoints: timm's ``vit_tiny_r_s16_p8_224`` (R+ViT-Ti_16) and
``vit_base_r50_s16_224`` (R50+ViT-B_16), built at a small size and loaded from a file scratchvit wrote with
timm's own loader for Google's .npz files (``timm.models.vision_transformer._load_weights``), give
scratchvit's logits. Not to 1e-10: timm's hybrid differs from vit_jax in two constants (StdConv2dSame
divides by sqrt(var + 1e-8), vit_jax by std + 1e-5; its GroupNorm has eps 1e-5, Flax's 1e-6) and uses the
exact erf GELU (scratchvit is run with ``gelu="erf"`` here). Skips where timm is not installed."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
try:  # timm needs a torchvision built for this torch; a mismatched one fails at import with a RuntimeError
    import timm
except Exception as e:  # noqa: BLE001
    pytest.skip(f"timm is not usable here ({type(e).__name__}: {e})", allow_module_level=True)

import scratchvit as sv  # noqa: E402  (after the skips)


@pytest.mark.parametrize("timm_name,name,layers", [("vit_tiny_r_s16_p8_224", "R+ViT-Ti_16", 2),
                                                   ("vit_base_r50_s16_224", "R50+ViT-B_16", 1)])
def test_timm_loads_a_hybrid_checkpoint_scratchvit_wrote(tmp_path, timm_name, name, layers):
    from timm.models.vision_transformer import _load_weights

    cfg = sv.get_config(name, image_size=64, num_layers=layers, num_classes=7, gelu="erf", dropout_rate=0.0)
    rng = np.random.default_rng(0)
    params = sv.init_params(cfg, 0)
    for k in params:  # no zero head or gn3 scale: every part of the network shows in the logits
        if k.startswith("head/") or k.endswith(("/gn3/scale", "/bias")) or k == "cls":
            params[k] = params[k] + 0.3 * rng.standard_normal(params[k].shape)
    path = tmp_path / f"{name}.npz"
    sv.save_checkpoint(path, params)
    model = sv.ViT.from_checkpoint(path, gelu="erf")
    assert model.config.resnet == cfg.resnet and model.config.grid_size == cfg.grid_size
    peer = timm.create_model(timm_name, pretrained=False, img_size=64, depth=layers, num_classes=7).eval()
    _load_weights(peer, str(path))
    images = rng.uniform(-1, 1, (3, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        theirs = peer(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    ours = model.forward(images)
    assert theirs.shape == ours.shape == (3, 7)
    err = np.abs(ours - theirs).max() / np.abs(theirs).max()
    assert err <= 1e-4, err  # ~2e-6 here: the two epsilons (a wrong name, layout or padding gives O(1))
    np.testing.assert_array_equal(ours.argmax(-1), theirs.argmax(-1))
