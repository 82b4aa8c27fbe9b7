"""Everything that takes a ViT takes a hybrid (paper Sec. 3.1): train from scratch (--resnet), --resume bit for
bit, fine-tuning from a hybrid checkpoint, evaluate, predict --attention-map, inspect (the root's filters),
fp16 mixed precision."""
import json

import numpy as np
import pytest
from test_train import (
    fmnist_dir,  # noqa: F401  (fixture: a small Fashion-MNIST in IDX files)
    interrupt_on_call,
    metrics,
)

import scratchvit as sv
from scratchvit import accumulate, evaluate, optim, predict, settings, step, train

# 16 px -> root (width 32) -> 4x4 map -> block1 (1 unit: 128 channels, a projection) -> patch 1: 16 tokens
HYBRID = ["--config", "fashion-mnist-vit",
          "--model", "ViT-Ti_16", "--resnet", "1", "--resnet-width", "0.5", "--image-size", "16", "--patch-size", "1",
          "--hidden-size", "16", "--num-layers", "1", "--num-heads", "2", "--mlp-dim", "32", "--batch-size", "16",
          "--warmup-steps", "2", "--augment", "none", "--eval-every", "4", "--eval-batch-size", "64", "--no-progress",
          "--workers", "1"]


def run(fmnist_dir, out, *extra):  # noqa: F811
    return train.main(["--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir), "--out", str(out), *HYBRID,
                       *extra])


def test_resnet_flags_build_the_hybrid():
    s, _ = settings.resolve_settings(HYBRID)
    c = train.model_config(s, 10)
    assert c.resnet == sv.ResNetConfig((1,), 0.5) and (c.feature_size, c.grid_size) == (4, 4)
    vit = ["--config", "fashion-mnist-vit"]  # a preset without a ResNet (the default preset is a hybrid)
    s, _ = settings.resolve_settings([*vit, "--model", "R50+ViT-B_16", "--resnet", "root", "--image-size", "64"])
    assert train.model_config(s).resnet == sv.ResNetConfig((), 1)
    s, _ = settings.resolve_settings([*vit, "--model", "R50+ViT-B_16", "--resnet", "none", "--patch-size", "16",
                                      "--image-size", "64"])  # flags sit on the preset's 28 px
    assert train.model_config(s).resnet is None
    for bad, msg in ((["--resnet", "3,x"], "units per stage"), (["--resnet-width", "2"], "needs a ResNet"),
                     (["--resnet", "root", "--resnet-width", "0.3"], "multiple of 32")):
        s, _ = settings.resolve_settings([*vit, "--model", "ViT-Ti_16", *bad])
        with pytest.raises(ValueError, match=msg):
            train.model_config(s)


def test_train_evaluate_predict_a_hybrid_from_scratch(fmnist_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    assert run(fmnist_dir, out, "--optimizer", "adamw", "--lr", "0.003", "--steps", "12") == 0
    assert "ResNet (1,) width 32 -> 4x4 map" in capsys.readouterr().out
    train_loss = [r["loss"] for r in metrics(out) if r["split"] == "train"]
    assert train_loss[-1] < train_loss[0], train_loss
    model = sv.ViT.from_checkpoint(out / "best.npz")
    assert model.config.resnet == sv.ResNetConfig((1,), 0.5) and model.config.image_size == 16
    with np.load(out / "best.npz") as z:
        assert "block1/unit1/gn_proj/scale" in z.files and z["conv_root/kernel"].shape == (7, 7, 3, 32)
    capsys.readouterr()
    assert evaluate.main(["--checkpoint", str(out / "best.npz"), "--dataset", "fashion-mnist",
                          "--data-dir", str(fmnist_dir), "--json", str(tmp_path / "e.json")]) == 0
    assert np.array(json.loads((tmp_path / "e.json").read_text())["confusion_matrix"]).sum() == 100
    from PIL import Image

    files = []
    for i in range(2):
        files.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(files[-1])
    assert predict.main(["--checkpoint", str(out / "best.npz"), "--attention-map", str(tmp_path / "m.png"),
                         *files]) == 0
    assert f"attention map: {tmp_path / 'm.png'}" in capsys.readouterr().out


def test_resume_of_a_hybrid_is_bit_exact(fmnist_dir, tmp_path, monkeypatch):  # noqa: F811
    args = ("--optimizer", "sgd", "--lr", "0.05", "--steps", "6", "--accum-steps", "2")
    assert run(fmnist_dir, tmp_path / "straight", *args) == 0
    with monkeypatch.context() as m:
        interrupt_on_call(m, accumulate, "flat_loss_and_grads", 4)
        assert run(fmnist_dir, tmp_path / "stopped", *args) == 130
    assert train.main(["--out", str(tmp_path / "stopped"), "--resume", "--no-progress"]) == 0
    with np.load(tmp_path / "straight" / "last.npz") as a, np.load(tmp_path / "stopped" / "last.npz") as b:
        assert set(a.files) == set(b.files) and "conv_root/kernel" in a.files
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_fine_tune_a_hybrid_checkpoint_at_a_new_size(fmnist_dir, tmp_path):  # noqa: F811
    cfg = sv.get_config("ViT-Ti_16", image_size=16, patch_size=1, hidden_size=16, num_layers=1, num_heads=2,
                        mlp_dim=32, num_classes=7, representation_size=8, resnet=dict(num_layers=(), width_factor=0.5))
    sv.save_checkpoint(tmp_path / "pre.npz", sv.ViT(cfg, seed=0).params)
    out = tmp_path / "ft"
    assert train.main(["--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir), "--out", str(out),
                       "--checkpoint", str(tmp_path / "pre.npz"), "--image-size", "20", "--steps", "2",
                       "--batch-size", "8", "--warmup-steps", "1", "--eval-every", "2", "--no-progress",
                       "--augment", "none"]) == 0
    model = sv.ViT.from_checkpoint(out / "last.npz")
    # 20 px -> 10 -> 5 ('SAME'): a 5x5 grid; the inferred image size is the grid times the stride, 20
    assert model.config.grid_size == 5 and model.config.num_classes == 10 and model.config.image_size == 20
    assert model.config.representation_size is None and model.config.resnet == sv.ResNetConfig((), 0.5)


def test_inspect_draws_the_root_filters_of_a_hybrid(tmp_path, rng):
    pytest.importorskip("matplotlib")
    from scratchvit import inspect as si

    cfg = sv.get_config("R+ViT-Ti_16", image_size=32, patch_size=2, hidden_size=16, num_layers=2, num_heads=2,
                        mlp_dim=32, num_classes=3, resnet=dict(num_layers=(), width_factor=0.5))
    params = {k: rng.standard_normal(s) * 0.3 for k, s in sv.param_shapes(cfg).items()}
    sv.save_checkpoint(tmp_path / "h.npz", params)
    files = []
    from PIL import Image

    for i in range(2):
        files.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(files[-1])
    assert si.main(["--checkpoint", str(tmp_path / "h.npz"), "--out", str(tmp_path / "out"), *files]) == 0
    doc = json.loads((tmp_path / "out" / "inspect.json").read_text())
    assert doc["embedding_filters"]["kernel_shape"] == [7, 7, 3, 32]
    assert "ResNet" in doc["embedding_filters"]["method"]
    assert doc["position_similarity"]["grid"] == 4
    # patches are 8 px apart in the image (root stride 4 x patch 2): uniform attention spans their mean distance
    assert doc["attention_distance"]["uniform_over_patches_pixels"] == pytest.approx(
        float(si.patch_distances(4, 8).mean()))


def test_fp16_trains_a_hybrid_close_to_fp32(rng):
    """Mixed precision through the ResNet (group-norm statistics in float32): 6 steps of the same batches,
    the fp16 losses within 2% of fp32's, the masters float32."""
    cfg = sv.get_config("ViT-Ti_16", image_size=16, patch_size=1, hidden_size=16, num_layers=1, num_heads=2,
                        mlp_dim=32, num_classes=4, resnet=dict(num_layers=(1,), width_factor=0.5))
    images, labels = rng.uniform(-1, 1, (16, 16, 16, 3)).astype(np.float32), rng.integers(0, 4, 16)
    losses = {}
    for precision in ("fp32", "fp16"):
        model = sv.ViT(cfg, seed=0)
        opt = optim.make_optimizer("adamw")
        state = opt.init(model.flat)
        scale = step.LossScale() if precision == "fp16" else None
        losses[precision] = [step.train_step(model, opt, state, images, labels, 1e-3, precision=precision,
                                             loss_scale=scale, step=i).loss for i in range(6)]
        assert all(v.dtype == np.float32 for v in model.params.values())
    np.testing.assert_allclose(losses["fp16"], losses["fp32"], rtol=2e-2)
    assert losses["fp32"][-1] < losses["fp32"][0]


def test_the_quickstart_preset_is_the_hybrid():
    """fashion-mnist (the Quickstart, the preset without --config): the root turns 28 px into a 7x7 map, patch 1:
    49 tokens; 10 minutes of training; the rest of the recipe is the plain ViT preset's (fashion-mnist-vit)."""
    s, _ = settings.resolve_settings([])
    assert s == settings.resolve_settings(["--config", "fashion-mnist"])[0]
    c = train.model_config(s, num_classes=10)
    assert c.resnet == sv.ResNetConfig((), 0.5) and (c.feature_size, c.patch_size, c.seq_len) == (7, 1, 49)
    assert (s.time_limit, s.epochs) == (10, None)
    base, _ = settings.resolve_settings(["--config", "fashion-mnist-vit"])
    assert train.model_config(base, num_classes=10).resnet is None and (base.time_limit, base.epochs) == (None, 12)
    same = ("optimizer", "lr", "weight_decay", "schedule", "batch_size", "warmup_steps", "grad_clip",
            "label_smoothing", "augment", "dataset", "image_size", "classifier")
    assert all(getattr(s, k) == getattr(base, k) for k in same)
