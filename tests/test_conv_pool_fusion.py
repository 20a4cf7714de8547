"""predict runs a conv2d and the max/avg pool that alone reads it as one pass over the conv's blocks:
Keras's output across block boundaries and pool geometries, and no fusion where the conv's full output
is needed elsewhere."""
import numpy as np
import pytest
from helpers import assert_parity, keras_predict, randomize_weights, save_and_convert

from kconvert.runtime.ops import OPS, conv


def _pool_layer(layers, kind, size, strides, padding):
    layer = layers.MaxPooling2D if kind == "max" else layers.AveragePooling2D
    return layer(size, strides=strides, padding=padding)


@pytest.mark.parametrize("kind,size,strides,padding", [
    ("max", 2, 2, "valid"), ("max", 3, 2, "same"), ("avg", 3, 2, "same"), ("avg", 2, 1, "valid")])
def test_fused_conv_pool_matches_keras_across_blocks(kind, size, strides, padding, tmp_path, monkeypatch):
    import keras
    layers = keras.layers
    model = keras.Sequential([keras.Input((15, 13, 3)),
                              layers.Conv2D(16, 3, padding="same", activation="relu"),
                              _pool_layer(layers, kind, size, strides, padding),
                              layers.Conv2D(8, 3, activation="tanh"),
                              _pool_layer(layers, kind, size, strides, padding),
                              layers.Flatten(), layers.Dense(5, activation="softmax")])
    randomize_weights(model, seed=11)
    x = np.random.default_rng(12).normal(0, 1, (45, 15, 13, 3)).astype(np.float32)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    convs = [n["name"] for n in runtime.doc["nodes"] if n["op"] == "conv2d"]
    assert sorted(runtime._pooled_by) == sorted(convs)  # both pairs run fused
    # Small blocks, so the 45 rows cross several block boundaries, the last block a partial one.
    monkeypatch.setattr(conv, "_BLOCK_BYTES", 15 * 13 * 27 * 4 * 4)  # 4 samples per block in the first conv
    blocks = []
    real_blocks = conv._plane_blocks  # the first conv's 3 channels: columns from channel planes

    def counted(x, attrs, out):
        for start, stop, columns in real_blocks(x, attrs, out):
            blocks.append(stop - start)
            yield start, stop, columns
    monkeypatch.setattr(conv, "_plane_blocks", counted)
    assert_parity(runtime.predict(x, batch_size=64, threads=1), keras_predict(model, x))
    assert blocks[:12] == [4] * 11 + [1]


@pytest.mark.parametrize("activation", ["relu", "linear", "tanh"])
def test_fused_and_separate_ops_give_identical_values(activation):
    # Each block's conv output is pooled exactly as the whole would be. Before a max-pool, bias and relu
    # (or no activation) run after the max: exact, since both are monotone and act on the winning element.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(37, 10, 9, 4)).astype(np.float32)
    x[5, 2, 3, 1] = np.nan  # NaN propagates the same way through either order
    attrs = {"kernel_size": [3, 3], "strides": [1, 1], "dilation_rate": [1, 1], "padding": "same",
             "activation": activation, "use_bias": True}
    weights = {"kernel": rng.normal(size=(3, 3, 4, 6)).astype(np.float32),
               "bias": rng.normal(size=6).astype(np.float32)}
    for op, pool_attrs in [("max_pool2d", {"pool_size": [2, 2], "strides": [2, 2], "padding": "valid"}),
                           ("max_pool2d", {"pool_size": [3, 3], "strides": [2, 2], "padding": "same"}),
                           ("avg_pool2d", {"pool_size": [3, 3], "strides": [2, 2], "padding": "same"})]:
        separate = OPS[op](OPS["conv2d"](x, attrs, weights), pool_attrs, {})
        fused = conv.conv2d_pooled(x, attrs, weights, OPS[op], pool_attrs)
        assert fused.dtype == separate.dtype
        np.testing.assert_array_equal(fused, separate)  # NaN in the same places, every other value bit-equal
        assert np.isnan(fused).any()


def test_conv_read_elsewhere_is_not_fused(tmp_path):
    import keras
    layers = keras.layers
    image = keras.Input((10, 10, 3))
    features = layers.Conv2D(6, 3, padding="same", activation="relu")(image)  # a graph output and pooled
    pooled = layers.MaxPooling2D()(features)
    hidden = layers.Conv2D(4, 3, activation="relu")(pooled)  # read by a pool and by a Flatten
    head = layers.Dense(3, activation="softmax")(layers.Flatten()(layers.AveragePooling2D(2)(hidden)))
    side = layers.Dense(2)(layers.Flatten()(hidden))
    model = keras.Model(image, [features, head, side])
    randomize_weights(model, seed=21)
    x = np.random.default_rng(22).normal(0, 1, (20, 10, 10, 3)).astype(np.float32)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    assert runtime._pooled_by == {}
    expected = keras_predict(model, x)
    actual = runtime.predict(x)
    for name, want in zip([o["name"] for o in runtime.outputs], expected):
        assert_parity(actual[name], np.asarray(want))


def test_fused_predict_on_no_rows(tmp_path):
    import keras
    layers = keras.layers
    model = keras.Sequential([keras.Input((8, 8, 2)), layers.Conv2D(3, 3, activation="relu"),
                              layers.MaxPooling2D(), layers.Flatten(), layers.Dense(4)])
    randomize_weights(model, seed=31)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    assert len(runtime._pooled_by) == 1
    empty = np.zeros((0, 8, 8, 2), np.float32)
    assert_parity(runtime.predict(empty), keras_predict(model, empty))
