"""Decoding image files into model-sized uint8 arrays: orientation, colour modes, resizes and crops.

Every function here reads one file and returns uint8 ``(S, S, 3)`` RGB pixels, ``S`` the model's
input side in pixels. Decoding applies the EXIF orientation (``ImageOps.exif_transpose``) and
converts every Pillow mode to RGB: transparent images (RGBA, LA, PA, palette or grey with a
transparency key) are composited on white; 16-bit grey is scaled to 8 bits (``>> 8``; 32-bit
integer grey too when it exceeds 255, float grey from [0, 1] when it fits); CMYK,
YCbCr, 1-bit and palette images go through Pillow's ``convert("RGB")``.

JPEGs are decoded at reduced size with Pillow's ``draft`` (the decoder's DCT scaling by 1/2, 1/4
or 1/8) whenever the pixels needed are still at least the output size, so a large photo costs
a fraction of a full decode. Resizes are Pillow's bilinear filter (antialiased when reducing),
applied to a float ``box`` so that cropping and resizing are one step.

- Evaluation (:func:`load_image`): the whole image resized to ``S x S``, as the official vit_jax
  input pipeline evaluates (``tf.image.resize(im, [crop_size, crop_size])``) and as the in-memory
  datasets are resized here.
- Training (:func:`train_image`): the Inception crop (``transforms.sample_inception_box``, the
  ViT paper's fine-tuning augmentation) or, for the other ``augment`` modes, a plain resize to
  ``S x S``, then the same flips / pad-crops as for arrays.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageOps

from ..checks import check_positive_int
from .transforms import AUGMENTS, pad_crop_batch, sample_inception_box

_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class BadImage(ValueError):
    """A file that cannot be decoded as an image; the message names the file."""


def _rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB (transparency composited on white, 16/32-bit grey scaled to 8 bits)."""
    if im.mode == "RGB" and "transparency" not in im.info:
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im).astype(np.float64)
        if im.mode.startswith("I;16"):
            a = a / 256.0  # 16-bit data: always >> 8, whatever the values of this image
        elif im.mode == "F":  # float: no bit depth to go by; [0, 1] if it fits, else taken as 0-255
            a = a * 255.0 if a.max(initial=0.0) <= 1.0 else a
        elif a.max(initial=0) > 255:  # "I" (32-bit int: older Pillows' 16-bit PNGs, int TIFFs): 16-bit if above 255
            a = a / 256.0
        grey = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2))
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _open(path, need_w: float, need_h: float) -> tuple[Image.Image, float, float]:
    """Decode ``path`` upright in RGB, at reduced size where the JPEG decoder allows.

    ``need_w x need_h`` is the smallest size, in pixels of the upright full-size image scaled
    down, that the caller needs; returns ``(image, sx, sy)`` with ``sx``, ``sy`` the factors
    from full-size upright coordinates to the returned image's.
    """
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
            if orientation in _TRANSPOSED:
                w, h = h, w
            if im.format == "JPEG":
                want = (math.ceil(need_w), math.ceil(need_h))
                im.draft("RGB", want[::-1] if orientation in _TRANSPOSED else want)
            out = _rgb(ImageOps.exif_transpose(im))
            out.load()
    except MemoryError:
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ... for bad files
        raise BadImage(f"{path}: cannot be read as an image ({type(e).__name__}: {e})") from e
    return out, out.width / w, out.height / h


def image_size_of(path) -> tuple[int, int]:
    """``(width, height)`` in pixels of the upright image (EXIF orientation applied), header only.

    Raises:
        BadImage: the file cannot be opened as an image.
    """
    try:
        with Image.open(path) as im:
            w, h = im.size
            return (h, w) if im.getexif().get(0x0112, 1) in _TRANSPOSED else (w, h)
    except Exception as e:
        raise BadImage(f"{path}: cannot be read as an image ({type(e).__name__}: {e})") from e


def _resize_box(im: Image.Image, size: int, box, sx: float, sy: float) -> np.ndarray:
    """Bilinear resize of ``box`` = (left, top, right, bottom) in full-size pixels to ``size x size``."""
    left, top, right, bottom = box
    return np.asarray(im.resize((size, size), Image.BILINEAR, box=(left * sx, top * sy, right * sx, bottom * sy)))


def load_image(path, image_size: int) -> np.ndarray:
    """The evaluation view of one image file: the whole upright image resized to ``S x S`` (bilinear).

    As the official ``vit_jax/input_pipeline.py: get_data`` evaluates ("usage of crop_size here is
    intentional": no centre crop, the aspect ratio not kept), and as the in-memory datasets
    (Fashion-MNIST, CIFAR) are resized by ``transforms.resize``.

    Args:
        path: an image file Pillow can read (JPEG, PNG, BMP, GIF, WebP, ...).
        image_size: output side ``S``, pixels.

    Returns:
        uint8 ``(S, S, 3)``, RGB.

    Raises:
        ValueError: ``image_size`` is not a positive int.
        BadImage (a ValueError): the file cannot be decoded; the message names it.
    """
    size = check_positive_int("image_size", image_size, unit="pixels")
    w, h = image_size_of(path)
    im, sx, sy = _open(path, size, size)
    return _resize_box(im, size, (0, 0, w, h), sx, sy)


def train_image(path, image_size: int, augment: str, rng: np.random.Generator,
                crop_min_area: float = 0.05, pad: int = 4) -> np.ndarray:
    """The training view of one image file, all randomness drawn from ``rng``.

    - ``"inception"``: a box from ``sample_inception_box`` (area ``crop_min_area``..1 of the
      upright image, aspect 3/4..4/3) resized to ``S x S``, then a flip with p = 0.5.
    - ``"flip"``: the whole image resized to ``S x S`` (aspect not kept), flip with p = 0.5.
    - ``"crop-flip"``: resized to ``S x S``, zero-padded by ``S // 8``, random crop, flip.
    - ``"pad-crop-flip"``: the same, zero-padded by ``pad`` pixels.
    - ``"none"``: the whole image resized to ``S x S``.

    Args:
        path: image file.
        image_size: output side ``S``, pixels.
        augment: one of ``AUGMENTS``.
        rng: the source of randomness (the result is fixed by its state and the file).
        crop_min_area: smallest Inception crop area, fraction of the image area, in (0, 1].
        pad: padding of "pad-crop-flip", pixels.

    Returns:
        uint8 ``(S, S, 3)``.

    Raises:
        ValueError: bad ``image_size``, ``augment`` or ``crop_min_area``.
        BadImage (a ValueError): the file cannot be decoded; the message names it.
    """
    size = check_positive_int("image_size", image_size, unit="pixels")
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    if augment == "inception":
        w, h = image_size_of(path)
        top, left, ch, cw = sample_inception_box(h, w, rng, (crop_min_area, 1.0))
        im, sx, sy = _open(path, w * size / cw, h * size / ch)
        out = _resize_box(im, size, (left, top, left + cw, top + ch), sx, sy)
    else:
        out = load_image(path, size)  # the whole image resized, as evaluation sees it
        if augment in ("crop-flip", "pad-crop-flip"):
            pad = size // 8 if augment == "crop-flip" else pad
            out = pad_crop_batch(out[None], pad, rng.integers(0, 2 * pad + 1, size=(1, 2)))[0]
    if augment != "none" and rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)
