"""The hand-written operations of the ViT, one file each, every one a ``*_forward`` / ``*_backward`` pair.

A forward returns its output and a cache; the matching backward takes the upstream gradient and
that cache and returns the gradients. All work on NumPy or CuPy arrays alike.
"""
from .attention import attention_backward, attention_forward, attention_weights, softmax_backward, softmax_forward
from .cross_entropy import softmax_cross_entropy_backward, softmax_cross_entropy_forward
from .dense import dense_backward, dense_forward
from .gelu import gelu_backward, gelu_forward
from .layer_norm import layer_norm_backward, layer_norm_forward
from .patch_embedding import patch_embedding_backward, patch_embedding_forward
from .pooling import pool_backward, pool_forward
from .tanh import tanh_backward, tanh_forward

__all__ = [
    "attention_backward", "attention_forward", "attention_weights", "softmax_backward", "softmax_forward",
    "softmax_cross_entropy_backward", "softmax_cross_entropy_forward",
    "dense_backward", "dense_forward", "gelu_backward", "gelu_forward",
    "layer_norm_backward", "layer_norm_forward",
    "patch_embedding_backward", "patch_embedding_forward",
    "pool_backward", "pool_forward", "tanh_backward", "tanh_forward",
]
