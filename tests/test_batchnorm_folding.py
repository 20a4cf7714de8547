"""predict folds an inference batch_norm into the conv2d / depthwise_conv2d / conv1d / dense before it
(runtime/folding.py), with the activation node after it, and a conv's pool fuses after that: Keras's output,
the unfolded nodes' output up to rounding, and no folding where a node's own output is needed."""
import numpy as np
import pytest
from helpers import assert_parity, keras_predict, randomize_weights, save_and_convert

from kconvert.runtime.ops import OPS


def _unfolded(runtime, x):
    """The graph run node by node with the inference ops (no folding, no fusion)."""
    values = {runtime.inputs[0]["name"]: x}
    for node in runtime.doc["nodes"]:
        values[node["name"]] = OPS[node["op"]](values[node["inputs"][0]], node["attrs"], runtime.weights[node["name"]])
    return values[runtime.outputs[0]["name"]]


def _cnn(keras):
    layers = keras.layers
    return keras.Sequential([
        keras.Input((10, 9, 3)),
        layers.Conv2D(8, 3, padding="same"), layers.BatchNormalization(), layers.ReLU(), layers.MaxPooling2D(),
        layers.Conv2D(6, 3, use_bias=False), layers.BatchNormalization(center=False, epsilon=0.1),
        layers.Activation("tanh"), layers.Flatten(),
        layers.Dense(7), layers.BatchNormalization(scale=False), layers.Dense(4),
        layers.BatchNormalization(momentum=0.5)])  # the output itself: folded, nothing after it to absorb


def test_folded_predict_matches_keras_and_the_unfolded_nodes(tmp_path):
    import keras
    model = _cnn(keras)
    randomize_weights(model, seed=21)
    x = np.random.default_rng(22).normal(0, 1, (37, 10, 9, 3)).astype(np.float32)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    plan = [(node["op"], node.get("folds") is not None) for node in runtime._plan]
    assert plan == [("conv2d", True), ("max_pool2d", False), ("conv2d", True), ("flatten", False),
                    ("dense", True), ("dense", True)]
    first_conv = runtime._plan[0]
    assert first_conv["attrs"]["activation"] == "relu" and first_conv["name"] in runtime._pooled_by
    assert runtime._plan[2]["attrs"]["activation"] == "tanh"
    folded = runtime.predict(x)
    assert_parity(folded, keras_predict(model, x))
    np.testing.assert_allclose(folded, _unfolded(runtime, x), rtol=1e-5, atol=1e-6)
    # Training runs the nodes themselves, batch_norm included
    assert set(runtime.weights) == {node["name"] for node in runtime.doc["nodes"]}


@pytest.mark.parametrize("case", ["conv_relu_first", "axis_not_last", "masked"])
def test_no_folding_where_the_nodes_differ(case, tmp_path):
    import keras
    layers = keras.layers
    if case == "conv_relu_first":  # the conv's own activation comes between: not a linear layer
        model = keras.Sequential([keras.Input((6, 6, 2)), layers.Conv2D(3, 3, activation="relu"),
                                  layers.BatchNormalization()])
        x = np.random.default_rng(23).normal(size=(5, 6, 6, 2)).astype(np.float32)
    elif case == "axis_not_last":  # statistics per row of the image, not per output channel
        model = keras.Sequential([keras.Input((6, 6, 2)), layers.Conv2D(3, 3), layers.BatchNormalization(axis=1)])
        x = np.random.default_rng(23).normal(size=(5, 6, 6, 2)).astype(np.float32)
    else:  # a batch_norm with a mask is left as it is
        model = keras.Sequential([keras.Input((5,), dtype="int32"), layers.Embedding(9, 4, mask_zero=True),
                                  layers.Dense(4), layers.BatchNormalization(), layers.LSTM(2)])
        x = np.array([[1, 2, 0, 0, 0], [3, 4, 5, 6, 7]], np.int32)
    randomize_weights(model, seed=24)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    assert not any("folds" in node for node in runtime._plan)
    assert_parity(runtime.predict(x), keras_predict(model, x))


def test_conv1d_folds_too(tmp_path):
    import keras
    layers = keras.layers
    model = keras.Sequential([keras.Input((9, 3)), layers.Conv1D(4, 3, padding="causal"), layers.BatchNormalization(),
                              layers.Activation("relu"), layers.GlobalMaxPooling1D()])
    randomize_weights(model, seed=25)
    x = np.random.default_rng(26).normal(size=(6, 9, 3)).astype(np.float32)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    assert [(n["op"], "folds" in n) for n in runtime._plan] == [("conv1d", True), ("global_max_pool1d", False)]
    assert_parity(runtime.predict(x), keras_predict(model, x))
    np.testing.assert_allclose(runtime.predict(x), _unfolded(runtime, x), rtol=1e-5, atol=1e-6)


def test_depthwise_conv2d_folds_too(tmp_path):
    # The batch_norm's output channel c * m + j scales the depthwise kernel's [:, :, c, j]
    import keras
    layers = keras.layers
    model = keras.Sequential([keras.Input((8, 7, 3)), layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2),
                              layers.BatchNormalization(), layers.ReLU(), layers.DepthwiseConv2D(2, use_bias=False),
                              layers.BatchNormalization(center=False), layers.GlobalAveragePooling2D()])
    randomize_weights(model, seed=27)
    x = np.random.default_rng(28).normal(size=(6, 8, 7, 3)).astype(np.float32)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    assert [(n["op"], "folds" in n) for n in runtime._plan] == [
        ("depthwise_conv2d", True), ("depthwise_conv2d", True), ("global_avg_pool2d", False)]
    assert runtime._plan[0]["attrs"]["activation"] == "relu"
    assert_parity(runtime.predict(x), keras_predict(model, x))
    np.testing.assert_allclose(runtime.predict(x), _unfolded(runtime, x), rtol=1e-5, atol=1e-6)


def test_separable_conv2d_folds_into_its_pointwise_kernel(tmp_path):
    import keras
    layers = keras.layers
    model = keras.Sequential([keras.Input((8, 7, 3)), layers.SeparableConv2D(5, 3, padding="same", depth_multiplier=2),
                              layers.BatchNormalization(), layers.Activation("relu"), layers.GlobalMaxPooling2D()])
    randomize_weights(model, seed=29)
    x = np.random.default_rng(30).normal(size=(6, 8, 7, 3)).astype(np.float32)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    plan = [(n["op"], "folds" in n) for n in runtime._plan]
    assert plan == [("separable_conv2d", True), ("global_max_pool2d", False)]
    assert_parity(runtime.predict(x), keras_predict(model, x))
    np.testing.assert_allclose(runtime.predict(x), _unfolded(runtime, x), rtol=1e-5, atol=1e-6)
