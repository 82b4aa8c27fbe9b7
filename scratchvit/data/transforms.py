"""Image transforms on uint8 HWC NumPy arrays: resize, Inception crop, flips, pad-crop, scaling to [-1, 1];
and the batch regularisers on the float batch: random erasing, mixup and CutMix (soft targets).

Everything here works on ``uint8`` images of shape ``(H, W, 3)`` (one image) or
``(B, H, W, 3)`` (a batch); sizes are in pixels. Resizing is Pillow's bilinear filter and is
skipped (no copy, no Pillow round-trip) when the image already has the target size.
Only :func:`to_float` and :func:`to_model_input` produce floats: ``float32`` in [-1, 1],
``(x - 127.5) / 127.5``, as the official ``vit_jax`` input pipeline.

Randomness always comes from a ``numpy.random.Generator`` passed in by the caller, so a
result is fixed by the generator's state.

Random erasing (:func:`random_erasing_batch`, Zhong et al., AAAI 2020), mixup (Zhang et al., ICLR 2018)
and CutMix (Yun et al., ICCV 2019) (:func:`mix_batch`) work on the float32 batch in [-1, 1], after the
crop and flip, in that order (as timm: erasing per image in the transform, mixing per batch after).
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

from ..checks import check_positive_int

AUGMENTS = ("inception", "flip", "crop-flip", "pad-crop-flip", "none")
ERASE_AREA = (0.02, 1 / 3)  # random erasing: area of the rectangle, fraction of the image (Zhong et al. s_l, s_h)
ERASE_ASPECT = (0.3, 1 / 0.3)  # its aspect ratio h / w (Zhong et al. r_1, 1 / r_1)
ERASE_ATTEMPTS = 10  # draws of (area, aspect) before an image is left as it is (timm / torchvision: 10)


def _describe(a) -> str:
    return f"{a.dtype} array of shape {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__


def _check_image(image, what="image"):
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{what} must be a uint8 array of shape (H, W, 3), got {_describe(image)}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{what} is empty: shape {image.shape}")


def _check_batch(images, what="images"):
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"{what} must be a uint8 array of shape (B, H, W, 3), got {_describe(images)}")


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize one image to ``size x size`` pixels with Pillow's bilinear filter.

    Args:
        image: uint8 array ``(H, W, 3)``.
        size: output side, pixels.

    Returns:
        uint8 array ``(size, size, 3)``; ``image`` itself (no copy) when ``H == W == size``.

    Raises:
        ValueError: ``image`` is not a non-empty uint8 ``(H, W, 3)`` array, or ``size`` < 1.
    """
    _check_image(image)
    check_positive_int("size", size, unit="pixels")
    if image.shape[0] == size and image.shape[1] == size:
        return image
    pil = Image.fromarray(np.ascontiguousarray(image))
    return np.asarray(pil.resize((size, size), Image.BILINEAR))


def resize_batch(images: np.ndarray, size: int, map_fn=map) -> np.ndarray:
    """Resize every image of a batch to ``size x size`` pixels (bilinear, Pillow).

    Args:
        images: uint8 array ``(B, H, W, 3)``.
        size: output side, pixels.
        map_fn: a ``map``-like callable used for the per-image work, e.g. a thread pool's
            ``map`` (Pillow releases the GIL); the result does not depend on it.

    Returns:
        uint8 array ``(B, size, size, 3)``; ``images`` itself when ``H == W == size``.

    Raises:
        ValueError: ``images`` is not a uint8 ``(B, H, W, 3)`` array, or ``size`` < 1.
    """
    _check_batch(images)
    check_positive_int("size", size, unit="pixels")
    if images.shape[1] == size and images.shape[2] == size:
        return images
    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, im in enumerate(map_fn(lambda im: resize(im, size), images)):
        out[i] = im
    return out


def to_float(images: np.ndarray) -> np.ndarray:
    """Scale uint8 pixels to float32 in [-1, 1]: ``(x - 127.5) / 127.5``.

    0 maps to exactly -1.0 and 255 to exactly 1.0.

    Args:
        images: uint8 array of any shape.

    Returns:
        float32 array of the same shape.

    Raises:
        ValueError: ``images`` is not a uint8 array.
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise ValueError(f"to_float expects a uint8 array, got {getattr(images, 'dtype', type(images).__name__)}")
    out = np.subtract(images, np.float32(127.5), dtype=np.float32)
    out /= np.float32(127.5)
    return out


def to_model_input(images: np.ndarray, image_size: int, map_fn=map) -> np.ndarray:
    """The evaluation transform: plain bilinear resize to ``image_size``, then scale to [-1, 1].

    Args:
        images: uint8 array ``(B, H, W, 3)``.
        image_size: side of the model's square input, pixels.
        map_fn: ``map``-like callable for the per-image resizes (see :func:`resize_batch`).

    Returns:
        float32 array ``(B, image_size, image_size, 3)`` in [-1, 1].

    Raises:
        ValueError: ``images`` is not a uint8 ``(B, H, W, 3)`` array, or ``image_size`` < 1.
    """
    return to_float(resize_batch(images, image_size, map_fn))


def sample_inception_box(height: int, width: int, rng: np.random.Generator,
                         area_range=(0.05, 1.0), aspect_range=(3 / 4, 4 / 3),
                         max_attempts: int = 100) -> tuple[int, int, int, int]:
    """Sample an Inception-style crop box, as ``tf.image.sample_distorted_bounding_box``.

    Follows TensorFlow's ``GenerateRandomCrop`` (used by the official ``vit_jax`` input
    pipeline with ``area_range=(0.05, 1.0)``, ``min_object_covered=0``): per attempt an
    aspect ratio w/h is drawn uniformly from ``aspect_range``, then a crop height uniformly
    among the integer heights whose area lies in ``area_range`` (fractions of H*W), then a
    uniform position. After ``max_attempts`` failed attempts the whole image is used.
    TensorFlow's default ``max_attempts`` is 100; failures are rare, so it seldom matters.

    Args:
        height, width: image size, pixels (>= 1).
        rng: the source of randomness.
        area_range: (min, max) crop area as fractions of the image area, 0 < min <= max <= 1.
        aspect_range: (min, max) crop aspect ratio width/height, 0 < min <= max.
        max_attempts: attempts before falling back to the whole image (>= 1).

    Returns:
        ``(top, left, crop_height, crop_width)`` in pixels, inside the image.

    Raises:
        ValueError: a size < 1 or a range outside the limits above.
    """
    check_positive_int("height", height, unit="pixels")
    check_positive_int("width", width, unit="pixels")
    lo_area, hi_area = (float(a) for a in area_range)
    lo_ar, hi_ar = (float(a) for a in aspect_range)
    if not 0.0 < lo_area <= hi_area <= 1.0:
        raise ValueError(f"area_range must satisfy 0 < min <= max <= 1, got {tuple(area_range)}")
    if not 0.0 < lo_ar <= hi_ar:
        raise ValueError(f"aspect_range must satisfy 0 < min <= max, got {tuple(aspect_range)}")
    check_positive_int("max_attempts", max_attempts)
    min_area = lo_area * width * height
    max_area = hi_area * width * height
    for _ in range(max_attempts):
        ar = lo_ar + rng.random() * (hi_ar - lo_ar)
        h = round(math.sqrt(min_area / ar))  # round() is half-to-even, like lrintf
        max_h = round(math.sqrt(max_area / ar))
        if round(max_h * ar) > width:  # the largest height whose rounded width still fits
            max_h = int((width + 0.5 - 1e-7) / ar)
            if round(max_h * ar) > width:
                max_h -= 1
        max_h = min(max_h, height)
        h = min(h, max_h)
        if h < max_h:
            h += int(rng.integers(max_h - h + 1))
        w = round(h * ar)
        if w * h < min_area:  # nudge past rounding errors, as TensorFlow does
            h += 1
            w = round(h * ar)
        if w * h > max_area:
            h -= 1
            w = round(h * ar)
        if not (min_area <= w * h <= max_area and 0 < w <= width and 0 < h <= height):
            continue
        # TensorFlow draws offsets with Uniform(n), i.e. in [0, n): the last offset is never used.
        top = int(rng.integers(height - h)) if h < height else 0
        left = int(rng.integers(width - w)) if w < width else 0
        return top, left, h, w
    return 0, 0, height, width


def inception_crop(image: np.ndarray, size: int, rng: np.random.Generator,
                   area_range=(0.05, 1.0), aspect_range=(3 / 4, 4 / 3),
                   max_attempts: int = 100) -> np.ndarray:
    """Inception-style random resized crop: a box from :func:`sample_inception_box`, resized.

    Args:
        image: uint8 array ``(H, W, 3)``.
        size: output side, pixels.
        rng: the source of randomness (the result is fixed by its state).
        area_range, aspect_range, max_attempts: see :func:`sample_inception_box`.

    Returns:
        uint8 array ``(size, size, 3)``.

    Raises:
        ValueError: bad ``image``, ``size`` or ranges.
    """
    _check_image(image)
    top, left, h, w = sample_inception_box(image.shape[0], image.shape[1], rng, area_range,
                                           aspect_range, max_attempts)
    return resize(image[top:top + h, left:left + w], size)


def random_flip(image: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """Flip one image left-right with probability ``p``.

    Args:
        image: uint8 array ``(H, W, 3)``.
        rng: the source of randomness (one ``rng.random()`` draw).
        p: flip probability in [0, 1].

    Returns:
        uint8 array ``(H, W, 3)``: a flipped view of ``image``, or ``image`` itself.

    Raises:
        ValueError: bad ``image`` or ``p`` outside [0, 1].
    """
    _check_image(image)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    return image[:, ::-1] if rng.random() < p else image


def pad_crop_batch(images: np.ndarray, pad: int, offsets: np.ndarray) -> np.ndarray:
    """Zero-pad each image by ``pad`` pixels on every side, then crop back to the input size.

    Args:
        images: uint8 array ``(B, H, W, 3)``.
        pad: padding, pixels (>= 0).
        offsets: int array ``(B, 2)`` of (top, left) crop offsets in the padded image, each
            in ``[0, 2 * pad]``; ``(pad, pad)`` gives the image back unchanged.

    Returns:
        uint8 array ``(B, H, W, 3)``.

    Raises:
        ValueError: bad ``images``, negative ``pad``, or offsets of the wrong shape or range.
    """
    _check_batch(images)
    offsets = np.asarray(offsets)
    if pad < 0:
        raise ValueError(f"pad must be >= 0 pixels, got {pad}")
    if offsets.shape != (len(images), 2) or offsets.min(initial=0) < 0 or offsets.max(initial=0) > 2 * pad:
        raise ValueError(f"offsets must be a ({len(images)}, 2) int array in [0, {2 * pad}], "
                         f"got shape {offsets.shape}")
    if pad == 0:
        return images
    b, h, w, c = images.shape
    padded = np.zeros((b, h + 2 * pad, w + 2 * pad, c), np.uint8)
    padded[:, pad:pad + h, pad:pad + w] = images
    out = np.empty_like(images)
    for i, (top, left) in enumerate(offsets):
        out[i] = padded[i, top:top + h, left:left + w]
    return out


def augment_batch(images: np.ndarray, image_size: int, augment: str, rng: np.random.Generator,
                  crop_min_area: float = 0.05, map_fn=map, pad: int = 4) -> np.ndarray:
    """The training transform of one batch, all randomness drawn from ``rng``.

    ``augment`` is one of :data:`AUGMENTS`:

    - ``"inception"``: Inception crop (area ``crop_min_area``..100 %, aspect 3/4..4/3) resized
      to ``image_size``, then a flip with p = 0.5 (the ViT paper's fine-tuning default).
    - ``"flip"``: resize to ``image_size``, then a flip with p = 0.5.
    - ``"crop-flip"``: resize, zero-pad by ``image_size // 8`` px, random crop back to
      ``image_size``, flip with p = 0.5 (the usual small-image augmentation).
    - ``"pad-crop-flip"``: the same with ``pad`` px of padding (default 4, the CIFAR recipe of
      He et al. 2016 and DeiT-style small-image training).
    - ``"none"``: resize only.

    The random draws happen in a fixed order in the calling thread (crop boxes of images
    0..B-1, then flips), so the result does not depend on ``map_fn``, which only runs the
    Pillow work.

    Args:
        images: uint8 array ``(B, H, W, 3)``.
        image_size: output side, pixels.
        augment: one of :data:`AUGMENTS`.
        rng: the source of randomness.
        crop_min_area: smallest Inception crop area, a fraction of the image area in (0, 1].
        map_fn: ``map``-like callable for per-image resizes (a thread pool's ``map``).
        pad: padding of "pad-crop-flip", pixels (>= 0).

    Returns:
        uint8 array ``(B, image_size, image_size, 3)`` (may be ``images`` itself for "none"
        at the same size).

    Raises:
        ValueError: unknown ``augment``, bad ``images``, ``image_size``, ``crop_min_area`` or ``pad``.
    """
    _check_batch(images)
    check_positive_int("image_size", image_size, unit="pixels")
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    b, height, width, _ = images.shape
    if augment == "none":
        return resize_batch(images, image_size, map_fn)
    if augment == "inception":
        boxes = [sample_inception_box(height, width, rng, (crop_min_area, 1.0)) for _ in range(b)]

        def crop_resize(i):
            top, left, h, w = boxes[i]
            return resize(images[i, top:top + h, left:left + w], image_size)

        out = np.empty((b, image_size, image_size, 3), np.uint8)
        for i, crop in enumerate(map_fn(crop_resize, range(b))):
            out[i] = crop
    else:
        out = resize_batch(images, image_size, map_fn)
        if augment in ("crop-flip", "pad-crop-flip"):
            pad = image_size // 8 if augment == "crop-flip" else pad
            out = pad_crop_batch(out, pad, rng.integers(0, 2 * pad + 1, size=(b, 2)))
    flips = rng.random(b) < 0.5
    if flips.any():
        if out is images:
            out = out.copy()
        out[flips] = out[flips, :, ::-1]
    return out


def erase_box(height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int] | None:
    """A random-erasing rectangle (Zhong et al., AAAI 2020, Alg. 1): area S_e ~ U(0.02, 1/3) of the image,
    aspect r_e = h / w ~ U(0.3, 1/0.3), h = round(sqrt(S_e r_e)), w = round(sqrt(S_e / r_e)), a uniform
    position where it fits; up to :data:`ERASE_ATTEMPTS` draws (the paper repeats until one fits).

    Returns:
        ``(top, left, h, w)`` in pixels, or None when no draw fitted.
    """
    for _ in range(ERASE_ATTEMPTS):
        area = rng.uniform(*ERASE_AREA) * height * width
        aspect = rng.uniform(*ERASE_ASPECT)
        h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < h < height and 0 < w < width:
            return int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1)), h, w
    return None


def random_erasing_batch(x: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Random erasing (Zhong et al., AAAI 2020): each image, with probability ``p``, gets one rectangle
    (:func:`erase_box`) filled with random values, uniform in [-1, 1] per pixel and channel (the paper's
    random values in [0, 255], in the model's input scale). In place; draws in a fixed order (per image:
    the coin, then the box, then the values).

    Args:
        x: float32 ``(B, H, W, 3)`` in [-1, 1] (written in place).
        p: probability in [0, 1]; 0 leaves ``x`` alone and draws nothing.
        rng: the source of randomness.

    Returns:
        ``x``.

    Raises:
        ValueError: ``p`` outside [0, 1] or ``x`` not a float (B, H, W, 3) array.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"random erasing: p must be in [0, 1], got {p}")
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.dtype.kind != "f":
        raise ValueError(f"random erasing needs a float (B, H, W, 3) batch, got {_describe(x)}")
    if p == 0.0:
        return x
    _, height, width, c = x.shape
    for i in range(len(x)):
        if rng.random() >= p:
            continue
        box = erase_box(height, width, rng)
        if box is not None:
            top, left, h, w = box
            x[i, top:top + h, left:left + w] = rng.uniform(-1.0, 1.0, size=(h, w, c))
    return x


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """CutMix's box (Yun et al., ICCV 2019, Sec. 3.1): side ratio sqrt(1 - lam), centre uniform over the
    image, clipped to it. Returns ``(top, bottom, left, right)`` in pixels (possibly empty)."""
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    return (max(cy - ch // 2, 0), min(cy + ch // 2, height), max(cx - cw // 2, 0), min(cx + cw // 2, width))


def one_hot(labels: np.ndarray, num_classes: int, dtype=np.float32) -> np.ndarray:
    """(B,) integer labels as (B, num_classes) one-hot rows."""
    out = np.zeros((len(labels), num_classes), dtype)
    out[np.arange(len(labels)), labels] = 1.0
    return out


def mix_batch(x: np.ndarray, labels: np.ndarray, num_classes: int, mixup: float, cutmix: float,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mixup (Zhang et al., ICLR 2018) or CutMix (Yun et al., ICCV 2019) of a batch with a random permutation
    of itself, and the matching soft targets (timm ``Mixup``, batch mode).

    lam ~ Beta(alpha, alpha) once per batch, and a random permutation ``perm`` of the batch:

    - mixup: ``x <- lam x + (1 - lam) x[perm]``;
    - CutMix: the box of :func:`cutmix_box` of each image is taken from ``x[perm]``, and lam is
      corrected to the area actually kept, 1 - box area / image area;
    - targets: ``lam onehot(y) + (1 - lam) onehot(y[perm])`` (rows sum to 1; label smoothing is
      applied on top by the loss, which equals mixing smoothed one-hots).

    When both alphas are > 0, each batch takes one of the two with probability 0.5 (timm's
    ``switch_prob``). Draws in a fixed order: the switch coin (both on), lam, the permutation, the box.

    Args:
        x: float32 ``(B, H, W, 3)`` (mixed in place where possible; use the return value).
        labels: (B,) integers in [0, num_classes).
        num_classes: K, the width of the targets.
        mixup, cutmix: the alphas (>= 0; 0 turns one off; both 0: no mixing, one-hot targets).
        rng: the source of randomness.

    Returns:
        ``(x, targets)``: the mixed batch and float32 ``(B, K)`` soft targets.

    Raises:
        ValueError: a negative alpha, labels that do not fit ``x`` or ``num_classes``.
    """
    if mixup < 0 or cutmix < 0:
        raise ValueError(f"mixup / cutmix alphas must be >= 0, got {mixup} and {cutmix}")
    labels = np.asarray(labels)
    if labels.shape != (len(x),) or labels.dtype.kind not in "iu" or (
            labels.size and (labels.min() < 0 or labels.max() >= num_classes)):
        raise ValueError(f"mix_batch: labels must be ({len(x)},) integers in [0, {num_classes})")
    targets = one_hot(labels, num_classes)
    if mixup == 0 and cutmix == 0:
        return x, targets
    use_cutmix = cutmix > 0 and (mixup == 0 or rng.random() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(rng.beta(alpha, alpha))
    perm = rng.permutation(len(x))
    if use_cutmix:
        _, height, width, _ = x.shape
        top, bottom, left, right = cutmix_box(height, width, lam, rng)
        x[:, top:bottom, left:right] = x[perm, top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (height * width)
    else:
        x = np.float32(lam) * x + np.float32(1.0 - lam) * x[perm]
    return x, (np.float32(lam) * targets + np.float32(1.0 - lam) * targets[perm]).astype(np.float32)
