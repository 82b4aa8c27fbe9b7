"""The Vision Transformer: a config plus a flat dict of parameters with the official names.

The forward pass reads as the paper's equations (Dosovitskiy et al., ICLR 2021, Sec. 3.1):

    z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos                   (Eq. 1)
    z'_l = MSA(LN(z_{l-1})) + z_{l-1},        l = 1..L                (Eq. 2)
    z_l  = MLP(LN(z'_l)) + z'_l,              l = 1..L                (Eq. 3)
    y    = LN(z_L^0)                                                  (Eq. 4)
    logits = head(pre_logits(y))

and the backward pass reads the same list bottom to top. Parameter names, shapes and
initialisation (official ``vit_jax/models_vit.py``) live in :mod:`scratchvit.params`.

A hybrid (Sec. 3.1, "Hybrid Architecture"; ``config.resnet`` set) takes the patches x_p of Eq. 1 from a
ResNet's feature map instead of the image, as vit_jax ``VisionTransformer.__call__`` and
``models_resnet.ResidualUnit`` do (every convolution a StdConv, 'SAME', no bias; GN = group norm):

    root:  x = maxpool_3x3/2(relu(GN(conv_7x7/2(image))))
    unit:  y = relu(GN1(conv1_1x1(x)));  y = relu(GN2(conv2_3x3/s(y)));  y = GN3(conv3_1x1(y))
           x = relu(residual + y),  residual = GN_proj(conv_proj_1x1/s(x)) where channels or stride change, else x

then the ``embedding`` convolution (the patch size as kernel and stride, 'VALID') over the feature map.

In a training step (``train=True`` with an :class:`~scratchvit.ops.RngKey`) the regularisers of the
config act where the official ``models_vit.py`` puts them: dropout (``dropout_rate``) on z_0, on the
MSA output, after the MLP's GELU and after its second dense layer; attention dropout
(``attention_dropout_rate``) on the attention probabilities; and stochastic depth (``drop_path_rate``,
timm's ``DropPath``) on each residual branch before it is added. With every rate 0, or ``train=False``,
the forward and backward are the plain equations above, bit for bit.
"""
from __future__ import annotations

import copy
from typing import Any, NamedTuple

import numpy as np

from . import accumulate, ops
from .backend import check_dtype, device_object, dtype_of, module_for, to_device
from .checkpoint import load_checkpoint
from .configs import ViTConfig, get_config
from .flat import Layout
from .ops.cross_entropy import check_targets
from .params import (
    ATTN,
    ATTN_KEYS,
    MASKED_PATCH,
    MLP,
    POSEMB,
    block_prefix,
    check_params,
    init_params,
    param_shapes,
    resnet_units,
)
from .rng import EMBEDDING_SITE, site


class BlockCache(NamedTuple):
    """What one encoder block's backward needs from its forward (paper Eq. 2-3), in the forward's order: each
    op's cache (:mod:`scratchvit.ops`), None where a dropout or drop path dropped nothing."""

    layer_norm_0: Any  # Eq. 2: LN(z_{l-1})
    attention: Any  # MSA
    attention_out_dropout: Any  # dropout of the attention output
    drop_path_attention: Any  # drop path of the attention branch
    layer_norm_2: Any  # Eq. 3: LN(z'_l)
    mlp_dense_0: Any  # MLP: Dense_0
    gelu: Any  # GELU
    mlp_hidden_dropout: Any  # dropout after the GELU
    mlp_dense_1: Any  # Dense_1
    mlp_out_dropout: Any  # dropout after Dense_1
    drop_path_mlp: Any  # drop path of the MLP branch


class ViT:
    """A Vision Transformer on NumPy (``device="cpu"``) or CuPy (``device="gpu"``).

    Attributes:
        config: the :class:`~scratchvit.configs.ViTConfig` geometry.
        params: dict, official parameter name -> array (float32 or float64, on the device): each a view
            into ``flat`` (:mod:`scratchvit.flat`). Write into them (``params[k][...] = x``, ``+=``);
            an entry rebound to another array is no longer the model's parameter.
        flat: 1-D array holding every parameter (``layout.size`` elements, the model's dtype and device):
            what the optimiser, the gradient norm and the clipping work on.
        layout: the :class:`~scratchvit.flat.Layout` of ``flat`` (names, shapes, offsets).
        device: "cpu", "gpu" (or "strict": array-api-strict's non-CPU device, for tests).
        dtype: numpy dtype of parameters and activations.
        xp: the array-API namespace of the parameters (:func:`scratchvit.backend.module_for`).
        device_object: the namespace's device, the ``device=`` of arrays created for this model.
    """

    def __init__(self, config: "ViTConfig | str", seed: int = 0, device: str = "cpu", dtype="float32",
                 params: dict | None = None):
        """Build a model with fresh parameters (``seed``), or around given ``params``.

        Given ``params`` are copied into the model's flat buffer (:mod:`scratchvit.flat`): training
        updates the model's arrays, never the caller's.

        Raises:
            ValueError: unknown model name / device / dtype, or ``params`` whose names or
                shapes do not fit ``config`` (the message names the key and both shapes).
            RuntimeError: ``device="gpu"`` without CuPy or a GPU.
        """
        self.config = get_config(config) if isinstance(config, str) else config
        self.dtype = check_dtype(dtype)
        self.xp = module_for(device)
        self.device = device
        self.device_object = device_object(device)
        if params is None:
            params = init_params(self.config, seed)
        check_params(params, self.config)
        self.layout = Layout.of(param_shapes(self.config))
        self.flat = self.layout.gather({k: to_device(params[k], device, self.dtype) for k in self.layout.names})
        self.params = self.layout.views(self.flat)

    @classmethod
    def from_checkpoint(cls, path, num_classes: int | None = None, image_size: int | None = None,
                        device: str = "cpu", dtype="float32", gelu: str | None = None,
                        new_head: bool = False, log=None) -> "ViT":
        """Load an official ``.npz`` checkpoint (ViT-B_16.npz and friends, or one this package wrote).

        Args:
            path, num_classes, image_size, new_head, log: as :func:`scratchvit.checkpoint.load_checkpoint`
                (``new_head=True``: a zero head and no pre-logits, as the official fine-tuning starts).
            device, dtype: as the constructor.
            gelu: "tanh" or "erf" to override the GELU form (a checkpoint does not record it; the
                official Flax code uses "tanh", PyTorch/timm weights need "erf"); None keeps "tanh".

        Raises:
            FileNotFoundError, ValueError: see :func:`~scratchvit.checkpoint.load_checkpoint` (which
                also refuses NaN or infinite values); ValueError for an unknown ``gelu``.
        """
        config, params = load_checkpoint(path, num_classes=num_classes, image_size=image_size, new_head=new_head,
                                         log=log)
        if gelu is not None:
            config = config.replace(gelu=gelu)
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
    def _forward(self, images, keep_cache: bool, train: bool = False, key: "ops.RngKey | None" = None,
                 corruption: "ops.CorruptionPlan | None" = None):
        """Logits (B, K) and, if ``keep_cache``, the dict of caches :meth:`backward` consumes (else None).

        With a ``corruption`` plan (masked patch prediction, paper Sec. 4.6; a model whose config has
        ``masked_patch``): the patch embeddings are corrupted before the class token and the position
        embeddings, and the logits are the per-token head's, (B, N, colour classes), the class token left out.

        ``train`` with a ``key`` (an :class:`~scratchvit.ops.RngKey`: seed, step and the global index of
        row 0 of ``images`` in the step's batch) applies the config's dropout, attention dropout and
        stochastic depth, their masks drawn from the key (module docstring); otherwise nothing drops.

        The caches are keyed "embedding", "embedding_dropout", each block's prefix (a :class:`BlockCache`),
        "encoder_norm", "pool", ("pre_logits", "pre_logits_tanh",) "head"; :meth:`backward` pops the block
        entries as it goes.
        """
        c, p, xp = self.config, self.params, self.xp
        x = self._images(images)
        caches = {}
        key = key if train else None  # evaluation, prediction, attention maps: no dropout
        drop, attn_drop = c.dropout_rate, c.attention_dropout_rate

        # Sec. 3.1 hybrid: the ResNet's feature map takes the image's place; its cells beyond the last whole
        # patch are dropped (the official 'VALID' embedding).
        if c.resnet is not None:
            x, caches["resnet"] = self._resnet_forward(x)
            caches["feature_shape"] = x.shape
            side = c.grid_size * c.patch_size
            if side != x.shape[1]:
                x = x[:, :side, :side, :]

        # Eq. 1: patch embedding, class token, position embedding.
        x, caches["embedding"] = ops.patch_embedding_forward(x, p["embedding/kernel"], p["embedding/bias"])
        if corruption is not None:  # Sec. 4.6: [mask], another patch, or as it is, for half the patches
            x, caches["corruption"] = ops.corrupt_forward(x, p["mask_embedding"], corruption)
        B = x.shape[0]
        if c.classifier == "token":
            x = xp.concat([xp.broadcast_to(p["cls"], (B, 1, c.hidden_size)), x], axis=1)
        x += p[POSEMB]
        x, caches["embedding_dropout"] = ops.dropout_forward(x, drop, key, EMBEDDING_SITE)

        # Eq. 2-3: L pre-norm encoder blocks; the residual stream x is updated in place.
        for i in range(c.num_layers):
            b, path = block_prefix(i), c.drop_path_rate_of(i)
            # Eq. 2: z'_l = MSA(LN(z_{l-1})) + z_{l-1}   (+ dropout and drop path of the branch)
            h, ln0 = ops.layer_norm_forward(x, p[b + "LayerNorm_0/scale"], p[b + "LayerNorm_0/bias"])
            attn_p = {k: p[f"{b}{ATTN}/{k}"] for k in ATTN_KEYS}
            h, attn = ops.attention_forward(h, attn_p, attn_drop, key, site(i, "attention_probs"))
            h, d0 = ops.dropout_forward(h, drop, key, site(i, "attention_out"))
            h, dp0 = ops.drop_path_forward(h, path, key, site(i, "drop_path_attention"))
            x += h
            # Eq. 3: z_l = MLP(LN(z'_l)) + z'_l   (+ dropout after the GELU and the second dense, drop path)
            h, ln2 = ops.layer_norm_forward(x, p[b + "LayerNorm_2/scale"], p[b + "LayerNorm_2/bias"])
            h, fc0 = ops.dense_forward(h, p[f"{b}{MLP}/Dense_0/kernel"], p[f"{b}{MLP}/Dense_0/bias"])
            h, act = ops.gelu_forward(h, c.gelu)
            h, d1 = ops.dropout_forward(h, drop, key, site(i, "mlp_hidden"))
            h, fc1 = ops.dense_forward(h, p[f"{b}{MLP}/Dense_1/kernel"], p[f"{b}{MLP}/Dense_1/bias"])
            h, d2 = ops.dropout_forward(h, drop, key, site(i, "mlp_out"))
            h, dp1 = ops.drop_path_forward(h, path, key, site(i, "drop_path_mlp"))
            x += h
            if keep_cache:
                caches[b] = BlockCache(ln0, attn, d0, dp0, ln2, fc0, act, d1, fc1, d2, dp1)

        # Eq. 4: final layer norm, pooling, optional tanh pre-logits, head.
        x, caches["encoder_norm"] = ops.layer_norm_forward(
            x, p["Transformer/encoder_norm/scale"], p["Transformer/encoder_norm/bias"])
        if corruption is not None:  # Sec. 4.6: every patch token's mean-colour logits (the class token left out)
            tokens = x[:, 1:, :] if c.classifier == "token" else x
            logits, caches["masked_patch_head"] = ops.dense_forward(tokens, p["masked_patch_head/kernel"],
                                                                    p["masked_patch_head/bias"])
            return logits, (caches if keep_cache else None)
        x, caches["pool"] = ops.pool_forward(x, c.classifier)
        if c.representation_size is not None:
            x, caches["pre_logits"] = ops.dense_forward(x, p["pre_logits/kernel"], p["pre_logits/bias"])
            x, caches["pre_logits_tanh"] = ops.tanh_forward(x)
        logits, caches["head"] = ops.dense_forward(x, p["head/kernel"], p["head/bias"])
        return logits, (caches if keep_cache else None)

    # ------------------------------------------------------------------ the hybrid's ResNet (Sec. 3.1)
    def _std_conv(self, x, name, stride):
        """vit_jax ``models_resnet.StdConv``: the convolution ('SAME', no bias) of the standardised kernel."""
        w, standardize = ops.weight_standardize_forward(self.params[name + "/kernel"])
        y, conv = ops.conv2d_forward(x, w, None, stride, "SAME")
        return y, (standardize, conv)

    def _group_norm(self, x, name):
        return ops.group_norm_forward(x, self.params[name + "/scale"], self.params[name + "/bias"])

    def _resnet_forward(self, x):
        """The root and the stages of bottleneck units (vit_jax ``VisionTransformer.__call__``'s resnet branch,
        ``ResidualUnit.__call__``), top to bottom. Returns the feature map (B, h, w, C) and a dict of caches
        keyed by module name ("conv_root", ..., "block1/unit1/conv1", ...)."""
        cache = {}
        # root: StdConv 7x7 stride 2, group norm, ReLU, max pool 3x3 stride 2 ('SAME', padded with -inf)
        x, cache["conv_root"] = self._std_conv(x, "conv_root", 2)
        x, cache["gn_root"] = self._group_norm(x, "gn_root")
        x, cache["relu_root"] = ops.relu_forward(x)
        x, cache["max_pool"] = ops.max_pool_forward(x, 3, 2)
        # stages: block{b}/unit{u}, each a bottleneck unit
        for unit in resnet_units(self.config):
            u = unit.prefix
            residual = x
            if unit.projection:
                residual, cache[u + "conv_proj"] = self._std_conv(x, u + "conv_proj", unit.stride)
                residual, cache[u + "gn_proj"] = self._group_norm(residual, u + "gn_proj")
            y, cache[u + "conv1"] = self._std_conv(x, u + "conv1", 1)
            y, cache[u + "gn1"] = self._group_norm(y, u + "gn1")
            y, cache[u + "relu1"] = ops.relu_forward(y)
            y, cache[u + "conv2"] = self._std_conv(y, u + "conv2", unit.stride)
            y, cache[u + "gn2"] = self._group_norm(y, u + "gn2")
            y, cache[u + "relu2"] = ops.relu_forward(y)
            y, cache[u + "conv3"] = self._std_conv(y, u + "conv3", 1)
            y, cache[u + "gn3"] = self._group_norm(y, u + "gn3")
            x, cache[u + "relu3"] = ops.relu_forward(residual + y)
        return x, cache

    def _std_conv_backward(self, dy, cache, g, name, need_dx=True):
        standardize, conv = cache
        dx, dw, _ = ops.conv2d_backward(dy, conv, need_dx=need_dx)
        g[name + "/kernel"] = ops.weight_standardize_backward(dw, standardize)
        return dx

    @staticmethod
    def _group_norm_backward(dy, cache, g, name):
        dx, g[name + "/scale"], g[name + "/bias"] = ops.group_norm_backward(dy, cache)
        return dx

    def _resnet_backward(self, dx, cache, g, need_dinput):
        """:meth:`_resnet_forward` read bottom to top; fills ``g`` with the ResNet's gradients and returns
        d loss / d images when ``need_dinput`` (else None)."""
        for unit in reversed(resnet_units(self.config)):
            u = unit.prefix
            dx = ops.relu_backward(dx, cache.pop(u + "relu3"))  # x = relu(residual + y): both get dx
            dy = self._group_norm_backward(dx, cache.pop(u + "gn3"), g, u + "gn3")
            dy = self._std_conv_backward(dy, cache.pop(u + "conv3"), g, u + "conv3")
            dy = ops.relu_backward(dy, cache.pop(u + "relu2"))
            dy = self._group_norm_backward(dy, cache.pop(u + "gn2"), g, u + "gn2")
            dy = self._std_conv_backward(dy, cache.pop(u + "conv2"), g, u + "conv2")
            dy = ops.relu_backward(dy, cache.pop(u + "relu1"))
            dy = self._group_norm_backward(dy, cache.pop(u + "gn1"), g, u + "gn1")
            dy = self._std_conv_backward(dy, cache.pop(u + "conv1"), g, u + "conv1")
            if unit.projection:
                dx = self._group_norm_backward(dx, cache.pop(u + "gn_proj"), g, u + "gn_proj")
                dx = self._std_conv_backward(dx, cache.pop(u + "conv_proj"), g, u + "conv_proj")
            dy += dx
            dx = dy
        dx = ops.max_pool_backward(dx, cache.pop("max_pool"))
        dx = ops.relu_backward(dx, cache.pop("relu_root"))
        dx = self._group_norm_backward(dx, cache.pop("gn_root"), g, "gn_root")
        return self._std_conv_backward(dx, cache.pop("conv_root"), g, "conv_root", need_dx=need_dinput)

    def forward(self, images, keep_cache: bool = False):
        """Logits for a batch of images; with ``keep_cache`` also what :meth:`backward` needs.

        Args:
            images: (B, H, W, 3) float (any float dtype; cast to the model's), pixels in [-1, 1],
                H = W = config.image_size. NumPy arrays are moved to the GPU when the model is there.
            keep_cache: return ``(logits, caches)``, the caches a dict to pass once to
                :meth:`backward` (which consumes it), for a training step of one's own.

        Returns:
            (B, K) logits, on the model's device, in its dtype; or ``(logits, caches)``.

        Raises:
            ValueError: images of the wrong rank, channel count or size.
        """
        logits, caches = self._forward(images, keep_cache=keep_cache)
        return (logits, caches) if keep_cache else logits

    def attention_probabilities(self, images) -> list:
        """Each block's attention probabilities softmax(q k^T / sqrt(head_dim)) (paper Eq. 2, Appendix A).

        Args:
            images: as :meth:`forward`.

        Returns:
            list over blocks (first to last) of (B, heads, N, N) arrays on the model's device, N the
            number of tokens (class token first for the "token" classifier); rows sum to 1.
            Input to :func:`scratchvit.rollout.attention_rollout`.

        Raises:
            ValueError: as :meth:`forward`.
        """
        _, caches = self._forward(images, keep_cache=True)
        return [ops.attention_weights(caches[block_prefix(i)].attention) for i in range(self.config.num_layers)]

    # ------------------------------------------------------------------ backward
    def backward(self, dlogits, caches, need_dinput: bool = False):
        """Gradients of every parameter given dL/dlogits (B, K) and the caches of ``forward(keep_cache=True)``.

        The equations of :meth:`_forward` read bottom to top (Eq. 4, then Eq. 3 and 2 per block, then
        Eq. 1). The block entries of ``caches`` are popped (freed) as they are used: pass a cache once.

        Returns:
            dict with the same keys and shapes as ``params`` (and "images" when ``need_dinput``).
        """
        c, p, xp = self.config, self.params, self.xp
        g = {}
        if "masked_patch_head" in caches:  # Sec. 4.6 backward: the token head; the class token's gradient is 0
            dx, g["masked_patch_head/kernel"], g["masked_patch_head/bias"] = ops.dense_backward(
                dlogits, caches["masked_patch_head"])
            if c.classifier == "token":
                dx = xp.concat([xp.zeros_like(dx[:, :1, :]), dx], axis=1)
        else:
            # Eq. 4 backward: head, optional tanh pre-logits, pooling, final layer norm.
            dx, g["head/kernel"], g["head/bias"] = ops.dense_backward(dlogits, caches["head"])
            if c.representation_size is not None:
                dx = ops.tanh_backward(dx, caches["pre_logits_tanh"])
                dx, g["pre_logits/kernel"], g["pre_logits/bias"] = ops.dense_backward(dx, caches["pre_logits"])
            dx = ops.pool_backward(dx, caches["pool"])
        dx, g["Transformer/encoder_norm/scale"], g["Transformer/encoder_norm/bias"] = ops.layer_norm_backward(
            dx, caches["encoder_norm"])

        # Eq. 3-2 backward: the blocks last to first.
        for i in reversed(range(c.num_layers)):
            b = block_prefix(i)
            bc = caches.pop(b)
            # Eq. 3, x = x + MLP(LN_2(x)): the residual passes dx through, the branch adds its gradient.
            # dropout and drop path (dx itself where nothing dropped), the MLP, the layer norm
            dh = ops.dropout_backward(ops.drop_path_backward(dx, bc.drop_path_mlp), bc.mlp_out_dropout)
            dh, g[f"{b}{MLP}/Dense_1/kernel"], g[f"{b}{MLP}/Dense_1/bias"] = ops.dense_backward(dh, bc.mlp_dense_1)
            dh = ops.dropout_backward(dh, bc.mlp_hidden_dropout)
            dh = ops.gelu_backward(dh, bc.gelu)
            dh, g[f"{b}{MLP}/Dense_0/kernel"], g[f"{b}{MLP}/Dense_0/bias"] = ops.dense_backward(dh, bc.mlp_dense_0)
            dh, g[b + "LayerNorm_2/scale"], g[b + "LayerNorm_2/bias"] = ops.layer_norm_backward(dh, bc.layer_norm_2)
            dx += dh
            # Eq. 2, x = x + MSA(LN_0(x))
            dh = ops.dropout_backward(ops.drop_path_backward(dx, bc.drop_path_attention), bc.attention_out_dropout)
            dh, attn_g = ops.attention_backward(dh, bc.attention)
            for k, v in attn_g.items():
                g[f"{b}{ATTN}/{k}"] = v
            dh, g[b + "LayerNorm_0/scale"], g[b + "LayerNorm_0/bias"] = ops.layer_norm_backward(dh, bc.layer_norm_0)
            dx += dh

        # Eq. 1 backward: embedding dropout, position embedding, class token, patch embedding.
        dx = ops.dropout_backward(dx, caches["embedding_dropout"])
        g[POSEMB] = xp.sum(dx, axis=0, keepdims=True)
        if c.classifier == "token":
            g["cls"] = xp.sum(dx[:, :1, :], axis=0, keepdims=True)
            dx = dx[:, 1:, :]
        if "corruption" in caches:  # Sec. 4.6: a copied patch's gradient goes back to its source
            dx, g["mask_embedding"] = ops.corrupt_backward(dx, caches["corruption"])
        hybrid = c.resnet is not None
        dimages, g["embedding/kernel"], g["embedding/bias"] = ops.patch_embedding_backward(
            dx, caches["embedding"], need_dx=need_dinput or hybrid)
        if hybrid:  # Sec. 3.1: back through the ResNet; the dropped remainder cells get zero
            shape = caches["feature_shape"]
            if dimages.shape != shape:
                dfeat = xp.zeros(shape, dtype=dimages.dtype, device=self.device_object)
                dfeat[:, :dimages.shape[1], :dimages.shape[2], :] = dimages
                dimages = dfeat
            dimages = self._resnet_backward(dimages, caches["resnet"], g, need_dinput)
        for k in (*MASKED_PATCH, "head/kernel", "head/bias", "pre_logits/kernel", "pre_logits/bias"):
            if k in p and k not in g:  # the head of the objective this pass did not train: zero
                g[k] = xp.zeros_like(p[k])
        grads = {k: g[k] for k in p}  # the official order
        if need_dinput:
            grads["images"] = dimages
        return grads

    def part_loss_and_grads(self, images, labels, weight: float = 1.0, label_smoothing: float = 0.0,
                            loss_scale: float = 1.0, need_dinput: bool = False, train: bool = False,
                            key: "ops.RngKey | None" = None):
        """One forward and backward pass over a part of a batch, its mean loss weighted by ``weight``.

        The building block of :func:`scratchvit.accumulate.loss_and_grads`: ``weight`` (the part's share of
        the batch, rows / B) times ``loss_scale`` is the upstream gradient of the cross-entropy, so
        the gradients of the parts sum to those of the whole batch.

        Args:
            images: (b, H, W, 3) on the model's device, in its dtype; labels: (b,) integers there, or
                (b, K) soft targets (mixup / CutMix; rows of probabilities).
            weight, loss_scale: see above (the loss is weighted, not scaled).
            train, key: a training pass, whose dropout, attention dropout and drop path (the config's
                rates) draw their masks from ``key`` (:class:`~scratchvit.ops.RngKey`: seed, step, and the
                global index of this part's first row in the step's batch, so that the parts of a batch
                draw what the whole batch would). ``train=False`` (default) or no key: nothing drops.

        Returns:
            (weight * mean loss as a 0-d array on the device, {name: gradient} like ``params``, plus
            "images" when ``need_dinput``).
        """
        if self.config.masked_patch is not None:  # Sec. 4.6: the self-supervised loss, labels unused
            plan, targets = self.masked_patch_task(images, key)
            logits, caches = self._forward(images, keep_cache=True, train=train, key=key, corruption=plan)
            loss, _, ce = ops.token_cross_entropy_forward(logits, targets, plan.corrupted)
            dlogits = ops.token_cross_entropy_backward(ce)
            dlogits *= weight * loss_scale
        else:
            logits, caches = self._forward(images, keep_cache=True, train=train, key=key)
            loss, ce = ops.softmax_cross_entropy_forward(logits, labels, label_smoothing)
            dlogits = ops.softmax_cross_entropy_backward(ce, weight * loss_scale)
        return loss * weight, self.backward(dlogits, caches, need_dinput=need_dinput)

    def masked_patch_task(self, images, key: "ops.RngKey | None"):
        """The corruption plan and the targets of masked patch prediction (paper Sec. 4.6, App. B.1.2) for a
        part of a batch: the plan drawn from ``key`` (seed, step, the part's first global row; None: RngKey(0, 0)),
        the targets each patch's 3-bit mean colour (:mod:`scratchvit.ops.masked_patch`).

        Args:
            images: (b, H, W, 3) on the model's device, in its dtype.

        Returns:
            (:class:`~scratchvit.ops.CorruptionPlan`, (b, N) int64 targets), on the model's device.
        """
        c, m = self.config, self.config.masked_patch
        plan = ops.corruption_plan(self.xp, key if key is not None else ops.RngKey(0, 0), ops.CORRUPTION_SITE,
                                   images.shape[0], c.num_patches, images.dtype, self.device_object,
                                   m.mask_ratio, m.mask_fraction, m.random_fraction)
        return plan, ops.colour_targets(images, c.patch_size, m.channels)

    def masked_patch_metrics(self, images, key: "ops.RngKey | None" = None):
        """Masked-patch loss and accuracy (over the corrupted patches) of a batch, forward only: the
        validation figures of a masked-patch pre-training.

        Args:
            images: (B, H, W, 3) float in [-1, 1] (see :meth:`forward`); key: as :meth:`masked_patch_task`.

        Returns:
            (loss, accuracy) as 0-d arrays on the model's device.

        Raises:
            ValueError: a model without ``masked_patch`` in its config; bad images.
        """
        plan, targets, logits = self.masked_patch_predict(images, key)
        loss, accuracy, _ = ops.token_cross_entropy_forward(logits, targets, plan.corrupted)
        return loss, accuracy

    def masked_patch_predict(self, images, key: "ops.RngKey | None" = None):
        """The corruption of a batch, its targets and the model's colour logits (forward only; paper Sec. 4.6).

        Args:
            images: (B, H, W, 3) float in [-1, 1] (see :meth:`forward`); key: as :meth:`masked_patch_task`.

        Returns:
            (:class:`~scratchvit.ops.CorruptionPlan`, (B, N) int64 targets, (B, N, colour classes) logits), on the
            model's device.

        Raises:
            ValueError: a model without ``masked_patch`` in its config; bad images.
        """
        if self.config.masked_patch is None:
            raise ValueError("masked patch prediction: this model has no masked-patch head (config.masked_patch)")
        x = self._images(images)
        plan, targets = self.masked_patch_task(x, key)
        logits, _ = self._forward(x, keep_cache=False, corruption=plan)
        return plan, targets, logits

    def loss_and_grads(self, images, labels, need_dinput: bool = False, label_smoothing: float = 0.0):
        """Mean softmax cross-entropy of the batch and its gradient for every parameter.

        On the CPU the batch runs in shards on scratchvit's threads (:func:`scratchvit.accumulate.loss_and_grads`):
        the same sums in another order.

        Args:
            images: (B, H, W, 3) float in [-1, 1] (see :meth:`forward`).
            labels: (B,) integers in [0, num_classes), or (B, num_classes) soft targets; NumPy (checked on
                the host) or on the model's device.
            need_dinput: also return d loss / d images under the key "images" (gradient checks).
            label_smoothing: eps in [0, 1) of :func:`scratchvit.ops.softmax_cross_entropy_forward`.

        Returns:
            (loss as a Python float: one device-to-host read, grads: dict with the same keys and shapes
            as ``params``).

        Raises:
            ValueError: bad images (see :meth:`forward`), labels of the wrong shape or out of range, or
                label_smoothing outside [0, 1).
        """
        images = self._images(images)
        B = images.shape[0]
        K = self.config.num_classes
        if tuple(labels.shape) not in ((B,), (B, K)):
            raise ValueError(f"cross-entropy: labels must have shape ({B},) (or ({B}, {K}) soft targets), "
                             f"got {tuple(labels.shape)}")
        if isinstance(labels, np.ndarray):
            check_targets(labels, self.config.num_classes)
        loss, grads = accumulate.loss_and_grads(self, images, to_device(labels, self.device),
                                                label_smoothing=label_smoothing, need_dinput=need_dinput,
                                                key=ops.RngKey(0, 0))  # masked patch: every shard's rows, one plan
        return float(loss), grads

    def cast(self, dtype) -> "ViT":
        """This model with its parameters in ``dtype`` ("float16" for mixed precision: a copy of the flat
        buffer, one cast, with its own views; or this model itself when the dtype is already its own).
        The copy's updates do not reach this model's parameters.

        Raises:
            ValueError: a dtype other than float16, float32, float64.
        """
        if check_dtype(dtype) == self.dtype:
            return self
        model = copy.copy(self)  # the same config and layout; a new buffer: one cast of the whole of it
        model.dtype = check_dtype(dtype)
        model.flat = self.xp.astype(self.flat, dtype_of(self.xp, model.dtype))
        model.params = model.layout.views(model.flat)
        return model

    def num_params(self) -> int:
        """Number of scalar parameters."""
        return sum(int(v.size) for v in self.params.values())

    def __repr__(self):
        return f"ViT({self.config}, device={self.device!r}, dtype={self.dtype.name!r}, params={self.num_params():,})"

