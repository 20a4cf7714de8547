"""Products cut into OpenBLAS's small GEMMs (runtime/ops/gemm.py): the parts write the whole output in place and
equal the float64 product to float32 rounding; conv2d through them (im2col and Winograd, predict and training)
matches Keras; Winograd's output transform is cut into column parts likewise; the cut is made only where the
OpenBLAS core and thread count call for it."""
import numpy as np
import pytest
from helpers import assert_parity, keras_predict, randomize_weights, save_and_convert

from kconvert.runtime import parallel
from kconvert.runtime.ops import conv, gemm


def _close_to_float64(out, a, b):
    exact = np.matmul(a.astype(np.float64), b.astype(np.float64))
    scale = np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)  # bounds each sum's rounding
    assert out.dtype == np.float32
    assert np.all(np.abs(out - exact) <= 4e-7 * a.shape[-1] * scale + 1e-30)


# M divisible by the parts, with a remainder, smaller than one part; 2-D and stacked (16, K, N) right operands
@pytest.mark.parametrize("m,rows", [(96, 12), (101, 12), (97, 30), (5, 12), (64, 4)])
@pytest.mark.parametrize("stacked", [False, True])
def test_parts_fill_the_whole_output_in_place(m, rows, stacked):
    rng = np.random.default_rng(m + rows)
    lead = (3,) if stacked else ()
    a = rng.normal(size=lead + (m, 7)).astype(np.float32)
    b = rng.normal(size=lead + (7, 5)).astype(np.float32)
    out = np.full(lead + (m, 5), np.nan, np.float32)  # any element left unwritten stays NaN
    calls = gemm.matmul_calls(a, b, out, rows)
    assert all(part[0].shape[-2] <= rows for part in calls)
    even = -(-m // -(-m // rows))  # rows of each even part
    assert len(calls) == (1 if m <= rows or m % even == 0 else 2)
    assert gemm.matmul(a, b, out, rows) is out
    assert not np.isnan(out).any()
    _close_to_float64(out, a, b)


def test_views_of_larger_buffers_are_written_where_they_lie():
    """Winograd passes slices of its scratch buffers: the parts must write through those views."""
    rng = np.random.default_rng(0)
    buffer_a = rng.normal(size=(16, 300, 8)).astype(np.float32)
    b = rng.normal(size=(16, 8, 6)).astype(np.float32)
    buffer_out = np.zeros((16, 300, 6), np.float32)
    gemm.matmul(buffer_a[:, :250], b, buffer_out[:, :250], 40)
    _close_to_float64(buffer_out[:, :250], buffer_a[:, :250], b)
    assert not buffer_out[:, 250:].any()  # nothing beyond the view


# N divisible by the parts, with a remainder, smaller than one part; operands that are row views of larger buffers
# (Winograd's products m and outputs y for a block smaller than the first)
@pytest.mark.parametrize("n,cols", [(96, 12), (101, 12), (97, 30), (5, 12), (64, 4)])
def test_column_parts_fill_the_whole_output_in_place(n, cols):
    rng = np.random.default_rng(n + cols)
    a = rng.normal(size=(4, 16)).astype(np.float32)
    buffer_b = rng.normal(size=(16, n + 9)).astype(np.float32)
    buffer_out = np.full((5, n + 9), np.nan, np.float32)  # any element left unwritten stays NaN
    b, out = buffer_b[:, :n], buffer_out[:4, :n]
    calls = gemm.column_calls(a, b, out, cols)
    assert all(part[1].shape[-1] <= cols for part in calls)
    even = -(-n // -(-n // cols))  # columns of each even part
    assert len(calls) == (1 if n <= cols or n % even == 0 else 2)
    gemm.run(calls)
    assert not np.isnan(out).any()
    _close_to_float64(out, a, b)
    assert np.isnan(buffer_out[:, n:]).all() and np.isnan(buffer_out[4]).all()  # nothing beyond the view


class _FakeBLAS:
    def __init__(self, core, threads):
        self.core, self.count = core, threads

    def corename(self):
        return self.core

    def threads(self):
        return self.count


@pytest.fixture
def blas_handle(monkeypatch):
    """set(handle): parallel._openblas() returns handle, with gemm's cached core check cleared around it."""
    gemm._small_path_core.cache_clear()
    yield lambda handle: monkeypatch.setattr(parallel, "_openblas", lambda: handle)
    gemm._small_path_core.cache_clear()


@pytest.mark.parametrize("core,threads,expected", [
    ("SkylakeX", 1, 10 ** 6 // (27 * 32)), ("SkylakeX", 2, None), ("Haswell", 1, None), ("Zen", 1, None)])
def test_parts_only_where_the_small_path_is(core, threads, expected, blas_handle):
    blas_handle(_FakeBLAS(core, threads))
    assert gemm.part_rows(27, 32) == expected
    assert gemm.part_rows(512, 512) is None  # parts under MIN_ROWS rows


def test_no_openblas_leaves_products_whole(blas_handle):
    blas_handle(None)
    assert gemm.part_rows(27, 32) is None


def test_corename_of_the_loaded_openblas():
    blas = parallel._openblas()
    if blas is None:  # NumPy's wheels load OpenBLAS with pthreads; anything else has no core name to read
        pytest.fail("NumPy's OpenBLAS (pthreads) was not found in this process")
    assert blas.corename() and blas.corename().isprintable()


@pytest.fixture
def small_parts(monkeypatch):
    """Force parts of 37 rows (and remainders) whatever this machine's OpenBLAS is."""
    monkeypatch.setattr(gemm, "part_rows", lambda inner, cols: 37)


@pytest.mark.parametrize("shape,filters,padding,strides", [
    ((6, 32, 32, 32), 32, "same", 1),    # Winograd, pooled below too
    ((5, 16, 16, 32), 64, "same", 1),    # Winograd
    ((4, 11, 9, 3), 32, "valid", 1),     # im2col, K = 27
    ((3, 14, 13, 16), 24, "same", 2)])   # im2col, strided
def test_conv_through_parts_matches_the_float64_conv(shape, filters, padding, strides, small_parts):
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(size=shape).astype(np.float32)
    kernel = rng.normal(size=(3, 3, shape[3], filters)).astype(np.float32)
    bias = rng.normal(size=filters).astype(np.float32)
    attrs = {"kernel_size": [3, 3], "strides": [strides, strides], "dilation_rate": [1, 1], "activation": "linear",
             "use_bias": True, "padding": padding}
    ours = conv.conv2d(x, attrs, {"kernel": kernel, "bias": bias})
    import tensorflow as tf
    exact = tf.nn.conv2d(x.astype(np.float64), kernel.astype(np.float64), strides, padding.upper()).numpy() + bias
    assert ours.shape == exact.shape
    assert np.abs(ours - exact).max() <= 2e-6 * np.abs(exact).max()


def _cnn(keras):
    return keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax")])


def test_cnn_through_parts_matches_keras(tmp_path, small_parts):
    import keras
    model = _cnn(keras)
    randomize_weights(model, seed=3)
    x = np.random.default_rng(4).normal(size=(40, 32, 32, 3)).astype(np.float32)
    graph, _ = save_and_convert(model, tmp_path, ".keras")
    for threads in (1, 2):
        assert_parity(graph.predict(x, batch_size=16, threads=threads), keras_predict(model, x))


@pytest.mark.parametrize("strides", [1, 2])  # stride 1: Winograd forward and input gradient; 2: im2col
def test_training_gradients_through_parts_match_tensorflow(strides, small_parts):
    import tensorflow as tf
    from kconvert.runtime.ops import TRAIN_OPS
    rng = np.random.default_rng(strides)
    x = rng.normal(size=(10, 17, 16, 32)).astype(np.float32)
    weights = {"kernel": rng.normal(0, 0.3, (3, 3, 32, 32)).astype(np.float32),
               "bias": rng.normal(size=32).astype(np.float32)}
    attrs = {"kernel_size": [3, 3], "strides": [strides, strides], "dilation_rate": [1, 1], "activation": "relu",
             "use_bias": True, "padding": "same"}
    forward, backward = TRAIN_OPS["conv2d"]
    y, cache = forward(x, attrs, weights, None, None)
    dy = rng.normal(size=y.shape).astype(np.float32)
    dx, grads = backward(dy, cache, attrs, weights)
    xt, kt, bt = (tf.Variable(a) for a in (x, weights["kernel"], weights["bias"]))
    with tf.GradientTape() as tape:
        yt = tf.nn.relu(tf.nn.conv2d(xt, kt, strides, "SAME") + bt)
    expected = tape.gradient(yt, [xt, kt, bt], output_gradients=tf.constant(dy))
    np.testing.assert_allclose(y, yt.numpy(), rtol=1e-5, atol=1e-5)
    for ours, theirs in zip([dx, grads["kernel"], grads["bias"]], expected):
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-4, atol=1e-4)
