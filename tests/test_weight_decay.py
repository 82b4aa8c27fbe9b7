"""--weight-decay-on kernels: decoupled weight decay on the kernels only (timm's param_groups_weight_decay,
big_vision), as a mask over the flat parameter buffer; "all" (the default) is the update as it was."""
import json

import numpy as np
import pytest
from test_train import fmnist_dir, run  # noqa: F401  (fmnist_dir: the fixture of a small Fashion-MNIST)

import scratchvit as sv
from scratchvit import optim, settings


def model(**over):
    geometry = dict(image_size=16, patch_size=8, hidden_size=16, num_heads=2, num_layers=2, mlp_dim=32, num_classes=5)
    cfg = sv.get_config("ViT-Ti_16", **{**geometry, **over})
    return sv.ViT(cfg, seed=0, dtype="float64")


@pytest.mark.parametrize("over", [dict(classifier="token", representation_size=8),
                                  dict(patch_size=1, resnet=dict(num_layers=(1,), width_factor=0.5))])
def test_the_mask_covers_the_kernels_and_nothing_else(over):
    m = model(**over)
    mask = optim.decay_mask(m.layout, "kernels", m.xp, m.dtype)
    views = m.layout.views(mask)
    kernels = [k for k in views if k.endswith("/kernel")]
    assert "embedding/kernel" in kernels and "head/kernel" in kernels
    assert any("/conv" in k for k in kernels) == ("resnet" in over)
    for k, v in views.items():
        assert np.all(v == (1.0 if k in kernels else 0.0)), k
    assert mask.sum() == sum(m.params[k].size for k in kernels)  # the gaps between the arrays stay zero
    assert optim.decay_mask(m.layout, "all", m.xp, m.dtype) is None
    with pytest.raises(ValueError, match="weight decay acts on one of"):
        optim.decay_mask(m.layout, "biases", m.xp, m.dtype)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_only_the_kernels_decay(name, rng):
    m = model()
    mask = optim.decay_mask(m.layout, "kernels", m.xp, m.dtype)
    opt = optim.make_optimizer(name, weight_decay=0.1, decay_mask=mask)
    ref = optim.make_optimizer(name, weight_decay=0.1)
    plain = optim.make_optimizer(name, weight_decay=0.0)
    grads = rng.standard_normal(m.flat.shape) * m.layout.mask(lambda k: True, m.xp, m.dtype)
    before = {k: v.copy() for k, v in m.params.items()}
    flats = {}
    for label, o in (("masked", opt), ("all", ref), ("none", plain)):
        flat = m.flat.copy()
        state = o.init(flat)
        for lr in (0.1, 0.05):
            o.update(flat, grads, state, lr)
        flats[label] = m.layout.views(flat)
    for k in before:  # kernels move as with decay on everything, the rest as without decay
        want = flats["all" if k.endswith("/kernel") else "none"][k]
        np.testing.assert_allclose(flats["masked"][k], want, rtol=1e-15, atol=1e-17, err_msg=k)


def test_the_setting():
    s, _ = settings.resolve_settings(["--weight-decay-on", "kernels", "--weight-decay", "0.05"])
    assert (s.weight_decay_on, s.weight_decay) == ("kernels", 0.05)
    assert settings.TrainSettings().weight_decay_on == "all"
    with pytest.raises(ValueError, match="--weight-decay-on must be one of all, kernels"):
        settings.TrainSettings(weight_decay_on="norms")


def test_a_run_decays_its_kernels_only(fmnist_dir, tmp_path):  # noqa: F811
    """Two CLI runs that differ only in --weight-decay-on: decay 0.5 on everything multiplies the layer-norm
    scales (which start at 1, and whose gradients barely move them in 4 steps) by prod_t (1 - 0.5 lr_t); on the
    kernels only it leaves them at about 1."""
    common = ("--optimizer", "sgd", "--lr", "0.05", "--steps", "4", "--weight-decay", "0.5")
    assert run(fmnist_dir, tmp_path / "all", *common) == 0
    assert run(fmnist_dir, tmp_path / "kernels", *common, "--weight-decay-on", "kernels") == 0
    assert json.loads((tmp_path / "kernels" / "config.json").read_text())["settings"]["weight_decay_on"] == "kernels"
    shrink = np.prod([1 - 0.5 * optim.learning_rate(i, 0.05, 4, 2) for i in range(4)])  # TINY's warmup: 2 steps
    with np.load(tmp_path / "all" / "last.npz") as a, np.load(tmp_path / "kernels" / "last.npz") as b:
        scale = "Transformer/encoder_norm/scale"
        assert abs(a[scale].mean() - shrink) < 1e-3 and abs(b[scale].mean() - 1.0) < 1e-3, (a[scale], b[scale])
