"""Where the model looks: attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in
Transformers", ACL 2020), as used for the ViT paper's Fig. 6 and Appendix D.8.

Each block l has attention probabilities A_l (B, heads, N, N). Rollout averages them over heads,
adds the identity for the residual connection and renormalises the rows,

    Â_l = (mean_h A_l + I) / 2            (each row of mean_h A_l sums to 1)

and multiplies over the layers, A_rollout = Â_L ... Â_2 Â_1: row i of A_rollout says how much of
token i's final representation flows from each input token. The map of an image is the class
token's row without its own column ("token" classifier), or the mean of all rows ("gap"),
reshaped to the patch grid.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from .backend import to_numpy
from .files import write_atomic


def attention_rollout(attentions, classifier: str) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema, ACL 2020) of a ViT, as a map over the patch grid.

    Args:
        attentions: list over blocks (first to last) of (B, heads, N, N) attention probabilities
            (NumPy or CuPy), N = 1 + grid**2 with the class token first for "token", grid**2 for "gap".
        classifier: "token" (read the class token's row, dropping its own column) or "gap" (the
            mean over all token rows).

    Returns:
        (B, grid, grid) float64 NumPy array, non-negative; it sums to 1 per image for "gap" and to
        1 minus the class token's own share for "token".

    Raises:
        ValueError: no blocks, an unknown classifier, non-square attention or a non-square grid.
    """
    if not attentions:
        raise ValueError("attention_rollout: no attention maps given")
    if classifier not in ("token", "gap"):
        raise ValueError(f"attention_rollout: classifier must be 'token' or 'gap', got {classifier!r}")
    rollout = None
    for i, a in enumerate(attentions):
        a = to_numpy(a).astype(np.float64)
        if a.ndim != 4 or a.shape[2] != a.shape[3]:
            raise ValueError(f"attention_rollout: block {i} attention has shape {a.shape}, expected (B, heads, N, N)")
        a = a.mean(axis=1) + np.eye(a.shape[-1])
        a /= a.sum(axis=-1, keepdims=True)
        rollout = a if rollout is None else a @ rollout
    n_tok = 1 if classifier == "token" else 0
    grid = math.isqrt(rollout.shape[-1] - n_tok)
    if grid * grid != rollout.shape[-1] - n_tok:
        raise ValueError(f"attention_rollout: {rollout.shape[-1]} tokens do not form a square grid "
                         f"with classifier {classifier!r}")
    row = rollout[:, 0, 1:] if classifier == "token" else rollout.mean(axis=1)
    return row.reshape(-1, grid, grid)


def _heat_colours(m: np.ndarray) -> np.ndarray:
    """(h, w) values in [0, 1] -> (h, w, 3) uint8, black -> red -> yellow -> white ("hot")."""
    r = np.clip(3 * m, 0, 1)
    g = np.clip(3 * m - 1, 0, 1)
    b = np.clip(3 * m - 2, 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255).round().astype(np.uint8)


def overlay_panel(image: np.ndarray, heat: np.ndarray, display: int = 224) -> np.ndarray:
    """The input and its attention map overlaid as a heatmap, side by side (paper Fig. 6 layout).

    Args:
        image: (S, S, 3) uint8 RGB, the model's input.
        heat: (grid, grid) non-negative map (e.g. a row of :func:`attention_rollout`).
        display: side of each panel, pixels (images are scaled up to it, never down).

    Returns:
        (side, 2 * side + gap, 3) uint8, side = max(S, display).
    """
    side = max(image.shape[0], display)
    shown = np.asarray(Image.fromarray(image).resize((side, side), Image.BICUBIC), dtype=np.float64)
    h = np.asarray(heat, dtype=np.float64)
    h = (h - h.min()) / (h.max() - h.min()) if h.max() > h.min() else np.zeros_like(h)
    up = np.asarray(Image.fromarray(h.astype(np.float32), mode="F").resize((side, side), Image.BILINEAR))
    up = np.clip(up, 0.0, 1.0)
    mixed = 0.45 * shown + 0.55 * _heat_colours(up)
    gap = np.full((side, 8, 3), 255.0)
    return np.concatenate([shown, gap, mixed], axis=1).round().clip(0, 255).astype(np.uint8)


def save_png_atomic(path, rgb: np.ndarray) -> None:
    """Write a (h, w, 3) uint8 image to ``path`` as PNG, atomically (temporary file, then rename).

    Raises:
        ValueError: ``path`` does not end in ".png".
        OSError: the folder cannot be written.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"image path must end in .png, got {str(path)!r}")
    write_atomic(path, lambda f: Image.fromarray(rgb).save(f, format="PNG"))
