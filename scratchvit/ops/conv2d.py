"""2-D convolution, NHWC input and HWIO kernel (Flax ``nn.Conv``'s layout), any kernel size and stride,
'SAME' or 'VALID' padding as XLA computes it, with or without bias: the convolutions of the hybrid's
ResNet (paper Sec. 3.1 "Hybrid Architecture"; vit_jax ``models_resnet.StdConv``, ``models_vit``'s
``conv_root`` and ``embedding``).

Shapes: x (B, H, W, C), kernel (kh, kw, C, O), bias (O,) or None, y (B, Ho, Wo, O). With the input padded
by (pt, pb) rows and (pl, pr) columns of zeros into xp (B, H + pt + pb, W + pl + pr, C):

    y[b, r, q, o] = bias[o] + sum_{i, j, c} xp[b, r*s + i, q*s + j, c] * kernel[i, j, c, o]

Padding (XLA ``padtype_to_pads``, what ``nn.Conv(padding='SAME')`` and ``nn.max_pool`` use), per axis:

    'SAME':  Ho = ceil(H / s),  total = max((Ho - 1) * s + k - H, 0),  pt = total // 2,  pb = total - pt
    'VALID': Ho = (H - k) // s + 1,  no padding (a remainder that no window covers is dropped)

so a 224 px input to a 7x7 stride-2 conv is padded 2 before and 3 after (PyTorch's ``padding=3`` pads 3
and 3: another convolution).

As a matrix product (im2col): the window of each output pixel, flattened in (i, j, c) order, is a row of
cols (B*Ho*Wo, kh*kw*C), and kernel reshaped to (kh*kw*C, O) is the matrix, so

    y = cols @ K + bias,   dK = cols^T @ dy,   dbias = sum_rows dy,   dcols = dy @ K^T

and dx is dcols scattered back (col2im): each of the kh*kw kernel offsets adds its (B, Ho, Wo, C) slice of
dcols into the padded gradient at the rows r*s + i, columns q*s + j; the padding is then cut away.
A 1x1 convolution needs no padding ('SAME' pads nothing at k = 1) and no window: at stride s it is the
strided slice x[:, ::s, ::s] times K.

Two forms: the plain form (:func:`conv2d_forward_plain`, array API 2023.12: CuPy, any namespace, float16)
builds cols by concatenating the kh*kw strided slices of the padded input (the array API has no
``as_strided``); the NumPy fast form (float32/float64 NumPy) copies all windows at once from a strided view
(NHWC keeps each window row's kw*C numbers consecutive, so the inner runs are long even for C = 3) and
scatters dcols straight into the unpadded gradient, one slice addition per kernel offset (the part of
the slice that falls on the padding is skipped: no padded buffer to cut and copy). Both run one matrix
product per direction.
"""
from __future__ import annotations

import numpy as np

from ..backend import device_of, namespace
from .common import fast_form, sum_rows, sum_rows_plain

PADDINGS = ("SAME", "VALID")


def conv_output_size(size: int, k: int, stride: int, padding: str) -> tuple[int, int, int]:
    """(out, pad_low, pad_high) along one axis of ``size`` for a kernel of ``k`` at ``stride`` (XLA's
    ``padtype_to_pads``: 'SAME' gives ceil(size / stride) outputs, the total padding split low = total // 2).

    Raises:
        ValueError: unknown ``padding``, or a 'VALID' kernel larger than the input.
    """
    if padding == "SAME":
        out = -(-size // stride)
        total = max((out - 1) * stride + k - size, 0)
        return out, total // 2, total - total // 2
    if padding == "VALID":
        if k > size:
            raise ValueError(f"conv2d: 'VALID' kernel of {k} is larger than the input's {size}")
        return (size - k) // stride + 1, 0, 0
    raise ValueError(f"conv2d: padding must be one of {PADDINGS}, got {padding!r}")


def _geometry(x, kernel, stride, padding):
    if x.ndim != 4 or kernel.ndim != 4 or x.shape[3] != kernel.shape[2]:
        raise ValueError(f"conv2d: expected x (B, H, W, C) and kernel (kh, kw, C, O), got x {tuple(x.shape)} "
                         f"and kernel {tuple(kernel.shape)}")
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"conv2d: stride must be a positive integer, got {stride!r}")
    B, H, W, C = x.shape
    kh, kw = kernel.shape[0], kernel.shape[1]
    Ho, pt, pb = conv_output_size(H, kh, stride, padding)
    Wo, pl, pr = conv_output_size(W, kw, stride, padding)
    return (B, H, W, C), (kh, kw, kernel.shape[3]), stride, (Ho, Wo), (pt, pb, pl, pr)


def _is_pointwise(geo):
    (kh, kw, _), _, _, pads = geo[1], geo[2], geo[3], geo[4]
    return kh == 1 and kw == 1 and not any(pads)


def clipped(i: int, stride: int, pad_low: int, size: int, n_out: int) -> tuple[slice, slice]:
    """Kernel offset ``i`` along one axis, without the padding: (outputs whose input index r*stride + i - pad_low
    falls inside [0, size), those input indices) as two slices. For scattering gradients straight into an
    unpadded array (the padding's share is dropped, as cutting it away would)."""
    r0 = max(0, -(-(pad_low - i) // stride))
    r1 = min(n_out, (size - 1 + pad_low - i) // stride + 1)
    if r1 <= r0:
        return slice(0, 0), slice(0, 0)
    h0 = r0 * stride + i - pad_low
    return slice(r0, r1), slice(h0, h0 + stride * (r1 - r0 - 1) + 1, stride)


def _window(i, j, geo):
    """The index of the (B, Ho, Wo, C) slice of the padded input that kernel offset (i, j) multiplies."""
    _, _, s, (Ho, Wo), _ = geo
    return (slice(None), slice(i, i + s * (Ho - 1) + 1, s), slice(j, j + s * (Wo - 1) + 1, s), slice(None))


# ------------------------------------------------------------------ plain form (array API)
def _pad_plain(xp, x, geo):
    (B, H, W, C), _, _, _, (pt, pb, pl, pr) = geo
    if not (pt or pb or pl or pr):
        return x
    xpad = xp.zeros((B, H + pt + pb, W + pl + pr, C), dtype=x.dtype, device=device_of(x))
    xpad[:, pt:pt + H, pl:pl + W, :] = x
    return xpad


def conv2d_forward_plain(x, kernel, bias=None, stride=1, padding="SAME"):
    """Plain form (array API) of :func:`conv2d_forward`: cols by concatenating the kh*kw strided slices."""
    xp = namespace(x, kernel, bias)
    geo = _geometry(x, kernel, stride, padding)
    (B, _, _, C), (kh, kw, Co), s, (Ho, Wo), _ = geo
    if _is_pointwise(geo):
        cols = xp.reshape(x[:, ::s, ::s, :] if s > 1 else x, (-1, C))
    else:
        xpad = _pad_plain(xp, x, geo)
        cols = xp.concat([xpad[_window(i, j, geo)] for i in range(kh) for j in range(kw)], axis=-1)
        cols = xp.reshape(cols, (-1, kh * kw * C))
    y = xp.matmul(cols, xp.reshape(kernel, (kh * kw * C, Co)))
    if bias is not None:
        y = y + bias
    return xp.reshape(y, (B, Ho, Wo, Co)), (cols, kernel, bias is not None, geo)


def conv2d_backward_plain(dy, cache, need_dx=True):
    """Plain form (array API) of :func:`conv2d_backward`: col2im by kh*kw slice additions."""
    cols, kernel, has_bias, geo = cache
    xp = namespace(dy, cols, kernel)
    (B, H, W, C), (kh, kw, Co), s, (Ho, Wo), (pt, pb, pl, pr) = geo
    kmat = xp.reshape(kernel, (kh * kw * C, Co))
    dy2d = xp.reshape(dy, (-1, Co))
    dkernel = xp.reshape(xp.matmul(cols.mT, dy2d), kernel.shape)
    dbias = sum_rows_plain(dy2d, kernel.dtype) if has_bias else None
    if not need_dx:
        return None, dkernel, dbias
    dcols = xp.matmul(dy2d, kmat.mT)
    if _is_pointwise(geo) and s == 1:
        return xp.reshape(dcols, (B, H, W, C)), dkernel, dbias
    dxpad = xp.zeros((B, H + pt + pb, W + pl + pr, C), dtype=dy.dtype, device=device_of(dy))
    dcols = xp.reshape(dcols, (B, Ho, Wo, kh * kw, C))
    for i in range(kh):
        for j in range(kw):
            w = _window(i, j, geo)
            dxpad[w] = dxpad[w] + dcols[:, :, :, i * kw + j, :]
    return dxpad[:, pt:pt + H, pl:pl + W, :], dkernel, dbias


# ------------------------------------------------------------------ NumPy fast form
def _conv2d_forward_numpy(x, kernel, bias, stride, padding):
    geo = _geometry(x, kernel, stride, padding)
    (B, H, W, C), (kh, kw, Co), s, (Ho, Wo), (pt, pb, pl, pr) = geo
    if _is_pointwise(geo):
        cols = (np.ascontiguousarray(x[:, ::s, ::s, :]) if s > 1 else x).reshape(-1, C)
    else:
        if pt or pb or pl or pr:
            xpad = np.zeros((B, H + pt + pb, W + pl + pr, C), dtype=x.dtype)
            xpad[:, pt:pt + H, pl:pl + W, :] = x
        else:
            xpad = x
        # im2col in one copy: in NHWC the (j, c) part of a window row is kw*C consecutive numbers, so every
        # window is a (kh, kw*C) strided view of the padded input (a sliding window, as_strided)
        sb, sh, sw, sc = xpad.strides
        windows = np.lib.stride_tricks.as_strided(xpad, shape=(B, Ho, Wo, kh, kw * C),
                                                  strides=(sb, s * sh, s * sw, sh, sc), writeable=False)
        cols = np.ascontiguousarray(windows).reshape(-1, kh * kw * C)
    y = cols @ kernel.reshape(kh * kw * C, Co)
    if bias is not None:
        y += bias
    return y.reshape(B, Ho, Wo, Co), (cols, kernel, bias is not None, geo)


def _conv2d_backward_numpy(dy, cache, need_dx=True):
    cols, kernel, has_bias, geo = cache
    (B, H, W, C), (kh, kw, Co), s, (Ho, Wo), (pt, pb, pl, pr) = geo
    dy2d = dy.reshape(-1, Co)
    # dK = cols^T dy, a product over the B*Ho*Wo rows; OpenBLAS runs it several times faster with the longer
    # side of dK as the output's rows (e.g. (64, 25088) @ (25088, 256), a 1x1 convolution of block1), so the
    # taller of dK and dK^T is computed
    if cols.shape[1] >= Co:
        dkernel = (cols.T @ dy2d).reshape(kernel.shape)
    else:
        dkernel = np.ascontiguousarray((dy2d.T @ cols).T).reshape(kernel.shape)
    dbias = sum_rows(dy2d) if has_bias else None
    if not need_dx:
        return None, dkernel, dbias
    dcols = dy2d @ kernel.reshape(kh * kw * C, Co).T
    if _is_pointwise(geo):
        if s == 1:
            return dcols.reshape(B, H, W, C), dkernel, dbias
        dx = np.zeros((B, H, W, C), dtype=dy.dtype)
        dx[:, ::s, ::s, :] = dcols.reshape(B, Ho, Wo, C)
        return dx, dkernel, dbias
    # col2im straight into the unpadded gradient: each offset adds the part of its slice that lands inside
    dx = np.zeros((B, H, W, C), dtype=dy.dtype)
    dcols = dcols.reshape(B, Ho, Wo, kh, kw, C)
    for i in range(kh):
        out_r, in_r = clipped(i, s, pt, H, Ho)
        for j in range(kw):
            out_q, in_q = clipped(j, s, pl, W, Wo)
            dx[:, in_r, in_q, :] += dcols[:, out_r, out_q, i, j, :]
    return dx, dkernel, dbias


# ------------------------------------------------------------------ public pair
def conv2d_forward(x, kernel, bias=None, stride: int = 1, padding: str = "SAME"):
    """y = conv(x, kernel) + bias, NHWC / HWIO (Flax ``nn.Conv``; vit_jax ``models_resnet.StdConv`` with a
    standardised kernel, ``conv_root``, ``embedding``; paper Sec. 3.1 hybrid).

    Args:
        x: (B, H, W, C) float16/float32/float64 (NumPy, CuPy or any array-API namespace).
        kernel: (kh, kw, C, O), same dtype, namespace and device.
        bias: (O,) or None (the ResNet's convolutions have none).
        stride: the same stride along both axes, a positive integer.
        padding: "SAME" (XLA's: ceil(H / stride) outputs, padding split low = total // 2) or "VALID".

    Returns:
        y (B, Ho, Wo, Co), x's dtype, and the cache for :func:`conv2d_backward` (the im2col matrix
        (B*Ho*Wo, kh*kw*C), a view of x for an unstrided 1x1 kernel, and the kernel).

    Raises:
        ValueError: x not 4-D or its channels not the kernel's C, a bad stride or padding, a 'VALID'
            kernel larger than the input; (array-api-strict) arrays on different devices.
        TypeError: arrays of different libraries.
    """
    if fast_form(namespace(x, kernel, bias), x, kernel, bias):
        return _conv2d_forward_numpy(x, kernel, bias, stride, padding)
    return conv2d_forward_plain(x, kernel, bias, stride, padding)


def conv2d_backward(dy, cache, need_dx: bool = True):
    """Gradients of :func:`conv2d_forward` (module docstring: dK = cols^T dy, dx = col2im(dy K^T)).

    Args:
        dy: (B, Ho, Wo, Co), the forward input's dtype.
        need_dx: False skips the input gradient (the first convolution of the network).

    Returns:
        (dx (B, H, W, C) or None, dkernel (kh, kw, C, O), dbias (O,) or None when the forward had no bias).

    Raises:
        TypeError / ValueError: ``dy`` of another library / device than the cache.
    """
    cols, kernel, _, _ = cache
    if fast_form(namespace(dy, cols, kernel), dy, cols, kernel):
        return _conv2d_backward_numpy(dy, cache, need_dx)
    return conv2d_backward_plain(dy, cache, need_dx)
