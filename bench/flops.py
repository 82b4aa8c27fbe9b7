"""Analytic FLOP count of the ViT, for throughput figures (GFLOP/s) in the benchmarks.

Counting rule: **2 FLOPs per multiply-add of every matrix product**, and nothing else.
Counted, per image:

* patch embedding: N patches x (P*P*C) x D
* per encoder block, with T tokens (N, plus 1 for the class token):
  query, key, value projections 3 x T x D x D; attention scores QK^T T x T x D
  (summed over heads: heads x T x T x head_dim); attention times V T x T x D;
  out projection T x D x D; MLP 2 x T x D x mlp_dim
* pre-logits D x R (when present) and the head (R or D) x K, once per image
  (on the class token or the pooled vector).

**Not counted**: elementwise and reduction work (bias adds, layer norms, GELU, softmax,
residual adds, tanh, the position embedding, pooling, the cross-entropy, the optimizer).
These are O(T*D) against O(T*D^2) for the matmuls, a few percent of the FLOPs, but on a
CPU they can take a much larger share of the *time* (they are memory bound, and each NumPy
call has a fixed cost) - which is exactly what a GFLOP/s figure based on this count exposes.

The training step is counted as 3x the forward (the backward pass of a matmul is two
matmuls of the same size: one for the input gradient, one for the weight gradient). This
slightly over-counts the patch embedding, whose input gradient is not needed, and is the
usual convention (e.g. Kaplan et al. 2020, "6N" per token for training).

Reference figure: ViT-B/16 at 224 px is 17.56 GMACs = 35.1 GFLOPs forward per image
(the commonly quoted 17.6 GMACs).
"""
from __future__ import annotations


def _geometry(config):
    """Accept a ViTConfig (or anything with its attributes) or a dict of its fields."""
    get = config.get if isinstance(config, dict) else (lambda k, default=None: getattr(config, k, default))
    image, patch = get("image_size"), get("patch_size")
    d, layers, mlp, k = get("hidden_size"), get("num_layers"), get("mlp_dim"), get("num_classes")
    classifier = get("classifier", "token") or "token"
    rep = get("representation_size", None)
    channels = get("channels", 3) or 3
    n = (image // patch) ** 2
    t = n + (1 if classifier == "token" else 0)
    return n, t, patch, channels, d, layers, mlp, k, rep


def forward_macs_breakdown(config) -> dict[str, int]:
    """Multiply-adds per image for the forward pass, by component (see the module docstring)."""
    n, t, p, c, d, layers, mlp, k, rep = _geometry(config)
    out = {
        "patch_embedding": n * p * p * c * d,
        "qkv": layers * 3 * t * d * d,
        "attention_scores": layers * t * t * d,
        "attention_values": layers * t * t * d,
        "attention_out": layers * t * d * d,
        "mlp": layers * 2 * t * d * mlp,
        "pre_logits": d * rep if rep else 0,
        "head": (rep or d) * k,
    }
    return out


def forward_macs(config) -> int:
    """Multiply-adds per image for the forward pass."""
    return sum(forward_macs_breakdown(config).values())


def forward_flops(config) -> int:
    """FLOPs per image for the forward pass: 2 per multiply-add of every matmul.

    Elementwise ops (norms, GELU, softmax, bias and residual adds) are not counted.
    """
    return 2 * forward_macs(config)


def train_step_flops(config, batch: int) -> int:
    """FLOPs of one training step (forward + backward) on ``batch`` images: 3 x batch x forward."""
    return 3 * batch * forward_flops(config)
