"""The chunked bias / relu epilogues (activations.relu, activations.BiasRelu) and Winograd's finiteness check:
speed-ups of NumPy expressions, so each must give those expressions' values bit for bit, on every layout."""
import numpy as np
import pytest

from kconvert.runtime.ops import activations, winograd

CHUNK = activations._CHUNK


def _data(shape, dtype, seed=0):
    """Normal data with the values relu treats specially: +-0.0, +-inf, NaN, subnormals."""
    x = np.random.default_rng(seed).normal(size=shape).astype(dtype)
    flat = x.reshape(-1)
    specials = np.array([-0.0, 0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-45, -1e-45], dtype)
    flat[:min(len(specials), flat.size)] = specials[:flat.size]
    if flat.size > CHUNK + 3:  # specials across a chunk boundary too
        flat[CHUNK - 2:CHUNK + 2] = specials[:4]
    return x


def _same_bits(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(a.view(np.uint8), b.view(np.uint8))


# shapes: smaller than a chunk, a chunk plus a ragged end, channels that divide the chunk and ones that do not,
# and more channels than a chunk holds
SHAPES = [(3,), (2, 5, 5, 3), (4, 32, 32, 32), (3, 17, 19, 48), (300, 10), (2, CHUNK + 7), (1, 2, 3, CHUNK // 3 + 5)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_is_numpy_maximum_bit_for_bit(shape, dtype):
    x = _data(shape, dtype)
    before = x.copy()
    _same_bits(activations.relu(x), np.maximum(before, 0))
    _same_bits(x, before)  # the input is left alone
    out = np.full_like(x, 7)
    assert activations.relu(x, out=out) is out
    _same_bits(out, np.maximum(before, 0))


def test_relu_of_views_and_other_dtypes():
    x = _data((6, 8, 8, 5), np.float32)
    view = x[:, ::2, 1:, :]  # not contiguous: NumPy's own loop
    _same_bits(activations.relu(view), np.maximum(view, 0))
    ints = np.arange(-5, 5)
    assert np.array_equal(activations.apply("relu", ints), np.maximum(ints, 0))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_bias,relu", [(True, True), (True, False), (False, True), (False, False)])
def test_bias_relu_is_add_then_maximum_bit_for_bit(shape, dtype, with_bias, relu):
    x = _data(shape, dtype, seed=1)
    bias = np.random.default_rng(2).normal(size=shape[-1]).astype(dtype) if with_bias else None
    expected = x.copy()
    if with_bias:
        expected += bias
    if relu:
        np.maximum(expected, 0, out=expected)
    assert activations.BiasRelu(bias, relu, dtype)(x) is x
    _same_bits(x, expected)


def test_bias_relu_falls_back_on_views_and_mixed_dtypes():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(4, 9, 9, 6)).astype(np.float32)
    view = base[:, 1:, ::2]
    bias = rng.normal(size=6).astype(np.float32)
    expected = view.copy()
    expected += bias
    np.maximum(expected, 0, out=expected)
    activations.BiasRelu(bias, True, np.float32)(view)
    _same_bits(np.ascontiguousarray(view), expected)
    # a float64 bias on float32 data: added in float64 and rounded, as `x += bias` does
    x = rng.normal(size=(3, 7)).astype(np.float32)
    bias64 = rng.normal(size=7) * (1 + 1e-12)
    expected = x.copy()
    expected += bias64
    activations.BiasRelu(bias64, False, np.float32)(x)
    _same_bits(x, expected)


@pytest.mark.filterwarnings("ignore:overflow encountered")
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan, 3e38])
def test_all_finite_finds_infinities_nans_and_overflowing_sums(value):
    block = np.random.default_rng(4).normal(size=(2, 6, 6, 5)).astype(np.float32)
    ones = np.ones(block.size + 10, np.float32)
    assert winograd.all_finite(block, ones)
    for index in [(0, 0, 0, 0), (1, 5, 5, 4), (1, 2, 3, 1)]:
        damaged = block.copy()
        damaged[index] = value
        if value == 3e38:
            damaged[(0, 1, 1, 1)] = value  # two of them overflow float32's sum
        assert not winograd.all_finite(damaged, ones)
