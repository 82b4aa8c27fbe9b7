"""Classify images with a trained or official checkpoint; optionally show where the model looks.

    python -m scratchvit.predict --checkpoint runs/fashion-mnist/best.npz shirt.png boot.jpg
    python -m scratchvit.predict --checkpoint ViT-B_16-imagenet.npz cat.jpg --top-k 3 --json
    python -m scratchvit.predict --checkpoint best.npz shirt.png --attention-map where.png

Class names come from ``--labels FILE`` (one name per line), else from the ``config.json`` the
training run wrote next to the checkpoint, else the ImageNet-1k names for a 1000-class checkpoint,
else "class K". ``config.json`` also gives the run's GELU form. Images are decoded with Pillow
(RGB, EXIF orientation applied) and resized whole to S x S, S = the model's image size (the
evaluation view, as the official vit_jax), pixels scaled to (x - 127.5) / 127.5.

Bad input (a missing or unreadable image or checkpoint, a labels file of the wrong length) prints
one line on stderr and exits with code 2 before anything is written.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from . import ops
from .backend import namespace, to_numpy
from .checks import InputError
from .data import load_image, to_float
from .files import write_atomic
from .model import ViT
from .rollout import attention_rollout, overlay_panel
from .runs import run_gelu, run_info
from .settings import PredictSettings, parse_settings

IMAGENET_LABELS = Path(__file__).resolve().parent / "labels" / "imagenet1k.txt"


def _load_image(path, image_size: int) -> np.ndarray:
    """(S, S, 3) uint8 RGB, the evaluation view (:func:`scratchvit.data.load_image`: EXIF-transposed,
    the whole image resized to S x S).

    Raises:
        InputError: the file is missing or cannot be decoded (the message names it).
    """
    if not Path(path).is_file():
        raise InputError(f"image not found: {str(path)!r}")
    try:
        return load_image(path, image_size)
    except (OSError, ValueError) as e:
        raise InputError(str(e)) from e


def read_labels(path) -> list[str]:
    """Class names from a text file, one per line (blank trailing lines ignored).

    Raises:
        InputError: the file is missing or unreadable.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise InputError(f"cannot read labels file {str(path)!r}: {e}") from e
    while lines and not lines[-1].strip():
        lines.pop()
    return [line.strip() for line in lines]


def class_names(num_classes: int, labels_file=None, info: dict | None = None) -> list[str]:
    """Names of the ``num_classes`` classes: ``labels_file``, else the run's ``class_names``, else
    ImageNet-1k names for 1000 classes, else "class 0", "class 1", ...

    Raises:
        InputError: a labels file or ``class_names`` whose length is not ``num_classes``.
    """
    if labels_file is not None:
        names, source = read_labels(labels_file), str(labels_file)
    elif info and info.get("class_names"):
        names, source = list(info["class_names"]), "config.json"
    elif num_classes == 1000:
        names, source = read_labels(IMAGENET_LABELS), "ImageNet-1k names"
    else:
        return [f"class {i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise InputError(f"{source} names {len(names)} classes but the checkpoint has {num_classes}")
    return names


def softmax(logits) -> np.ndarray:
    """Row softmax of (B, K) logits (NumPy or CuPy), computed on their device, returned as float64 NumPy."""
    xp = namespace(logits)
    return to_numpy(ops.softmax_forward(xp.astype(logits, xp.float64)))  # a float64 copy, softmaxed


BATCH = 32  # images per forward pass: bounds the memory of a long list of files (and of their attention maps)


def _chunks(images: np.ndarray):
    """(B, S, S, 3) uint8 -> float32 inputs in [-1, 1] (as training), BATCH images at a time."""
    for i in range(0, len(images), BATCH):
        yield to_float(images[i:i + BATCH])


def predict(model: ViT, images: np.ndarray, names: list[str], top_k: int = 5) -> list[list[dict]]:
    """Top-k classes of each image, run :data:`BATCH` images per forward pass.

    Args:
        model: the classifier.
        images: (B, S, S, 3) uint8 RGB, S = model.config.image_size.
        names: the K class names (K = model.config.num_classes).
        top_k: how many classes per image (at most K).

    Returns:
        per image, a list of {"class": int, "name": str, "probability": float}, most probable first.

    Raises:
        ValueError: ``names`` does not hold K names, or images of another size than the model's.
    """
    if len(names) != model.config.num_classes:
        raise ValueError(f"predict: {len(names)} class names for a model of {model.config.num_classes} classes")
    probs = np.concatenate([softmax(model.forward(x)) for x in _chunks(images)])
    k = min(top_k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[{"class": int(c), "name": names[c], "probability": float(p[c])} for c in row]
            for row, p in zip(order, probs, strict=True)]


CAPTION_HEIGHT = 22  # pixels of the white strip above each row of an attention map that holds its caption


def caption(file, top: dict) -> str:
    """The caption of an image's row in an attention map: its file name, its top class and probability,
    e.g. "boot.png: ankle boot 90.1%"."""
    return f"{Path(file).name}: {top['name']} {100 * top['probability']:.1f}%"


def _caption_font():
    try:
        return ImageFont.load_default(size=15)  # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()


def fit_caption(text: str, width: int) -> str:
    """``text`` as drawn in a strip ``width`` pixels wide: too wide a caption loses the middle of its file
    name (the part before the first ": "), replaced by "...", so that the class and probability stay;
    if that is not enough, its end."""
    font, draw = _caption_font(), ImageDraw.Draw(Image.new("RGB", (1, 1)))
    name, sep, rest = text.partition(": ")
    if not sep:
        name, rest = "", text
    shown = text
    while len(name) > 2 and draw.textlength(shown, font=font) > width - 8:
        name = name[:len(name) // 2 - 1] + name[len(name) // 2:]  # drop the middle character
        shown = f"{name[:len(name) // 2]}...{name[len(name) // 2:]}{sep}{rest}"
    while len(shown) > 3 and draw.textlength(shown, font=font) > width - 8:
        shown = shown[:-4] + "..."
    return shown


def _caption_strip(text: str, width: int) -> np.ndarray:
    """(CAPTION_HEIGHT, width, 3) uint8: ``text`` (:func:`fit_caption`) in black on white."""
    strip = Image.new("RGB", (width, CAPTION_HEIGHT), "white")
    ImageDraw.Draw(strip).text((4, 3), fit_caption(text, width), fill="black", font=_caption_font())
    return np.asarray(strip)


def attention_map(model: ViT, images: np.ndarray, captions: list[str] | None = None) -> np.ndarray:
    """One picture: per image a row with the input and its attention rollout overlaid, captioned.

    Args:
        model: the classifier. images: (B, S, S, 3) uint8 RGB, S = model.config.image_size.
        captions: one line per image (:func:`caption`: file name, top class and probability), drawn in a
            white strip of :data:`CAPTION_HEIGHT` pixels above its row; None: no strips.

    Returns:
        (H, W, 3) uint8 RGB: the rows of :func:`scratchvit.rollout.overlay_panel`, one per image, top
        to bottom, each under its caption, 8 white pixels apart. The rollout runs :data:`BATCH` images
        at a time.

    Raises:
        ValueError: ``captions`` does not hold one line per image.
    """
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"attention_map: {len(captions)} captions for {len(images)} images")
    maps = np.concatenate([attention_rollout(model.attention_probabilities(x), model.config.classifier)
                           for x in _chunks(images)])
    rows = [overlay_panel(im, m) for im, m in zip(images, maps, strict=True)]
    if captions is not None:
        rows = [np.concatenate([_caption_strip(c, row.shape[1]), row]) for c, row in zip(captions, rows, strict=True)]
    gap = np.full((8, rows[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([part for row in rows for part in (gap, row)][1:], axis=0)


def save_attention_map(path, rgb: np.ndarray, captions: list[str]) -> None:
    """Write an attention map to the PNG ``path`` atomically, its captions also in the PNG's text
    (``Title`` "attention rollout", ``Description`` one caption a line), for programs that read it."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "attention rollout")
    info.add_text("Description", "\n".join(captions))
    write_atomic(path, lambda f: Image.fromarray(rgb).save(f, format="PNG", pnginfo=info))


def parse_args(argv=None) -> PredictSettings:
    """The predict CLI's settings (:class:`scratchvit.settings.PredictSettings`) from ``argv`` (the command
    line if None); exits with status 2 and a usage message on a bad one (argparse)."""
    return parse_settings(PredictSettings, argv, "python -m scratchvit.predict", __doc__.split("\n\n")[0])


def main(argv=None) -> int:
    """``python -m scratchvit.predict``: the top-k classes of each image (text or --json), and the attention
    rollout maps (--attention-map). Returns the exit status: 0, or 2 with a one-line message on stderr for
    an unreadable checkpoint, image or labels file."""
    args = parse_args(argv)
    try:
        try:
            info = run_info(args.checkpoint)
            model = ViT.from_checkpoint(args.checkpoint, device=args.device, gelu=run_gelu(info))
        except (FileNotFoundError, ValueError) as e:
            raise InputError(str(e)) from e
        names = class_names(model.config.num_classes, args.labels, info)
        images = np.stack([_load_image(f, model.config.image_size) for f in args.images])
        if args.attention_map is not None and not Path(args.attention_map).resolve().parent.is_dir():
            raise InputError(f"folder of --attention-map does not exist: {args.attention_map!r}")
    except InputError as e:
        print(f"predict: error: {e}", file=sys.stderr)
        return 2
    results = predict(model, images, names, args.top_k)
    if args.attention_map is not None:
        captions = [caption(f, r[0]) for f, r in zip(args.images, results, strict=True)]
        save_attention_map(args.attention_map, attention_map(model, images, captions), captions)
    if args.json:
        doc = {"checkpoint": str(args.checkpoint), "attention_map": args.attention_map,
               "predictions": [{"image": f, "top_k": r} for f, r in zip(args.images, results, strict=True)]}
        print(json.dumps(doc, indent=2))
    else:
        for f, r in zip(args.images, results, strict=True):
            print(f)
            for rank, c in enumerate(r, 1):
                print(f"  {rank}. {100 * c['probability']:6.2f}%  {c['name']} ({c['class']})")
        if args.attention_map is not None:
            print(f"attention map: {args.attention_map}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
