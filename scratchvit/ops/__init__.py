"""The hand-written operations of the ViT, one file each, every one a ``*_forward`` / ``*_backward`` pair.

A forward returns its output and a cache; the matching backward takes the upstream gradient and
that cache and returns the gradients. Every op has its plain form (``*_forward_plain`` /
``*_backward_plain``), written on the Python array API standard 2023.12, which runs on CuPy, any
array-API namespace and float16. Where it pays (at least 5% of the op's time on the CPU, measured with
``bench/op_profile.py --compare-forms``), a NumPy fast form beside it, which the public functions take
for float32/float64 NumPy arrays (:func:`~scratchvit.ops.common.fast_form`); dense, tanh, dropout, drop
path and weight standardisation have the plain form only (their files say why). Each file holds, in
this order: the equations (its docstring), the plain form, the NumPy fast form, the public pair. A
forward's cache is for the backward of the same form. What they share: :mod:`scratchvit.ops.common`.
"""
from ..rng import RngKey, keep_mask
from .attention import (
    attention_backward,
    attention_backward_plain,
    attention_forward,
    attention_forward_plain,
    attention_weights,
    softmax_backward,
    softmax_backward_plain,
    softmax_forward,
    softmax_forward_plain,
)
from .conv2d import conv2d_backward, conv2d_backward_plain, conv2d_forward, conv2d_forward_plain
from .cross_entropy import (
    softmax_cross_entropy_backward,
    softmax_cross_entropy_backward_plain,
    softmax_cross_entropy_forward,
    softmax_cross_entropy_forward_plain,
)
from .dense import dense_backward, dense_backward_plain, dense_forward, dense_forward_plain
from .drop_path import drop_path_backward, drop_path_backward_plain, drop_path_forward, drop_path_forward_plain
from .dropout import dropout_backward, dropout_backward_plain, dropout_forward, dropout_forward_plain
from .gelu import gelu_backward, gelu_backward_plain, gelu_forward, gelu_forward_plain
from .group_norm import group_norm_backward, group_norm_backward_plain, group_norm_forward, group_norm_forward_plain
from .layer_norm import layer_norm_backward, layer_norm_backward_plain, layer_norm_forward, layer_norm_forward_plain
from .masked_patch import (
    CORRUPTION_SITE,
    CorruptionPlan,
    colour_targets,
    corrupt_backward,
    corrupt_forward,
    corruption_plan,
    token_cross_entropy_backward,
    token_cross_entropy_forward,
)
from .max_pool import max_pool_backward, max_pool_backward_plain, max_pool_forward, max_pool_forward_plain
from .patch_embedding import (
    patch_embedding_backward,
    patch_embedding_backward_plain,
    patch_embedding_forward,
    patch_embedding_forward_plain,
)
from .pooling import pool_backward, pool_backward_plain, pool_forward, pool_forward_plain
from .relu import relu_backward, relu_backward_plain, relu_forward, relu_forward_plain
from .tanh import tanh_backward, tanh_backward_plain, tanh_forward, tanh_forward_plain
from .weight_standardize import (
    weight_standardize_backward,
    weight_standardize_backward_plain,
    weight_standardize_forward,
    weight_standardize_forward_plain,
)

__all__ = [
    "attention_backward", "attention_forward", "attention_weights", "softmax_backward", "softmax_forward",
    "softmax_cross_entropy_backward", "softmax_cross_entropy_forward",
    "dense_backward", "dense_forward", "gelu_backward", "gelu_forward",
    "drop_path_backward", "drop_path_forward", "dropout_backward", "dropout_forward", "keep_mask", "RngKey",
    "layer_norm_backward", "layer_norm_forward",
    "CORRUPTION_SITE", "CorruptionPlan", "colour_targets", "corrupt_backward", "corrupt_forward", "corruption_plan",
    "token_cross_entropy_backward", "token_cross_entropy_forward",
    "patch_embedding_backward", "patch_embedding_forward",
    "pool_backward", "pool_forward", "tanh_backward", "tanh_forward",
    # the hybrid's ResNet (paper Sec. 3.1)
    "conv2d_backward", "conv2d_forward", "group_norm_backward", "group_norm_forward",
    "max_pool_backward", "max_pool_forward", "relu_backward", "relu_forward",
    "weight_standardize_backward", "weight_standardize_forward",
    # the plain (array API) forms
    "attention_backward_plain", "attention_forward_plain", "softmax_backward_plain", "softmax_forward_plain",
    "softmax_cross_entropy_backward_plain", "softmax_cross_entropy_forward_plain",
    "dense_backward_plain", "dense_forward_plain", "gelu_backward_plain", "gelu_forward_plain",
    "drop_path_backward_plain", "drop_path_forward_plain", "dropout_backward_plain", "dropout_forward_plain",
    "layer_norm_backward_plain", "layer_norm_forward_plain",
    "patch_embedding_backward_plain", "patch_embedding_forward_plain",
    "pool_backward_plain", "pool_forward_plain", "tanh_backward_plain", "tanh_forward_plain",
    "conv2d_backward_plain", "conv2d_forward_plain", "group_norm_backward_plain", "group_norm_forward_plain",
    "max_pool_backward_plain", "max_pool_forward_plain", "relu_backward_plain", "relu_forward_plain",
    "weight_standardize_backward_plain", "weight_standardize_forward_plain",
]
