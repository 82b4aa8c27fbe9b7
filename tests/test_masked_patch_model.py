"""Masked patch prediction in the model and the training CLI (paper Sec. 4.6, App. B.1.2): the model's
gradients in that mode, the strict device, checkpoints (read back; dropped at fine-tuning), pre-training then
fine-tuning end to end, bit-exact resume, the validation figures' fixed corruption."""
import json

import numpy as np
import pytest
from gradcheck import numerical_grad, relative_error, sample_indices
from test_train import assert_resume_is_bit_exact, fmnist_dir, metrics  # noqa: F401  (fmnist_dir: the fixture of a small Fashion-MNIST)

import scratchvit as sv
from scratchvit import checkpoint, evaluate, train


def mpp_config(classifier="token", channels=3):
    return sv.get_config("ViT-Ti_16", image_size=16, patch_size=4, hidden_size=16, num_heads=2, num_layers=2,
                         mlp_dim=32, num_classes=5, classifier=classifier, masked_patch=dict(channels=channels))


def perturbed(config, rng, device="cpu"):
    model = sv.ViT(config, seed=0, dtype="float64")
    for k in model.params:  # heads and the [mask] embedding start at zero: move every parameter off it
        model.params[k][...] += rng.standard_normal(model.params[k].shape) * 0.1
    if device == "cpu":
        return model
    return sv.ViT(config, dtype="float64", params={k: v.copy() for k, v in model.params.items()}, device=device)


def test_parameters_and_their_names(rng):
    c = mpp_config(channels=1)
    shapes = sv.params.param_shapes(c)
    assert shapes["mask_embedding"] == (1, 1, 16) and shapes["masked_patch_head/kernel"] == (16, 8)
    plain = sv.params.param_shapes(mpp_config().replace(masked_patch=None))
    assert set(shapes) - set(plain) == {"mask_embedding", "masked_patch_head/kernel", "masked_patch_head/bias"}
    assert all(sv.params.is_official_name(k) for k in shapes)
    with pytest.raises(ValueError, match="needs a plain ViT, and this model is a hybrid"):
        sv.get_config("R+ViT-Ti_16", masked_patch=dict(channels=3))


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_gradients_of_the_masked_patch_loss(rng, classifier):
    model = perturbed(mpp_config(classifier), rng)
    x, y = rng.uniform(-1, 1, (3, 16, 16, 3)), np.array([0, 1, 2])
    loss, g = model.loss_and_grads(x, y)
    assert np.all(g["head/kernel"] == 0) and np.all(g["head/bias"] == 0)  # the classifier is not trained
    names = ["mask_embedding", "masked_patch_head/kernel", "masked_patch_head/bias", "embedding/kernel",
             "Transformer/posembed_input/pos_embedding", "Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel",
             "Transformer/encoder_norm/scale"] + (["cls"] if classifier == "token" else [])
    for k in names:
        idx = sample_indices(model.params[k].size, 12, rng)
        _, num = numerical_grad(lambda: model.loss_and_grads(x, y)[0], model.params[k], idx)
        assert relative_error(g[k].reshape(-1)[idx], num) < 1e-6, k


def test_a_classification_pass_leaves_the_pretraining_parameters_alone(rng):
    model = perturbed(mpp_config(), rng)
    _, caches = model.forward(rng.uniform(-1, 1, (2, 16, 16, 3)), keep_cache=True)
    g = model.backward(np.ones((2, 5)), caches)
    assert all(np.all(g[k] == 0) for k in ("mask_embedding", "masked_patch_head/kernel", "masked_patch_head/bias"))


def test_on_the_device_equals_numpy(rng):
    from strict_device import to_host

    host = perturbed(mpp_config(), np.random.default_rng(3))
    dev = perturbed(mpp_config(), np.random.default_rng(3), device="strict")
    x, y = rng.uniform(-1, 1, (3, 16, 16, 3)), np.array([0, 1, 2])
    loss_h, g_h = host.loss_and_grads(x, y)
    loss_d, g_d = dev.loss_and_grads(x, y)
    assert loss_d == pytest.approx(loss_h, rel=1e-12)
    for k in g_h:
        if k.endswith("key/bias"):  # rounding noise on both sides (softmax ignores a shared shift)
            continue
        scale = max(np.abs(g_h[k]).max(), 1e-300)
        assert np.abs(to_host(g_d[k]) - g_h[k]).max() <= 1e-12 * scale, k
    m_h, m_d = host.masked_patch_metrics(x, sv.ops.RngKey(1, 0)), dev.masked_patch_metrics(x, sv.ops.RngKey(1, 0))
    assert float(to_host(m_d[0])) == pytest.approx(float(m_h[0]), rel=1e-12) and float(to_host(m_d[1])) == float(m_h[1])


def test_checkpoints_keep_it_and_fine_tuning_drops_it(rng, tmp_path):
    model = perturbed(mpp_config(channels=1), rng)
    sv.save_checkpoint(tmp_path / "pre.npz", model.params)
    back = sv.ViT.from_checkpoint(tmp_path / "pre.npz")
    assert back.config.masked_patch == sv.configs.MaskedPatchConfig(channels=1)
    lines = []
    ft = sv.ViT.from_checkpoint(tmp_path / "pre.npz", num_classes=3, new_head=True, log=lines.append)
    assert ft.config.masked_patch is None and "mask_embedding" not in ft.params
    assert lines == [f"{tmp_path / 'pre.npz'}: masked-patch pre-training checkpoint: its [mask] embedding and "
                     "masked_patch_head are dropped for fine-tuning"]
    np.testing.assert_array_equal(ft.params["embedding/kernel"], back.params["embedding/kernel"])
    with np.load(tmp_path / "pre.npz") as z:
        bad = {k: z[k] for k in z.files}
    bad["masked_patch_head/bias"] = np.zeros(7, np.float32)
    bad["masked_patch_head/kernel"] = np.zeros((16, 7), np.float32)
    with pytest.raises(ValueError, match="has 7 classes, expected 512"):
        checkpoint.infer_config(bad)


FAST = ["--config", "fashion-mnist-vit",
        "--dataset", "fashion-mnist", "--model", "ViT-Ti_16", "--image-size", "16", "--patch-size", "4",
        "--hidden-size", "16", "--num-layers", "1", "--num-heads", "2", "--mlp-dim", "32", "--batch-size", "16",
        "--augment", "none", "--eval-batch-size", "64", "--no-progress", "--workers", "1", "--eval-every", "5",
        "--warmup-steps", "2", "--optimizer", "adamw", "--lr", "0.01"]


def test_pre_train_then_fine_tune(fmnist_dir, tmp_path, capsys):  # noqa: F811
    pre, ft = tmp_path / "pre", tmp_path / "ft"
    assert train.main([*FAST, "--data-dir", str(fmnist_dir), "--out", str(pre), "--objective", "masked-patch",
                       "--steps", "20"]) == 0
    out = capsys.readouterr().out
    assert "objective masked-patch (labels unused" in out and "each predicted as one of 8 mean colours" in out
    assert "done: test masked-patch accuracy" in out
    m = metrics(pre)
    assert all(r["objective"] == "masked-patch" for r in m) and {r["split"] for r in m} == {"train", "val", "test"}
    losses = [r["loss"] for r in m if r["split"] == "train"]
    assert losses[-1] < losses[0]  # it learns the colours
    cfg = json.loads((pre / "config.json").read_text())
    assert cfg["model_config"]["masked_patch"]["channels"] == 1
    with np.load(pre / "last.npz") as z:
        assert {"mask_embedding", "masked_patch_head/kernel", "masked_patch_head/bias"} <= set(z.files)
    assert train.main([*FAST, "--data-dir", str(fmnist_dir), "--out", str(ft), "--checkpoint",
                       str(pre / "last.npz"), "--steps", "5"]) == 0
    assert "masked_patch_head are dropped for fine-tuning" in capsys.readouterr().out
    with np.load(ft / "last.npz") as z:
        assert "mask_embedding" not in z.files
    with np.load(pre / "last.npz") as a, np.load(ft / "state.npz") as b:
        assert a["embedding/kernel"].shape == b["params/embedding/kernel"].shape


def test_masked_patch_resume_is_bit_exact(fmnist_dir, tmp_path, monkeypatch):  # noqa: F811
    args = [*FAST, "--data-dir", str(fmnist_dir), "--objective", "masked-patch", "--steps", "8", "--accum-steps", "2"]
    assert_resume_is_bit_exact(args, tmp_path, monkeypatch, stop_at=7)


def test_a_masked_patch_option_that_cannot_work_is_named():
    with pytest.raises(ValueError, match="--objective masked-patch pre-trains a model from scratch"):
        sv.settings.TrainSettings(objective="masked-patch", checkpoint="x.npz")
    with pytest.raises(ValueError, match="--mask-ratio must lie in"):
        sv.settings.TrainSettings(objective="masked-patch", mask_fraction=0.9, random_fraction=0.2)


def test_validation_sees_the_same_corruption_every_time(rng):
    model = perturbed(mpp_config(), rng).cast("float32")
    images = rng.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    a = evaluate.evaluate_masked_patch(model, images, batch_size=4, seed=3, workers=1)
    b = evaluate.evaluate_masked_patch(model, images, batch_size=10, seed=3, workers=1)
    assert a["images"] == 10 and a["loss"] == pytest.approx(b["loss"], rel=1e-6)  # batching does not change it
    assert a["accuracy"] == pytest.approx(b["accuracy"])
    c = evaluate.evaluate_masked_patch(model, images, batch_size=4, seed=4, workers=1)
    assert c["loss"] != a["loss"]  # another seed, another corruption


def test_colour_of_class_inverts_the_targets():
    from scratchvit.inspect import colour_of_class

    for channels, n in ((3, 512), (1, 8)):
        classes = np.arange(n)
        rgb = colour_of_class(classes, channels)  # (n, 3) in [0, 1]
        images = np.broadcast_to(rgb[:, None, None, :] * 2 - 1, (n, 4, 4, 3))
        np.testing.assert_array_equal(sv.ops.colour_targets(images, 4, channels)[:, 0], classes)


def test_inspect_draws_what_the_pre_training_predicts(fmnist_dir, tmp_path, capsys):  # noqa: F811
    pytest.importorskip("matplotlib", reason="inspect draws with matplotlib (the [plot] extra)")
    from scratchvit import inspect

    pre = tmp_path / "pre"
    assert train.main([*FAST, "--data-dir", str(fmnist_dir), "--out", str(pre), "--objective", "masked-patch",
                       "--steps", "5"]) == 0
    out = tmp_path / "insp"
    assert inspect.main(["--checkpoint", str(pre / "last.npz"), "--dataset", "fashion-mnist", "--data-dir",
                         str(fmnist_dir), "--out", str(out), "--images", "8"]) == 0
    assert f"wrote {out / 'masked_patch.png'}" in capsys.readouterr().out
    assert (out / "masked_patch.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((out / "inspect.json").read_text())["masked_patch"]
    assert doc["images"] == 6 and 0 <= doc["accuracy"] <= 1
    model = sv.ViT.from_checkpoint(pre / "last.npz")
    black = -np.ones((2, 16, 16, 3), np.float32)
    panels = inspect.masked_patch_panels(model, black)
    assert panels["corrupted"].shape == (2, 16, 16, 3)
    masked = model.masked_patch_task(black, sv.ops.RngKey(0, 0))[0].use_mask  # the validation's corruption
    tiles = panels["corrupted"].reshape(2, 4, 4, 4, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 16, 4, 4, 3)
    assert masked.sum() > 0 and np.all(tiles[masked > 0] == 0.5) and np.all(tiles[masked == 0] == 0.0)
