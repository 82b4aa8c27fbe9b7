"""Evaluate a checkpoint: accuracy, per-class accuracy and the confusion matrix.

    python -m scratchvit.evaluate --checkpoint runs/fmnist/best.npz --dataset fashion-mnist
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import cpu, ops
from .backend import to_device, to_numpy
from .data import Batches, load_dataset
from .files import write_text_atomic
from .model import ViT
from .runs import run_gelu, run_info
from .settings import TTA_FORMS, EvaluateSettings, parse_settings


def open_dataset(name: str, data_dir=None, image_size: int | None = None, skip_bad_images: bool = False, log=None):
    """:func:`scratchvit.data.load_dataset` as the CLIs call it: ``image_size`` (the model's input side,
    pixels) is passed for imagefolder only, which streams and resizes its files; ``log`` is a callable for
    progress lines (which source a dataset comes from).

    Raises:
        ValueError / FileNotFoundError / RuntimeError: from the loader, naming the file or folder.
    """
    return load_dataset(name, data_dir=data_dir, image_size=image_size if name == "imagefolder" else None,
                        skip_bad_images=skip_bad_images, log=log)


def evaluate(model, images, labels, batch_size: int = 256, progress: bool = False, workers: int = 2,
             skip_bad_images: bool = False, tta: str | None = None):
    """Mean cross-entropy, accuracy and predictions of ``model`` on a labelled set.

    Args:
        model: a :class:`scratchvit.ViT`.
        images: (M, H, W, 3) uint8, or a lazy image sequence from ``load_dataset("imagefolder")``;
            resized to the model's image size when they differ.
        labels: (M,) int64 in [0, num_classes).
        batch_size: images per forward pass.
        workers: threads preparing images in the background.
        skip_bad_images: skip unreadable files (lazy sequences) instead of raising.
        tta: None, or "flip": test-time augmentation, the logits averaged over each image and its horizontal
            mirror (as airbench's evaluation); a second forward pass per batch.

    Returns:
        dict with "loss" (mean cross-entropy, float), "accuracy" (float in [0, 1]), "predictions" and
        "labels" ((M',) int64, aligned: the images actually evaluated, M' = M - "skipped"), "skipped"
        (files left out by ``skip_bad_images``), "seconds" (wall clock). With ``tta="flip"`` also
        "loss_flip", "accuracy_flip" and "predictions_flip", of the averaged logits ("loss", "accuracy"
        and "predictions" stay those of the plain pass).

    Raises:
        ValueError: an unknown ``tta``.
    """
    if tta not in (None, *TTA_FORMS):
        raise ValueError(f"evaluate: tta must be None or one of {TTA_FORMS}, got {tta!r}")
    t0 = time.perf_counter()
    preds, seen = {None: [], tta: []}, []  # per batch: predictions and the labels of the images actually evaluated
    total_loss = dict.fromkeys(preds, 0.0)
    with Batches(images, labels, batch_size, model.config.image_size, train=False, workers=workers,
                 skip_bad_images=skip_bad_images) as batches:
        it = batches
        if progress:
            it = tqdm(batches, total=batches.steps_per_epoch, desc="eval", leave=False)
        for _, x, y in it:
            logits = {None: model.forward(x)}
            if tta == "flip":  # NHWC: axis 2 is the width
                logits["flip"] = 0.5 * (logits[None] + model.forward(np.ascontiguousarray(x[:, :, ::-1])))
            y_dev = to_device(y, model.device)
            xp = model.xp
            for form, z in logits.items():
                loss, _ = ops.softmax_cross_entropy_forward(z, y_dev)
                pred = xp.astype(xp.argmax(z, axis=1), xp.float64)
                both = to_numpy(xp.concat([xp.reshape(xp.astype(loss, xp.float64), (1,)), pred]))  # one read
                total_loss[form] += float(both[0]) * len(y)
                preds[form].append(both[1:].astype(np.int64))
            seen.append(y)
    preds = {k: np.concatenate(v) if v else np.empty(0, np.int64) for k, v in preds.items()}
    seen = np.concatenate(seen) if seen else np.empty(0, np.int64)
    result = {"labels": seen, "skipped": len(labels) - len(seen), "seconds": time.perf_counter() - t0}
    for form in preds:
        suffix = f"_{form}" if form else ""
        result[f"loss{suffix}"] = total_loss[form] / max(len(seen), 1)
        result[f"accuracy{suffix}"] = float((preds[form] == seen).mean()) if len(seen) else float("nan")
        result[f"predictions{suffix}"] = preds[form]
    return result


def evaluate_masked_patch(model, images, batch_size: int = 256, seed: int = 0, first_row: int = 0,
                          workers: int = 2) -> dict:
    """Masked-patch loss and accuracy (paper Sec. 4.6) of a model pre-trained by masked patch prediction, on a
    set of images (labels unused): every image corrupted as the training corrupts it, with the key (``seed``,
    step 0, the image's row ``first_row + i``), so that every evaluation of a run sees the same corruption.

    Args:
        model: a :class:`scratchvit.ViT` whose config has ``masked_patch``.
        images: (M, H, W, 3) uint8, or a lazy image sequence; resized to the model's size when they differ.
        batch_size, workers: as :func:`evaluate`.

    Returns:
        dict with "loss" (the token cross-entropy, mean over the corrupted patches), "accuracy" (the share of
        corrupted patches whose colour class was predicted), "images" (M) and "seconds".

    Raises:
        ValueError: a model without a masked-patch head.
    """
    t0, n, loss_sum, acc_sum = time.perf_counter(), 0, 0.0, 0.0
    with Batches(images, np.zeros(len(images), np.int64), batch_size, model.config.image_size, train=False,
                 workers=workers) as batches:
        for _, x, _ in batches:
            loss, acc = model.masked_patch_metrics(x, ops.RngKey(seed, 0, first_row + n))
            xp = model.xp
            both = to_numpy(xp.stack([xp.astype(loss, xp.float64), xp.astype(acc, xp.float64)]))  # one read
            loss_sum, acc_sum = loss_sum + float(both[0]) * len(x), acc_sum + float(both[1]) * len(x)
            n += len(x)  # every image has the same number of corrupted patches: image-weighted means are exact
    return {"loss": loss_sum / max(n, 1), "accuracy": acc_sum / n if n else float("nan"), "images": n,
            "seconds": time.perf_counter() - t0}


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts, rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (labels, predictions), 1)
    return cm


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """(K,) accuracy of each true class (NaN for a class with no examples)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diag(cm) / cm.sum(axis=1)


def format_report(dataset_name, class_names, result, cm) -> str:
    """The report printed by the CLI: overall accuracy, per-class accuracy, confusion matrix."""
    pca = per_class_accuracy(cm)
    width = max(len(n) for n in class_names)
    skipped = f" ({result['skipped']} unreadable files skipped)" if result.get("skipped") else ""
    lines = [f"{dataset_name}: accuracy {100 * result['accuracy']:.2f}% on {cm.sum()} images{skipped}, "
             f"loss {result['loss']:.4f}", "", "per-class accuracy:"]
    lines += [f"  {n:<{width}}  {100 * a:6.2f}%  ({cm[i].sum()} images)"
              for i, (n, a) in enumerate(zip(class_names, pca, strict=True))]
    lines += ["", "confusion matrix (rows: true class, columns: predicted):"]
    cell = max(5, len(str(cm.max())) + 1)
    lines.append(" " * (width + 2) + "".join(f"{i:>{cell}}" for i in range(len(class_names))))
    lines += [f"  {n:<{width}}" + "".join(f"{v:>{cell}}" for v in row) for n, row in zip(class_names, cm, strict=True)]
    return "\n".join(lines)


def main(argv=None) -> int:
    """``python -m scratchvit.evaluate``: accuracy, loss, per-class accuracy and the confusion matrix of a
    checkpoint on a dataset split, printed (and written to --json). The flags come from
    :class:`scratchvit.settings.EvaluateSettings` (a bad value: argparse's usage message, exit status 2).
    Returns the exit status: 0, or 2 with a one-line message on stderr for a bad file or dataset."""
    cpu.configure()
    args = parse_settings(EvaluateSettings, argv, "python -m scratchvit.evaluate", __doc__)
    try:
        gelu = args.gelu or run_gelu(run_info(args.checkpoint))
        model = ViT.from_checkpoint(args.checkpoint, device=args.device, dtype=args.dtype, gelu=gelu)
        ds = open_dataset(args.dataset, args.data_dir, image_size=model.config.image_size,
                          skip_bad_images=args.skip_bad_images, log=lambda m: print(m, file=sys.stderr))
        if model.config.num_classes != ds.num_classes:
            raise ValueError(f"the checkpoint {args.checkpoint} has {model.config.num_classes} classes but "
                             f"{args.dataset} has {ds.num_classes}")
        images, labels = ((ds.test_images, ds.test_labels) if args.split == "test"
                          else (ds.train_images, ds.train_labels))
        result = evaluate(model, images, labels, args.batch_size, progress=True, workers=args.workers,
                          skip_bad_images=args.skip_bad_images, tta=args.tta)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    plain = {"accuracy": result["accuracy"], "loss": result["loss"]}
    name = f"{args.dataset} {args.split}"
    if args.tta:  # the report is of the averaged logits; the plain figures beside them
        result = {**result, **{k: result[f"{k}_{args.tta}"] for k in ("accuracy", "loss", "predictions")}}
        name += f" ({args.tta}-averaged logits; plain: accuracy {100 * plain['accuracy']:.2f}%, " \
                f"loss {plain['loss']:.4f})"
    cm = confusion_matrix(result["labels"], result["predictions"], ds.num_classes)
    print(format_report(name, ds.class_names, result, cm))
    if args.json:
        write_text_atomic(Path(args.json), json.dumps({
            "checkpoint": str(args.checkpoint), "dataset": args.dataset, "split": args.split, "tta": args.tta,
            "accuracy": result["accuracy"], "loss": result["loss"],
            **({"plain_accuracy": plain["accuracy"], "plain_loss": plain["loss"]} if args.tta else {}),
            "per_class_accuracy": dict(zip(ds.class_names, per_class_accuracy(cm).tolist(), strict=True)),
            "confusion_matrix": cm.tolist()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
