"""The ops of the hybrid's ResNet (paper Sec. 3.1) against their definitions: XLA's 'SAME' padding, the
convolution as a loop over windows, max pooling with -inf padding and its tie rule, group and weight
statistics, ReLU at 0, float16 statistics. Their gradient checks and form equalities are in test_ops.py /
test_ops_forms.py (the CASES there)."""
import numpy as np
import pytest
from test_ops_forms import assert_same

from scratchvit import ops
from scratchvit.ops.conv2d import conv_output_size


@pytest.mark.parametrize("size,k,s,expected", [
    (224, 7, 2, (112, 2, 3)),  # the root at 224 px: 2 before, 3 after (PyTorch's padding=3 is another conv)
    (112, 3, 2, (56, 0, 1)),  # the max pool after it
    (225, 7, 2, (113, 3, 3)),
    (56, 3, 1, (56, 1, 1)),
    (56, 1, 2, (28, 0, 0)),
    (5, 7, 1, (5, 3, 3)),
])
def test_same_padding_is_xla_arithmetic(size, k, s, expected):
    assert conv_output_size(size, k, s, "SAME") == expected


def naive_conv(x, kernel, stride, pads):
    """The definition: y[b, r, q] = sum over the window of the zero-padded x times the kernel."""
    (pt, pb), (pl, pr) = pads
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    kh, kw, _, Co = kernel.shape
    Ho, Wo = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
    y = np.zeros((x.shape[0], Ho, Wo, Co))
    for r in range(Ho):
        for q in range(Wo):
            win = xp[:, r * stride:r * stride + kh, q * stride:q * stride + kw, :]
            y[:, r, q] = np.einsum("bijc,ijco->bo", win, kernel)
    return y


@pytest.mark.parametrize("plain", [False, True])
@pytest.mark.parametrize("shape,k,s,padding,pads", [
    ((2, 10, 9, 3), 7, 2, "SAME", ((2, 3), (3, 3))),
    ((1, 8, 8, 4), 3, 2, "SAME", ((0, 1), (0, 1))),
    ((1, 7, 7, 4), 3, 1, "SAME", ((1, 1), (1, 1))),
    ((2, 9, 7, 5), 2, 2, "VALID", ((0, 0), (0, 0))),  # 4 x 3 windows: the last row and column dropped
    ((2, 5, 6, 4), 1, 2, "SAME", ((0, 0), (0, 0))),
])
def test_conv2d_is_the_windowed_sum(rng, shape, k, s, padding, pads, plain):
    x, kernel = rng.standard_normal(shape), rng.standard_normal((k, k, shape[3], 3))
    fwd = ops.conv2d_forward_plain if plain else ops.conv2d_forward
    y, _ = fwd(x, kernel, None, s, padding)
    assert_same(y, naive_conv(x, kernel, s, pads), "conv2d")


def test_conv2d_rejects_bad_input(rng):
    with pytest.raises(ValueError, match="kernel"):
        ops.conv2d_forward(np.zeros((1, 4, 4, 3)), np.zeros((3, 3, 2, 4)))
    with pytest.raises(ValueError, match="padding"):
        ops.conv2d_forward(np.zeros((1, 4, 4, 3)), np.zeros((3, 3, 3, 4)), padding="FULL")
    with pytest.raises(ValueError, match="larger"):
        ops.conv2d_forward(np.zeros((1, 2, 2, 3)), np.zeros((3, 3, 3, 4)), padding="VALID")
    with pytest.raises(ValueError, match="stride"):
        ops.conv2d_forward(np.zeros((1, 4, 4, 3)), np.zeros((3, 3, 3, 4)), stride=0)


def test_max_pool_is_the_window_maximum_with_minus_infinity_padding(rng):
    x = rng.standard_normal((2, 7, 8, 3)) - 10.0  # all negative: a zero padding would win the border windows
    y, _ = ops.max_pool_forward(x, 3, 2)
    xp = np.pad(x, ((0, 0), (1, 1), (0, 1), (0, 0)), constant_values=-np.inf)  # H 7: 1-1; W 8: 0-1
    expected = np.stack([np.stack([xp[:, 2 * r:2 * r + 3, 2 * q:2 * q + 3].max(axis=(1, 2)) for q in range(4)], 1)
                         for r in range(4)], 1)
    assert y.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("device", [False, True])
def test_max_pool_tie_goes_to_the_first_element_in_raster_order(device):
    """A constant 4x4 map: every window is all ties. Windows (0,0), (0,1), (1,0), (1,1) start at rows/columns
    0 and 2 (padding 0 before, 1 after), so their first elements (0,0), (0,2), (2,0), (2,2) take each window's
    whole gradient; an element two windows pick gets both."""
    x, dy = np.full((1, 4, 4, 1), 0.5), np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 2, 2, 1)
    if device:
        from strict_device import to_host, to_strict

        y, cache = ops.max_pool_forward(to_strict(x))
        dx = to_host(ops.max_pool_backward(to_strict(dy), cache))
    else:
        y, cache = ops.max_pool_forward(x)
        dx = ops.max_pool_backward(dy, cache)
    expected = np.zeros((4, 4))
    expected[0, 0], expected[0, 2], expected[2, 0], expected[2, 2] = 1.0, 2.0, 3.0, 4.0
    np.testing.assert_array_equal(dx[0, :, :, 0], expected)
    # a tie between the second and ninth offsets of one window: the second (earlier in raster order) wins
    x = np.zeros((1, 3, 3, 1))
    x[0, 0, 1, 0] = x[0, 2, 2, 0] = 1.0
    _, cache = ops.max_pool_forward(x, 3, 3)
    dx = ops.max_pool_backward(np.ones((1, 1, 1, 1)), cache)
    assert dx[0, 0, 1, 0] == 1.0 and dx.sum() == 1.0


def test_group_norm_statistics(rng):
    x = rng.standard_normal((2, 3, 4, 64)) * 5 + 3
    y, _ = ops.group_norm_forward(x, np.ones(64), np.zeros(64))
    g = y.reshape(2, 12, 32, 2)
    np.testing.assert_allclose(g.mean(axis=(1, 3)), 0, atol=1e-12)
    var = x.reshape(2, 12, 32, 2).var(axis=(1, 3))
    np.testing.assert_allclose(g.var(axis=(1, 3)), var / (var + 1e-6), rtol=1e-12)
    with pytest.raises(ValueError, match="groups"):
        ops.group_norm_forward(np.zeros((1, 2, 2, 48)), np.ones(48), np.zeros(48))


def test_float16_group_norm_of_values_whose_squares_overflow(rng):
    """Groups of mean 300 and spread 300: float16 sums of squares overflow; the statistics are float32."""
    x = (300.0 + rng.standard_normal((2, 4, 4, 64)) * 300).astype(np.float16)
    scale, bias = np.ones(64, np.float16), np.zeros(64, np.float16)
    dy = rng.standard_normal(x.shape).astype(np.float16)
    y, cache = ops.group_norm_forward(x, scale, bias)
    dx, dscale, dbias = ops.group_norm_backward(dy, cache)
    y64, c64 = ops.group_norm_forward(x.astype(np.float64), scale.astype(np.float64), bias.astype(np.float64))
    ref = (y64, *ops.group_norm_backward(dy.astype(np.float64), c64))
    for name, a, b in zip(("y", "dx", "dscale", "dbias"), (y, dx, dscale, dbias), ref):
        assert a.dtype == np.float16 and np.isfinite(a).all(), name
        assert_same(a, b, name, rel=1e-2)


def test_weight_standardisation_statistics(rng):
    w = rng.standard_normal((3, 3, 4, 5)) * 0.1 + 0.2
    w_hat, _ = ops.weight_standardize_forward(w)
    np.testing.assert_allclose(w_hat.mean(axis=(0, 1, 2)), 0, atol=1e-14)
    std = w.std(axis=(0, 1, 2))
    np.testing.assert_allclose(w_hat.std(axis=(0, 1, 2)), std / (std + 1e-5), rtol=1e-12)


def test_relu_gradient_at_zero_is_zero():
    x = np.array([-1.0, 0.0, 2.0])
    y, cache = ops.relu_forward(x)
    np.testing.assert_array_equal(y, [0.0, 0.0, 2.0])
    np.testing.assert_array_equal(ops.relu_backward(np.ones(3), cache), [0.0, 0.0, 1.0])
    y, cache = ops.relu_forward_plain(x)
    np.testing.assert_array_equal(ops.relu_backward_plain(np.ones(3), cache), [0.0, 0.0, 1.0])
