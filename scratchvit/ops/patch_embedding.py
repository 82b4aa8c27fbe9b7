"""Patch embedding: split the image into P x P patches and project each to D.

This is the patch projection x_p E of the paper's Eq. 1 only; the class token and the position
embedding E_pos of Eq. 1 are added in the model (``ViT._forward``).

Official parameters (vit_jax ``models_vit.VisionTransformer``: ``nn.Conv(..., strides=P, name='embedding')``):
``embedding/kernel`` (P, P, C, D) in HWIO layout and ``embedding/bias`` (D,). A stride-P
convolution with a P x P kernel is exactly a reshape of the image into patches, flattened in
(row, col, channel) order, followed by one matrix product with the kernel reshaped to (P*P*C, D):

    tokens = patches(images) @ reshape(kernel, (P*P*C, D)) + bias
    dkernel = patches^T @ dtokens,   dbias = sum_rows dtokens,   dimages = unpatch(dtokens @ kernel^T)

Two forms: the plain form (:func:`patch_embedding_forward_plain`, array API 2023.12; CuPy, any
namespace, float16) and the NumPy fast form (NumPy methods, BLAS gemv bias sum) for float32/float64 NumPy.
"""
from __future__ import annotations

from ..backend import namespace
from .common import fast_form, matmul, sum_rows, sum_rows_plain


def _check(images, C, P):
    if images.ndim != 4 or images.shape[-1] != C:
        raise ValueError(f"patch embedding: images must be (B, H, W, {C}), got shape {tuple(images.shape)}")
    _, H, W, _ = images.shape
    if H % P or W % P:
        raise ValueError(f"patch embedding: image size {H}x{W} px is not a multiple of the patch size {P} px")


def image_to_patches(images, patch_size):
    """(B, H, W, C) -> (B * N, P * P * C), patches in raster order, pixels in (row, col, channel) order.
    Any array-API namespace.

    Raises:
        ValueError: images not 4-D NHWC, or H, W not multiples of ``patch_size``.
    """
    if images.ndim != 4:
        raise ValueError(f"patch embedding: images must be (B, H, W, C), got shape {tuple(images.shape)}")
    _check(images, images.shape[-1], patch_size)
    xp = namespace(images)
    B, H, W, C = images.shape
    P = patch_size
    gh, gw = H // P, W // P
    x = xp.permute_dims(xp.reshape(images, (B, gh, P, gw, P, C)), (0, 1, 3, 2, 4, 5))
    return xp.reshape(x, (B * gh * gw, P * P * C))


def patches_to_image(patches, image_shape, patch_size):
    """Inverse of :func:`image_to_patches`: (B * N, P * P * C) -> (B, H, W, C). Any array-API namespace."""
    xp = namespace(patches)
    B, H, W, C = image_shape
    P = patch_size
    gh, gw = H // P, W // P
    x = xp.permute_dims(xp.reshape(patches, (B, gh, gw, P, P, C)), (0, 1, 3, 2, 4, 5))
    return xp.reshape(x, (B, H, W, C))


def patch_embedding_forward_plain(images, kernel, bias):
    """Plain form of :func:`patch_embedding_forward` (array API): tokens = patches @ reshape(kernel) + bias."""
    xp = namespace(images, kernel, bias)
    P, _, C, D = kernel.shape
    _check(images, C, P)
    patches = image_to_patches(images, P)
    tokens = matmul(patches, xp.reshape(kernel, (P * P * C, D))) + bias
    return xp.reshape(tokens, (images.shape[0], -1, D)), (patches, kernel, images.shape)


def patch_embedding_backward_plain(dtokens, cache, need_dx=False):
    """Plain form of :func:`patch_embedding_backward` (array API); dbias summed in float32 for float16."""
    patches, kernel, image_shape = cache
    xp = namespace(dtokens, patches, kernel)
    P, _, C, D = kernel.shape
    dy = xp.reshape(dtokens, (-1, D))
    dkernel = xp.reshape(matmul(patches.mT, dy), kernel.shape)
    dbias = sum_rows_plain(dy, kernel.dtype)
    dimages = None
    if need_dx:
        dimages = patches_to_image(matmul(dy, xp.reshape(kernel, (P * P * C, D)).mT), image_shape, P)
    return dimages, dkernel, dbias


def _patch_embedding_forward_numpy(images, kernel, bias):
    P, _, C, D = kernel.shape
    _check(images, C, P)
    B, H, W, _ = images.shape
    gh, gw = H // P, W // P
    patches = images.reshape(B, gh, P, gw, P, C).transpose(0, 1, 3, 2, 4, 5).reshape(B * gh * gw, P * P * C)
    tokens = patches @ kernel.reshape(P * P * C, D)
    tokens += bias
    return tokens.reshape(B, -1, D), (patches, kernel, images.shape)


def _patch_embedding_backward_numpy(dtokens, cache, need_dx=False):
    patches, kernel, image_shape = cache
    P, _, C, D = kernel.shape
    dy = dtokens.reshape(-1, D)
    dkernel = (patches.T @ dy).reshape(kernel.shape)
    dbias = sum_rows(dy)
    dimages = None
    if need_dx:
        B, H, W, _ = image_shape
        d = (dy @ kernel.reshape(-1, D).T).reshape(B, H // P, W // P, P, P, C).transpose(0, 1, 3, 2, 4, 5)
        dimages = d.reshape(image_shape)
    return dimages, dkernel, dbias


def patch_embedding_forward(images, kernel, bias):
    """Embed non-overlapping patches: (B, H, W, C) -> (B, N, D) with N = (H/P) * (W/P) (paper Eq. 1, x_p E;
    vit_jax ``VisionTransformer.__call__``, the ``embedding`` Conv).

    Args:
        images: (B, H, W, C) float16/float32/float64.
        kernel: (P, P, C, D), HWIO, same dtype, namespace and device.
        bias: (D,).

    Returns:
        tokens (B, N, D), the images' dtype, and the cache for :func:`patch_embedding_backward`.

    Raises:
        ValueError: channel count differs from the kernel's, or the size is not a multiple of P;
            (array-api-strict) arrays on different devices.
        TypeError: arrays of different libraries.
    """
    xp = namespace(images, kernel, bias)
    if fast_form(xp, images, kernel, bias):
        return _patch_embedding_forward_numpy(images, kernel, bias)
    return patch_embedding_forward_plain(images, kernel, bias)


def patch_embedding_backward(dtokens, cache, need_dx=False):
    """Gradients of :func:`patch_embedding_forward`.

    Args:
        dtokens: (B, N, D).
        need_dx: also return the gradient with respect to the images (off by default: the
            network never needs it; the gradient checks do).

    Returns:
        (dimages (B, H, W, C) or None, dkernel (P, P, C, D), dbias (D,)), dbias in the kernel's dtype.

    Raises:
        TypeError / ValueError: ``dtokens`` of another library / device than the cache.
    """
    patches, kernel, _ = cache
    if fast_form(namespace(dtokens, patches, kernel), dtokens, patches, kernel):
        return _patch_embedding_backward_numpy(dtokens, cache, need_dx)
    return patch_embedding_backward_plain(dtokens, cache, need_dx)
