"""Winograd F(2x2, 3x3) conv2d (runtime/ops/winograd.py): exact float64 references, the im2col path's results,
Keras's and TensorFlow's outputs and gradients, with the Winograd path checked to have run in each."""
import warnings

import numpy as np
import pytest
from helpers import assert_parity, keras_predict, randomize_weights, record_block_calls, save_and_convert

from kconvert.runtime.ops import conv, winograd

ATTRS = {"kernel_size": [3, 3], "strides": [1, 1], "dilation_rate": [1, 1], "activation": "linear",
         "use_bias": False}


@pytest.fixture
def winograd_calls(monkeypatch):
    """A list that gets one entry (input shape) per conv_blocks call."""
    return record_block_calls(monkeypatch, winograd, "conv_blocks")


def _direct(x, kernel, padding):
    """The correlation as nine shifted products summed in float64: the reference."""
    x, kernel = x.astype(np.float64), kernel.astype(np.float64)
    if padding == "same":
        x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ho, wo = x.shape[1] - 2, x.shape[2] - 2
    return sum(x[:, p:p + ho, q:q + wo] @ kernel[p, q] for p in range(3) for q in range(3))


def _im2col(monkeypatch, fn):
    """fn() with the Winograd path switched off."""
    with monkeypatch.context() as m:
        m.setattr(winograd, "MIN_DEPTH", 10 ** 9)
        return fn()


# Even and odd output sizes (odd ones crop the last tile), both paddings, non-square maps and kernels,
# and blocks of samples with a partial last block.
@pytest.mark.parametrize("shape,filters,padding", [
    ((40, 12, 10, 32), 32, "same"), ((35, 9, 13, 24), 48, "same"), ((30, 11, 14, 48), 24, "valid"),
    ((9, 32, 32, 32), 32, "same"), ((64, 8, 8, 64), 32, "valid")])
def test_conv_is_closer_to_float64_than_im2col(shape, filters, padding, monkeypatch, winograd_calls):
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(size=shape).astype(np.float32)
    kernel = rng.normal(size=(3, 3, shape[3], filters)).astype(np.float32)
    tiles = (shape[1] // 2 + 1) * (shape[2] // 2 + 1)
    monkeypatch.setattr(winograd, "_BLOCK_BYTES", 16 * tiles * shape[3] * 4 * 3)  # 2-3 samples per block
    attrs = dict(ATTRS, padding=padding)
    ours = conv.conv2d(x, attrs, {"kernel": kernel})
    assert winograd_calls == [shape]
    exact = _direct(x, kernel, padding)
    gemm = _im2col(monkeypatch, lambda: conv.conv2d(x, attrs, {"kernel": kernel}))
    assert ours.shape == exact.shape == gemm.shape and ours.dtype == np.float32
    # float32 rounding only, and no further from the exact sums than im2col's
    error = np.abs(ours - exact).max()
    assert error <= 1e-6 * np.abs(exact).max() and error <= np.abs(gemm - exact).max()


def test_float64_input_is_exact_to_float64_rounding(winograd_calls):
    rng = np.random.default_rng(5)
    x, kernel = rng.normal(size=(30, 10, 9, 32)), rng.normal(size=(3, 3, 32, 32))
    ours = conv.conv2d(x, dict(ATTRS, padding="same"), {"kernel": kernel})
    assert winograd_calls and ours.dtype == np.float64
    np.testing.assert_allclose(ours, _direct(x, kernel, "same"), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "linear", "tanh"])
@pytest.mark.parametrize("size", [(16, 12), (15, 13)])  # even: the pool takes each tile's max; odd: pooled per block
@pytest.mark.parametrize("use_bias", [True, False])
def test_pooled_conv_equals_the_two_ops(activation, size, use_bias, winograd_calls):
    # Before a max-pool, bias and relu run after the max (exact: monotone, on the winning element); with Winograd
    # tiles as max(max, -bias) + bias, one reduction and one addition (the same values).
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30,) + size + (32,)).astype(np.float32)
    x[5, 2, 3, 1] = np.nan  # NaN propagates the same way through either order
    attrs = dict(ATTRS, padding="same", activation=activation, use_bias=use_bias)
    weights = {"kernel": rng.normal(size=(3, 3, 32, 32)).astype(np.float32),
               "bias": rng.normal(size=32).astype(np.float32)}
    pool_attrs = {"pool_size": [2, 2], "strides": [2, 2], "padding": "valid"}
    separate = conv.max_pool2d(conv.conv2d(x, attrs, weights), pool_attrs, {})
    fused = conv.conv2d_pooled(x, attrs, weights, conv.max_pool2d, pool_attrs)
    assert len(winograd_calls) == 2
    np.testing.assert_array_equal(fused, separate)  # NaN in the same places, every other value bit-equal
    assert np.isnan(fused).any()


def test_blocks_holding_infinities_or_nan_are_computed_directly(monkeypatch, winograd_calls):
    # Winograd's transforms subtract inputs (inf - inf = NaN where Keras gives +-inf), so a block of samples whose
    # input is not all finite takes the im2col conv; the other blocks do not.
    rng = np.random.default_rng(8)
    x = rng.normal(0, 0.25, size=(40, 8, 8, 32)).astype(np.float32)
    x[3, 0, 0, 1], x[22, 4, 7, 2], x[23, 3, 3, 0], x[39, 7, 1, 5] = np.inf, -np.inf, np.nan, np.inf
    attrs = dict(ATTRS, padding="same", activation="relu", use_bias=True)
    weights = {"kernel": rng.normal(size=(3, 3, 32, 32)).astype(np.float32),
               "bias": rng.normal(size=32).astype(np.float32)}
    monkeypatch.setattr(winograd, "_BLOCK_BYTES", 16 * 16 * 32 * 4 * 5)  # 5 samples per block
    direct = []
    real = conv._gemm_conv
    monkeypatch.setattr(conv, "_gemm_conv", lambda x, *args: direct.append(len(x)) or real(x, *args))
    pool_attrs = {"pool_size": [2, 2], "strides": [2, 2], "padding": "valid"}
    ours = conv.conv2d(x, attrs, weights)
    pooled = conv.conv2d_pooled(x, attrs, weights, conv.max_pool2d, pool_attrs)
    assert len(winograd_calls) == 2 and direct == [5, 5, 5] * 2  # blocks 0, 4 and 7 of 8
    gemm = _im2col(monkeypatch, lambda: conv.conv2d(x, attrs, weights))
    # inf and NaN where im2col puts them (assert_allclose compares those exactly), the rest float32-close
    assert np.isinf(ours).any() and np.isnan(ours).any() and np.isnan(pooled).any()
    np.testing.assert_allclose(ours, gemm, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pooled, conv.max_pool2d(gemm, pool_attrs, {}), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("activation", ["relu", "linear"])
@pytest.mark.parametrize("positive_kernel", [True, False])
def test_pooled_blocks_find_non_finite_inputs_in_their_output(value, activation, positive_kernel, monkeypatch,
                                                               winograd_calls):
    # A pooled block is checked after its calls: an input infinity must still leave the direct conv's values
    # (-inf that the max drops included, with a kernel of one sign), and no warning from the transforms' inf - inf.
    rng = np.random.default_rng(14)
    x = rng.normal(0, 0.25, size=(32, 8, 8, 32)).astype(np.float32)  # 512 tiles
    x[1, 0, 0, 1], x[6, 3, 4, 2], x[31, 7, 7, 0] = value, value, value
    kernel = rng.normal(size=(3, 3, 32, 32)).astype(np.float32)
    kernel = np.abs(kernel) if positive_kernel else kernel
    attrs = dict(ATTRS, padding="same", activation=activation, use_bias=True)
    weights = {"kernel": kernel, "bias": rng.normal(size=32).astype(np.float32)}
    monkeypatch.setattr(winograd, "_BLOCK_BYTES", 16 * 16 * 32 * 4 * 2)  # 2 samples per block
    pool_attrs = {"pool_size": [2, 2], "strides": [2, 2], "padding": "valid"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pooled = conv.conv2d_pooled(x, attrs, weights, conv.max_pool2d, pool_attrs)
    assert len(winograd_calls) == 1
    linear = _im2col(monkeypatch, lambda: conv.conv2d(x, dict(attrs, activation="linear"), weights))
    assert not np.isfinite(linear).all()  # the infinities reach the conv's output
    direct = conv.max_pool2d(_im2col(monkeypatch, lambda: conv.conv2d(x, attrs, weights)), pool_attrs, {})
    np.testing.assert_allclose(pooled, direct, rtol=1e-5, atol=1e-5)  # inf and NaN exactly where direct has them


def test_small_calls_stay_on_im2col(winograd_calls):
    rng = np.random.default_rng(9)
    weights = {"kernel": rng.normal(size=(3, 3, 32, 32)).astype(np.float32)}
    conv.conv2d(rng.normal(size=(1, 32, 32, 32)).astype(np.float32), dict(ATTRS, padding="same"), weights)  # 256 tiles
    conv.conv2d(rng.normal(size=(64, 32, 32, 16)).astype(np.float32), dict(ATTRS, padding="same"),
                {"kernel": weights["kernel"][:, :, :16, :16]})  # too few channels
    conv.conv2d(rng.normal(size=(64, 32, 32, 32)).astype(np.float32), dict(ATTRS, padding="same", strides=[2, 2]),
                weights)
    assert winograd_calls == []
    conv.conv2d(rng.normal(size=(2, 32, 32, 32)).astype(np.float32), dict(ATTRS, padding="same"), weights)
    assert winograd_calls == [(2, 32, 32, 32)]


def _cnn(dtype):
    import keras
    layers, kw = keras.layers, {"dtype": dtype}
    return keras.Sequential([keras.Input((18, 14, 3), dtype=dtype),
                             layers.Conv2D(32, 3, padding="same", activation="relu", **kw),
                             layers.Conv2D(32, 3, padding="same", activation="relu", **kw),  # + pool: tile maxima
                             layers.MaxPooling2D(**kw),
                             layers.Conv2D(32, 3, padding="valid", activation="tanh", **kw),  # 7x5: cropped tiles
                             layers.Conv2D(48, 3, padding="same", **kw),
                             layers.MaxPooling2D(2, strides=1, **kw),
                             layers.Flatten(**kw), layers.Dense(5, activation="softmax", **kw)])


@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_cnn_matches_keras_and_is_as_exact(ext, tmp_path, winograd_calls):
    model = _cnn("float32")
    # Weights of scale 0.08 keep the activations O(1) through 32-48 channels; at 0.5 Keras's own float32 call
    # is 5e-5 from the float64 model, beyond the parity tolerance, and so is either conv path.
    randomize_weights(model, seed=14, scale=0.08)
    x = np.random.default_rng(15).normal(0, 1, (300, 18, 14, 3)).astype(np.float32)
    runtime, _ = save_and_convert(model, tmp_path, ext)
    ours, theirs = runtime.predict(x, batch_size=150, threads=1), keras_predict(model, x)
    assert_parity(ours, theirs)
    assert [shape[1:] for shape in winograd_calls] == [(18, 14, 32), (9, 7, 32), (7, 5, 32)] * 2
    # Against the same model in float64 the runtime is on average no further off than Keras's own float32 call
    # (measured: mean 4.4e-8 against Keras's 8.0e-8, max 6.6e-7 against 1.0e-6; im2col's 6.8e-8 and 6.4e-7).
    exact = _cnn("float64")
    exact.set_weights([w.astype(np.float64) for w in model.get_weights()])
    exact = keras_predict(exact, x.astype(np.float64))
    assert np.abs(ours - exact).mean() <= np.abs(theirs - exact).mean()


def test_transformed_kernel_is_computed_once_per_predict_and_never_reused_after(tmp_path, monkeypatch,
                                                                               winograd_calls):
    # predict derives U = G g G^T once per call (runtime/ops/run_weights.py), not once per batch slice, and a
    # later call after set_weights must not see the old U.
    import keras
    model = keras.Sequential([keras.Input((16, 16, 32)), keras.layers.Conv2D(32, 3, padding="same")])
    randomize_weights(model, seed=21, scale=0.03)  # outputs O(0.5): float32 sums within 1e-6
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    transforms = []
    real = winograd.transformed_kernel

    def counted(kernel):
        transforms.append(kernel.shape)
        return real(kernel)
    monkeypatch.setattr(winograd, "transformed_kernel", counted)
    x = np.random.default_rng(22).normal(size=(48, 16, 16, 32)).astype(np.float32)
    assert_parity(runtime.predict(x, batch_size=16, threads=2), keras_predict(model, x))
    assert len(winograd_calls) == 6 and transforms == [(3, 3, 32, 32)]  # 3 batches x 2 slices, one U
    randomize_weights(model, seed=23, scale=0.03)
    kernel, bias = (np.asarray(w) for w in model.get_weights())
    runtime.set_weights({runtime.doc["nodes"][-1]["name"]: {"kernel": kernel, "bias": bias}})
    assert_parity(runtime.predict(x, batch_size=16, threads=2), keras_predict(model, x))
    assert len(transforms) == 2


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_training_gradients_match_tensorflow(activation, padding, winograd_calls):
    # conv2d_train's forward and, for stride 1, the input gradient (a 3x3 conv of the padded dz) run as
    # Winograd; the kernel gradient stays one im2col GEMM per block.
    import tensorflow as tf
    from kconvert.runtime.ops import TRAIN_OPS
    rng = np.random.default_rng(16)
    x = rng.normal(size=(10, 17, 16, 32)).astype(np.float32)
    weights = {"kernel": rng.normal(0, 0.3, (3, 3, 32, 32)).astype(np.float32),
               "bias": rng.normal(size=32).astype(np.float32)}
    attrs = dict(ATTRS, padding=padding, activation=activation, use_bias=True)
    forward, backward = TRAIN_OPS["conv2d"]
    y, cache = forward(x, attrs, weights, None, None)
    dy = rng.normal(size=y.shape).astype(np.float32)
    dx, grads = backward(dy, cache, attrs, weights)
    assert len(winograd_calls) == 2
    xt, kt, bt = (tf.Variable(a) for a in (x, weights["kernel"], weights["bias"]))
    with tf.GradientTape() as tape:
        z = tf.nn.conv2d(xt, kt, 1, padding.upper()) + bt
        yt = tf.nn.relu(z) if activation == "relu" else tf.tanh(z)
    expected = tape.gradient(yt, [xt, kt, bt], output_gradients=tf.constant(dy))
    np.testing.assert_allclose(y, yt.numpy(), rtol=1e-5, atol=1e-5)
    for ours, theirs in zip([dx, grads["kernel"], grads["bias"]], expected):
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-4, atol=1e-4)


# SGD only: Adam and RMSprop scale each gradient element by its own running size, so an element whose gradient
# is rounding-sized takes a learning-rate-sized step whose sign rounding picks. On this model RMSprop's weights
# were 3.9e-7 apart from Keras's after one step, 1.7e-6 after two, 1.5e-5 after three, with im2col as with
# Winograd; the optimizers themselves are checked against Keras in tests/test_training_parity.py.
@pytest.mark.parametrize("optimizer", ["sgd_momentum", "sgd_nesterov_clipnorm"])
def test_fit_matches_keras(optimizer, tmp_path, winograd_calls):
    from test_training_parity import OPTIMIZERS, _fit_both
    import keras
    layers = keras.layers
    model = keras.Sequential([keras.Input((24, 24, 3)), layers.Conv2D(32, 3, padding="same", activation="relu"),
                              layers.Conv2D(32, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
                              layers.Conv2D(8, 3, activation="tanh"), layers.GlobalAveragePooling2D(),
                              layers.Dense(3, activation="softmax")])
    rng = np.random.default_rng(17)
    x, y = rng.normal(0, 0.3, size=(12, 24, 24, 3)).astype(np.float32), rng.integers(0, 3, 12)
    cls, kwargs = OPTIMIZERS[optimizer]
    _fit_both(keras, model, x, y, cls, kwargs, tmp_path, batch_size=5)
    # batches of 5 and 4 rows: the second conv (5 x 144 tiles) and its input gradient run as Winograd
    assert (4, 24, 24, 32) in winograd_calls and (5, 26, 26, 32) in winograd_calls


def _transform_calls(monkeypatch, shape, filters, pooled):
    """The transforms' ufunc calls (ufunc, a, b, out) of conv_blocks' first block on an input of `shape`."""
    plans = []
    real = winograd._block_calls
    monkeypatch.setattr(winograd, "_block_calls", lambda *args: plans.append(real(*args)) or plans[-1])
    x = np.random.default_rng(12).normal(size=shape).astype(np.float32)
    u = winograd.transformed_kernel(np.ones((3, 3, shape[3], filters), np.float32))
    out = np.empty((shape[0], shape[1] // 2, shape[2] // 2, filters) if pooled else shape[:3] + (filters,), x.dtype)
    for _ in winograd.conv_blocks(x, ((1, 1), (1, 1)), shape[1:3], u, out, None, pooled=pooled):
        pass
    return plans[0][0]


def _copied_operands(call, buffer_size):
    """How many of a call's operands NumPy's buffered iterator (the ufunc's flags) copies at this buffer size."""
    _, a, b, out = call
    iterator = np.nditer([a, b, out], flags=["buffered", "external_loop", "grow_inner", "delay_bufalloc"],
                         op_flags=[["readonly"], ["readonly"], ["writeonly"]], buffersize=buffer_size)
    with iterator:
        iterator.reset()
        chunks = next(iterator)
    return sum(not np.shares_memory(chunk, operand) for chunk, operand in zip(chunks, (a, b, out)))


@pytest.mark.parametrize("shape,filters,pooled", [
    ((256, 32, 32, 32), 32, True), ((256, 16, 16, 32), 64, False), ((256, 16, 16, 64), 64, True),
    ((256, 8, 8, 64), 128, False), ((256, 8, 8, 128), 128, True)])
def test_transforms_run_in_place_at_the_ufunc_buffer_size(shape, filters, pooled, monkeypatch):
    # The benchmark CNN's Winograd layers: at UFUNC_BUFFER no transform operand goes through NumPy's buffers,
    # where the default size copies some of each layer's (what made them 10% slower).
    calls = _transform_calls(monkeypatch, shape, filters, pooled)
    assert sum(_copied_operands(call, winograd.UFUNC_BUFFER) for call in calls) == 0
    assert sum(_copied_operands(call, 8192) > 0 for call in calls) >= 3


def test_ufunc_buffer_size_is_restored(monkeypatch, winograd_calls):
    # conv_blocks sets NumPy's buffer size for its transforms only: the caller's (here 4096) holds between blocks,
    # after the call, and after a block that raised.
    monkeypatch.setattr(winograd, "_BLOCK_BYTES", 16 * 8 * 8 * 32 * 4 * 2)  # 2 samples per block
    rng = np.random.default_rng(13)
    x = rng.normal(size=(8, 16, 16, 32)).astype(np.float32)
    weights = {"kernel": rng.normal(size=(3, 3, 32, 32)).astype(np.float32)}
    u = winograd.transformed_kernel(weights["kernel"])
    seen = []
    with np.errstate():
        np.setbufsize(4096)
        blocks = winograd.conv_blocks(x, ((1, 1), (1, 1)), (16, 16), u, None, None)
        for _ in blocks:
            seen.append(np.getbufsize())
        conv.conv2d(x, dict(ATTRS, padding="same"), weights)
        seen.append(np.getbufsize())
        with pytest.raises(ValueError):
            for _ in winograd.conv_blocks(x, ((1, 1), (1, 1)), (16, 16), u, np.empty((8, 1)), None):
                pass
        seen.append(np.getbufsize())
    assert len(winograd_calls) == 3 and seen == [4096] * 6  # 4 blocks, the conv2d, the raise
