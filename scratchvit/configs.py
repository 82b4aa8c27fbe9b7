"""Named ViT geometries, as the official `vit_jax/configs/models.py`, and overrides of any field.

Names follow the official files: ViT-Ti_16, ViT-S_16, ViT-B_16, ViT-B_32, ViT-L_16, ViT-L_32,
ViT-H_14, ViT-B_8 (Dosovitskiy et al., ICLR 2021, Table 1; Ti and S from Steiner et al., 2021), and
the hybrids (paper Sec. 3.1, a ResNet's feature map as the input sequence): R+ViT-Ti_16, R50+ViT-B_16,
R26+ViT-S_32, R26+ViT-B_32, R50+ViT-L_32, with vit_jax's ``resnet`` (:class:`ResNetConfig`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .ops.gelu import GELU_FORMS

CLASSIFIERS = ("token", "gap")
GN_GROUPS = 32  # group norm's groups (Flax default, vit_jax): every ResNet width is a multiple


@dataclass(frozen=True)
class ResNetConfig:
    """The ResNet of a hybrid (vit_jax ``config.resnet``; ``models_vit.VisionTransformer``, ``models_resnet``).

    Attributes:
        num_layers: bottleneck units per stage, e.g. (3, 4, 9) for R50+ViT-B_16; () for the root alone
            (7x7 stride-2 StdConv, group norm, ReLU, 3x3 stride-2 max pool).
        width_factor: the root has ``int(64 * width_factor)`` channels; stage i (0-based) has bottleneck
            width ``width * 2**i`` and outputs 4 times that.
    """

    num_layers: tuple = ()
    width_factor: float = 1

    def __post_init__(self):
        layers = self.num_layers
        if isinstance(layers, list):
            object.__setattr__(self, "num_layers", tuple(layers))
            layers = self.num_layers
        if not isinstance(layers, tuple) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1
                                                    for n in layers):
            raise ValueError(f"ResNetConfig.num_layers must be a tuple of positive integers, got {layers!r}")
        w = self.width_factor
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w <= 0 or int(64 * w) % GN_GROUPS:
            raise ValueError(f"ResNetConfig.width_factor must make int(64 * width_factor) a positive multiple of "
                             f"{GN_GROUPS} (group norm's groups), got {w!r}")

    @property
    def width(self) -> int:
        """Channels of the root, ``int(64 * width_factor)`` (vit_jax)."""
        return int(64 * self.width_factor)

    @property
    def out_channels(self) -> int:
        """Channels of the feature map the embedding convolves: the root's, or 4 x the last stage's width."""
        return self.width if not self.num_layers else self.width * 2 ** (len(self.num_layers) - 1) * 4

    def feature_size(self, image_size: int) -> int:
        """Side of the feature map for ``image_size`` px: each stride-2 'SAME' step (the root's conv and max
        pool, the first unit of every stage after the first) takes ceil(side / 2), as XLA."""
        side = image_size
        for _ in range(2 + max(len(self.num_layers) - 1, 0)):
            side = -(-side // 2)
        return side
@dataclass(frozen=True)
class MaskedPatchConfig:
    """Masked patch prediction, the paper's self-supervision (Sec. 4.6, Appendix B.1.2): the corruption of the
    patch embeddings and the per-token head that predicts each corrupted patch's 3-bit mean colour
    (:mod:`scratchvit.ops.masked_patch`).

    Attributes:
        channels: colour channels of the target: 3 (512 classes) or 1 for grey data (8 classes).
        mask_ratio: the share of each image's patches corrupted (the paper's 50%).
        mask_fraction: of the corrupted, the share replaced by the [mask] embedding (80%).
        random_fraction: of the corrupted, the share replaced by another patch of the image (10%); the rest
            (10%) stay as they are.
    """

    channels: int = 3
    mask_ratio: float = 0.5
    mask_fraction: float = 0.8
    random_fraction: float = 0.1

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise ValueError(f"MaskedPatchConfig.channels must be 1 or 3, got {self.channels!r}")
        if not 0.0 < self.mask_ratio <= 1.0 or self.mask_fraction < 0 or self.random_fraction < 0 or \
                self.mask_fraction + self.random_fraction > 1.0:
            raise ValueError(f"MaskedPatchConfig: mask_ratio must lie in (0, 1] and mask_fraction + random_fraction "
                             f"in [0, 1], got {self.mask_ratio}, {self.mask_fraction}, {self.random_fraction}")

    @property
    def num_classes(self) -> int:
        """Classes of the mean-colour target: 2^(3 channels)."""
        return 2 ** (3 * self.channels)


RATES = ("dropout_rate", "attention_dropout_rate", "drop_path_rate")  # the regularisers' fields


@dataclass(frozen=True)
class ViTConfig:
    """The geometry of one ViT.

    Attributes:
        image_size: side of the square input, pixels; a multiple of ``patch_size``.
        patch_size: side of a square patch, pixels (P in the paper).
        hidden_size: token width D.
        num_layers: number of encoder blocks L.
        num_heads: attention heads; divides ``hidden_size``.
        mlp_dim: width of the MLP's hidden layer.
        num_classes: K, the width of the head.
        classifier: "token" (class token, read token 0) or "gap" (mean over tokens, no class token).
        representation_size: width of the tanh pre-logits layer, or None for no pre-logits.
        gelu: "tanh" (the official Flax default) or "erf" (exact; PyTorch/timm weights).
        dropout_rate: dropout after the position embeddings, on the attention output, after the MLP's
            GELU and after its second dense layer (official vit_jax ``models_vit.py`` names and places).
        attention_dropout_rate: dropout on the attention probabilities (official name).
        drop_path_rate: stochastic depth (Huang et al. 2016) of the residual branches, per sample; block i
            of L drops at ``drop_path_rate * i / (L - 1)`` (DeiT / timm ``drop_path_rate``).
        The three rates act only in training steps (``train=True`` with a key,
        :meth:`scratchvit.ViT.part_loss_and_grads`); evaluation, prediction and attention maps never
        drop. Rates in [0, 1); 0 by default.
        resnet: None for a ViT; for a hybrid (paper Sec. 3.1) the :class:`ResNetConfig` whose feature map the
            patches are taken from (``patch_size`` then counts feature-map cells, e.g. 1 for R50+ViT-B_16;
            a remainder that no patch covers is dropped, as vit_jax's 'VALID' embedding). A dict of its
            fields is accepted.
        masked_patch: None, or the :class:`MaskedPatchConfig` of a model pre-trained by masked patch prediction
            (paper Sec. 4.6): it adds the [mask] embedding and the per-token head (``mask_embedding``,
            ``masked_patch_head/{kernel,bias}``). Plain ViTs only. A dict of its fields is accepted.
    """

    image_size: int = 224
    patch_size: int = 16
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    num_classes: int = 1000
    classifier: str = "token"
    representation_size: int | None = None
    gelu: str = "tanh"
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    resnet: ResNetConfig | None = None
    masked_patch: MaskedPatchConfig | None = None

    def __post_init__(self):
        if isinstance(self.masked_patch, dict):
            object.__setattr__(self, "masked_patch", MaskedPatchConfig(**self.masked_patch))
        if self.masked_patch is not None and not isinstance(self.masked_patch, MaskedPatchConfig):
            raise ValueError(f"ViTConfig.masked_patch must be None or a MaskedPatchConfig (or a dict of its fields), "
                             f"got {self.masked_patch!r}")
        if self.masked_patch is not None and self.resnet is not None:
            raise ValueError("masked patch prediction (paper Sec. 4.6) needs a plain ViT, and this model is a hybrid "
                             "(a ResNet before the patch embedding: the targets are the colours of image patches, not "
                             "of feature-map cells); for training: --config fashion-mnist-vit, or --resnet none")
        if isinstance(self.resnet, dict):
            object.__setattr__(self, "resnet", ResNetConfig(**self.resnet))
        if self.resnet is not None and not isinstance(self.resnet, ResNetConfig):
            raise ValueError(f"ViTConfig.resnet must be None, a ResNetConfig or a dict of its fields, got "
                             f"{self.resnet!r}")
        for f in ("image_size", "patch_size", "hidden_size", "num_layers", "num_heads", "mlp_dim", "num_classes"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"ViTConfig.{f} must be a positive integer, got {v!r}")
        if self.resnet is not None:
            side = self.resnet.feature_size(self.image_size)
            if side < self.patch_size:
                raise ValueError(f"ViTConfig: the ResNet turns {self.image_size} px into a {side}x{side} map, "
                                 f"smaller than patch_size {self.patch_size}")
        elif self.image_size % self.patch_size:
            raise ValueError(
                f"ViTConfig: image_size {self.image_size} px is not a multiple of patch_size {self.patch_size} px"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"ViTConfig: hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"ViTConfig.classifier must be one of {CLASSIFIERS}, got {self.classifier!r}")
        if self.representation_size is not None and (
            not isinstance(self.representation_size, int) or self.representation_size < 1
        ):
            raise ValueError(
                f"ViTConfig.representation_size must be None or a positive integer, got {self.representation_size!r}"
            )
        if self.gelu not in GELU_FORMS:
            raise ValueError(f"ViTConfig.gelu must be one of {GELU_FORMS}, got {self.gelu!r}")
        for f in RATES:
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                raise ValueError(f"ViTConfig.{f} must lie in [0, 1), got {v!r}")

    def drop_path_rate_of(self, block: int) -> float:
        """Block ``block``'s (0-based) stochastic-depth rate: ``drop_path_rate * block / (L - 1)`` (timm's
        ``linspace(0, drop_path_rate, L)``; 0 for a single block)."""
        return self.drop_path_rate * block / (self.num_layers - 1) if self.num_layers > 1 else 0.0

    @property
    def feature_size(self) -> int:
        """Side of what the patches are cut from: the image (a ViT) or the ResNet's feature map (a hybrid)."""
        return self.image_size if self.resnet is None else self.resnet.feature_size(self.image_size)

    @property
    def feature_channels(self) -> int:
        """Channels of what the patches are cut from: 3 (RGB) or the ResNet's output channels."""
        return 3 if self.resnet is None else self.resnet.out_channels

    @property
    def effective_patch_size(self) -> int:
        """Pixels per patch side in the image: the patch size times the ResNet's total stride (16 for
        R50+ViT-B_16); for odd sizes the 'SAME' steps round up, so this is the stride, not an exact tiling."""
        if self.resnet is None:
            return self.patch_size
        return self.patch_size * 2 ** (2 + max(len(self.resnet.num_layers) - 1, 0))

    @property
    def grid_size(self) -> int:
        """Patches per side, feature_size // patch_size (image_size // patch_size for a ViT)."""
        return self.feature_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Number of patch tokens N = (image_size / patch_size)^2."""
        return self.grid_size ** 2

    @property
    def seq_len(self) -> int:
        """Tokens through the encoder: N plus one for the class token with the "token" classifier."""
        return self.num_patches + (1 if self.classifier == "token" else 0)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def replace(self, **overrides) -> "ViTConfig":
        """A copy with some fields changed (None values are ignored, except representation_size)."""
        return get_config(self, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _cfg(patch, hidden, layers, heads, mlp, resnet=None, **more):
    return ViTConfig(patch_size=patch, hidden_size=hidden, num_layers=layers, num_heads=heads, mlp_dim=mlp,
                     resnet=None if resnet is None else ResNetConfig(*resnet), **more)


MODELS: dict[str, ViTConfig] = {
    "ViT-Ti_16": _cfg(16, 192, 12, 3, 768),
    "ViT-S_16": _cfg(16, 384, 12, 6, 1536),
    "ViT-B_16": _cfg(16, 768, 12, 12, 3072),
    "ViT-B_32": _cfg(32, 768, 12, 12, 3072),
    "ViT-B_8": _cfg(8, 768, 12, 12, 3072),
    "ViT-L_16": _cfg(16, 1024, 24, 16, 4096),
    "ViT-L_32": _cfg(32, 1024, 24, 16, 4096),
    "ViT-H_14": _cfg(14, 1280, 32, 16, 5120),
    # hybrids (vit_jax configs/models.py get_r_ti16_config ... get_r50_l32_config): the patch counts feature-map
    # cells; the name gives the effective patch in pixels (the root's stride 4 times 2 per stage after the first)
    "R+ViT-Ti_16": _cfg(8, 192, 12, 3, 768, resnet=((), 1)),
    "R50+ViT-B_16": _cfg(1, 768, 12, 12, 3072, resnet=((3, 4, 9), 1), dropout_rate=0.1),  # vit_jax's dropout
    "R26+ViT-S_32": _cfg(1, 384, 12, 6, 1536, resnet=((2, 2, 2, 2), 1)),
    "R26+ViT-B_32": _cfg(1, 768, 12, 12, 3072, resnet=((2, 2, 2, 2), 1)),
    "R50+ViT-L_32": _cfg(1, 1024, 24, 16, 4096, resnet=((3, 4, 6, 3), 1)),
}

_FIELDS = {f.name for f in dataclasses.fields(ViTConfig)}


def get_config(base: "str | ViTConfig" = "ViT-B_16", **overrides) -> ViTConfig:
    """Return a named geometry (or a given config) with any fields overridden.

    Args:
        base: a name from :data:`MODELS` (e.g. "ViT-B_16") or a :class:`ViTConfig`.
        **overrides: ViTConfig fields. A value of None leaves a field as it is, except for
            ``representation_size`` where None means "no pre-logits" and ``masked_patch`` where it means
            "no masked-patch head"; pass them explicitly to drop them.

    Raises:
        ValueError: an unknown model name or field, or a geometry that does not fit
            (image size not a multiple of the patch, width not divisible by heads, ...).
    """
    if isinstance(base, str):
        if base not in MODELS:
            raise ValueError(f"unknown model {base!r}; known models: {', '.join(MODELS)}")
        base = MODELS[base]
    unknown = set(overrides) - _FIELDS
    if unknown:
        raise ValueError(f"unknown ViTConfig field(s) {sorted(unknown)}; fields are {sorted(_FIELDS)}")
    changes = {k: v for k, v in overrides.items() if v is not None or k in ("representation_size", "masked_patch")}
    return dataclasses.replace(base, **changes)
