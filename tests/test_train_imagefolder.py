"""Train and evaluate CLIs end to end on a folder of ordinary images of mixed sizes and modes.

Needs the streaming ``imagefolder`` loader (``load_dataset(..., image_size=, skip_bad_images=, log=)``).
"""
import json

import numpy as np
import pytest
from PIL import Image

import scratchvit as sv
from scratchvit import evaluate, train
from scratchvit.data import load_dataset

CLASSES = ("cat", "dog", "ship")


@pytest.fixture
def photo_dir(tmp_path):
    """ROOT/{train,test}/<class>/*: RGB, grey, RGBA and palette images, 20 to 70 px, non-square, JPEG and PNG;
    each class a different dominant colour so that the model can learn it."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for split, n in (("train", 12), ("test", 4)):
        for c, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                h, w = rng.integers(20, 70, 2)
                a = rng.integers(0, 80, (h, w, 3)).astype(np.uint8)
                a[..., c] += 170
                img = Image.fromarray(a)
                mode = ("RGB", "L", "RGBA", "P")[i % 4]
                img = img.convert(mode) if mode != "P" else img.quantize(16)
                img.save(d / f"{i}.{'jpg' if mode in ('RGB', 'L') else 'png'}")
    return root


def test_train_and_evaluate_on_mixed_size_photos(photo_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--config", "fashion-mnist-vit",
            "--dataset", "imagefolder", "--data-dir", str(photo_dir), "--out", str(out),
            "--image-size", "16",
            "--model", "ViT-Ti_16", "--patch-size", "8", "--hidden-size", "16", "--num-layers", "1", "--num-heads",
            "2", "--mlp-dim", "32", "--batch-size", "8", "--steps", "6", "--warmup-steps", "1", "--eval-every", "3",
            "--eval-batch-size", "8", "--val-fraction", "0.2", "--no-progress", "--workers", "1"]
    assert train.main(args) == 0, capsys.readouterr().err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["class_names"] == list(CLASSES) and cfg["model_config"]["image_size"] == 16
    assert sv.ViT.from_checkpoint(out / "best.npz").config.num_classes == 3
    capsys.readouterr()
    assert evaluate.main(["--checkpoint", str(out / "best.npz"), "--dataset", "imagefolder",
                          "--data-dir", str(photo_dir), "--json", str(tmp_path / "e.json")]) == 0
    e = json.loads((tmp_path / "e.json").read_text())
    assert np.array(e["confusion_matrix"]).sum() == 12 and set(e["per_class_accuracy"]) == set(CLASSES)


def test_a_bad_file_is_named_or_skipped(photo_dir, tmp_path, capsys):
    (photo_dir / "train" / "dog" / "broken.jpg").write_bytes(b"not an image")
    args = ["--config", "fashion-mnist-vit", "--dataset", "imagefolder", "--data-dir", str(photo_dir),
            "--out", str(tmp_path / "o"), "--image-size",
            "16", "--model", "ViT-Ti_16", "--patch-size", "8", "--hidden-size", "16", "--num-layers", "1",
            "--num-heads", "2", "--mlp-dim", "32", "--batch-size", "8", "--steps", "2", "--warmup-steps", "1",
            "--val-fraction", "0.05", "--no-progress", "--workers", "1", "--augment", "none"]
    assert train.main(args) == 2
    assert "broken.jpg" in capsys.readouterr().err
    assert train.main([*args, "--skip-bad-images", "--out", str(tmp_path / "o2")]) == 0



def test_evaluation_skipping_a_bad_file_scores_the_images_it_read(photo_dir, tmp_path):
    # The broken file sorts first in its class, so a skipped image shifts every later one in the set:
    # predictions must stay aligned with the labels of the images actually read.
    (photo_dir / "test" / "cat" / "0_broken.png").write_bytes(b"not an image")
    ds = load_dataset("imagefolder", data_dir=photo_dir, image_size=16, log=lambda m: None)
    cfg = sv.get_config("ViT-Ti_16", image_size=16, patch_size=8, hidden_size=16, num_layers=1, num_heads=2,
                        mlp_dim=32, num_classes=3)
    model = sv.ViT(cfg, seed=0, dtype="float64")
    rng = np.random.default_rng(1)
    model.params["head/kernel"][...] = rng.standard_normal(model.params["head/kernel"].shape)
    r = evaluate.evaluate(model, ds.test_images, ds.test_labels, batch_size=5, workers=1, skip_bad_images=True)
    good = np.array([not str(p).endswith("0_broken.png") for p in ds.test_images.paths])
    assert r["skipped"] == 1 and len(r["predictions"]) == len(r["labels"]) == good.sum()
    np.testing.assert_array_equal(r["labels"], ds.test_labels[good])
    # The same predictions as evaluating the good files alone.
    alone = evaluate.evaluate(model, ds.test_images[np.flatnonzero(good)], ds.test_labels[good], batch_size=5,
                              workers=1)
    np.testing.assert_array_equal(r["predictions"], alone["predictions"])
    assert r["accuracy"] == pytest.approx(alone["accuracy"]) and r["loss"] == pytest.approx(alone["loss"])
