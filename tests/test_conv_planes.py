"""conv2d on few input channels takes its im2col columns from channel planes (runtime/ops/conv.py,
_plane_blocks): the float64 conv to float32 rounding across kernel shapes, strides, dilations, paddings and
partial blocks, Keras's outputs, and the path taken only up to PLANES_MAX_DEPTH channels."""
import numpy as np
import pytest
from helpers import assert_parity, keras_predict, randomize_weights, record_block_calls, save_and_convert

from kconvert.runtime.ops import conv


@pytest.fixture
def plane_calls(monkeypatch):
    """A list that gets one entry (input shape) per _plane_blocks call."""
    return record_block_calls(monkeypatch, conv, "_plane_blocks")


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("kernel,strides,dilation", [
    ((3, 3), (1, 1), (1, 1)), ((5, 3), (2, 1), (1, 1)), ((1, 1), (2, 2), (1, 1)), ((3, 2), (1, 1), (2, 2))])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_plane_columns_match_the_float64_conv(channels, kernel, strides, dilation, padding, monkeypatch,
                                              plane_calls):
    import tensorflow as tf
    rng = np.random.default_rng(channels + sum(kernel) + sum(strides) + sum(dilation))
    x = rng.normal(size=(9, 13, 11, channels)).astype(np.float32)
    weights = {"kernel": rng.normal(size=kernel + (channels, 6)).astype(np.float32),
               "bias": rng.normal(size=6).astype(np.float32)}
    attrs = {"kernel_size": list(kernel), "strides": list(strides), "dilation_rate": list(dilation),
             "padding": padding, "activation": "linear", "use_bias": True}
    monkeypatch.setattr(conv, "_BLOCK_BYTES", 13 * 11 * 36 * 4 * 2)  # a few samples per block, the last partial
    ours = conv.conv2d(x, attrs, weights)
    assert plane_calls == [x.shape]
    exact = tf.nn.conv2d(x.astype(np.float64), weights["kernel"].astype(np.float64), strides, padding.upper(),
                         dilations=dilation).numpy() + weights["bias"]
    assert ours.shape == exact.shape and ours.dtype == np.float32
    assert np.abs(ours - exact).max() <= 2e-6 * np.abs(exact).max()


@pytest.mark.parametrize("channels,planes", [(4, True), (5, False), (32, False)])
def test_planes_only_on_few_channels(channels, planes, plane_calls):
    rng = np.random.default_rng(channels)
    x = rng.normal(size=(2, 8, 8, channels)).astype(np.float32)
    attrs = {"kernel_size": [3, 3], "strides": [1, 1], "dilation_rate": [1, 1], "padding": "same",
             "activation": "relu", "use_bias": False}
    conv.conv2d(x, attrs, {"kernel": rng.normal(size=(3, 3, channels, 4)).astype(np.float32)})
    assert plane_calls == ([x.shape] if planes else [])


def test_model_on_gray_and_rgb_planes_matches_keras(tmp_path, plane_calls):
    import keras
    layers = keras.layers
    inputs = keras.Input((20, 18, 1))
    gray = layers.Conv2D(3, 3, strides=2, padding="same", activation="relu")(inputs)        # 1 channel
    rgb = layers.Conv2D(8, (3, 2), dilation_rate=2, activation="tanh")(gray)               # 3 channels
    outputs = layers.Dense(4, activation="softmax")(layers.Flatten()(rgb))
    model = keras.Model(inputs, outputs)
    randomize_weights(model, seed=21)
    x = np.random.default_rng(22).normal(0, 1, (300, 20, 18, 1)).astype(np.float32)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    ours = runtime.predict(x, batch_size=150, threads=1)
    assert [shape[1:] for shape in plane_calls] == [(20, 18, 1), (10, 9, 3)] * 2
    assert_parity(ours, keras_predict(model, x))
