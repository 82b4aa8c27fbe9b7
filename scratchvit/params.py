"""The ViT parameter schema: official names, shapes, checks and initialisation, in one place.

Names follow the official pre-Linen checkpoints (``vit_jax/models_vit.py`` and the ``.npz`` files
on gs://vit_models): "embedding/kernel", "cls", "Transformer/posembed_input/pos_embedding",
"Transformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2,
MlpBlock_3}/...", "Transformer/encoder_norm/...", "pre_logits/...", "head/...". A hybrid (paper
Sec. 3.1) adds its ResNet's, as in the official ``R50+ViT-B_16.npz`` (vit_jax ``models_vit``,
``models_resnet``): "conv_root/kernel", "gn_root/{scale,bias}", and per bottleneck unit
"block{b}/unit{u}/{conv1,conv2,conv3,conv_proj}/kernel", "block{b}/unit{u}/{gn1,gn2,gn3,gn_proj}/{scale,bias}".

This module imports only NumPy and :mod:`scratchvit.configs`: the model and the checkpoint
reader both import it, and neither imports the other's dependents (as the official
``vit_jax/checkpoint.py`` never imports the model).
"""
from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:  # annotations only: configs imports ops (GELU_FORMS), whose attention imports this module
    from .configs import ViTConfig

POSEMB = "Transformer/posembed_input/pos_embedding"
ATTN = "MultiHeadDotProductAttention_1"
MLP = "MlpBlock_3"
LN_ATTN, LN_MLP = "LayerNorm_0", "LayerNorm_2"
BLOCK_MODULES = (LN_ATTN, ATTN, LN_MLP, MLP)
ATTN_PROJ = ("query", "key", "value", "out")
ATTN_KEYS = tuple(f"{n}/{leaf}" for n in ATTN_PROJ for leaf in ("kernel", "bias"))
TOP_LEVEL = ("embedding/kernel", "embedding/bias", "cls", POSEMB, "Transformer/encoder_norm/scale",
             "Transformer/encoder_norm/bias", "pre_logits/kernel", "pre_logits/bias", "head/kernel", "head/bias")

RESNET_ROOT = ("conv_root/kernel", "gn_root/scale", "gn_root/bias")
# Masked patch prediction (paper Sec. 4.6): the [mask] embedding and the per-token head, named in the official style.
MASKED_PATCH = ("mask_embedding", "masked_patch_head/kernel", "masked_patch_head/bias")
_UNIT_RE = re.compile(r"^block\d+/unit\d+/(?:(?:conv[123]|conv_proj)/kernel|(?:gn[123]|gn_proj)/(?:scale|bias))$")


class Unit(NamedTuple):
    """One bottleneck unit of a hybrid's ResNet (vit_jax ``models_resnet.ResidualUnit``)."""

    prefix: str  # "block{b}/unit{u}/"
    in_channels: int
    features: int  # the bottleneck width; the unit outputs 4 * features channels
    stride: int  # of conv2 (3x3) and conv_proj: 2 in the first unit of every stage after the first
    projection: bool  # conv_proj + gn_proj on the residual: the channels or the stride change


def resnet_units(config: ViTConfig) -> list[Unit]:
    """The bottleneck units of ``config``'s ResNet in order (none for a ViT or a root alone): stage b
    (``block{b}``, 1-based) has ``num_layers[b-1]`` units of width ``width * 2**(b-1)``; its first unit has
    stride 2 for b > 1 (vit_jax ``VisionTransformer.__call__``, ``ResNetStage``)."""
    r = config.resnet
    if r is None:
        return []
    units, channels = [], r.width
    for b, n in enumerate(r.num_layers):
        features = r.width * 2 ** b
        for u in range(n):
            stride = 2 if (b > 0 and u == 0) else 1
            units.append(Unit(f"block{b + 1}/unit{u + 1}/", channels, features, stride,
                              channels != 4 * features or stride != 1))
            channels = 4 * features
    return units


def block_prefix(i: int) -> str:
    """Name prefix of encoder block ``i``: "Transformer/encoderblock_{i}/"."""
    return f"Transformer/encoderblock_{i}/"


def param_shapes(config: ViTConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's official name and shape for ``config``, in the official order."""
    c = config
    P, D, H, hd, M = c.patch_size, c.hidden_size, c.num_heads, c.head_dim, c.mlp_dim
    shapes = {}
    if c.resnet is not None:  # the order in which vit_jax creates them
        w = c.resnet.width
        shapes.update({"conv_root/kernel": (7, 7, 3, w), "gn_root/scale": (w,), "gn_root/bias": (w,)})
        for u in resnet_units(c):
            f, out = u.features, 4 * u.features
            if u.projection:
                shapes.update({u.prefix + "conv_proj/kernel": (1, 1, u.in_channels, out),
                               u.prefix + "gn_proj/scale": (out,), u.prefix + "gn_proj/bias": (out,)})
            for conv, gn, k, cin, cout in (("conv1", "gn1", 1, u.in_channels, f), ("conv2", "gn2", 3, f, f),
                                           ("conv3", "gn3", 1, f, out)):
                shapes[u.prefix + conv + "/kernel"] = (k, k, cin, cout)
                shapes[u.prefix + gn + "/scale"] = (cout,)
                shapes[u.prefix + gn + "/bias"] = (cout,)
    shapes.update({"embedding/kernel": (P, P, c.feature_channels, D), "embedding/bias": (D,)})
    if c.classifier == "token":
        shapes["cls"] = (1, 1, D)
    shapes[POSEMB] = (1, c.seq_len, D)
    for i in range(c.num_layers):
        b = block_prefix(i)
        shapes[b + LN_ATTN + "/scale"] = (D,)
        shapes[b + LN_ATTN + "/bias"] = (D,)
        for n in ATTN_PROJ:
            out = n == "out"
            shapes[f"{b}{ATTN}/{n}/kernel"] = (H, hd, D) if out else (D, H, hd)
            shapes[f"{b}{ATTN}/{n}/bias"] = (D,) if out else (H, hd)
        shapes[b + LN_MLP + "/scale"] = (D,)
        shapes[b + LN_MLP + "/bias"] = (D,)
        shapes[f"{b}{MLP}/Dense_0/kernel"] = (D, M)
        shapes[f"{b}{MLP}/Dense_0/bias"] = (M,)
        shapes[f"{b}{MLP}/Dense_1/kernel"] = (M, D)
        shapes[f"{b}{MLP}/Dense_1/bias"] = (D,)
    shapes["Transformer/encoder_norm/scale"] = (D,)
    shapes["Transformer/encoder_norm/bias"] = (D,)
    head_in = D
    if c.representation_size is not None:
        shapes["pre_logits/kernel"] = (D, c.representation_size)
        shapes["pre_logits/bias"] = (c.representation_size,)
        head_in = c.representation_size
    shapes["head/kernel"] = (head_in, c.num_classes)
    shapes["head/bias"] = (c.num_classes,)
    if c.masked_patch is not None:  # masked patch prediction (paper Sec. 4.6): the [mask] embedding, the token head
        shapes.update({"mask_embedding": (1, 1, D), "masked_patch_head/kernel": (D, c.masked_patch.num_classes),
                       "masked_patch_head/bias": (c.masked_patch.num_classes,)})
    return shapes


def is_official_name(name: str) -> bool:
    """Whether ``name`` is an official (pre-Linen) ViT parameter name of some geometry (or one of the masked-patch
    pre-training's :data:`MASKED_PATCH`, named in that style)."""
    if name in TOP_LEVEL or name in RESNET_ROOT or name in MASKED_PATCH or _UNIT_RE.match(name):
        return True
    head, _, rest = name.partition("/encoderblock_")
    num, _, rest = rest.partition("/")
    module = rest.split("/", 1)[0]
    return head == "Transformer" and num.isdigit() and module in BLOCK_MODULES and "/" in rest


def count_params(config: ViTConfig) -> int:
    """Number of scalar parameters of ``config``."""
    return sum(math.prod(s) for s in param_shapes(config).values())


def check_params(params: dict, config: ViTConfig) -> None:
    """Check that ``params`` has exactly the names and shapes ``config`` needs.

    Raises:
        ValueError: a missing or extra name, or a wrong shape (naming the key, the shape found and
            the shape expected).
    """
    expected = param_shapes(config)
    missing = [k for k in expected if k not in params]
    extra = [k for k in params if k not in expected]
    if missing:
        raise ValueError(f"parameters missing for this geometry: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if extra:
        raise ValueError(f"unexpected parameters for this geometry: {extra[:5]}{' ...' if len(extra) > 5 else ''}")
    for k, shape in expected.items():
        found = tuple(params[k].shape)
        if found != shape:
            raise ValueError(f"parameter {k!r} has shape {found}, expected {shape}")


def check_finite(params: dict, where: str = "parameters") -> None:
    """Refuse NaN or infinite values (NumPy arrays; integer arrays pass).

    Raises:
        ValueError: the first array holding non-finite values, e.g.
            "ViT.npz: head/kernel holds 3 NaN / 0 inf values" (``where`` = "ViT.npz").
    """
    for k, v in params.items():
        v = np.asarray(v)
        if not np.issubdtype(v.dtype, np.inexact):
            continue
        finite = np.isfinite(v)
        if not finite.all():
            n_nan = int(np.isnan(v).sum())
            n_inf = int(v.size - finite.sum()) - n_nan
            raise ValueError(f"{where}: {k} holds {n_nan} NaN / {n_inf} inf values")


def _truncated_normal(rng, shape, std):
    """Normal(0, std) truncated to +-2 std (resampling), as ``jax.random.truncated_normal`` scaled."""
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2.0
    return out * std


def init_params(config: ViTConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Fresh float64 NumPy parameters for ``config``, initialised as the official code does.

    - patch embedding and pre-logits kernels: LeCun normal (Flax ``nn.Conv`` / ``nn.Dense`` default:
      truncated normal, variance 1/fan_in), zero biases;
    - attention and MLP kernels: Xavier uniform over (fan_in, fan_out) of the flattened kernel;
    - MLP biases: normal(std 1e-6); attention biases: zeros;
    - class token zeros; position embedding normal(std 0.02); layer norms scale 1, bias 0;
    - head: zeros (``head_zero_init``); so are the masked-patch head and the [mask] embedding.
    - hybrid ResNet: convolution kernels LeCun normal (Flax ``nn.Conv`` default), group norms scale 1 and
      bias 0, except ``gn3``'s scale: zeros (``scale_init=nn.initializers.zeros``: each unit starts as its
      residual path).
    """
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in param_shapes(config).items():
        leaf = name.rsplit("/", 1)[-1]
        if name == POSEMB:
            v = rng.normal(0.0, 0.02, shape)
        elif name.startswith(("head/", "masked_patch_head/")) or name in ("cls", "mask_embedding"):
            v = np.zeros(shape)
        elif name.endswith("/gn3/scale"):
            v = np.zeros(shape)
        elif leaf == "scale":
            v = np.ones(shape)
        elif name in ("embedding/kernel", "pre_logits/kernel") or name.startswith(("conv_root/", "block")):
            fan_in = math.prod(shape[:-1])
            # 0.8796... is the std of a unit normal truncated to +-2 (as in jax's variance_scaling).
            v = _truncated_normal(rng, shape, math.sqrt(1.0 / fan_in) / 0.87962566103423978)
        elif leaf == "kernel":  # attention (D, H, hd) / (H, hd, D), MLP (in, out)
            if "/out/" in name:
                fan_in, fan_out = shape[0] * shape[1], shape[2]
            else:
                fan_in, fan_out = shape[0], math.prod(shape[1:])
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            v = rng.uniform(-limit, limit, shape)
        elif MLP in name:  # MLP biases
            v = rng.normal(0.0, 1e-6, shape)
        else:  # embedding/bias, attention biases, layer-norm biases, pre_logits/bias
            v = np.zeros(shape)
        params[name] = v
    return params
