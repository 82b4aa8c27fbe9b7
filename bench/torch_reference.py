"""The same Vision Transformer in plain PyTorch, built from official-layout parameters.

This is the yardstick for scratchvit: an idiomatic ``nn.Module`` ViT (no timm) that
takes the parameters named and shaped as Google's ``vit_jax`` ``.npz`` checkpoints,
so the same dict drives both implementations. It serves two purposes:

* correctness: in float64 its logits, loss and gradients match the official JAX
  model to ~1e-12 (``tests/test_torch_reference.py``), so it is an independent
  check of scratchvit's hand-written derivatives;
* speed: ``bench/train_step.py`` and ``bench/scaling.py`` time it against scratchvit.

The architecture follows ``vit_jax/models_vit.py``:

* patch embedding: a stride-P ``Conv2d`` whose weight is ``embedding/kernel``
  (P, P, C, D) in HWIO, transposed to PyTorch's OIHW;
* ``classifier="token"``: prepend ``cls`` (1, 1, D) and read token 0;
  ``"gap"``: no class token, mean over tokens after the final norm;
* add ``Transformer/posembed_input/pos_embedding`` (1, T, D);
* pre-norm blocks ``x = x + MSA(LN(x)); x = x + MLP(LN(x))``, LayerNorm eps 1e-6;
  the attention's query/key/value kernels (D, heads, head_dim) become one fused
  ``qkv`` ``Linear(D, 3D)``, ``out/kernel`` (heads, head_dim, D) a ``Linear(D, D)``;
  scores are scaled by 1/sqrt(head_dim); MLP = Linear, GELU (tanh approximation
  by default, exact erf on request), Linear;
* ``Transformer/encoder_norm``, optional ``pre_logits`` (Linear then tanh), ``head``.

A hybrid (paper Sec. 3.1; ``conv_root/kernel`` among the parameters) puts vit_jax's ResNet
(``models_resnet.py``) before the patch embedding, as timm's ``ResNetV2`` with ``StdConv2dSame`` does:
``StdConv2d`` (the kernel standardised per output channel over (in, kh, kw), population std + 1e-5,
at every forward; XLA 'SAME' padding, low = total // 2, by ``F.pad``), ``nn.GroupNorm(32, eps=1e-6)``,
ReLU, a 3x3 stride-2 max pool padded with -inf, and the bottleneck units ``block{b}/unit{u}``
(conv1/gn1, conv2/gn2 at the stage's stride, conv3/gn3, conv_proj/gn_proj where the shape changes).

Images are NHWC, float in [-1, 1], as in the official code; the module permutes
them to NCHW internally.

Public functions:
    build_torch_vit(params, classifier="token", gelu="tanh", dtype=torch.float32, sdpa=False)
    torch_params_to_numpy(module) -> {official name: array}
    torch_grads_to_numpy(module)  -> {official name: d loss / d param}
    loss_and_grads(module, images, labels) -> (float, {official name: array})
"""
from __future__ import annotations

import math
import re
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TorchViT",
    "build_torch_vit",
    "canonical_names",
    "infer_geometry",
    "loss_and_grads",
    "torch_grads_to_numpy",
    "torch_params_to_numpy",
]

LN_EPS = 1e-6
GN_EPS, GN_GROUPS, WS_EPS = 1e-6, 32, 1e-5  # flax nn.GroupNorm defaults; vit_jax weight_standardize eps
_UNIT_RE = re.compile(r"^block(\d+)/unit(\d+)/")
_BLOCK_RE = re.compile(r"^Transformer/encoderblock_(\d+)/(.+)$")

# Names written by current Flax / big_vision for the same sub-layers of a block.
_LINEN_TO_CANONICAL = {
    "LayerNorm_0": "LayerNorm_0",
    "MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
    "LayerNorm_1": "LayerNorm_2",
    "MlpBlock_0": "MlpBlock_3",
}


def canonical_names(params: dict) -> dict:
    """Return ``params`` with block sub-layers renamed to the canonical (pre-Linen) names.

    Accepts either spelling (``MultiHeadDotProductAttention_1`` / ``_0`` ...); a dict
    already in canonical names comes back unchanged (as a new dict).
    """
    linen = any("MultiHeadDotProductAttention_0" in k or "MlpBlock_0" in k for k in params)
    if not linen:
        return dict(params)
    out = {}
    for name, value in params.items():
        m = _BLOCK_RE.match(name)
        if m:
            sub, _, rest = m.group(2).partition("/")
            name = f"Transformer/encoderblock_{m.group(1)}/{_LINEN_TO_CANONICAL.get(sub, sub)}/{rest}"
        out[name] = value
    return out


def infer_geometry(params: dict) -> dict:
    """Read the geometry off official-layout parameters.

    Returns a dict with image_size, patch_size, channels, hidden_size, num_heads,
    head_dim, num_layers, mlp_dim, num_classes, representation_size, has_cls, seq_len.

    Raises:
        ValueError: a missing parameter, non-contiguous block indices, or shapes that disagree.
    """
    def need(name):
        if name not in params:
            raise ValueError(f"parameter {name!r} is missing")
        return np.shape(params[name])

    ph, pw, c, d = need("embedding/kernel")
    if ph != pw:
        raise ValueError(f"embedding/kernel must have square patches, got {ph}x{pw}")
    blocks = sorted({int(m.group(1)) for k in params if (m := _BLOCK_RE.match(k))})  # numeric, not string, order
    if not blocks:
        raise ValueError("no Transformer/encoderblock_{i} parameters found")
    if blocks != list(range(len(blocks))):
        raise ValueError(f"encoder block indices must be 0..L-1, got {blocks}")
    q = need("Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel")
    if len(q) != 3 or q[0] != d or q[1] * q[2] != d:
        raise ValueError(f"query kernel shape {q} does not fit width {d} as (D, heads, head_dim)")
    mlp = need("Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel")[1]
    has_cls = "cls" in params
    t = need("Transformer/posembed_input/pos_embedding")[1]
    n = t - (1 if has_cls else 0)
    grid = math.isqrt(n)
    if grid * grid != n:
        raise ValueError(f"position embedding has {t} tokens, which is not a square grid (+cls)")
    rep = np.shape(params["pre_logits/kernel"])[1] if "pre_logits/kernel" in params else None
    k = need("head/kernel")[1]
    resnet, stride = _infer_resnet(params)
    return dict(
        image_size=grid * ph * stride, patch_size=ph, channels=c, hidden_size=d, num_heads=q[1], head_dim=q[2],
        num_layers=len(blocks), mlp_dim=mlp, num_classes=k, representation_size=rep, has_cls=has_cls, seq_len=t,
        resnet=resnet,
    )


def _infer_resnet(params: dict):
    """(None, 1) for a ViT; for a hybrid ({"width": root channels, "units": [(prefix, in, features, stride)]},
    the ResNet's total stride): stage b (1-based) has width * 2**(b-1) features, stride 2 in its first unit for
    b > 1 (vit_jax ``VisionTransformer.__call__``)."""
    if "conv_root/kernel" not in params:
        return None, 1
    width = np.shape(params["conv_root/kernel"])[3]
    counts: dict[int, int] = {}
    for name in params:
        if m := _UNIT_RE.match(name):
            counts[int(m.group(1))] = max(counts.get(int(m.group(1)), 0), int(m.group(2)))
    if sorted(counts) != list(range(1, len(counts) + 1)):
        raise ValueError(f"ResNet stages must be block1..blockN, got {sorted(counts)}")
    units, cin = [], width
    for b in sorted(counts):
        features = width * 2 ** (b - 1)
        for u in range(1, counts[b] + 1):
            units.append((f"block{b}/unit{u}/", cin, features, 2 if (b > 1 and u == 1) else 1))
            cin = 4 * features
    return {"width": width, "units": units}, 4 * 2 ** max(len(counts) - 1, 0)


def same_pads(size: int, k: int, stride: int) -> tuple[int, int]:
    """XLA's 'SAME' padding along one axis: (low, high), total = max((ceil(size/s) - 1) s + k - size, 0)."""
    total = max((-(-size // stride) - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


class StdConv2d(nn.Conv2d):
    """vit_jax ``StdConv``: the weight standardised per output channel at every forward, XLA 'SAME' padding,
    no bias (timm's ``StdConv2dSame`` with eps 1e-5 added to the std)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1):
        super().__init__(cin, cout, k, stride=stride, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        w = w / (w.std(dim=(1, 2, 3), keepdim=True, unbiased=False) + WS_EPS)
        k, s = self.kernel_size[0], self.stride[0]
        pt, pb = same_pads(x.shape[2], k, s)
        pl, pr = same_pads(x.shape[3], k, s)
        if pt or pb or pl or pr:
            x = F.pad(x, (pl, pr, pt, pb))
        return F.conv2d(x, w, None, self.stride)


class Bottleneck(nn.Module):
    """vit_jax ``models_resnet.ResidualUnit``."""

    def __init__(self, cin: int, features: int, stride: int):
        super().__init__()
        out = 4 * features
        self.conv_proj = StdConv2d(cin, out, 1, stride) if (cin != out or stride != 1) else None
        self.gn_proj = nn.GroupNorm(GN_GROUPS, out, eps=GN_EPS) if self.conv_proj is not None else None
        self.conv1, self.gn1 = StdConv2d(cin, features, 1), nn.GroupNorm(GN_GROUPS, features, eps=GN_EPS)
        self.conv2, self.gn2 = StdConv2d(features, features, 3, stride), nn.GroupNorm(GN_GROUPS, features, eps=GN_EPS)
        self.conv3, self.gn3 = StdConv2d(features, out, 1), nn.GroupNorm(GN_GROUPS, out, eps=GN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.conv_proj is None else self.gn_proj(self.conv_proj(x))
        y = F.relu(self.gn1(self.conv1(x)))
        y = F.relu(self.gn2(self.conv2(y)))
        y = self.gn3(self.conv3(y))
        return F.relu(residual + y)


class ResNet(nn.Module):
    """The hybrid's ResNet (vit_jax ``VisionTransformer.__call__``'s resnet branch), NCHW in and out."""

    def __init__(self, spec: dict):
        super().__init__()
        w = spec["width"]
        self.conv_root, self.gn_root = StdConv2d(3, w, 7, 2), nn.GroupNorm(GN_GROUPS, w, eps=GN_EPS)
        self.units = nn.ModuleList(Bottleneck(cin, f, s) for _, cin, f, s in spec["units"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.gn_root(self.conv_root(x)))
        pt, pb = same_pads(x.shape[2], 3, 2)
        pl, pr = same_pads(x.shape[3], 3, 2)
        x = F.max_pool2d(F.pad(x, (pl, pr, pt, pb), value=-math.inf), 3, 2)
        for unit in self.units:
            x = unit(x)
        return x


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection."""

    def __init__(self, dim: int, num_heads: int, sdpa: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.sdpa = sdpa
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, T, head_dim)
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
            y = attn @ v
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, gelu: str):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.approximate = "tanh" if gelu == "tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_dim: int, gelu: str, sdpa: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads, sdpa)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, mlp_dim, gelu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TorchViT(nn.Module):
    """ViT as in ``vit_jax/models_vit.py``; input NHWC (B, H, W, C), output logits (B, K)."""

    def __init__(self, geometry: dict, classifier: str = "token", gelu: str = "tanh", sdpa: bool = False):
        super().__init__()
        g = dict(geometry)
        self.geometry = g
        self.classifier = classifier
        self.gelu = gelu
        d, p = g["hidden_size"], g["patch_size"]
        self.resnet = ResNet(g["resnet"]) if g.get("resnet") else None
        self.patch_embed = nn.Conv2d(g["channels"], d, kernel_size=p, stride=p)  # 'VALID': a remainder is dropped
        self.cls = nn.Parameter(torch.zeros(1, 1, d)) if classifier == "token" else None
        self.pos_embedding = nn.Parameter(torch.zeros(1, g["seq_len"], d))
        self.blocks = nn.ModuleList(
            Block(d, g["num_heads"], g["mlp_dim"], gelu, sdpa) for _ in range(g["num_layers"])
        )
        self.encoder_norm = nn.LayerNorm(d, eps=LN_EPS)
        rep = g["representation_size"]
        self.pre_logits = nn.Linear(d, rep) if rep else None
        self.head = nn.Linear(rep or d, g["num_classes"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2)  # NHWC -> NCHW
        if self.resnet is not None:
            x = self.resnet(x)
        x = self.patch_embed(x)  # (B, D, h, w)
        x = x.flatten(2).transpose(1, 2)  # (B, N, D), patches in row-major (row, col) order
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embedding
        for blk in self.blocks:
            x = blk(x)
        x = self.encoder_norm(x)
        x = x[:, 0] if self.classifier == "token" else x.mean(dim=1)
        if self.pre_logits is not None:
            x = torch.tanh(self.pre_logits(x))
        return self.head(x)


def _as_torch_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    name = np.dtype(dtype).name
    return {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16}[name]


# ---------------------------------------------------------------------------------------------
# Name mapping: official name -> (torch parameter path, to_torch(np) -> np, to_official(np) -> np)
# Fused qkv entries are handled separately because three official arrays share one tensor.
# ---------------------------------------------------------------------------------------------

def _simple_map(model: TorchViT) -> dict[str, tuple[str, Callable, Callable]]:
    g = model.geometry
    d, h, hd = g["hidden_size"], g["num_heads"], g["head_dim"]
    ident = lambda a: a  # noqa: E731
    dense_k = (lambda a: a.T, lambda a: a.T)  # (in, out) <-> Linear's (out, in)
    m = {
        "embedding/kernel": ("patch_embed.weight", lambda a: a.transpose(3, 2, 0, 1),
                             lambda a: a.transpose(2, 3, 1, 0)),
        "embedding/bias": ("patch_embed.bias", ident, ident),
        "Transformer/posembed_input/pos_embedding": ("pos_embedding", ident, ident),
        "Transformer/encoder_norm/scale": ("encoder_norm.weight", ident, ident),
        "Transformer/encoder_norm/bias": ("encoder_norm.bias", ident, ident),
        "head/kernel": ("head.weight", *dense_k),
        "head/bias": ("head.bias", ident, ident),
    }
    if model.cls is not None:
        m["cls"] = ("cls", ident, ident)
    if model.pre_logits is not None:
        m["pre_logits/kernel"] = ("pre_logits.weight", *dense_k)
        m["pre_logits/bias"] = ("pre_logits.bias", ident, ident)
    if model.resnet is not None:
        conv_k = (lambda a: a.transpose(3, 2, 0, 1), lambda a: a.transpose(2, 3, 1, 0))  # HWIO <-> OIHW
        m["conv_root/kernel"] = ("resnet.conv_root.weight", *conv_k)
        m["gn_root/scale"] = ("resnet.gn_root.weight", ident, ident)
        m["gn_root/bias"] = ("resnet.gn_root.bias", ident, ident)
        for j, (prefix, _, _, _) in enumerate(g["resnet"]["units"]):
            unit = model.resnet.units[j]
            names = ("1", "2", "3") + (("_proj",) if unit.conv_proj is not None else ())
            for n in names:
                t = f"resnet.units.{j}."
                m[f"{prefix}conv{n}/kernel"] = (f"{t}conv{n}.weight", *conv_k)
                m[f"{prefix}gn{n}/scale"] = (f"{t}gn{n}.weight", ident, ident)
                m[f"{prefix}gn{n}/bias"] = (f"{t}gn{n}.bias", ident, ident)
    for i in range(g["num_layers"]):
        o, t = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        m.update({
            o + "LayerNorm_0/scale": (t + "norm1.weight", ident, ident),
            o + "LayerNorm_0/bias": (t + "norm1.bias", ident, ident),
            o + "LayerNorm_2/scale": (t + "norm2.weight", ident, ident),
            o + "LayerNorm_2/bias": (t + "norm2.bias", ident, ident),
            o + "MultiHeadDotProductAttention_1/out/kernel": (
                t + "attn.out.weight", lambda a: a.reshape(h * hd, d).T, lambda a: a.T.reshape(h, hd, d)),
            o + "MultiHeadDotProductAttention_1/out/bias": (t + "attn.out.bias", ident, ident),
            o + "MlpBlock_3/Dense_0/kernel": (t + "mlp.fc1.weight", *dense_k),
            o + "MlpBlock_3/Dense_0/bias": (t + "mlp.fc1.bias", ident, ident),
            o + "MlpBlock_3/Dense_1/kernel": (t + "mlp.fc2.weight", *dense_k),
            o + "MlpBlock_3/Dense_1/bias": (t + "mlp.fc2.bias", ident, ident),
        })
    return m


_QKV = ("query", "key", "value")


def build_torch_vit(
    params: dict,
    classifier: str | None = "token",
    gelu: str = "tanh",
    dtype=torch.float32,
    sdpa: bool = False,
    device: str | torch.device = "cpu",
) -> TorchViT:
    """Build a :class:`TorchViT` from official-layout parameters.

    Args:
        params: official name -> array (NumPy or anything ``np.asarray`` takes). Block names in
            either the canonical (``MultiHeadDotProductAttention_1``) or the Linen
            (``MultiHeadDotProductAttention_0``) spelling. Geometry is inferred from the shapes.
        classifier: "token" or "gap"; None infers it from the presence of ``cls``.
        gelu: "tanh" (the official Flax default) or "erf" (exact).
        dtype: torch dtype (or "float32"/"float64") of the parameters.
        sdpa: use ``F.scaled_dot_product_attention`` instead of explicit softmax(QK^T/sqrt(d))V.
        device: torch device for the module.

    Raises:
        ValueError: unknown classifier/gelu, a missing/extra parameter, or inconsistent shapes.
    """
    params = canonical_names({k: np.asarray(v) for k, v in params.items()})
    g = infer_geometry(params)
    if classifier is None:
        classifier = "token" if g["has_cls"] else "gap"
    if classifier not in ("token", "gap"):
        raise ValueError(f"classifier must be 'token' or 'gap', got {classifier!r}")
    if gelu not in ("tanh", "erf"):
        raise ValueError(f"gelu must be 'tanh' or 'erf', got {gelu!r}")
    if (classifier == "token") != g["has_cls"]:
        raise ValueError(
            f"classifier={classifier!r} but the parameters {'have' if g['has_cls'] else 'lack'} a 'cls' token"
        )
    tdtype = _as_torch_dtype(dtype)
    model = TorchViT(g, classifier=classifier, gelu=gelu, sdpa=sdpa).to(dtype=tdtype)  # before loading: no rounding

    expected = set()
    state = {}
    for name, (path, to_torch, _) in _simple_map(model).items():
        expected.add(name)
        state[path] = torch.from_numpy(np.ascontiguousarray(to_torch(params[name])))
    d = g["hidden_size"]
    for i in range(g["num_layers"]):
        o = f"Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/"
        ks = [params[o + f"{n}/kernel"].reshape(d, d) for n in _QKV]
        bs = [params[o + f"{n}/bias"].reshape(d) for n in _QKV]
        expected.update(o + f"{n}/{w}" for n in _QKV for w in ("kernel", "bias"))
        state[f"blocks.{i}.attn.qkv.weight"] = torch.from_numpy(np.ascontiguousarray(np.concatenate(ks, 1).T))
        state[f"blocks.{i}.attn.qkv.bias"] = torch.from_numpy(np.concatenate(bs))
    extra = set(params) - expected
    if extra:
        raise ValueError(f"unexpected parameters: {sorted(extra)[:5]}{' ...' if len(extra) > 5 else ''}")
    model.load_state_dict(state, strict=True)  # copies with a cast to the module's dtype
    return model.to(device=device)


def _export(model: TorchViT, get: Callable[[nn.Parameter], torch.Tensor | None]) -> dict[str, np.ndarray]:
    named = dict(model.named_parameters())

    def arr(path):
        t = get(named[path])
        if t is None:
            t = torch.zeros_like(named[path])
        return t.detach().cpu().numpy()

    out = {}
    for name, (path, _, to_official) in _simple_map(model).items():
        out[name] = np.ascontiguousarray(to_official(arr(path)))
    g = model.geometry
    d, h, hd = g["hidden_size"], g["num_heads"], g["head_dim"]
    for i in range(g["num_layers"]):
        o = f"Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/"
        w = arr(f"blocks.{i}.attn.qkv.weight")  # (3D, D), rows = outputs
        b = arr(f"blocks.{i}.attn.qkv.bias")
        for j, n in enumerate(_QKV):
            out[o + f"{n}/kernel"] = np.ascontiguousarray(w[j * d:(j + 1) * d].T.reshape(d, h, hd))
            out[o + f"{n}/bias"] = b[j * d:(j + 1) * d].reshape(h, hd).copy()
    return out


def torch_params_to_numpy(module: TorchViT) -> dict[str, np.ndarray]:
    """The module's parameters as NumPy arrays under official names and shapes."""
    return _export(module, lambda p: p)


def torch_grads_to_numpy(module: TorchViT) -> dict[str, np.ndarray]:
    """Each parameter's ``.grad`` as NumPy under official names and shapes (zeros where None)."""
    return _export(module, lambda p: p.grad)


def loss_and_grads(module: TorchViT, images, labels) -> tuple[float, dict[str, np.ndarray]]:
    """Mean softmax cross-entropy of ``module`` on NHWC ``images`` and its gradients (official names).

    ``images`` and ``labels`` may be NumPy arrays or tensors; grads are zeroed first.
    """
    p = next(module.parameters())
    x = torch.as_tensor(images, device=p.device).to(p.dtype)
    y = torch.as_tensor(labels, device=p.device).long()
    module.zero_grad(set_to_none=True)
    loss = F.cross_entropy(module(x), y)
    loss.backward()
    return float(loss.detach()), torch_grads_to_numpy(module)
