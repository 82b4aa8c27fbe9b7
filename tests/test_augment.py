"""Augmentation for small images and the regularisation presets (issue 17): pad-crop-flip, random erasing,
mixup / CutMix with soft targets, in the loader (deterministic per (seed, step), whatever the workers), the
cifar10-scratch preset end to end on a synthetic CIFAR-10 archive, and a bit-exact resume with every
regulariser on."""
import json

import numpy as np
import pytest
from data_helpers import make_cifar10
from test_train import assert_resume_is_bit_exact

from scratchvit import settings, train
from scratchvit import step as sv_step
from scratchvit.data import Batches
from scratchvit.data.transforms import (
    ERASE_AREA,
    augment_batch,
    mix_batch,
    pad_crop_batch,
    random_erasing_batch,
    to_float,
)


def images(rng, n=8, size=8):
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# ------------------------------------------------------------------ transforms
def test_pad_crop_flip_crops_within_the_padding_and_is_fixed_by_the_generator(rng):
    x = images(rng, 16)
    a = augment_batch(x, 8, "pad-crop-flip", np.random.default_rng(3), pad=2)
    b = augment_batch(x, 8, "pad-crop-flip", np.random.default_rng(3), pad=2)
    np.testing.assert_array_equal(a, b)
    assert a.shape == x.shape
    # each output is a shifted (by at most 2 px), maybe flipped copy of its input, zeros where it left the image
    r = np.random.default_rng(3)
    offsets, flips = r.integers(0, 5, size=(16, 2)), r.random(16) < 0.5
    expected = pad_crop_batch(x, 2, offsets)
    expected[flips] = expected[flips, :, ::-1]
    np.testing.assert_array_equal(a, expected)
    assert not np.array_equal(a, x)
    # pad 0: only the flips
    c = augment_batch(x, 8, "pad-crop-flip", np.random.default_rng(4), pad=0)
    assert all(np.array_equal(c[i], x[i]) or np.array_equal(c[i], x[i, :, ::-1]) for i in range(16))


def test_random_erasing_rectangles_cover_2_to_33_percent_and_hold_random_values(rng):
    x = np.zeros((400, 32, 32, 3), np.float32)
    random_erasing_batch(x, 1.0, np.random.default_rng(0))
    changed = (x != 0).any(axis=3)
    fractions = changed.reshape(400, -1).mean(axis=1)
    erased = fractions > 0
    assert erased.mean() > 0.95  # every image but the few whose 10 draws did not fit
    assert fractions[erased].min() >= ERASE_AREA[0] * 0.7 and fractions[erased].max() <= ERASE_AREA[1] * 1.3
    assert x.min() >= -1 and x.max() <= 1 and abs(x[x != 0].mean()) < 0.05
    for i in np.flatnonzero(erased)[:20]:  # one rectangle
        rows, cols = np.flatnonzero(changed[i].any(1)), np.flatnonzero(changed[i].any(0))
        assert changed[i].sum() == len(rows) * len(cols) == (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
    y = np.zeros((1000, 8, 8, 3), np.float32)
    random_erasing_batch(y, 0.3, np.random.default_rng(1))
    assert abs((y != 0).any(axis=(1, 2, 3)).mean() - 0.3) < 0.06
    z = np.ones((3, 8, 8, 3), np.float32)
    assert random_erasing_batch(z, 0.0, np.random.default_rng(1)) is z and (z == 1).all()
    with pytest.raises(ValueError, match="p must be in"):
        random_erasing_batch(z, 1.5, rng)


@pytest.mark.parametrize("mixup,cutmix", [(0.4, 0.0), (0.0, 1.0)])
def test_mixup_and_cutmix_mix_images_and_targets_by_the_same_lambda(rng, mixup, cutmix):
    x = to_float(images(rng, 6, 16))
    labels = np.array([0, 1, 2, 3, 4, 0])
    mixed, t = mix_batch(x.copy(), labels, 5, mixup, cutmix, np.random.default_rng(9))
    assert t.shape == (6, 5) and t.dtype == np.float32
    np.testing.assert_allclose(t.sum(1), 1.0, rtol=1e-6)
    r = np.random.default_rng(9)
    lam = r.beta(mixup or cutmix, mixup or cutmix)
    perm = r.permutation(6)
    if mixup:
        np.testing.assert_allclose(mixed, lam * x + (1 - lam) * x[perm], rtol=1e-5, atol=1e-6)
    else:  # the pixels taken from x[perm] are the box: their share is 1 - lam'
        from_other = (mixed != x).any(axis=3)[0]
        lam = 1 - from_other.mean() if from_other.any() else 1.0
        assert (mixed[:, from_other] == x[perm][:, from_other]).all()
    expected = lam * np.eye(5)[labels] + (1 - lam) * np.eye(5)[labels[perm]]
    np.testing.assert_allclose(t, expected, atol=0.02 if cutmix else 1e-6)


def test_mixup_and_cutmix_both_on_take_each_about_half_the_batches(rng):
    x = to_float(images(rng, 4, 8))
    kinds = []
    for seed in range(200):
        mixed, _ = mix_batch(x.copy(), np.arange(4), 4, 0.5, 0.5, np.random.default_rng(seed))
        r = np.random.default_rng(seed)
        cut = r.random() < 0.5  # the switch coin: True is CutMix
        lam, perm = r.beta(0.5, 0.5), r.permutation(4)
        if cut:  # every pixel is the image's own or its partner's
            assert ((mixed == x) | (mixed == x[perm])).all()
        else:
            np.testing.assert_allclose(mixed, lam * x + (1 - lam) * x[perm], rtol=1e-5, atol=1e-6)
        kinds.append(cut)
    assert 70 < sum(kinds) < 130


def test_no_mixing_gives_one_hot_targets(rng):
    x = to_float(images(rng, 3, 8))
    out, t = mix_batch(x, np.array([2, 0, 1]), 3, 0.0, 0.0, rng)
    assert out is x
    np.testing.assert_array_equal(t, np.eye(3)[[2, 0, 1]])


# ------------------------------------------------------------------ the loader
def loader(x, y, **k):
    return Batches(x, y, 8, 8, train=True, augment="pad-crop-flip", seed=5, workers=1, **k)


def test_loader_regularisers_are_deterministic_per_step_and_worker_count(rng):
    x, y = images(rng, 40), rng.integers(0, 4, 40)
    k = dict(pad=2, random_erasing=0.5, mixup=0.3, cutmix=1.0, num_classes=4)
    a = loader(x, y, **k)
    b = Batches(x, y, 8, 8, train=True, augment="pad-crop-flip", seed=5, workers=3, start_step=7, **k)
    xa, ta = a.make_batch(7)
    with b:
        step, xb, tb = next(iter(b))
    assert step == 7
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ta, tb)
    assert ta.shape == (8, 4) and ta.dtype == np.float32
    sv_step.check_labels(ta, 4)
    xc, _ = a.make_batch(8)
    assert not np.array_equal(xa, xc)


def test_loader_with_the_regularisers_off_gives_the_batches_it_gave_before(rng):
    """The regularisers draw from a stream of their own: with them off (or present at 0), the crop and flip
    draws are those of augment_batch on the step's generator, as before."""
    x, y = images(rng, 40), rng.integers(0, 4, 40)
    plain = loader(x, y, pad=3)
    zeros = loader(x, y, pad=3, random_erasing=0.0, mixup=0.0, cutmix=0.0, num_classes=4)
    for s in (0, 6):
        xa, ya = plain.make_batch(s)
        xb, yb = zeros.make_batch(s)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        assert ya.dtype == np.int64
        epoch = s // plain.steps_per_epoch
        expected = augment_batch(x[plain.indices(s)], 8, "pad-crop-flip", np.random.default_rng([5, epoch, s]), pad=3)
        np.testing.assert_array_equal(xa, to_float(expected))
    # erasing only: the crop/flip part is unchanged where nothing was erased
    erased, _ = loader(x, y, pad=3, random_erasing=1.0).make_batch(0)
    assert (erased != plain.make_batch(0)[0]).any()


def test_evaluation_batches_are_never_regularised(rng):
    x, y = images(rng, 10), rng.integers(0, 4, 10)
    b = Batches(x, y, 4, 8, train=False, mixup=1.0, cutmix=1.0, random_erasing=1.0, num_classes=4, workers=1)
    xs, ys = b.make_batch(0)
    np.testing.assert_array_equal(xs, to_float(x[:4]))
    assert ys.dtype == np.int64


def test_loader_refuses_bad_regulariser_settings(rng):
    x, y = images(rng, 10), rng.integers(0, 4, 10)
    with pytest.raises(ValueError, match="num_classes"):
        Batches(x, y, 4, 8, mixup=0.2)
    with pytest.raises(ValueError, match="random_erasing"):
        Batches(x, y, 4, 8, random_erasing=2.0)
    with pytest.raises(ValueError, match="pad"):
        Batches(x, y, 4, 8, pad=-1)


# ------------------------------------------------------------------ settings, presets, end to end
@pytest.mark.parametrize("extra,msg", [(["--dropout", "1"], "--dropout"), (["--drop-path", "-0.1"], "--drop-path"),
                                       (["--mixup", "-1"], "--mixup"),
                                       (["--random-erasing", "1.5"], "--random-erasing")])
def test_bad_regulariser_flags_are_named(extra, msg):
    with pytest.raises(ValueError, match=msg):
        settings.resolve_settings(["--steps", "10", "--warmup-steps", "1", *extra])


@pytest.mark.parametrize("preset", ["cifar10-scratch", "fashion-mnist-long"])
def test_regularisation_presets_load_and_validate(preset):
    s, _ = settings.resolve_settings(["--config", preset])
    config = train.model_config(s, num_classes=10)
    assert config.image_size % config.patch_size == 0
    assert config.dropout_rate == s.dropout and config.drop_path_rate == s.drop_path


@pytest.fixture
def cifar_dir(tmp_path, isolated_data):
    make_cifar10(tmp_path / "cifar", n=8)  # 40 training images, 8 test images of 32 px
    return tmp_path / "cifar"


def test_cifar10_scratch_preset_runs_end_to_end(cifar_dir, tmp_path):
    """The preset as it is (32 px, patch 4, 6 blocks, mixup / CutMix, dropout, drop path), for 3 steps of 8."""
    out = tmp_path / "run"
    assert train.main(["--config", "cifar10-scratch", "--data-dir", str(cifar_dir), "--out", str(out),
                       "--steps", "3", "--warmup-steps", "1", "--batch-size", "8", "--eval-every", "3",
                       "--val-fraction", "0.2", "--no-progress", "--workers", "1"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_config"]["patch_size"] == 4 and cfg["model_config"]["drop_path_rate"] > 0
    assert cfg["settings"]["mixup"] > 0 and cfg["settings"]["augment"] == "pad-crop-flip"
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["split"] == "test" and np.isfinite(lines[-1]["loss"])


def test_resume_is_bit_exact_with_every_regulariser_on(cifar_dir, tmp_path, monkeypatch):
    args = ["--config", "fashion-mnist-vit",
            "--dataset", "cifar10", "--data-dir", str(cifar_dir), "--model", "ViT-Ti_16",
            "--image-size", "16",
            "--patch-size", "8", "--hidden-size", "16", "--num-layers", "2", "--num-heads", "2", "--mlp-dim", "32",
            "--batch-size", "8", "--warmup-steps", "1", "--steps", "6", "--eval-every", "3", "--no-progress",
            "--workers", "1", "--optimizer", "adamw", "--lr", "0.003", "--augment", "pad-crop-flip", "--pad", "2",
            "--random-erasing", "0.5", "--mixup", "0.8", "--cutmix", "1.0", "--label-smoothing", "0.1",
            "--dropout", "0.1", "--attention-dropout", "0.1", "--drop-path", "0.2", "--accum-steps", "2"]
    assert_resume_is_bit_exact(args, tmp_path, monkeypatch, stop_at=5)
