"""Patch embedding: split the image into P x P patches and project each to D.

This is the patch projection x_p E of the paper's Eq. 1 only; the class token and the position
embedding E_pos of Eq. 1 are added in the model (``ViT._forward``).

Official parameters (vit_jax ``models_vit.VisionTransformer``: ``nn.Conv(..., strides=P, name='embedding')``):
``embedding/kernel`` (P, P, C, D) in HWIO layout and ``embedding/bias`` (D,). A stride-P
convolution with a P x P kernel is exactly a reshape of the image into patches, flattened in
(row, col, channel) order, followed by one matrix product with the kernel reshaped to (P*P*C, D).
"""
from __future__ import annotations

from .dense import sum_rows


def image_to_patches(images, patch_size):
    """(B, H, W, C) -> (B * N, P * P * C), patches in raster order, pixels in (row, col, channel) order.

    Raises:
        ValueError: images not 4-D NHWC, or H, W not multiples of ``patch_size``.
    """
    if images.ndim != 4:
        raise ValueError(f"patch embedding: images must be (B, H, W, C), got shape {tuple(images.shape)}")
    B, H, W, C = images.shape
    P = patch_size
    if H % P or W % P:
        raise ValueError(f"patch embedding: image size {H}x{W} px is not a multiple of the patch size {P} px")
    gh, gw = H // P, W // P
    x = images.reshape(B, gh, P, gw, P, C).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(B * gh * gw, P * P * C)


def patches_to_image(patches, image_shape, patch_size):
    """Inverse of :func:`image_to_patches`: (B * N, P * P * C) -> (B, H, W, C)."""
    B, H, W, C = image_shape
    P = patch_size
    gh, gw = H // P, W // P
    x = patches.reshape(B, gh, gw, P, P, C).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(B, H, W, C)


def patch_embedding_forward(images, kernel, bias):
    """Embed non-overlapping patches: (B, H, W, C) -> (B, N, D) with N = (H/P) * (W/P).

    Args:
        images: (B, H, W, C) float.
        kernel: (P, P, C, D), HWIO.
        bias: (D,).

    Returns:
        tokens (B, N, D) and the cache for :func:`patch_embedding_backward`.

    Raises:
        ValueError: channel count differs from the kernel's, or the size is not a multiple of P.
    """
    P, _, C, D = kernel.shape
    if images.ndim != 4 or images.shape[-1] != C:
        raise ValueError(
            f"patch embedding: images must be (B, H, W, {C}), got shape {tuple(images.shape)}"
        )
    patches = image_to_patches(images, P)
    w2d = kernel.reshape(P * P * C, D)
    tokens = patches @ w2d
    tokens += bias
    B = images.shape[0]
    return tokens.reshape(B, -1, D), (patches, kernel, images.shape)


def patch_embedding_backward(dtokens, cache, need_dx=False):
    """Gradients of :func:`patch_embedding_forward`.

    Args:
        dtokens: (B, N, D).
        need_dx: also return the gradient with respect to the images (off by default: the
            network never needs it; the gradient checks do).

    Returns:
        (dimages (B, H, W, C) or None, dkernel (P, P, C, D), dbias (D,)).
    """
    patches, kernel, image_shape = cache
    P, _, C, D = kernel.shape
    dy = dtokens.reshape(-1, D)
    dkernel = (patches.T @ dy).reshape(kernel.shape)
    dbias = sum_rows(dy)
    dimages = None
    if need_dx:
        dimages = patches_to_image(dy @ kernel.reshape(-1, D).T, image_shape, P)
    return dimages, dkernel, dbias
