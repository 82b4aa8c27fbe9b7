"""python -m scratchvit.predict: preprocessing, class names, text/JSON output, attention maps, bad input."""
import json

import numpy as np
import pytest
from PIL import Image

import scratchvit as sv
from scratchvit import predict
from scratchvit.predict import _load_image, main

S = 16


def write_run(tmp_path, rng, num_classes=3, names=("cat", "dog", "bird"), gelu="erf", config_json=True):
    """A checkpoint with random parameters and, optionally, the config.json a training run writes."""
    cfg = sv.get_config("ViT-Ti_16", image_size=S, patch_size=4, hidden_size=8, num_layers=2, num_heads=2,
                        mlp_dim=12, num_classes=num_classes)
    params = {k: rng.standard_normal(s) * 0.5 for k, s in sv.param_shapes(cfg).items()}
    ckpt = tmp_path / "run" / "best.npz"
    sv.save_checkpoint(ckpt, params)
    if config_json:
        (tmp_path / "run" / "config.json").write_text(json.dumps(
            {"settings": {"gelu": gelu}, "model_config": cfg.to_dict(), "class_names": list(names)}))
    return ckpt


def write_image(path, rng, size=(30, 20)):
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return str(path)


def test_load_image_resizes_the_whole_image(tmp_path):
    # 40 x 20 px: left quarter red, the rest blue. Resized whole to 16 x 16 (no crop, as vit_jax
    # evaluates): the left quarter (columns 0-3) stays red, columns 4-15 blue.
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :10, 0] = 255
    a[:, 10:, 2] = 255
    Image.fromarray(a).save(tmp_path / "wide.png")
    im = _load_image(tmp_path / "wide.png", S)
    assert im.shape == (S, S, 3) and im.dtype == np.uint8
    assert (im[:, :3, 0] > 250).all() and (im[:, :3, 2] < 5).all()
    assert (im[:, 5:, 2] > 250).all() and (im[:, 5:, 0] < 5).all()
    # A grey image with EXIF orientation 6 (rotate 90 degrees clockwise): the top row moves to the right.
    g = np.zeros((20, 40), np.uint8)
    g[:4] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(g).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    im = _load_image(tmp_path / "rot.jpg", S).astype(int)
    assert im[:, -1].mean() > 200 and im[:, 0].mean() < 50
    assert (im[..., 0] == im[..., 1]).all()  # grey -> RGB


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16", "CMYK"])
def test_load_image_converts_every_mode_to_rgb(tmp_path, rng, mode):
    """Every mode decodes to the pixels of the same picture in RGB (grey ones to its grey version;
    16-bit grey from values x 256; the palette image within its quantisation error)."""
    rgb = Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    grey = rgb.convert("L")
    if mode == "I;16":
        im = Image.fromarray(np.asarray(grey).astype(np.uint16) * 256)
    else:
        im = rgb.convert(mode)
    path = tmp_path / ("x.tiff" if mode in ("I;16", "CMYK") else "x.png")
    im.save(path)
    out = _load_image(path, S).astype(int)
    (tmp_path / "ref").mkdir()
    ref_im = grey if mode in ("L", "LA", "I;16") else rgb
    ref_im.save(tmp_path / "ref" / "x.png")
    ref = _load_image(tmp_path / "ref" / "x.png", S).astype(int)
    assert out.shape == (S, S, 3)
    if mode == "P":
        assert np.abs(out - ref).mean() < 12
    else:
        assert np.abs(out - ref).max() <= 1, mode


def test_text_output_uses_run_names_and_gelu(tmp_path, rng, capsys):
    ckpt = write_run(tmp_path, rng)
    files = [write_image(tmp_path / "a.png", rng), write_image(tmp_path / "b.jpg", rng, (17, 40))]
    assert main(["--checkpoint", str(ckpt), "--top-k", "2", *files]) == 0
    out = capsys.readouterr().out.splitlines()
    model = sv.ViT.from_checkpoint(ckpt, gelu="erf")
    x = (np.stack([_load_image(f, S) for f in files]).astype(np.float32) - 127.5) / 127.5
    probs = predict.softmax(model.forward(x))
    names = ["cat", "dog", "bird"]
    # the run's GELU (erf, from config.json) is used: the JSON probabilities are erf's, not tanh's
    assert main(["--checkpoint", str(ckpt), "--top-k", "3", "--json", *files]) == 0
    doc = json.loads(capsys.readouterr().out)
    got = np.array([[c["probability"] for c in sorted(p["top_k"], key=lambda c: c["class"])]
                    for p in doc["predictions"]])
    tanh = predict.softmax(sv.ViT.from_checkpoint(ckpt, gelu="tanh").forward(x))
    np.testing.assert_allclose(got, probs, rtol=1e-6)
    assert np.abs(got - tanh).max() > 10 * np.abs(got - probs).max()  # GELU forms differ ~1e-5 here
    assert out[0] == files[0] and out[3] == files[1] and len(out) == 6
    for i, lines in enumerate((out[1:3], out[4:6])):
        order = np.argsort(-probs[i])
        for rank, line in enumerate(lines):
            c = order[rank]
            assert line.split() == [f"{rank + 1}.", f"{100 * probs[i, c]:.2f}%", names[c], f"({c})"]


def test_json_output_and_labels_file(tmp_path, rng, capsys):
    ckpt = write_run(tmp_path, rng)
    (tmp_path / "names.txt").write_text("red\ngreen\nblue\n")
    f = write_image(tmp_path / "a.png", rng)
    assert main(["--checkpoint", str(ckpt), "--labels", str(tmp_path / "names.txt"), "--json", f]) == 0
    doc = json.loads(capsys.readouterr().out)
    top = doc["predictions"][0]["top_k"]
    assert doc["predictions"][0]["image"] == f and len(top) == 3  # top-k capped at K
    assert {t["name"] for t in top} == {"red", "green", "blue"}
    assert abs(sum(t["probability"] for t in top) - 1) < 1e-9
    assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)


def test_imagenet_names_for_1000_classes_and_fallback_names(tmp_path, rng, capsys):
    ckpt = write_run(tmp_path, rng, num_classes=1000, config_json=False)
    f = write_image(tmp_path / "a.png", rng)
    assert main(["--checkpoint", str(ckpt), "--top-k", "1", "--json", f]) == 0
    top = json.loads(capsys.readouterr().out)["predictions"][0]["top_k"][0]
    names = predict.IMAGENET_LABELS.read_text().splitlines()
    assert len(names) == 1000 and names[0] == "tench" and names[207] == "golden retriever"
    assert top["name"] == names[top["class"]]
    ckpt = write_run(tmp_path / "x", rng, num_classes=4, config_json=False)
    assert main(["--checkpoint", str(ckpt), "--top-k", "1", "--json", f]) == 0
    top = json.loads(capsys.readouterr().out)["predictions"][0]["top_k"][0]
    assert top["name"] == f"class {top['class']}"


def test_attention_map_png(tmp_path, rng, capsys):
    ckpt = write_run(tmp_path, rng)
    files = [write_image(tmp_path / f"{i}.png", rng) for i in range(2)]
    out = tmp_path / "map.png"
    assert main(["--checkpoint", str(ckpt), "--attention-map", str(out), *files]) == 0
    assert f"attention map: {out}" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.size == (2 * 224 + 8, 2 * (predict.CAPTION_HEIGHT + 224) + 8) and im.mode == "RGB"
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".png", ".tmp")) == ["0.png", "1.png", "map.png"]


def test_attention_map_rows_are_captioned_with_file_class_and_probability(tmp_path, rng, capsys):
    """Each row's caption names the image's file, its top class and that class's probability: the same as
    the predictions printed; the captions are drawn above the rows and kept in the PNG's text."""
    ckpt = write_run(tmp_path, rng)
    files = [write_image(tmp_path / name, rng) for name in ("boot.png", "bag.png")]
    out = tmp_path / "map.png"
    assert main(["--checkpoint", str(ckpt), "--attention-map", str(out), "--json", *files]) == 0
    tops = [p["top_k"][0] for p in json.loads(capsys.readouterr().out)["predictions"]]
    want = [f"{name}: {t['name']} {100 * t['probability']:.1f}%" for name, t in zip(("boot.png", "bag.png"), tops)]
    with Image.open(out) as im:
        assert im.text["Title"] == "attention rollout"
        assert im.text["Description"].splitlines() == want
        rgb = np.asarray(im.convert("RGB"))
    for row in range(2):  # each caption strip holds dark text on white
        top = row * (predict.CAPTION_HEIGHT + 224 + 8)
        strip = rgb[top:top + predict.CAPTION_HEIGHT]
        assert strip.min() < 100 and np.median(strip) == 255
    assert predict.caption("some/dir/cat.jpg", {"name": "tabby", "probability": 0.5}) == "cat.jpg: tabby 50.0%"


def test_long_captions_keep_their_class_and_probability():
    """A caption too wide for its row loses the middle of the file name, not the class and probability."""
    long = "a_very_long_file_name_of_a_photo_taken_on_holiday_in_2026.jpg: bag 91.2%"
    shown = predict.fit_caption(long, 456)
    assert len(shown) < len(long) and shown.startswith("a_very") and shown.endswith("2026.jpg: bag 91.2%")
    assert "..." in shown
    assert predict.fit_caption("boot.png: ankle boot 90.1%", 456) == "boot.png: ankle boot 90.1%"
    assert predict.fit_caption("x" * 500, 100).endswith("...")  # no file-name part: cut at the end
    strip = predict._caption_strip("x" * 500, 100)
    assert strip.shape == (predict.CAPTION_HEIGHT, 100, 3) and strip[:, -3:].min() == 255  # nothing drawn past the edge


@pytest.mark.parametrize("case", ["missing image", "unreadable image", "missing checkpoint", "nan checkpoint",
                                  "labels count", "config names count"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, rng, capsys, case):
    ckpt = write_run(tmp_path, rng)
    good = write_image(tmp_path / "a.png", rng)
    args = ["--checkpoint", str(ckpt), "--attention-map", str(tmp_path / "map.png")]
    if case == "missing image":
        args += [good, str(tmp_path / "nope.png")]
        want = "image not found"
    elif case == "unreadable image":
        (tmp_path / "bad.png").write_text("not an image")
        args += [good, str(tmp_path / "bad.png")]
        want = "bad.png: cannot be read as an image"
    elif case == "missing checkpoint":
        args = ["--checkpoint", str(tmp_path / "none.npz"), good]
        want = "checkpoint not found"
    elif case == "nan checkpoint":
        p = dict(np.load(ckpt))
        p["head/bias"] = p["head/bias"].copy()
        p["head/bias"][1] = np.nan
        np.savez(ckpt, **p)
        args += [good]
        want = "head/bias holds 1 NaN"
    elif case == "labels count":
        (tmp_path / "names.txt").write_text("a\nb\n")
        args += ["--labels", str(tmp_path / "names.txt"), good]
        want = "names 2 classes but the checkpoint has 3"
    else:
        ckpt = write_run(tmp_path, rng, names=("x", "y"))
        args += [good]
        want = "config.json names 2 classes"
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("predict: error: ") and want in err[0]
    assert not (tmp_path / "map.png").exists()


def test_command_line_errors(tmp_path, rng):
    ckpt = write_run(tmp_path, rng)
    f = write_image(tmp_path / "a.png", rng)
    for extra in (["--top-k", "0"], ["--attention-map", str(tmp_path / "m.jpg")]):
        with pytest.raises(SystemExit) as e:
            main(["--checkpoint", str(ckpt), *extra, f])
        assert e.value.code == 2


@pytest.mark.gpu
def test_predict_on_gpu_matches_cpu(tmp_path, rng, capsys):
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed: GPU tests need it and a CUDA GPU")
    if cupy.cuda.runtime.getDeviceCount() < 1:
        pytest.skip("no CUDA GPU visible to CuPy")
    ckpt = write_run(tmp_path, rng)
    f = write_image(tmp_path / "a.png", rng)
    docs = []
    for device in ("cpu", "gpu"):
        assert main(["--checkpoint", str(ckpt), "--json", "--device", device, f]) == 0
        docs.append(json.loads(capsys.readouterr().out)["predictions"][0]["top_k"])
    assert [t["class"] for t in docs[0]] == [t["class"] for t in docs[1]]
    np.testing.assert_allclose([t["probability"] for t in docs[0]], [t["probability"] for t in docs[1]], atol=1e-5)


def test_chunked_batches_give_the_one_batch_results(tmp_path, rng, monkeypatch):
    """predict and attention_map run BATCH images per forward pass: with BATCH = 2, five images give the
    same probabilities and maps as one pass over all five."""
    model = sv.ViT.from_checkpoint(write_run(tmp_path, rng), gelu="erf")
    images = rng.integers(0, 256, (5, S, S, 3), dtype=np.uint8)
    names = ["cat", "dog", "bird"]
    whole = predict.predict(model, images, names, top_k=3)
    whole_map = predict.attention_map(model, images)
    monkeypatch.setattr(predict, "BATCH", 2)
    chunked = predict.predict(model, images, names, top_k=3)
    for a, b in zip(whole, chunked, strict=True):
        assert [c["class"] for c in a] == [c["class"] for c in b]
        np.testing.assert_allclose([c["probability"] for c in a], [c["probability"] for c in b], rtol=1e-5)
    chunked_map = predict.attention_map(model, images).astype(int)  # float rounding differs with the batch
    assert chunked_map.shape == whole_map.shape and np.abs(chunked_map - whole_map).max() <= 1
    with pytest.raises(ValueError, match="2 class names for a model of 3 classes"):
        predict.predict(model, images, names[:2])


def test_predict_sees_what_evaluation_sees(tmp_path, rng, capsys):
    """The image a model is given is the whole file resized (data.resize), as evaluation gives it."""
    from scratchvit.data import resize

    ckpt = write_run(tmp_path, rng)
    f = write_image(tmp_path / "a.png", rng, (30, 20))
    view = resize(np.asarray(Image.open(f).convert("RGB")), S)
    np.testing.assert_array_equal(_load_image(f, S), view)
    assert main(["--checkpoint", str(ckpt), "--top-k", "3", "--json", f]) == 0
    top = json.loads(capsys.readouterr().out)["predictions"][0]["top_k"]
    got = [c["probability"] for c in sorted(top, key=lambda c: c["class"])]
    model = sv.ViT.from_checkpoint(ckpt, gelu="erf")
    want = predict.softmax(model.forward((view[None].astype(np.float32) - 127.5) / 127.5))[0]
    np.testing.assert_allclose(got, want, rtol=1e-5)
