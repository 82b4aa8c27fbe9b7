"""See what a ViT learned: the three panels of the paper's Fig. 7 (Dosovitskiy et al., ICLR 2021,
Sec. 4.5 and Appendix D.7) from any checkpoint the package loads.

    python -m scratchvit.inspect --checkpoint runs/fashion-mnist/best.npz --out inspect/ --dataset fashion-mnist
    python -m scratchvit.inspect --checkpoint ViT-B_16.npz --out inspect/ cat.jpg dog.jpg --device gpu

writes to ``--out``:

* ``embedding_filters.png``: the first 28 principal components of the patch-embedding filters
  (``embedding/kernel``, (P, P, 3, D): PCA over the D filters, each a P x P x 3 patch; Fig. 7 left;
  for a model of grey images, MNIST or Fashion-MNIST, the filters summed over the 3 channels, the
  part that acts on R = G = B inputs: ``--filters``). A hybrid (paper Sec. 3.1) has no filters on
  pixels in its patch embedding, which convolves the ResNet's feature map: the panel shows the
  ResNet root's 7x7 filters instead (``conv_root/kernel``, standardised as its StdConv applies them);
* ``position_similarity.png``: the cosine similarity of each patch position's position embedding
  with every other one, one small grid per position, one colour scale (Fig. 7 centre);
* ``attention_distance.png``: the mean attention distance in pixels of every head against depth
  (Fig. 7 right; Appendix D.7), over the images given;
* ``inspect.json``: the same numbers (explained variance, the similarity matrix, the distances per
  block and head) and the settings.

Images come from a dataset's test split (the first ``--images``, opened as ``scratchvit.evaluate``
opens datasets) or from image files (read as ``scratchvit.predict`` reads them: the whole image
resized to the model's input side). They go through the model ``--batch-size`` at a time and the
attention probabilities are the model's own (:meth:`scratchvit.ViT.attention_probabilities`).
Needs matplotlib (``pip install -e ".[plot]"``). Bad input (an unreadable checkpoint, image or
dataset, no matplotlib) prints one line on stderr and exits with code 2.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from .backend import device_of, namespace, to_numpy
from .checks import InputError, check_positive_int
from .data import GREY_DATASETS, Batches
from .evaluate import open_dataset
from .files import write_atomic, write_text_atomic
from .model import ViT
from .ops.weight_standardize import weight_standardize_forward
from .params import POSEMB
from .plot import _import_pyplot
from .predict import _load_image
from .rng import RngKey
from .runs import run_gelu, run_info
from .settings import InspectSettings, parse_settings

N_COMPONENTS = 28  # principal components drawn, as Fig. 7 left
FILES = ("embedding_filters.png", "position_similarity.png", "attention_distance.png", "inspect.json")
MASKED_PATCH_FILE = "masked_patch.png"  # a masked-patch pre-trained model's extra picture (paper Sec. 4.6)
MASKED_PATCH_IMAGES = 6


def _num_prefix(classifier: str) -> int:
    """Tokens before the patch tokens: 1 (the class token) for "token", 0 for "gap"."""
    if classifier not in ("token", "gap"):
        raise ValueError(f"classifier must be 'token' or 'gap', got {classifier!r}")
    return 1 if classifier == "token" else 0


def _grid_side(n: int, what: str) -> int:
    g = math.isqrt(n)
    if n < 1 or g * g != n:
        raise ValueError(f"{what}: {n} patch tokens do not form a square grid")
    return g


# ---------------------------------------------------------------------------------------------- the numbers
def embedding_components(kernel, n_components: int = N_COMPONENTS, sum_channels: bool = False):
    """Principal components of the patch-embedding filters (paper Fig. 7 left).

    Each of the D filters of ``embedding/kernel`` is one sample, a P x P x C patch flattened to P*P*C
    values; the samples are centred (their mean filter subtracted) and decomposed by SVD. With
    ``sum_channels`` each filter is first summed over its C colour channels (C becomes 1): on grey
    images (R = G = B, as MNIST and Fashion-MNIST) that sum is all of a filter that acts, while the
    differences between its channels keep the random values of the initialisation. Each
    component's sign is fixed so that its entry of largest magnitude is positive (SVD signs are
    arbitrary), which makes the output reproducible.

    Args:
        kernel: (P, P, C, D) float array (NumPy or CuPy), the patch-embedding kernel.
        n_components: how many components to return (at most min(D, P*P*C) are returned).
        sum_channels: PCA of the filters summed over the colour channels (grey inputs).

    Returns:
        (components, variance, ratio): components (k, P, P, C) float64 (C = 1 with ``sum_channels``),
        orthonormal as k vectors of P*P*C values, in decreasing order of variance; variance (k,)
        float64, the variance of the filters along each component (squared singular value / (D - 1));
        ratio (k,) float64, each variance as a fraction of the filters' total variance (all zeros if
        the filters are all equal).

    Raises:
        ValueError: ``kernel`` is not 4-D or ``n_components`` < 1.
    """
    k = np.asarray(to_numpy(kernel), dtype=np.float64)
    if k.ndim != 4:
        raise ValueError(f"embedding_components: kernel must be (P, P, C, D), got shape {k.shape}")
    check_positive_int("n_components", n_components)
    if sum_channels:
        k = k.sum(axis=2, keepdims=True)
    p1, p2, c, d = k.shape
    x = k.reshape(p1 * p2 * c, d).T  # (D, P*P*C): one row per filter
    x = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    m = min(n_components, vt.shape[0])
    comps = vt[:m]
    signs = np.sign(comps[np.arange(m), np.abs(comps).argmax(axis=1)])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    var = s ** 2 / max(d - 1, 1)
    total = var.sum()
    ratio = var / total if total > 0 else np.zeros_like(var)
    return comps.reshape(m, p1, p2, c), var[:m], ratio[:m]


def position_similarity(posemb, classifier: str) -> np.ndarray:
    """Cosine similarity between the position embeddings of every pair of patch positions (Fig. 7 centre).

    Args:
        posemb: (1, T, D) or (T, D) float array (NumPy or CuPy), ``Transformer/posembed_input/pos_embedding``;
            T = 1 + g*g with the class token's embedding first for "token", g*g for "gap".
        classifier: "token" (the class token's row is left out) or "gap".

    Returns:
        (g*g, g*g) float64, positions in row-major order (index r * g + c for patch row r, column c):
        entry [i, j] = <e_i, e_j> / (|e_i| |e_j|), clipped to [-1, 1]; NaN in the row and column of a
        position whose embedding is all zeros (no direction, so no cosine).

    Raises:
        ValueError: an unknown classifier, a wrong rank, or patch tokens that do not form a square grid.
    """
    p = np.asarray(to_numpy(posemb), dtype=np.float64)
    if p.ndim == 3 and p.shape[0] == 1:
        p = p[0]
    if p.ndim != 2:
        raise ValueError(f"position_similarity: position embedding must be (1, T, D) or (T, D), got {p.shape}")
    e = p[_num_prefix(classifier):]
    _grid_side(len(e), "position_similarity")
    norms = np.linalg.norm(e, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = (e @ e.T) / np.outer(norms, norms)
    sim[norms == 0, :] = np.nan
    sim[:, norms == 0] = np.nan
    return np.clip(sim, -1.0, 1.0)


def patch_distances(grid: int, patch_size: int) -> np.ndarray:
    """Euclidean distance in pixels between the centres of every pair of patches of a grid x grid image.

    Patch k (row r = k // grid, column c = k % grid) has its centre at pixel ((c + 0.5) P, (r + 0.5) P).

    Returns:
        (grid*grid, grid*grid) float64, pixels, zero on the diagonal.
    """
    grid = check_positive_int("grid", grid)
    patch_size = check_positive_int("patch_size", patch_size, unit="pixels")
    r, c = np.divmod(np.arange(grid * grid), grid)
    centres = (np.stack([c, r], axis=1) + 0.5) * patch_size
    return np.sqrt(((centres[:, None, :] - centres[None, :, :]) ** 2).sum(axis=-1))


def attention_distance(attention, patch_size: int, classifier: str):
    """Mean attention distance of one block, per image and head (paper Appendix D.7, Fig. 7 right / Fig. 11).

    For image b and head h, with A the attention probabilities and d(i, j) the distance between the
    centres of patches i and j in pixels (:func:`patch_distances`):

        distance[b, h] = mean over query patches i of  sum over key patches j of  A[b, h, i, j] * d(i, j)

    The class token ("token" classifier) is left out of both the queries and the keys, and nothing is
    renormalised: the class token has no place in the image, so it has no distance to a patch. Its
    query row is dropped. Its key column, the share A[b, h, i, cls] of patch i's attention that goes
    to the class token, is dropped from the sum, which is the same as counting that share at distance
    0; the remaining patch weights are *not* divided by 1 - A[b, h, i, cls]. Renormalising would
    report, for a head that gives nearly all its attention to the class token, the distance of the
    little attention left over, divided by a number near zero. So the distance measures the pixels
    spanned per unit of a query's whole attention, and the share given to the class token is
    returned alongside, for the reader to see how much was left out.

    Runs on the array's own device (NumPy, CuPy or any array-API library); only the (B, heads)
    results are copied to the host.

    Args:
        attention: (B, heads, T, T) float attention probabilities of one block (rows sum to 1), T = 1 + g*g
            with the class token first for "token", g*g for "gap".
        patch_size: P, pixels.
        classifier: "token" or "gap".

    Returns:
        (distance, cls_share): distance (B, heads) float64 NumPy, pixels; cls_share (B, heads) float64
        NumPy, the mean over query patches of the attention given to the class token, or None for "gap".

    Raises:
        ValueError: not (B, heads, T, T), an unknown classifier, or no square patch grid.
    """
    shape = tuple(attention.shape)
    if len(shape) != 4 or shape[2] != shape[3]:
        raise ValueError(f"attention_distance: attention must be (B, heads, T, T), got {shape}")
    k = _num_prefix(classifier)
    grid = _grid_side(shape[3] - k, "attention_distance")
    xp = namespace(attention)
    d = xp.asarray(patch_distances(grid, patch_size), device=device_of(attention))
    a = xp.astype(attention[:, :, k:, k:], xp.float64)
    distance = xp.mean(xp.sum(a * d, axis=-1), axis=-1)
    share = xp.mean(xp.astype(attention[:, :, k:, 0], xp.float64), axis=-1) if k else None
    return to_numpy(distance), None if share is None else to_numpy(share)


def mean_attention_distance(model: ViT, inputs):
    """Mean attention distance of every block and head of ``model`` over a set of images (Appendix D.7).

    Args:
        model: a :class:`scratchvit.ViT`.
        inputs: iterable of (B, S, S, 3) float32 batches in [-1, 1] (e.g. the ``x`` of
            :class:`scratchvit.data.Batches`), S = model.config.image_size.

    Returns:
        (distance, cls_share, n): distance (L, heads) float64, pixels, the mean over all images of
        :func:`attention_distance`; cls_share (L, heads) float64 likewise, or None for "gap"; n the
        number of images.

    Raises:
        ValueError: no images, or images the model refuses (:meth:`scratchvit.ViT.forward`).
    """
    c = model.config
    dist_sum = np.zeros((c.num_layers, c.num_heads))
    share_sum = np.zeros((c.num_layers, c.num_heads))
    n = 0
    for x in inputs:
        for i, a in enumerate(model.attention_probabilities(x)):
            dist, share = attention_distance(a, c.effective_patch_size, c.classifier)
            dist_sum[i] += dist.sum(axis=0)
            if share is not None:
                share_sum[i] += share.sum(axis=0)
        n += len(x)
    if n == 0:
        raise ValueError("mean_attention_distance: no images")
    return dist_sum / n, (share_sum / n if c.classifier == "token" else None), n


# ---------------------------------------------------------------------------------------------- the pictures
def _save(fig, plt, path) -> None:
    try:
        write_atomic(path, lambda f: fig.savefig(f, format="png"))
    finally:
        plt.close(fig)


def plot_embedding_filters(components: np.ndarray, ratio: np.ndarray, path, title: str = "",
                           name: str = "Patch-embedding filters") -> None:
    """Draw the principal components of the patch-embedding filters (Fig. 7 left) to the PNG ``path``.

    Args:
        components: (k, P, P, C) from :func:`embedding_components`; each is shown min-max scaled to
            [0, 1] on its own (RGB for C = 3, grey otherwise: e.g. filters summed over the channels), 7 to
            a row.
        ratio: (k,) explained variance ratios, shown in percent above each component.
        path: the PNG to write (atomically). title: appended to the figure's title. name: what the
            filters are (a hybrid's ResNet root filters: :func:`inspect_model`).

    Raises:
        checks.InputError: matplotlib is missing. OSError: ``path`` cannot be written.
    """
    plt = _import_pyplot()
    k = len(components)
    cols = min(7, k)
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.55 * rows + 0.7), dpi=100, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= k:
            continue
        img = components[i]
        lo, hi = img.min(), img.max()
        img = (img - lo) / (hi - lo) if hi > lo else np.full_like(img, 0.5)
        ax.imshow(img if img.shape[-1] == 3 else img.mean(axis=-1), cmap=None if img.shape[-1] == 3 else "gray",
                  interpolation="nearest", vmin=0, vmax=1)
        ax.set_title(f"PC {i + 1}: {100 * ratio[i]:.1f}%", fontsize=8)
    p = components.shape[1]
    what = "RGB" if components.shape[-1] == 3 else "summed over RGB"
    fig.suptitle(f"{name}: first {k} principal components\n({p}x{p} px, {what}; "
                 f"% of the filters' variance){title}", fontsize=10)
    fig.tight_layout()
    _save(fig, plt, path)


def plot_position_similarity(sim: np.ndarray, path, title: str = "") -> None:
    """Draw the position-embedding similarity (Fig. 7 centre) to the PNG ``path``: a g x g grid of
    small g x g grids, the small grid at (row r, column c) being the cosine similarity of that
    position's embedding with every position's; one colour scale, -1 to 1, with a colour bar.

    Args:
        sim: (g*g, g*g) from :func:`position_similarity`. path: the PNG (written atomically).

    Raises:
        checks.InputError: matplotlib is missing. OSError: ``path`` cannot be written.
        ValueError: ``sim`` is not square over a square grid.
    """
    plt = _import_pyplot()
    g = _grid_side(sim.shape[0], "plot_position_similarity")
    step = g + 1  # one blank row / column between the small grids
    mosaic = np.full((g * step - 1, g * step - 1), np.nan)
    tiles = sim.reshape(g, g, g, g)
    for r in range(g):
        for c in range(g):
            mosaic[r * step:r * step + g, c * step:c * step + g] = tiles[r, c]
    side = min(9.0, 3.0 + 0.35 * g)
    dpi = max(100, math.ceil(2.5 * len(mosaic) / (0.75 * side)))  # >= 2 pixels a cell: the blank lines stay even
    fig, ax = plt.subplots(figsize=(side + 1.3, side), dpi=dpi)
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    im = ax.imshow(mosaic, cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
    ticks = np.arange(g) * step + (g - 1) / 2
    labels = [str(i + 1) if g <= 16 or i % 2 == 0 else "" for i in range(g)]
    ax.set_xticks(ticks, labels)
    ax.set_yticks(ticks, labels)
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    ax.set(xlabel="input patch column", ylabel="input patch row",
           title=f"Position embedding similarity ({g}x{g} patches){title}")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
    fig.tight_layout()
    _save(fig, plt, path)


def plot_attention_distance(distance: np.ndarray, path, image_size: int, uniform: float | None = None,
                            title: str = "") -> None:
    """Draw the mean attention distance (Fig. 7 right) to the PNG ``path``: one dot per head, network
    depth (block 1..L) on x, mean attention distance in pixels on y, one colour per head (the heads of a
    block side by side, at most 0.25 of a block apart, so that equal values do not hide each other).

    Args:
        distance: (L, heads) pixels, from :func:`mean_attention_distance`.
        path: the PNG (written atomically). image_size: the input side in pixels, named in the caption.
        uniform: if given, a dashed line at this distance (the value of attention spread evenly over the
            patches: the mean distance between patch centres, :func:`patch_distances`).

    Raises:
        checks.InputError: matplotlib is missing. OSError: ``path`` cannot be written.
    """
    plt = _import_pyplot()
    L, H = distance.shape
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    colours = plt.get_cmap("tab20" if H > 10 else "tab10")
    spread = min(0.05, 0.5 / H)  # heads side by side around each block, so that equal values stay visible
    for h in range(H):
        ax.scatter(np.arange(1, L + 1) + (h - (H - 1) / 2) * spread, distance[:, h], s=22, color=colours(h % colours.N),
                   label=f"head {h + 1}" if H <= 16 else None, zorder=3)
    if uniform is not None:
        ax.axhline(uniform, color="grey", linestyle="--", linewidth=1,
                   label=f"uniform over patches\n({uniform:.1f} px)", zorder=2)
    top = max(float(np.nanmax(distance)) if distance.size else 0.0, uniform or 0.0)
    ax.set_ylim(0, 1.1 * top if top > 0 else 1)
    ax.set_xticks(np.arange(1, L + 1) if L <= 24 else np.arange(1, L + 1, 2))
    ax.set_xlim(0.5, L + 0.5)
    ax.set(xlabel="network depth (layer)", ylabel="mean attention distance (pixels)",
           title=f"Mean attention distance per head\n(image {image_size} px wide{title})")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    _save(fig, plt, path)


# ---------------------------------------------------------------------------------------------- the CLI
def colour_of_class(classes, channels: int) -> np.ndarray:
    """The RGB colour in [0, 1] a 3-bit mean-colour class stands for (each level's centre, (q + 0.5) / 8;
    :func:`scratchvit.ops.colour_targets` reversed): (...) int -> (..., 3) float64 (grey for one channel)."""
    classes = np.asarray(classes, np.int64)
    levels = [(classes // 8 ** (channels - 1 - c)) % 8 for c in range(channels)]
    rgb = np.stack(levels if channels == 3 else levels * 3, axis=-1)
    return (rgb + 0.5) / 8.0


def masked_patch_panels(model: ViT, images, seed: int = 0) -> dict:
    """What :func:`plot_masked_patch` draws for a masked-patch pre-trained model (paper Sec. 4.6): for each image
    (float (B, H, W, 3) in [-1, 1]), the image, its corruption (the [mask] patches grey, the copied patches
    showing their source), and the true and the predicted 3-bit mean colours on the corrupted patches, all as
    (B, H, W, 3) float in [0, 1]; "accuracy" the share of corrupted patches whose colour class was predicted.
    The corruption is the validation's (key: ``seed``, step 0, rows 0..B-1)."""
    c, m = model.config, model.config.masked_patch
    plan, targets, logits = model.masked_patch_predict(images, RngKey(seed, 0))
    xp = model.xp
    corrupted, use_mask, use_random, source, targets, pred = (
        to_numpy(a) for a in (plan.corrupted, plan.use_mask, plan.use_random, plan.source, targets,
                              xp.argmax(logits, axis=-1)))
    img = (np.asarray(images, np.float64) + 1.0) / 2.0
    B, S, g, p = img.shape[0], img.shape[1], c.grid_size, c.patch_size
    patches = img.reshape(B, g, p, g, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(B, g * g, p, p, 3)

    def picture(tokens):  # (B, N, p, p, 3) -> (B, S, S, 3)
        return tokens.reshape(B, g, g, p, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(B, S, S, 3)

    rows = np.arange(B)[:, None]
    corrupt = np.where(use_random[..., None, None, None] > 0, patches[rows, source], patches)
    corrupt = np.where(use_mask[..., None, None, None] > 0, 0.5, corrupt)
    on = corrupted[..., None, None, None] > 0
    dim = 0.35 * patches + 0.65  # the patches not corrupted: faded, so the predicted ones stand out
    truth = np.where(on, colour_of_class(targets, m.channels)[:, :, None, None, :], dim)
    guess = np.where(on, colour_of_class(pred, m.channels)[:, :, None, None, :], dim)
    hits = float(((pred == targets) * corrupted).sum() / corrupted.sum())
    return {"image": img, "corrupted": picture(corrupt), "true_colours": picture(truth),
            "predicted_colours": picture(guess), "accuracy": hits}


def plot_masked_patch(panels: dict, path, title: str = "") -> None:
    """Draw :func:`masked_patch_panels` to the PNG ``path``: a row per image (input, corruption, true and
    predicted mean colours of the corrupted patches).

    Raises:
        checks.InputError: matplotlib is missing. OSError: ``path`` cannot be written.
    """
    plt = _import_pyplot()
    names = ("image", "corrupted", "true_colours", "predicted_colours")
    heads = ("image", "corrupted ([mask] grey)", "true mean colours", "predicted")
    n = len(panels["image"])
    fig, axes = plt.subplots(n, 4, figsize=(6.4, 1.7 * n + 0.6), dpi=100, squeeze=False)
    for i in range(n):
        for j, (k, h) in enumerate(zip(names, heads)):
            ax = axes[i, j]
            ax.imshow(np.clip(panels[k][i], 0, 1), interpolation="nearest", vmin=0, vmax=1)
            ax.set_axis_off()
            if i == 0:
                ax.set_title(h, fontsize=8)
    fig.suptitle(f"Masked patch prediction: {100 * panels['accuracy']:.1f}% of the corrupted patches' colours "
                 f"right{title}", fontsize=9)
    fig.tight_layout()
    _save(fig, plt, path)


def _nan_to_none(a: np.ndarray):
    """A float array as nested lists for JSON, NaN as null (JSON has no NaN)."""
    return [_nan_to_none(x) for x in a] if a.ndim > 1 else [None if math.isnan(v) else float(v) for v in a]


def inspect_model(model: ViT, inputs, out: Path, settings: dict, grey: bool = False, images=None) -> dict:
    """Compute the three panels of Fig. 7 for ``model``, write the three PNGs and ``inspect.json`` to
    the folder ``out`` and return the JSON document.

    Args:
        model: a :class:`scratchvit.ViT`. inputs: batches as :func:`mean_attention_distance` takes.
        out: an existing folder. settings: recorded under "settings" (checkpoint, images, ...).
        grey: PCA of the filters summed over the colour channels (``embedding_components(sum_channels=True)``).
        images: (B, H, W, 3) float in [-1, 1]: for a masked-patch pre-trained model, the first
            :data:`MASKED_PATCH_IMAGES` are drawn with their corruption and predicted colours to
            :data:`MASKED_PATCH_FILE` (:func:`plot_masked_patch`).

    Raises:
        checks.InputError: matplotlib is missing. ValueError: no images, or images the model refuses.
        OSError: ``out`` cannot be written.
    """
    c = model.config
    if c.resnet is None:
        kernel, name = model.params["embedding/kernel"], "Patch-embedding filters"
        method = "PCA over the D filters (each P*P*C values), centred, SVD"
    else:  # a hybrid's embedding sees the feature map: the filters on pixels are the ResNet root's
        kernel, _ = weight_standardize_forward(np.asarray(to_numpy(model.params["conv_root/kernel"]), np.float64))
        name = "Hybrid: ResNet root filters (conv_root, standardised)"
        method = ("hybrid (paper Sec. 3.1): the patch embedding convolves the ResNet's feature map, so the panel "
                  "shows the root's 7x7 StdConv filters (conv_root/kernel, weight-standardised); PCA over its "
                  "filters (each 7*7*3 values), centred, SVD")
    comps, var, ratio = embedding_components(kernel, sum_channels=grey)
    sim = position_similarity(model.params[POSEMB], c.classifier)
    distance, share, n = mean_attention_distance(model, inputs)
    g = c.grid_size
    uniform = float(patch_distances(g, c.effective_patch_size).mean())
    plot_embedding_filters(comps, ratio, out / FILES[0], name=name)
    plot_position_similarity(sim, out / FILES[1])
    plot_attention_distance(distance, out / FILES[2], c.image_size, uniform=uniform,
                            title=f"; {n} image{'s' if n != 1 else ''}")
    doc = {
        "settings": {**settings, "images": n, "model_config": c.to_dict()},
        "embedding_filters": {
            "kernel_shape": list(kernel.shape),
            "method": method,
            "filters": "summed over the colour channels (grey inputs)" if grey else "RGB",
            "explained_variance": var.tolist(), "explained_variance_ratio": ratio.tolist()},
        "position_similarity": {
            "grid": g, "order": "row-major: index = row * grid + column; class token left out",
            "cosine_similarity": _nan_to_none(sim)},
        "attention_distance": {
            "units": "pixels", "shape": "[block][head]", "images": n,
            "mean_attention_distance": distance.tolist(),
            "class_token_attention": None if share is None else share.tolist(),
            "class_token": "left out of queries and keys, not renormalised (its share counts as distance 0)",
            "uniform_over_patches_pixels": uniform,
            "per_block_min_max": [[float(row.min()), float(row.max())] for row in distance]},
    }
    if c.masked_patch is not None and images is not None:  # Sec. 4.6: what the pre-training learned to predict
        panels = masked_patch_panels(model, images[:MASKED_PATCH_IMAGES])
        plot_masked_patch(panels, out / MASKED_PATCH_FILE)
        doc["masked_patch"] = {"images": len(panels["image"]), "accuracy": panels["accuracy"],
                               "corruption": "the validation's: key (seed 0, step 0, rows 0..)",
                               "file": MASKED_PATCH_FILE}
    write_text_atomic(out / FILES[3], json.dumps(doc, indent=1) + "\n")
    return doc


def parse_args(argv=None) -> InspectSettings:
    """The inspect CLI's settings (:class:`scratchvit.settings.InspectSettings`) from ``argv`` (the command
    line if None); exits with status 2 and a usage message on a bad one (argparse)."""
    return parse_settings(InspectSettings, argv, "python -m scratchvit.inspect", __doc__.split("\n\n")[0])


def main(argv=None) -> int:
    """``python -m scratchvit.inspect``: the paper's Fig. 7 for a checkpoint, three PNGs and a JSON in
    ``--out``. Returns the exit status: 0, or 2 with a one-line message on stderr for an unreadable
    checkpoint, image or dataset, an output folder that cannot be made, or no matplotlib."""
    args = parse_args(argv)
    out = Path(args.out)
    try:
        _import_pyplot()  # before the slow part
        try:
            info = run_info(args.checkpoint)
            gelu = args.gelu or run_gelu(info)
            model = ViT.from_checkpoint(args.checkpoint, image_size=args.image_size, device=args.device, gelu=gelu)
        except (FileNotFoundError, ValueError, RuntimeError) as e:
            raise InputError(str(e)) from e
        S = model.config.image_size
        if args.dataset:
            try:
                ds = open_dataset(args.dataset, args.data_dir, image_size=S, log=lambda m: print(m, file=sys.stderr))
            except (FileNotFoundError, ValueError, RuntimeError, OSError) as e:
                raise InputError(str(e)) from e
            images = ds.test_images[:args.images]
            source = {"dataset": args.dataset, "split": "test", "first": len(images)}
        else:
            files = args.files[:args.images]
            images = np.stack([_load_image(f, S) for f in files])
            source = {"files": files}
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot make the --out folder {str(out)!r}: {e.strerror or e}") from e
        trained_on = args.dataset or info.get("settings", {}).get("dataset")
        grey = args.filters == "grey" or (args.filters == "auto" and trained_on in GREY_DATASETS)
        settings = {"checkpoint": str(args.checkpoint), "source": source, "image_size": S,
                    "filters": "grey" if grey else "rgb",
                    "patch_size": model.config.patch_size, "batch_size": args.batch_size,
                    "device": args.device, "gelu": model.config.gelu}
        print(f"inspect: {len(images)} images of {S} px through {args.checkpoint}, "
              f"{args.batch_size} per batch, on {args.device}", file=sys.stderr)
        try:
            first = None
            if model.config.masked_patch is not None:  # the pictures of masked patch prediction (Sec. 4.6)
                k = min(MASKED_PATCH_IMAGES, len(images))
                with Batches(images[:k], np.zeros(k, np.int64), k, S, train=False) as b:
                    first = next(iter(b))[1]
            with Batches(images, np.zeros(len(images), np.int64), args.batch_size, S, train=False) as batches:
                doc = inspect_model(model, (x for _, x, _ in batches), out, settings, grey=grey, images=first)
        except (ValueError, OSError) as e:
            raise InputError(str(e)) from e
    except InputError as e:
        print(f"inspect: error: {e}", file=sys.stderr)
        return 2
    d = np.asarray(doc["attention_distance"]["mean_attention_distance"])
    print(f"mean attention distance (pixels): block 1 {d[0].min():.1f}-{d[0].max():.1f}, "
          f"block {len(d)} {d[-1].min():.1f}-{d[-1].max():.1f}")
    for f in FILES + ((MASKED_PATCH_FILE,) if "masked_patch" in doc else ()):
        print(f"wrote {out / f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
