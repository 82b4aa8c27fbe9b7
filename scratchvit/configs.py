"""Named ViT geometries, as the official `vit_jax/configs/models.py`, and overrides of any field.

Names follow the official files: ViT-Ti_16, ViT-S_16, ViT-B_16, ViT-B_32, ViT-L_16, ViT-L_32,
ViT-H_14, ViT-B_8 (Dosovitskiy et al., ICLR 2021, Table 1; Ti and S from Steiner et al., 2021).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .ops.gelu import GELU_FORMS

CLASSIFIERS = ("token", "gap")
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

    def __post_init__(self):
        for f in ("image_size", "patch_size", "hidden_size", "num_layers", "num_heads", "mlp_dim", "num_classes"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"ViTConfig.{f} must be a positive integer, got {v!r}")
        if self.image_size % self.patch_size:
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
    def grid_size(self) -> int:
        """Patches per side, image_size // patch_size."""
        return self.image_size // self.patch_size

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


def _cfg(patch, hidden, layers, heads, mlp):
    return ViTConfig(patch_size=patch, hidden_size=hidden, num_layers=layers, num_heads=heads, mlp_dim=mlp)


MODELS: dict[str, ViTConfig] = {
    "ViT-Ti_16": _cfg(16, 192, 12, 3, 768),
    "ViT-S_16": _cfg(16, 384, 12, 6, 1536),
    "ViT-B_16": _cfg(16, 768, 12, 12, 3072),
    "ViT-B_32": _cfg(32, 768, 12, 12, 3072),
    "ViT-B_8": _cfg(8, 768, 12, 12, 3072),
    "ViT-L_16": _cfg(16, 1024, 24, 16, 4096),
    "ViT-L_32": _cfg(32, 1024, 24, 16, 4096),
    "ViT-H_14": _cfg(14, 1280, 32, 16, 5120),
}

_FIELDS = {f.name for f in dataclasses.fields(ViTConfig)}


def get_config(base: "str | ViTConfig" = "ViT-B_16", **overrides) -> ViTConfig:
    """Return a named geometry (or a given config) with any fields overridden.

    Args:
        base: a name from :data:`MODELS` (e.g. "ViT-B_16") or a :class:`ViTConfig`.
        **overrides: ViTConfig fields. A value of None leaves a field as it is, except for
            ``representation_size`` where None means "no pre-logits"; pass it explicitly to drop it.

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
    changes = {k: v for k, v in overrides.items() if v is not None or k == "representation_size"}
    return dataclasses.replace(base, **changes)
