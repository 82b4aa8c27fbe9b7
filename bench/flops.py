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
* a hybrid's ResNet (paper Sec. 3.1; ``resnet`` set): every convolution, output pixels x kh x kw x
  C_in x C_out (the root's 7x7 stride 2; per bottleneck unit conv1 1x1, conv2 3x3 at the unit's
  stride, conv3 1x1 and the conv_proj 1x1 where present; 'SAME' sizes, ceil(side / 2) per stride-2
  step). The patches are then cut from the feature map (N = (feature side // P)^2, C its channels).
  Weight standardisation, group norms, ReLUs and the max pool are not counted.

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
    side, resnet_macs = image, 0
    resnet = get("resnet", None)
    if resnet is not None:
        side, channels, resnet_macs = _resnet(image, resnet)
    n = (side // patch) ** 2
    t = n + (1 if classifier == "token" else 0)
    return n, t, patch, channels, d, layers, mlp, k, rep, resnet_macs


def _resnet(image: int, resnet) -> tuple[int, int, int]:
    """(feature side, feature channels, multiply-adds per image) of a hybrid's ResNet (vit_jax's layout)."""
    get = resnet.get if isinstance(resnet, dict) else (lambda key: getattr(resnet, key))
    width = int(64 * get("width_factor"))
    side = -(-image // 2)  # the root's 7x7 stride-2 conv ('SAME')
    macs = side * side * 7 * 7 * 3 * width
    side = -(-side // 2)  # the max pool
    channels = width
    for b, units in enumerate(get("num_layers")):
        features = width * 2 ** b
        for u in range(units):
            stride = 2 if b > 0 and u == 0 else 1
            out = -(-side // stride)
            if channels != 4 * features or stride != 1:
                macs += out * out * channels * 4 * features  # conv_proj
            macs += side * side * channels * features  # conv1, 1x1 at the input's size
            macs += out * out * 9 * features * features  # conv2, 3x3 at the stride
            macs += out * out * features * 4 * features  # conv3
            side, channels = out, 4 * features
    return side, channels, macs


def forward_macs_breakdown(config) -> dict[str, int]:
    """Multiply-adds per image for the forward pass, by component (see the module docstring)."""
    n, t, p, c, d, layers, mlp, k, rep, resnet_macs = _geometry(config)
    out = {
        "resnet": resnet_macs,
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
