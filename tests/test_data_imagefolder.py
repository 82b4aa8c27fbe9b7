"""Tests of scratchvit.data: image folders (listing, ImageFiles), decoding files, streaming batches."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from data_helpers import write_image
from PIL import Image

from scratchvit.data import BadImage, Batches, ImageFiles, load_dataset, load_image, split_train_val, train_image
from scratchvit.data import images as I

pytestmark = pytest.mark.usefixtures("isolated_data")


def flat(h, w, colour):
    return np.full((h, w, 3), colour, np.uint8)


def make_folder(root, bad=True):
    """train/{cat,dog} and test/{cat,dog} in several formats, modes and sizes; returns the corrupt file."""
    write_image(root / "train" / "cat" / "a.JPG", flat(30, 40, (200, 100, 50)))
    write_image(root / "train" / "cat" / "b.png", np.full((25, 25), 90, np.uint8))  # L
    Image.new("P", (33, 21), 0).save(root / "train" / "cat" / "c.gif")
    write_image(root / "train" / "dog" / "d.bmp", flat(16, 48, (10, 20, 30)))
    write_image(root / "train" / "dog" / "e.webp", flat(40, 20, (0, 250, 0)))
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 3] = 0  # fully transparent -> white
    Image.fromarray(rgba, "RGBA").save(root / "train" / "dog" / "f.png")
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    write_image(root / "test" / "cat" / "g.jpeg", flat(50, 60, (200, 200, 200)))
    write_image(root / "test" / "dog" / "h.png", flat(12, 12, (5, 5, 5)))
    corrupt = root / "train" / "dog" / "z.jpg"
    if bad:
        corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    return corrupt


def test_imagefolder_lists_files_without_decoding(tmp_path):
    make_folder(tmp_path)
    lines = []
    ds = load_dataset("imagefolder", data_dir=tmp_path, image_size=16, log=lines.append)
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    assert isinstance(ds.train_images, ImageFiles) and len(ds.train_images) == 7 and len(ds.test_images) == 2
    assert [p.name for p in ds.train_images] == ["a.JPG", "b.png", "c.gif", "d.bmp", "e.webp", "f.png", "z.jpg"]
    np.testing.assert_array_equal(ds.train_labels, [0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(ds.test_labels, [0, 1])
    assert "7 train and 2 test files in 2 classes" in lines[0]
    sub = ds.train_images[np.array([4, 0])]
    assert isinstance(sub, ImageFiles) and [p.name for p in sub] == ["e.webp", "a.JPG"]
    assert ds.train_images[1].name == "b.png"
    (tx, ty), (vx, vy) = split_train_val(ds.train_images, ds.train_labels, 0.3, seed=0)
    assert isinstance(tx, ImageFiles) and len(tx) == 5 and len(vx) == 2
    assert sorted(map(str, list(tx) + list(vx))) == sorted(map(str, ds.train_images))
    with pytest.raises(ValueError, match=r"--image-size"):
        load_dataset("imagefolder", data_dir=tmp_path)


def test_imagefolder_folder_errors(tmp_path):
    make_folder(tmp_path)
    write_image(tmp_path / "test" / "bird" / "4.png", flat(8, 8, 0))
    with pytest.raises(ValueError, match=r"same class folders.*only in test: \['bird'\]"):
        load_dataset("imagefolder", data_dir=tmp_path, image_size=5)
    with pytest.raises(FileNotFoundError, match=r"train"):
        load_dataset("imagefolder", data_dir=tmp_path / "test", image_size=5)
    with pytest.raises(ValueError, match="needs data_dir"):
        load_dataset("imagefolder", image_size=5)


def test_every_mode_decodes_to_rgb(tmp_path):
    cases = {
        "rgb.jpg": (Image.fromarray(flat(30, 40, (200, 100, 50))), (200, 100, 50)),
        "grey.png": (Image.new("L", (25, 25), 90), (90, 90, 90)),
        "grey_alpha.png": (Image.new("LA", (20, 20), (90, 0)), (255, 255, 255)),
        "transparent.png": (Image.new("RGBA", (20, 30), (10, 20, 30, 0)), (255, 255, 255)),
        "opaque.png": (Image.new("RGBA", (20, 30), (10, 20, 30, 255)), (10, 20, 30)),
        "palette.gif": (Image.new("RGB", (33, 21), (200, 0, 0)).convert("P", palette=Image.ADAPTIVE), (200, 0, 0)),
        "palette.png": (Image.new("RGB", (33, 21), (0, 0, 200)).convert("P", palette=Image.ADAPTIVE), (0, 0, 200)),
        "sixteen.png": (Image.fromarray(np.full((20, 20), 100 * 256, np.uint16)), (100, 100, 100)),
        "sixteen_dark.png": (Image.fromarray(np.full((20, 20), 200, np.uint16)), (1, 1, 1)),  # 200 >> 8, not 200
        "cmyk.jpg": (Image.new("CMYK", (20, 20), (0, 0, 0, 0)), (255, 255, 255)),
    }
    keyed = Image.new("P", (20, 20), 1)
    keyed.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    keyed.save(tmp_path / "keyed.gif", transparency=1)  # palette index 1 is transparent -> white
    keyed.save(tmp_path / "keyed.png", transparency=1)
    cases["keyed.gif"] = cases["keyed.png"] = (None, (255, 255, 255))
    for name, (im, colour) in cases.items():
        if im is not None:
            im.save(tmp_path / name)
        out = load_image(tmp_path / name, 8)
        assert out.shape == (8, 8, 3) and out.dtype == np.uint8, name
        assert np.abs(out.astype(int) - colour).max() <= 3, (name, out[0, 0])


def test_exif_orientation_is_applied(tmp_path):
    raw = np.zeros((20, 40, 3), np.uint8)  # stored 40 wide, 20 tall: left half red, right half blue
    raw[:, :20] = (255, 0, 0)
    raw[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: the stored left edge becomes the top
    Image.fromarray(raw).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    assert I.image_size_of(tmp_path / "rot.jpg") == (20, 40)  # upright width x height
    out = train_image(tmp_path / "rot.jpg", 8, "none", np.random.default_rng(0)).astype(int)
    assert (out[:3, :, 0] > 200).all() and (out[:3, :, 2] < 60).all()  # top: red
    assert (out[-3:, :, 2] > 200).all() and (out[-3:, :, 0] < 60).all()  # bottom: blue


def test_eval_view_is_the_whole_image_resized(tmp_path):
    """As vit_jax's evaluation (tf.image.resize to crop_size): no centre crop, the aspect ratio not kept;
    the same pixels as the in-memory datasets' resize (Pillow bilinear)."""
    yy, xx = np.mgrid[0:50, 0:100]
    smooth = np.stack([xx * 2.5, yy * 5.0, (xx + yy) * 1.6], axis=-1).astype(np.uint8)  # 100 wide, 50 tall
    write_image(tmp_path / "g.png", smooth)
    out = load_image(tmp_path / "g.png", 14)
    np.testing.assert_array_equal(out, np.asarray(Image.fromarray(smooth).resize((14, 14), Image.BILINEAR)))
    with pytest.raises(ValueError, match=r"image_size must be a positive integer"):
        load_image(tmp_path / "g.png", 0)


def test_large_jpeg_is_decoded_at_reduced_size(tmp_path):
    write_image(tmp_path / "big.jpg", flat(1200, 1600, (30, 160, 90)))
    im, sx, sy = I._open(tmp_path / "big.jpg", 229, 229)
    assert im.size == (400, 300) and sx == sy == 0.25  # DCT scaling 1/4 keeps both sides >= 229
    out = load_image(tmp_path / "big.jpg", 200)
    assert out.shape == (200, 200, 3) and np.abs(out.astype(int) - (30, 160, 90)).max() <= 3


def test_corrupt_file_is_an_error_naming_it_or_skipped(tmp_path):
    corrupt = make_folder(tmp_path)
    with pytest.raises(BadImage, match=r"z\.jpg: cannot be read as an image"):
        load_image(corrupt, 8)
    ds = load_dataset("imagefolder", data_dir=tmp_path, image_size=8, log=lambda _: None)
    with pytest.raises(ValueError, match=r"z\.jpg: cannot be read"):
        list(Batches(ds.train_images, ds.train_labels, 4, 8, train=False))
    lines = []
    b = Batches(ds.train_images, ds.train_labels, 4, 8, train=False, skip_bad_images=True, log=lines.append)
    got = list(b)
    assert [len(y) for _, _, y in got] == [4, 2]  # the batch holding z.jpg is one image shorter
    np.testing.assert_array_equal(np.concatenate([y for _, _, y in got]), ds.train_labels[:6])
    assert b.skipped == 1 and len(lines) == 1 and "z.jpg" in lines[0]
    x = got[0][1]
    assert x.dtype == np.float32 and x.shape == (4, 8, 8, 3) and -1 <= x.min() and x.max() <= 1
    # the fully transparent f.png is white
    np.testing.assert_array_equal(got[1][1][1], np.ones((8, 8, 3), np.float32))


def test_file_batches_are_deterministic_whatever_the_workers(tmp_path):
    make_folder(tmp_path, bad=False)
    ds = load_dataset("imagefolder", data_dir=tmp_path, image_size=12, log=lambda _: None)
    files, labels = ds.train_images, ds.train_labels
    runs = []
    for workers, start in ((1, 0), (3, 0), (2, 4)):
        with Batches(files, labels, 3, 12, augment="inception", seed=5, start_step=start, workers=workers) as b:
            runs.append({s: (x, y) for s, x, y in take_steps(b, 6 - start)})
    for s in range(6):
        np.testing.assert_array_equal(runs[0][s][0], runs[1][s][0])
        np.testing.assert_array_equal(runs[0][s][1], runs[1][s][1])
    for s in range(4, 6):
        np.testing.assert_array_equal(runs[0][s][0], runs[2][s][0])
    assert runs[0][0][0].shape == (3, 12, 12, 3)
    for augment in ("flip", "crop-flip", "none"):
        with Batches(files, labels, 3, 12, augment=augment, seed=5) as b:
            (_, x, _), = take_steps(b, 1)
        assert x.shape == (3, 12, 12, 3) and x.dtype == np.float32


def take_steps(batches, count):
    out = []
    for item in batches:
        out.append(item)
        if len(out) == count:
            break
    return out


MEMORY_PROBE = textwrap.dedent("""
    import json, sys
    import numpy as np
    from PIL import Image
    from scratchvit.data import Batches, load_dataset
    root, n, side = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    ds = load_dataset("imagefolder", data_dir=root, image_size=32, log=lambda _: None)
    def status_kib(key):  # VmRSS: resident now; VmHWM: its peak. (ru_maxrss would keep the peak of
        with open("/proc/self/status") as f:  # the forked parent across exec on Linux.)
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))
    base = status_kib("VmRSS")
    if sys.argv[4] == "hold":  # the control: what holding the decoded folder costs
        held = [np.asarray(Image.open(p).convert("RGB")) for p in list(ds.train_images) + list(ds.test_images)]
    seen = 0
    with Batches(ds.train_images, ds.train_labels, 4, 32, augment="inception", workers=2) as b:
        for step, x, y in b:
            seen += len(y)
            if step == 4:
                break
    for _, x, y in Batches(ds.test_images, ds.test_labels, 4, 32, train=False, workers=2):
        seen += len(y)
    grown = status_kib("VmHWM") - base
    print(json.dumps({"seen": seen, "grown_kib": grown}))
""")


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the resident size from /proc (Linux)")
def test_a_folder_larger_than_the_memory_allowed_streams(tmp_path):
    n, side = 40, 1500  # 40 images of 1500 x 1500 x 3 = 6.75 MB each decoded, 270 MB in all
    yy, xx = np.mgrid[0:side, 0:side]
    base = ((xx // 100 + yy // 100) % 2 * 200).astype(np.uint8)  # big squares: tiny files
    for i in range(n):
        folder = tmp_path / ("train" if i < 30 else "test") / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        im = np.stack([base, np.full_like(base, 6 * i), 255 - base], axis=-1)
        Image.fromarray(im).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")
    r = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tmp_path), str(n), str(side), "stream"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["seen"] == 5 * 4 + 10
    # 40 images need 270 MB at full size (the "hold" control grows by ~330 MB); a few in flight
    # need ~7 MB each (streaming grew by ~40 MB when written).
    assert result["grown_kib"] < 100 * 1024, result
