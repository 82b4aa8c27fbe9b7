"""Masked patch prediction (the paper's self-supervision, Sec. 4.6 and Appendix B.1.2): the corruption of
the patch embeddings, the targets (each patch's 3-bit mean colour) and the loss over the corrupted tokens.

Of each image's N patch embeddings x_i (the rows of x_p E, Eq. 1, before the class token and the position
embeddings), k = round(r N) are corrupted (r = 0.5): of those, 80% are replaced by a learnable [mask]
embedding e_mask, 10% by the embedding of another patch of the same image, and 10% are left as they are:

    y_i = keep_i x_i + mask_i e_mask + sum_j P_ij x_j          P_ij = random_i [j == source_i]

with keep_i, mask_i, random_i in {0, 1} (keep_i = 1 - mask_i - random_i) and source_i != i. P is a one-hot
(N, N) matrix per image, so the "random other patch" is one batched matrix product and its backward the
product with P^T (the array API has no scatter-add):

    dx = keep * dy + P^T dy,        de_mask = sum_{b, i} mask_bi dy_bi

The encoder's output tokens go through a dense head to K = 2^(bits * C) classes (C colour channels, 3 bits
each: 512 for RGB, 8 for grey data), and the loss is the softmax cross-entropy averaged over the corrupted
tokens only (w_bi = 1 on them, 0 elsewhere; W = sum w):

    loss = (1 / W) sum_bi w_bi [logsumexp(z_bi) - z_bi,t_bi]          dz_bi = (w_bi / W) (softmax(z_bi) - onehot(t_bi))

Which tokens are corrupted and how is drawn by the counter-based generator of the dropout masks
(:func:`scratchvit.rng.uniform`, keyed by seed, step and the image's global row), so a part of a
batch (an MPI rank, a micro-batch, a thread's shard) draws for its images what the whole batch draws, and a
resumed run redraws its step's corruption. The paper does not say whether exactly or about half the
patches are corrupted; here exactly k per image (the k smallest of N uniform draws), so the loss of every
image weighs the same.

One form: the plain array-API form (a one-hot matmul, comparisons and sums) runs on every namespace; a NumPy
form would save little next to the encoder, so none is written.
"""
from __future__ import annotations

import dataclasses

from ..backend import device_of, namespace
from ..rng import RngKey, uniform
from .common import wide_dtype

COLOUR_BITS = 3  # bits per channel of the mean-colour target (the paper's 3-bit colours: 512 classes for RGB)
CORRUPTION_SITE = 0x7FFF0000  # the site id of the corruption's draws (dropout's sites count up from 0)


def num_colour_classes(channels: int, bits: int = COLOUR_BITS) -> int:
    """K = 2^(bits * channels): 512 for RGB at 3 bits, 8 for grey images."""
    return 2 ** (bits * channels)


def colour_targets(images, token_pixels: int, channels: int = 3, bits: int = COLOUR_BITS):
    """Each patch's mean colour, quantised to ``bits`` bits a channel, as one class index (paper App. B.1.2).

        m_c = mean of channel c over the patch's pixels (in [-1, 1])
        q_c = clip(floor((m_c + 1) / 2 * 2^bits), 0, 2^bits - 1)
        t = sum_c q_c 2^(bits (C - 1 - c))       (the first channel most significant)

    Args:
        images: (B, H, W, >= channels) float, pixels in [-1, 1] (any namespace); H and W multiples of
            ``token_pixels``.
        token_pixels: the side of one token's patch in pixels (the patch size; for a hybrid, the ResNet's
            stride times the patch size).
        channels: colour channels the target reads: 3, or 1 for grey data (Fashion-MNIST, whose three
            channels are copies).

    Returns:
        (B, N) int64 class indices in [0, 2^(bits channels)), N = (H / token_pixels) (W / token_pixels), the
        tokens in the patch embedding's row-major order.

    Raises:
        ValueError: a side that is not a multiple of ``token_pixels``, too few channels.
    """
    xp = namespace(images)
    b, h, w, c = images.shape
    p = int(token_pixels)
    if h % p or w % p or channels < 1 or c < channels:
        raise ValueError(f"colour_targets: images {tuple(images.shape)} need sides that are multiples of the token's "
                         f"{p} pixels and at least {channels} channels")
    grid = xp.reshape(images[..., :channels], (b, h // p, p, w // p, p, channels))
    mean = xp.mean(xp.astype(grid, wide_dtype(xp, images.dtype)), axis=(2, 4))  # (B, H/p, W/p, C)
    levels = 2 ** bits
    q = xp.clip(xp.astype(xp.floor((mean + 1.0) * (levels / 2.0)), xp.int64), 0, levels - 1)
    weights = xp.asarray([levels ** (channels - 1 - i) for i in range(channels)], dtype=xp.int64,
                         device=device_of(images))
    return xp.reshape(xp.sum(q * weights, axis=-1), (b, (h // p) * (w // p)))


@dataclasses.dataclass(frozen=True)
class CorruptionPlan:
    """Which tokens are corrupted and how, for a batch of B images of N patch tokens (arrays of the batch's
    namespace and device): ``corrupted``, ``use_mask``, ``use_random`` (B, N) in the dtype of the tokens (1.0
    or 0.0; use_mask + use_random <= corrupted); ``source`` (B, N) int64, the patch a random replacement
    copies (another of the same image)."""

    corrupted: object
    use_mask: object
    use_random: object
    source: object


def corruption_plan(xp, key: RngKey, site_id: int, batch: int, tokens: int, dtype, device=None,
                    mask_ratio: float = 0.5, mask_fraction: float = 0.8, random_fraction: float = 0.1
                    ) -> CorruptionPlan:
    """Draw the corruption of a batch (paper App. B.1.2: 50% of the patches; of those 80% [mask], 10% random,
    10% unchanged) from three uniform draws per token of :func:`scratchvit.rng.uniform`, rows the
    images' global rows ``key.row + b``: the round(mask_ratio N) tokens with the smallest first draw are
    corrupted; the second picks the action (< mask_fraction: [mask]; < mask_fraction + random_fraction: a
    random other patch; else unchanged); the third the source patch.

    Raises:
        ValueError: a ratio outside [0, 1], fractions that do not fit in [0, 1], fewer than 2 tokens with a
            random replacement asked for.
    """
    if not 0.0 <= mask_ratio <= 1.0 or mask_fraction < 0 or random_fraction < 0 or \
            mask_fraction + random_fraction > 1.0:
        raise ValueError(f"masked patch: mask_ratio must lie in [0, 1] and the [mask] and random fractions in [0, 1] "
                         f"with a sum <= 1, got {mask_ratio}, {mask_fraction}, {random_fraction}")
    if tokens < 2 and random_fraction > 0:
        raise ValueError(f"masked patch: a random replacement needs 2 or more patches, got {tokens}")
    u = uniform(xp, key, site_id, (batch, tokens, 3), device, dtype=xp.float64)
    k = round(mask_ratio * tokens)
    rank = xp.argsort(xp.argsort(u[..., 0], axis=1, stable=True), axis=1, stable=True)  # 0 = the smallest draw
    corrupted = rank < k
    use_mask = corrupted & (u[..., 1] < mask_fraction)
    use_random = corrupted & (u[..., 1] >= mask_fraction) & (u[..., 1] < mask_fraction + random_fraction)
    j = xp.astype(xp.floor(u[..., 2] * (tokens - 1)), xp.int64)  # one of the N - 1 other patches
    position = xp.reshape(xp.arange(tokens, dtype=xp.int64, device=device), (1, tokens))
    source = j + xp.astype(j >= position, xp.int64)
    return CorruptionPlan(xp.astype(corrupted, dtype), xp.astype(use_mask, dtype), xp.astype(use_random, dtype),
                          source)


def corrupt_forward_plain(x, mask_embedding, plan: CorruptionPlan):
    """Plain form (array API) of :func:`corrupt_forward`, the only form (see the module docstring)."""
    xp = namespace(x, mask_embedding)
    n = x.shape[1]
    columns = xp.reshape(xp.arange(n, dtype=xp.int64, device=device_of(x)), (1, 1, n))
    onehot = xp.astype(xp.reshape(plan.source, (*plan.source.shape, 1)) == columns, x.dtype)  # (B, N, N)
    p = xp.reshape(plan.use_random, (*plan.use_random.shape, 1)) * onehot  # P_ij = random_i [j == source_i]
    mask = xp.reshape(plan.use_mask, (*plan.use_mask.shape, 1))
    keep = 1.0 - mask - xp.reshape(plan.use_random, mask.shape)
    y = keep * x + mask * mask_embedding + xp.matmul(p, x)
    return y, (p, keep, mask)


def corrupt_backward_plain(dy, cache):
    """Plain form (array API) of :func:`corrupt_backward`."""
    p, keep, mask = cache
    xp = namespace(dy, p)
    dx = keep * dy + xp.matmul(p.mT, dy)
    d_mask = xp.reshape(xp.sum(mask * dy, axis=(0, 1), dtype=wide_dtype(xp, dy.dtype)), (1, 1, dy.shape[-1]))
    return dx, xp.astype(d_mask, dy.dtype)


def corrupt_forward(x, mask_embedding, plan: CorruptionPlan):
    """Corrupt patch embeddings: y = keep * x + mask * e_mask + P x (module docstring; paper App. B.1.2).

    Args:
        x: (B, N, D) float patch embeddings (x_p E + b, before the class token and position embeddings).
        mask_embedding: (1, 1, D) the learnable [mask] embedding, x's dtype, namespace and device.
        plan: from :func:`corruption_plan` for (B, N), x's dtype.

    Returns:
        y (B, N, D) and the cache of :func:`corrupt_backward` (P (B, N, N), keep and mask (B, N, 1)).
    """
    return corrupt_forward_plain(x, mask_embedding, plan)


def corrupt_backward(dy, cache):
    """dx = keep * dy + P^T dy (a copied patch's gradient flows back to its source), de_mask = sum of dy
    over the [mask] positions. Returns (dx (B, N, D), d_mask_embedding (1, 1, D), summed in float32 for
    float16)."""
    return corrupt_backward_plain(dy, cache)


def token_cross_entropy_forward_plain(logits, targets, weights):
    """Plain form (array API) of :func:`token_cross_entropy_forward`, the only form."""
    xp = namespace(logits, targets, weights)
    wide = wide_dtype(xp, logits.dtype)
    z = xp.astype(logits, wide)
    z = z - xp.max(z, axis=-1, keepdims=True)
    e = xp.exp(z)
    s = xp.sum(e, axis=-1, keepdims=True)
    classes = xp.reshape(xp.arange(logits.shape[-1], dtype=targets.dtype, device=device_of(logits)),
                         (1, 1, logits.shape[-1]))
    onehot = xp.astype(xp.reshape(targets, (*targets.shape, 1)) == classes, wide)
    nll = xp.log(xp.squeeze(s, axis=-1)) - xp.sum(onehot * z, axis=-1)  # (B, N)
    w = xp.astype(weights, wide)
    total = xp.sum(w)
    loss = xp.sum(w * nll) / total
    hit = xp.astype(xp.argmax(z, axis=-1) == targets, wide)
    accuracy = xp.sum(w * hit) / total
    return loss, accuracy, (e / s, onehot, w, total, logits.dtype)


def token_cross_entropy_backward_plain(cache):
    """Plain form (array API) of :func:`token_cross_entropy_backward`."""
    probs, onehot, w, total, dtype = cache
    xp = namespace(probs)
    scale = xp.reshape(w / total, (*w.shape, 1))
    return xp.astype(scale * (probs - onehot), dtype)


def token_cross_entropy_forward(logits, targets, weights):
    """Softmax cross-entropy per token, averaged over the tokens of weight 1 (the corrupted ones): the
    masked-patch loss (module docstring). Log-sum-exp, loss and softmax in float32 for float16 logits.

    Args:
        logits: (B, N, K) float, the prediction head's output on every patch token.
        targets: (B, N) int64 class indices in [0, K) (:func:`colour_targets`), same namespace and device.
        weights: (B, N) 0/1 floats (``CorruptionPlan.corrupted``), at least one 1.

    Returns:
        loss (0-d, float32 for float16 logits), accuracy (0-d: the share of weighted tokens whose argmax is
        the target) and the cache of :func:`token_cross_entropy_backward`.
    """
    return token_cross_entropy_forward_plain(logits, targets, weights)


def token_cross_entropy_backward(cache):
    """dloss/dlogits = (w / W) (softmax(z) - onehot(t)): (B, N, K) in the logits' dtype."""
    return token_cross_entropy_backward_plain(cache)
