"""The Vision Transformer: a config plus a flat dict of parameters with the official names.

The forward pass reads as the paper's equations (Dosovitskiy et al., ICLR 2021, Sec. 3.1):

    z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos                   (Eq. 1)
    z'_l = MSA(LN(z_{l-1})) + z_{l-1},        l = 1..L                (Eq. 2)
    z_l  = MLP(LN(z'_l)) + z'_l,              l = 1..L                (Eq. 3)
    y    = LN(z_L^0)                                                  (Eq. 4)
    logits = head(pre_logits(y))

and the backward pass reads the same list bottom to top. Parameter names, shapes and
initialisation follow the official ``vit_jax/models_vit.py``.
"""
from __future__ import annotations

import math

import numpy as np

from . import cpu, ops
from .backend import check_dtype, module_for, to_device
from .configs import ViTConfig, get_config

POSEMB = "Transformer/posembed_input/pos_embedding"
ATTN = "MultiHeadDotProductAttention_1"
MLP = "MlpBlock_3"
ATTN_KEYS = [f"{n}/{leaf}" for n in ("query", "key", "value", "out") for leaf in ("kernel", "bias")]


def block_prefix(i: int) -> str:
    """Name prefix of encoder block ``i``: "Transformer/encoderblock_{i}/"."""
    return f"Transformer/encoderblock_{i}/"


def param_shapes(config: ViTConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's official name and shape for ``config``, in the official order."""
    c = config
    P, D, H, hd, M = c.patch_size, c.hidden_size, c.num_heads, c.head_dim, c.mlp_dim
    shapes = {"embedding/kernel": (P, P, 3, D), "embedding/bias": (D,)}
    if c.classifier == "token":
        shapes["cls"] = (1, 1, D)
    shapes[POSEMB] = (1, c.seq_len, D)
    for i in range(c.num_layers):
        b = block_prefix(i)
        shapes[b + "LayerNorm_0/scale"] = (D,)
        shapes[b + "LayerNorm_0/bias"] = (D,)
        for n in ("query", "key", "value"):
            shapes[f"{b}{ATTN}/{n}/kernel"] = (D, H, hd)
            shapes[f"{b}{ATTN}/{n}/bias"] = (H, hd)
        shapes[f"{b}{ATTN}/out/kernel"] = (H, hd, D)
        shapes[f"{b}{ATTN}/out/bias"] = (D,)
        shapes[b + "LayerNorm_2/scale"] = (D,)
        shapes[b + "LayerNorm_2/bias"] = (D,)
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
    return shapes


def count_params(config: ViTConfig) -> int:
    """Number of scalar parameters of ``config``."""
    return sum(math.prod(s) for s in param_shapes(config).values())


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
    - head: zeros (``head_zero_init``).
    """
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in param_shapes(config).items():
        leaf = name.rsplit("/", 1)[-1]
        if name == POSEMB:
            v = rng.normal(0.0, 0.02, shape)
        elif name.startswith("head/") or name == "cls":
            v = np.zeros(shape)
        elif leaf == "scale":
            v = np.ones(shape)
        elif name in ("embedding/kernel", "pre_logits/kernel"):
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


class ViT:
    """A Vision Transformer on NumPy (``device="cpu"``) or CuPy (``device="gpu"``).

    Attributes:
        config: the :class:`~scratchvit.configs.ViTConfig` geometry.
        params: dict, official parameter name -> array (float32 or float64, on the device).
        device: "cpu" or "gpu".
        dtype: numpy dtype of parameters and activations.
    """

    def __init__(self, config: "ViTConfig | str", seed: int = 0, device: str = "cpu", dtype="float32",
                 params: dict | None = None):
        """Build a model with fresh parameters (``seed``), or around given ``params``.

        Raises:
            ValueError: unknown model name / device / dtype, or ``params`` whose names or
                shapes do not fit ``config`` (the message names the key and both shapes).
            RuntimeError: ``device="gpu"`` without CuPy or a GPU.
        """
        self.config = get_config(config) if isinstance(config, str) else config
        self.dtype = check_dtype(dtype)
        self.xp = module_for(device)
        self.device = device
        if device == "cpu":
            cpu.configure()  # process-wide CPU settings, once (scratchvit/cpu.py; SCRATCHVIT_NO_CPU_TUNING=1: off)
        if params is None:
            params = init_params(self.config, seed)
        check_params(params, self.config)
        self.params = {k: to_device(params[k], device, self.dtype) for k in param_shapes(self.config)}

    @classmethod
    def from_checkpoint(cls, path, num_classes: int | None = None, image_size: int | None = None,
                        device: str = "cpu", dtype="float32") -> "ViT":
        """Load an official ``.npz`` checkpoint (ViT-B_16.npz and friends, or one this package wrote).

        See :func:`scratchvit.checkpoint.load_checkpoint` for the arguments and the errors raised.
        """
        from .checkpoint import load_checkpoint  # noqa: PLC0415  (checkpoint imports this module)

        config, params = load_checkpoint(path, num_classes=num_classes, image_size=image_size)
        return cls(config, device=device, dtype=dtype, params=params)

    # ------------------------------------------------------------------ inputs
    def _images(self, images):
        c = self.config
        shape = tuple(images.shape)
        if len(shape) != 4 or shape[3] != 3:
            raise ValueError(f"ViT: images must be (B, H, W, 3) NHWC, got shape {shape}")
        if shape[1] != c.image_size or shape[2] != c.image_size:
            raise ValueError(
                f"ViT: images are {shape[1]}x{shape[2]} px but the model takes {c.image_size}x{c.image_size} px"
            )
        return to_device(images, self.device, self.dtype)

    # ------------------------------------------------------------------ forward
    def _forward(self, images, keep_cache: bool):
        """Logits (B, K) and, if ``keep_cache``, the list of caches the backward needs."""
        c, p, xp = self.config, self.params, self.xp
        x = self._images(images)
        caches = {}

        # Eq. 1: patch embedding, class token, position embedding.
        x, caches["embedding"] = ops.patch_embedding_forward(x, p["embedding/kernel"], p["embedding/bias"])
        B = x.shape[0]
        if c.classifier == "token":
            x = xp.concatenate([xp.broadcast_to(p["cls"], (B, 1, c.hidden_size)), x], axis=1)
        x += p[POSEMB]

        # Eq. 2-3: L pre-norm encoder blocks; the residual stream x is updated in place.
        for i in range(c.num_layers):
            b = block_prefix(i)
            h, ln0 = ops.layer_norm_forward(x, p[b + "LayerNorm_0/scale"], p[b + "LayerNorm_0/bias"])
            attn_p = {k: p[f"{b}{ATTN}/{k}"] for k in ATTN_KEYS}
            h, attn = ops.attention_forward(h, attn_p)
            x += h
            h, ln2 = ops.layer_norm_forward(x, p[b + "LayerNorm_2/scale"], p[b + "LayerNorm_2/bias"])
            h, fc0 = ops.dense_forward(h, p[f"{b}{MLP}/Dense_0/kernel"], p[f"{b}{MLP}/Dense_0/bias"])
            h, act = ops.gelu_forward(h, c.gelu)
            h, fc1 = ops.dense_forward(h, p[f"{b}{MLP}/Dense_1/kernel"], p[f"{b}{MLP}/Dense_1/bias"])
            x += h
            if keep_cache:
                caches[b] = (ln0, attn, ln2, fc0, act, fc1)

        # Eq. 4: final layer norm, pooling, optional tanh pre-logits, head.
        x, caches["encoder_norm"] = ops.layer_norm_forward(
            x, p["Transformer/encoder_norm/scale"], p["Transformer/encoder_norm/bias"])
        x, caches["pool"] = ops.pool_forward(x, c.classifier)
        if c.representation_size is not None:
            x, caches["pre_logits"] = ops.dense_forward(x, p["pre_logits/kernel"], p["pre_logits/bias"])
            x, caches["pre_logits_tanh"] = ops.tanh_forward(x)
        logits, caches["head"] = ops.dense_forward(x, p["head/kernel"], p["head/bias"])
        return logits, (caches if keep_cache else None)

    def forward(self, images, keep_cache: bool = False):
        """Logits for a batch of images.

        Args:
            images: (B, H, W, 3) float (any float dtype; cast to the model's), pixels in [-1, 1],
                H = W = config.image_size. NumPy arrays are moved to the GPU when the model is there.
            keep_cache: also return what :meth:`backward` needs (a dict of per-op caches).

        Returns:
            (B, K) logits, on the model's device, in its dtype; or (logits, caches) if ``keep_cache``.

        Raises:
            ValueError: images of the wrong rank, channel count or size.
        """
        logits, caches = self._forward(images, keep_cache=keep_cache)
        return (logits, caches) if keep_cache else logits

    # ------------------------------------------------------------------ backward
    def backward(self, dlogits, caches, need_dinput: bool = False):
        """Gradients of every parameter given dL/dlogits (B, K) and the caches of ``_forward``.

        Returns:
            dict with the same keys and shapes as ``params`` (and "images" when ``need_dinput``).
        """
        c, p = self.config, self.params
        g = {}
        dx, g["head/kernel"], g["head/bias"] = ops.dense_backward(dlogits, caches["head"])
        if c.representation_size is not None:
            dx = ops.tanh_backward(dx, caches["pre_logits_tanh"])
            dx, g["pre_logits/kernel"], g["pre_logits/bias"] = ops.dense_backward(dx, caches["pre_logits"])
        dx = ops.pool_backward(dx, caches["pool"])
        dx, g["Transformer/encoder_norm/scale"], g["Transformer/encoder_norm/bias"] = ops.layer_norm_backward(
            dx, caches["encoder_norm"])

        for i in reversed(range(c.num_layers)):
            b = block_prefix(i)
            ln0, attn, ln2, fc0, act, fc1 = caches.pop(b)
            # x = x + MLP(LN_2(x)): the residual passes dx through, the branch adds its gradient.
            dh, g[f"{b}{MLP}/Dense_1/kernel"], g[f"{b}{MLP}/Dense_1/bias"] = ops.dense_backward(dx, fc1)
            dh = ops.gelu_backward(dh, act)
            dh, g[f"{b}{MLP}/Dense_0/kernel"], g[f"{b}{MLP}/Dense_0/bias"] = ops.dense_backward(dh, fc0)
            dh, g[b + "LayerNorm_2/scale"], g[b + "LayerNorm_2/bias"] = ops.layer_norm_backward(dh, ln2)
            dx += dh
            # x = x + MSA(LN_0(x))
            dh, attn_g = ops.attention_backward(dx, attn)
            for k, v in attn_g.items():
                g[f"{b}{ATTN}/{k}"] = v
            dh, g[b + "LayerNorm_0/scale"], g[b + "LayerNorm_0/bias"] = ops.layer_norm_backward(dh, ln0)
            dx += dh

        g[POSEMB] = dx.sum(axis=0, keepdims=True)
        if c.classifier == "token":
            g["cls"] = dx[:, :1].sum(axis=0, keepdims=True)
            dx = dx[:, 1:]
        dimages, g["embedding/kernel"], g["embedding/bias"] = ops.patch_embedding_backward(
            dx, caches["embedding"], need_dx=need_dinput)
        grads = {k: g[k] for k in p}  # the official order
        if need_dinput:
            grads["images"] = dimages
        return grads

    def loss_and_grads(self, images, labels, need_dinput: bool = False):
        """Mean softmax cross-entropy of the batch and its gradient for every parameter.

        Args:
            images: (B, H, W, 3) float in [-1, 1] (see :meth:`forward`).
            labels: (B,) integers in [0, num_classes).
            need_dinput: also return d loss / d images under the key "images" (gradient checks).

        Returns:
            (loss as a Python float, grads: dict with the same keys and shapes as ``params``).

        Raises:
            ValueError: bad images (see :meth:`forward`), or labels of the wrong shape or out of range.
        """
        images, labels = self._images(images), to_device(labels, self.device)
        B = images.shape[0]
        if labels.shape != (B,):
            raise ValueError(f"cross-entropy: labels must have shape ({B},), got {tuple(labels.shape)}")

        def shard(s, e):  # the loss of a shard, weighted by its share of the batch, and its gradients
            logits, caches = self._forward(images[s:e], keep_cache=True)
            loss, ce = ops.softmax_cross_entropy_forward(logits, labels[s:e])
            dlogits = ops.softmax_cross_entropy_backward(ce, (e - s) / B)
            return float(loss) * (e - s) / B, self.backward(dlogits, caches, need_dinput=need_dinput)

        # On the CPU, shards of the batch run forward+backward on scratchvit's threads (cpu.split_batch).
        (loss, grads), *rest = cpu.split_batch(shard, B, on_cpu=self.device == "cpu")
        for shard_loss, g in rest:
            loss += shard_loss
            for k in grads:
                if k == "images":
                    grads[k] = self.xp.concatenate([grads[k], g[k]])
                else:
                    grads[k] += g[k]
        return loss, grads

    def num_params(self) -> int:
        """Number of scalar parameters."""
        return sum(int(v.size) for v in self.params.values())

    def __repr__(self):
        return f"ViT({self.config}, device={self.device!r}, dtype={self.dtype.name!r}, params={self.num_params():,})"


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
