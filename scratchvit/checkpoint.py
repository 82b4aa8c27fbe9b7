"""Read and write Google's official ViT ``.npz`` checkpoints (vit_jax ``checkpoint.py``).

A file is a flat ``np.savez`` archive, one array per parameter, named with '/' separators
("Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel", ...). Reading accepts the official
pre-Linen block names and the Linen / big_vision ones, infers the geometry from the arrays,
and adapts the model for fine-tuning (new zero head, resized position-embedding grid) as the
official ``checkpoint.load_pretrained`` does. Writing produces canonical names, atomically.
"""
from __future__ import annotations

import math
import re
import zipfile
from pathlib import Path

import numpy as np

from .backend import to_numpy
from .configs import MaskedPatchConfig, ResNetConfig, ViTConfig
from .files import write_atomic, write_error
from .params import ATTN, MLP, POSEMB, check_finite, check_params, is_official_name, param_shapes

# Linen / big_vision spelling of the sub-modules of an encoder block -> the official pre-Linen one.
LINEN_BLOCK_NAMES = {
    "LayerNorm_0": "LayerNorm_0",
    "MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
    "LayerNorm_1": "LayerNorm_2",
    "MlpBlock_0": "MlpBlock_3",
}
_BLOCK_RE = re.compile(r"^Transformer/encoderblock_(\d+)/([^/]+)/(.*)$")


def save_npz_atomic(path, arrays: dict) -> None:
    """Write ``arrays`` (name -> array) to ``path`` as an uncompressed ``.npz``, atomically
    (:func:`write_atomic`); missing folders are created.

    Raises:
        ValueError: ``path`` does not end in ".npz".
        WriteError: the file cannot be written (a full disk: the message gives the size it needs).
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"checkpoint path must end in .npz, got {str(path)!r}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(path, e) from e
    arrays = {k: to_numpy(v) for k, v in arrays.items()}
    # the file's size: the data, plus per array a .npy header (128 bytes) and two zip headers naming it
    size = sum(a.nbytes + 128 + 2 * (len(k) + 50) for k, a in arrays.items()) + 22
    write_atomic(path, lambda f: np.savez(f, **arrays), size=size)


def save_checkpoint(path, params: dict, dtype="float32") -> None:
    """Save ViT parameters in the official layout (canonical names, ``np.savez``), atomically.

    Args:
        path: destination, ending in ".npz".
        params: official name -> array (NumPy or CuPy), e.g. ``model.params``.
        dtype: stored dtype, float32 by default (as the official files), or None to keep each array's.

    Raises:
        ValueError: ``path`` does not end in ".npz", or a name is not an official ViT parameter name.
    """
    bad = [k for k in params if not is_official_name(k)]
    if bad:
        raise ValueError(f"save_checkpoint: not official ViT parameter names: {bad[:5]}")
    arrays = {k: to_numpy(v) if dtype is None else to_numpy(v).astype(dtype) for k, v in params.items()}
    save_npz_atomic(path, arrays)


def read_npz(path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file, read eagerly, never unpickling, all float values finite.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an ``.npz`` name, not a readable (e.g. truncated) ``.npz`` archive, or an array
            holding NaN or infinite values (naming the file and the array, with the counts).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {str(path)!r}")
    if path.suffix != ".npz":
        raise ValueError(f"checkpoint must be an .npz file, got {str(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise ValueError(f"checkpoint {str(path)!r} is not a readable .npz archive (truncated or corrupt?): {e}") from e
    check_finite(arrays, where=str(path))
    return arrays


def canonical_names(arrays: dict) -> dict:
    """Rename Linen / big_vision keys to the official pre-Linen names; other keys unchanged.

    Handles: a leading "params/" on every key; block sub-modules ``LayerNorm_0,
    MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0``; a top-level "pos_embedding".

    Raises:
        ValueError: a block mixing both spellings.
    """
    if arrays and all(k.startswith("params/") for k in arrays):
        arrays = {k[len("params/"):]: v for k, v in arrays.items()}
    linen_blocks = {m.group(1) for k in arrays
                    if (m := _BLOCK_RE.match(k)) and m.group(2) == "MultiHeadDotProductAttention_0"}
    out = {}
    for k, v in arrays.items():
        m = _BLOCK_RE.match(k)
        if m and m.group(1) in linen_blocks:
            sub = m.group(2)
            if sub not in LINEN_BLOCK_NAMES:
                raise ValueError(f"checkpoint: block {m.group(1)} mixes Linen and pre-Linen names ({k!r})")
            k = f"Transformer/encoderblock_{m.group(1)}/{LINEN_BLOCK_NAMES[sub]}/{m.group(3)}"
        elif k == "pos_embedding":
            k = POSEMB
        if k in out:
            raise ValueError(f"checkpoint: two arrays map to the name {k!r}")
        out[k] = v
    return out


def infer_config(params: dict) -> ViTConfig:
    """The geometry a (canonically named) parameter dict describes: a checkpoint holds no config,
    its array shapes are the config (patch, width, heads, depth, MLP width, classes, pooling; a
    hybrid's ResNet, :func:`infer_resnet`). The image size is the position grid times the patch
    (times the ResNet's stride for a hybrid: 224 px for R50+ViT-B_16's 14 x 14).

    Raises:
        ValueError: a missing key needed to infer it, a non-square patch or position grid,
            or block numbers that are not 0..L-1.
    """
    def need(name):
        if name not in params:
            raise ValueError(f"checkpoint: missing parameter {name!r}")
        return params[name]

    resnet = infer_resnet(params)
    channels = 3 if resnet is None else resnet.out_channels
    ek = need("embedding/kernel")
    if ek.ndim != 4 or ek.shape[0] != ek.shape[1] or ek.shape[2] != channels:
        what = "3 (RGB)" if resnet is None else f"the ResNet's {channels} output channels"
        raise ValueError(f"checkpoint: 'embedding/kernel' has shape {ek.shape}, expected (P, P, {channels}, D): "
                         f"C = {what}")
    patch, hidden = ek.shape[0], ek.shape[3]
    blocks = sorted({int(m.group(1)) for k in params if (m := _BLOCK_RE.match(k))})
    if blocks != list(range(len(blocks))) or not blocks:
        raise ValueError(f"checkpoint: encoder blocks must be numbered 0..L-1, found {blocks}")
    q = need(f"Transformer/encoderblock_0/{ATTN}/query/kernel")
    if q.ndim != 3:
        raise ValueError(f"checkpoint: query kernel has shape {q.shape}, expected (D, heads, head_dim)")
    mlp = need(f"Transformer/encoderblock_0/{MLP}/Dense_0/kernel")
    classifier = "token" if "cls" in params else "gap"
    rep = params["pre_logits/kernel"].shape[1] if "pre_logits/kernel" in params else None
    num_classes = need("head/bias").shape[0]
    pos = need(POSEMB)
    n_grid = pos.shape[1] - (1 if classifier == "token" else 0)
    grid = math.isqrt(n_grid)
    if grid * grid != n_grid:
        raise ValueError(
            f"checkpoint: position embedding {pos.shape} holds {n_grid} grid tokens, which is not a square grid"
        )
    image_size = grid * patch
    if resnet is not None:  # the feature map's cells times the ResNet's stride (the smallest image of that grid)
        image_size = ViTConfig(patch_size=patch, resnet=resnet).effective_patch_size * grid
    masked_patch = None
    if "mask_embedding" in params:  # a masked-patch pre-training checkpoint: 512 colour classes (RGB) or 8 (grey)
        k = need("masked_patch_head/bias").shape[0]
        if k not in (8, 512):
            raise ValueError(f"checkpoint: 'masked_patch_head/bias' has {k} classes, expected 512 (RGB) or 8 (grey)")
        masked_patch = MaskedPatchConfig(channels=3 if k == 512 else 1)
    return ViTConfig(image_size=image_size, patch_size=patch, hidden_size=hidden, num_layers=len(blocks),
                     num_heads=q.shape[1], mlp_dim=mlp.shape[1], num_classes=num_classes,
                     classifier=classifier, representation_size=rep, resnet=resnet, masked_patch=masked_patch)


_UNIT_NAME_RE = re.compile(r"^block(\d+)/unit(\d+)/")


def infer_resnet(params: dict) -> ResNetConfig | None:
    """The hybrid's ResNet a parameter dict describes (paper Sec. 3.1; vit_jax ``config.resnet``), or None for a
    plain ViT (no "conv_root/kernel"): the width factor from the root's channels (``conv_root/kernel`` is
    (7, 7, 3, 64 * width_factor)), ``num_layers`` from the units of ``block1``, ``block2``, ...

    Raises:
        ValueError: a root kernel of another shape, or stages / units not numbered 1..n.
    """
    if "conv_root/kernel" not in params:
        return None
    k = params["conv_root/kernel"]
    if k.ndim != 4 or tuple(k.shape[:3]) != (7, 7, 3):
        raise ValueError(f"checkpoint: 'conv_root/kernel' has shape {k.shape}, expected (7, 7, 3, width)")
    units: dict[int, set] = {}
    for name in params:
        if m := _UNIT_NAME_RE.match(name):
            units.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if sorted(units) != list(range(1, len(units) + 1)):
        raise ValueError(f"checkpoint: ResNet stages must be numbered block1..blockN, found {sorted(units)}")
    num_layers = []
    for b in sorted(units):
        if sorted(units[b]) != list(range(1, len(units[b]) + 1)):
            raise ValueError(f"checkpoint: units of block{b} must be numbered 1..n, found {sorted(units[b])}")
        num_layers.append(len(units[b]))
    width = k.shape[3]
    factor = width / 64
    return ResNetConfig(num_layers=tuple(num_layers), width_factor=int(factor) if factor.is_integer() else factor)


def resize_linear_align_corners(grid: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """Bilinearly resize a (h, w, D) float array to (new_h, new_w, D) float64, corners aligned.

    This is ``scipy.ndimage.zoom(grid, (new_h/h, new_w/w, 1), order=1)``: output index o samples
    input coordinate o * (n_in - 1) / (n_out - 1) along each axis, linearly interpolated. The result
    is float64 whatever the input's dtype (:func:`resize_posemb` casts it back).
    """
    def axis_weights(n_in, n_out):
        if n_out == 1 or n_in == 1:
            coord = np.zeros(n_out)
        else:
            coord = np.arange(n_out) * ((n_in - 1) / (n_out - 1))
        lo = np.clip(np.floor(coord).astype(int), 0, n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, coord - lo

    g = np.asarray(grid, dtype=np.float64)
    lo, hi, t = axis_weights(g.shape[0], new_h)
    g = g[lo] * (1 - t)[:, None, None] + g[hi] * t[:, None, None]
    lo, hi, t = axis_weights(g.shape[1], new_w)
    g = g[:, lo] * (1 - t)[None, :, None] + g[:, hi] * t[None, :, None]
    return g


def resize_posemb(posemb: np.ndarray, new_seq_len: int, classifier: str) -> np.ndarray:
    """Resize a (1, T, D) position embedding to (1, new_seq_len, D) (official ``interpolate_posembed``).

    With the "token" classifier the class-token row is kept as it is and the remaining square grid
    is resized bilinearly (see :func:`resize_linear_align_corners`).

    Raises:
        ValueError: the old or the new grid is not square.
    """
    n_tok = 1 if classifier == "token" else 0
    tok, grid = posemb[:, :n_tok], posemb[0, n_tok:]
    gs_old, gs_new = math.isqrt(len(grid)), math.isqrt(new_seq_len - n_tok)
    if gs_old ** 2 != len(grid) or gs_new ** 2 != new_seq_len - n_tok:
        raise ValueError(
            f"position embedding: cannot resize {len(grid)} grid tokens to {new_seq_len - n_tok}: not square")
    grid = resize_linear_align_corners(grid.reshape(gs_old, gs_old, -1), gs_new, gs_new)
    return np.concatenate([tok, grid.reshape(1, gs_new * gs_new, -1).astype(posemb.dtype)], axis=1)


def load_checkpoint(path, num_classes: int | None = None, image_size: int | None = None, new_head: bool = False,
                    log=None):
    """Read an official ``.npz`` checkpoint and adapt it for fine-tuning.

    Args:
        path: the ``.npz`` file (e.g. ``ViT-B_16.npz`` from gs://vit_models/imagenet21k).
        num_classes: if given and different from the file's, the head is replaced by a zero head of
            that width and ``pre_logits`` is dropped (as the official fine-tuning does).
        new_head: replace the head by a zero head and drop ``pre_logits`` even when the class count
            is the file's: the official ``vit_jax/checkpoint.py: load_pretrained`` always does this
            before fine-tuning (``python -m scratchvit.train --checkpoint``); False keeps a trained
            head (evaluation, prediction).
        image_size: if given and different from the file's, the position-embedding grid is resized
            bilinearly (``interpolate_posembed``); pixels, a multiple of the patch size.
        log: a callable for a line on what fine-tuning drops beyond the head (a masked-patch pre-training's
            [mask] embedding and token head, which ``new_head`` drops too), or None.

    Returns:
        (config, params): the :class:`ViTConfig` and a dict of float NumPy arrays, canonical names.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable ``.npz``; a missing, extra or mis-shaped parameter (naming the key
            and both shapes); NaN or infinite values (naming the array); a non-square position grid;
            an image size that is not a multiple of the patch.
    """
    params = canonical_names(read_npz(path))
    try:
        config = infer_config(params)
        check_params(params, config)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    params = {k: params[k] for k in param_shapes(config)}  # official order
    if new_head or (num_classes is not None and num_classes != config.num_classes):
        num_classes = config.num_classes if num_classes is None else num_classes
        config = config.replace(num_classes=num_classes, representation_size=None)
        params.pop("pre_logits/kernel", None)
        params.pop("pre_logits/bias", None)
        dtype = params["head/kernel"].dtype
        params["head/kernel"] = np.zeros((config.hidden_size, num_classes), dtype)
        params["head/bias"] = np.zeros((num_classes,), dtype)
        if config.masked_patch is not None:  # the pre-training's own parameters: not part of the classifier
            config = config.replace(masked_patch=None)
            if log is not None:
                log(f"{path}: masked-patch pre-training checkpoint: its [mask] embedding and masked_patch_head are "
                    "dropped for fine-tuning")
    if image_size is not None and image_size != config.image_size:
        config = config.replace(image_size=image_size)  # raises if not a multiple of the patch
        params[POSEMB] = resize_posemb(params[POSEMB], config.seq_len, config.classifier)
    params = {k: params[k] for k in param_shapes(config)}
    return config, params
