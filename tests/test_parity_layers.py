"""Layer-by-layer parity with Keras: every supported layer and option, randomised weights and biases,
for Keras 3 .keras, Keras 3 .h5 and tf-keras (Keras 2) .h5 files."""
import zlib

import numpy as np
import pytest

from helpers import FORMATS, assert_parity, keras_module, keras_predict, padded_ids, randomize_weights, save_and_convert
from kconvert.runtime import projection


def _image_model(K, *layers, shape=(9, 8, 3)):
    return K.Sequential([K.Input(shape)] + list(layers))


def _images(rng, shape=(9, 8, 3), batch=4):
    return rng.normal(0, 1, (batch,) + shape).astype(np.float32)


def _sequence_model(K, *layers, shape=(9, 3)):
    return K.Sequential([K.Input(shape)] + list(layers))


def _sequences(rng, shape=(9, 3), batch=4):
    return rng.normal(0, 1, (batch,) + shape).astype(np.float32)


def _merges(K):
    """Every merge layer in one functional model; the first conv's output fans out to four of them."""
    inp = K.Input((6, 5, 3))
    a = K.layers.Conv2D(4, 3, padding="same")(inp)
    b = K.layers.Conv2D(4, 1)(inp)
    total = K.layers.Add()([a, b, a])
    joined = K.layers.Concatenate()([K.layers.Maximum()([total, b, a]), K.layers.Subtract()([a, b]),
                                     K.layers.Average()([a, b]), K.layers.Multiply()([a, b, total]),
                                     K.layers.Minimum()([a, total])])
    return K.Model(inp, K.layers.Dense(3)(K.layers.GlobalAveragePooling2D()(joined)))


def _separable_block(K):
    """The block of Keras's "image classification from scratch" example: SeparableConv2D, BatchNormalization,
    ReLU twice, a max-pool, and a strided 1x1 Conv2D on the residual added to it."""
    inp = K.Input((12, 10, 3))
    x = K.layers.Activation("relu")(K.layers.BatchNormalization()(K.layers.Conv2D(8, 3, padding="same")(inp)))
    y = x
    for _ in range(2):
        y = K.layers.SeparableConv2D(12, 3, padding="same")(K.layers.Activation("relu")(y))
        y = K.layers.BatchNormalization()(y)
    y = K.layers.MaxPooling2D(3, strides=2, padding="same")(y)
    y = K.layers.Add()([y, K.layers.Conv2D(12, 1, strides=2, padding="same")(x)])
    return K.Model(inp, K.layers.Dense(3, activation="softmax")(K.layers.GlobalAveragePooling2D()(y)))


def _concatenate_steps(K):
    inp = K.Input((4, 3))
    branches = [K.layers.Dense(2)(inp), K.layers.Dense(2, activation="tanh")(inp)]
    return K.Model(inp, K.layers.Concatenate(axis=1)(branches))


def _leaky(K, flavour, slope):
    return K.layers.LeakyReLU(negative_slope=slope) if flavour == "keras3" else K.layers.LeakyReLU(alpha=slope)


# Each case: (K, flavour, rng) -> (model, x)
CASES = {
    "conv_valid": lambda K, f, r: (_image_model(K, K.layers.Conv2D(5, 3)), _images(r)),
    "conv_same_stride2_relu": lambda K, f, r: (
        _image_model(K, K.layers.Conv2D(4, (3, 2), strides=2, padding="same", activation="relu")), _images(r)),
    "conv_same_stride_2x1_odd": lambda K, f, r: (
        _image_model(K, K.layers.Conv2D(3, 4, strides=(2, 1), padding="same"), shape=(7, 5, 2)), _images(r, (7, 5, 2))),
    "conv_dilation_nobias": lambda K, f, r: (
        _image_model(K, K.layers.Conv2D(4, 3, dilation_rate=2, use_bias=False, padding="same", activation="tanh")),
        _images(r)),
    "conv_dilation_valid": lambda K, f, r: (
        _image_model(K, K.layers.Conv2D(2, 2, dilation_rate=(2, 3))), _images(r)),
    "depthwise_same_multiplier2_relu": lambda K, f, r: (
        _image_model(K, K.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="relu")),
        _images(r)),
    "depthwise_valid_stride2_nobias": lambda K, f, r: (
        _image_model(K, K.layers.DepthwiseConv2D((3, 2), strides=2, use_bias=False)), _images(r)),
    "depthwise_dilation_same_odd": lambda K, f, r: (_image_model(
        K, K.layers.DepthwiseConv2D(3, dilation_rate=2, padding="same", depth_multiplier=3, activation="tanh"),
        shape=(7, 5, 2)), _images(r, (7, 5, 2))),
    "mobilenet_block": lambda K, f, r: (_image_model(  # depthwise, pointwise conv, batch norms, ReLU6
        K, K.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False), K.layers.BatchNormalization(),
        K.layers.ReLU(6.0), K.layers.DepthwiseConv2D(3, padding="same", use_bias=False),
        K.layers.BatchNormalization(), K.layers.ReLU(6.0), K.layers.Conv2D(12, 1, use_bias=False),
        K.layers.BatchNormalization(), K.layers.GlobalAveragePooling2D(), K.layers.Dense(3, activation="softmax"),
        shape=(12, 10, 3)), _images(r, (12, 10, 3))),
    "separable_same_multiplier2_relu": lambda K, f, r: (_image_model(
        K, K.layers.SeparableConv2D(5, 3, padding="same", depth_multiplier=2, activation="relu")), _images(r)),
    "separable_stride2_nobias_dilation": lambda K, f, r: (_image_model(
        K, K.layers.SeparableConv2D(4, (3, 2), strides=2, use_bias=False),
        K.layers.SeparableConv2D(3, 2, dilation_rate=2, padding="same", activation="tanh")), _images(r)),
    "separable_residual_block": lambda K, f, r: (_separable_block(K), _images(r, (12, 10, 3))),
    "maxpool_valid": lambda K, f, r: (_image_model(K, K.layers.MaxPooling2D()), _images(r)),
    "maxpool_same_3_stride2": lambda K, f, r: (
        _image_model(K, K.layers.MaxPooling2D(3, strides=2, padding="same")), _images(r)),
    "maxpool_same_negative": lambda K, f, r: (  # padded cells must never win against negatives
        _image_model(K, K.layers.MaxPooling2D(2, padding="same")), _images(r) - 10),
    "avgpool_valid_stride1": lambda K, f, r: (
        _image_model(K, K.layers.AveragePooling2D(2, strides=1)), _images(r)),
    "avgpool_same_3_stride2": lambda K, f, r: (
        _image_model(K, K.layers.AveragePooling2D(3, strides=2, padding="same")), _images(r)),
    "global_avg": lambda K, f, r: (_image_model(K, K.layers.GlobalAveragePooling2D()), _images(r)),
    "global_max_keepdims": lambda K, f, r: (
        _image_model(K, K.layers.GlobalMaxPooling2D(keepdims=True)), _images(r)),
    "global_avg_keepdims": lambda K, f, r: (
        _image_model(K, K.layers.GlobalAveragePooling2D(keepdims=True)), _images(r)),
    "global_max": lambda K, f, r: (_image_model(K, K.layers.GlobalMaxPooling2D()), _images(r)),
    "cnn_stack": lambda K, f, r: (_image_model(
        K, K.layers.Rescaling(1 / 255.0, offset=-0.5), K.layers.Conv2D(4, 3, padding="same", activation="relu"),
        K.layers.MaxPooling2D(), K.layers.Conv2D(6, 3, activation="elu"), K.layers.AveragePooling2D(2),
        K.layers.Flatten(), K.layers.Dropout(0.3), K.layers.Dense(7, activation="relu"),
        K.layers.Dense(3, activation="softmax"), shape=(12, 12, 3)), _images(r, (12, 12, 3)) * 100 + 120),
    "dense_nobias": lambda K, f, r: (K.Sequential([K.Input((6,)), K.layers.Dense(4, use_bias=False)]),
                                     r.normal(size=(5, 6)).astype(np.float32)),
    "dense_on_sequence": lambda K, f, r: (K.Sequential([K.Input((4, 6)), K.layers.Dense(3, activation="sigmoid")]),
                                          r.normal(size=(5, 4, 6)).astype(np.float32)),
    "relu_max_value": lambda K, f, r: (K.Sequential([K.Input((8,)), K.layers.ReLU(max_value=1.5)]),
                                       r.normal(0, 2, (6, 8)).astype(np.float32)),
    "relu_slope_threshold": lambda K, f, r: (
        K.Sequential([K.Input((8,)), K.layers.ReLU(max_value=2.0, negative_slope=0.1, threshold=0.5)]),
        r.normal(0, 2, (6, 8)).astype(np.float32)),
    "relu_slope_only": lambda K, f, r: (K.Sequential([K.Input((8,)), K.layers.ReLU(negative_slope=0.25)]),
                                        r.normal(0, 2, (6, 8)).astype(np.float32)),
    "relu_max6": lambda K, f, r: (K.Sequential([K.Input((8,)), K.layers.ReLU(max_value=6.0)]),
                                  r.normal(0, 5, (6, 8)).astype(np.float32)),
    "leaky_relu": lambda K, f, r: (K.Sequential([K.Input((8,)), _leaky(K, f, 0.15)]),
                                   r.normal(0, 2, (6, 8)).astype(np.float32)),
    "softmax_axis1": lambda K, f, r: (K.Sequential([K.Input((3, 5)), K.layers.Softmax(axis=1)]),
                                      r.normal(0, 2, (4, 3, 5)).astype(np.float32)),
    "rescaling_per_channel": lambda K, f, r: (
        _image_model(K, K.layers.Rescaling([0.5, 2.0, -1.0], offset=[1.0, 0.0, 3.0])), _images(r)),
    "batchnorm_after_conv": lambda K, f, r: (_image_model(
        K, K.layers.Conv2D(4, 3, padding="same"), K.layers.BatchNormalization(), K.layers.ReLU()), _images(r)),
    "batchnorm_dense_no_center": lambda K, f, r: (K.Sequential([
        K.Input((6,)), K.layers.Dense(5), K.layers.BatchNormalization(center=False, epsilon=0.01, momentum=0.9)]),
        r.normal(size=(5, 6)).astype(np.float32)),
    "batchnorm_sequence_axis1_no_scale": lambda K, f, r: (K.Sequential([
        K.Input((4, 6)), K.layers.BatchNormalization(axis=1, scale=False)]),
        r.normal(size=(5, 4, 6)).astype(np.float32)),
    "batchnorm_image_axis2_plain": lambda K, f, r: (_image_model(
        K, K.layers.BatchNormalization(axis=-2, center=False, scale=False)), _images(r)),
    "conv1d_valid": lambda K, f, r: (_sequence_model(K, K.layers.Conv1D(5, 3)), _sequences(r)),
    "conv1d_same_stride2_relu": lambda K, f, r: (
        _sequence_model(K, K.layers.Conv1D(4, 4, strides=2, padding="same", activation="relu")), _sequences(r)),
    "conv1d_causal_dilation_nobias": lambda K, f, r: (_sequence_model(
        K, K.layers.Conv1D(3, 3, padding="causal", dilation_rate=2, use_bias=False, activation="tanh")), _sequences(r)),
    "conv1d_stack_pools": lambda K, f, r: (_sequence_model(
        K, K.layers.Conv1D(6, 2, padding="causal"), K.layers.MaxPooling1D(3, strides=2, padding="same"),
        K.layers.Conv1D(4, 2, padding="same"), K.layers.BatchNormalization(), K.layers.ReLU(),
        K.layers.AveragePooling1D(2, padding="same"), K.layers.GlobalMaxPooling1D()), _sequences(r) - 1),
    "avgpool1d_valid_stride1": lambda K, f, r: (
        _sequence_model(K, K.layers.AveragePooling1D(3, strides=1)), _sequences(r)),
    "global_avg1d_keepdims": lambda K, f, r: (
        _sequence_model(K, K.layers.GlobalAveragePooling1D(keepdims=True)), _sequences(r)),
    "global_max1d": lambda K, f, r: (_sequence_model(K, K.layers.GlobalMaxPooling1D()), _sequences(r)),
    "layernorm_after_dense": lambda K, f, r: (K.Sequential([
        K.Input((6,)), K.layers.Dense(5), K.layers.LayerNormalization()]), r.normal(1, 3, (5, 6)).astype(np.float32)),
    "layernorm_two_axes_no_center": lambda K, f, r: (K.Sequential([
        K.Input((4, 6)), K.layers.LayerNormalization(axis=[1, 2], center=False, epsilon=0.1)]),
        r.normal(size=(5, 4, 6)).astype(np.float32)),
    "layernorm_image_axis2_no_scale": lambda K, f, r: (_image_model(
        K, K.layers.LayerNormalization(axis=2, scale=False)), _images(r)),
    "merges_functional": lambda K, f, r: (_merges(K), _images(r, (6, 5, 3))),
    "concatenate_steps_axis1": lambda K, f, r: (_concatenate_steps(K), r.normal(size=(5, 4, 3)).astype(np.float32)),
    "reshaping_stack": lambda K, f, r: (_image_model(
        K, K.layers.ZeroPadding2D(((1, 2), (0, 1))), K.layers.Conv2D(4, 3), K.layers.Cropping2D(((0, 1), (2, 0))),
        K.layers.UpSampling2D((2, 3)), K.layers.Permute((2, 1, 3)), K.layers.Reshape((-1, 4)), K.layers.Dense(2),
        K.layers.Reshape((2, -1)), K.layers.Flatten(), shape=(4, 6, 3)), _images(r, (4, 6, 3))),
    "dense_reshaped_to_image": lambda K, f, r: (K.Sequential([
        K.Input((5,)), K.layers.Dense(12), K.layers.Reshape((2, 2, 3)), K.layers.ZeroPadding2D(1),
        K.layers.UpSampling2D(), K.layers.Conv2D(2, 3), K.layers.Cropping2D((1, 2))]),
        r.normal(size=(4, 5)).astype(np.float32)),
    "activation_layer": lambda K, f, r: (K.Sequential([K.Input((8,)), K.layers.Activation("selu")]),
                                         r.normal(0, 2, (6, 8)).astype(np.float32)),
}


def _seq_input(K, steps, vocab=20):
    return K.Input((steps,), dtype="int32")


def _masked(K, *layers, steps=7, vocab=20, dim=5):
    return K.Sequential([_seq_input(K, steps), K.layers.Embedding(vocab, dim, mask_zero=True)] + list(layers))


def _unmasked(K, *layers, steps=7, vocab=20, dim=5):
    return K.Sequential([_seq_input(K, steps), K.layers.Embedding(vocab, dim)] + list(layers))


def _bi(K, inner, mode="concat"):
    return K.layers.Bidirectional(inner, merge_mode=mode)


RECURRENT_CASES = {
    "rnn_last": lambda K: _unmasked(K, K.layers.SimpleRNN(4)),
    "rnn_seq_backwards_relu_nobias": lambda K: _unmasked(
        K, K.layers.SimpleRNN(4, return_sequences=True, go_backwards=True, activation="relu", use_bias=False)),
    "rnn_masked_seq": lambda K: _masked(K, K.layers.SimpleRNN(4, return_sequences=True)),
    "rnn_masked_backwards": lambda K: _masked(K, K.layers.SimpleRNN(4, go_backwards=True)),
    "lstm_last": lambda K: _unmasked(K, K.layers.LSTM(3)),
    "lstm_seq_backwards": lambda K: _unmasked(K, K.layers.LSTM(3, return_sequences=True, go_backwards=True)),
    "lstm_options": lambda K: _unmasked(
        K, K.layers.LSTM(3, activation="relu", recurrent_activation="hard_sigmoid", use_bias=False)),
    "lstm_masked_last": lambda K: _masked(K, K.layers.LSTM(3)),
    "lstm_masked_last_zero_output": lambda K: _masked(K, K.layers.LSTM(3, zero_output_for_mask=True)),
    "lstm_masked_seq_backwards": lambda K: _masked(K, K.layers.LSTM(3, return_sequences=True, go_backwards=True)),
    "stacked_masked": lambda K: _masked(K, K.layers.LSTM(4, return_sequences=True), K.layers.SimpleRNN(3)),
    "mask_through_dense_dropout": lambda K: _masked(
        K, K.layers.Dense(6, activation="tanh"), K.layers.Dropout(0.5), K.layers.LSTM(3)),
    "bi_lstm_concat_last": lambda K: _masked(K, _bi(K, K.layers.LSTM(3))),
    "bi_lstm_concat_seq": lambda K: _masked(K, _bi(K, K.layers.LSTM(3, return_sequences=True))),
    "bi_lstm_sum_seq": lambda K: _masked(K, _bi(K, K.layers.LSTM(3, return_sequences=True), "sum")),
    "bi_lstm_mul_last": lambda K: _masked(K, _bi(K, K.layers.LSTM(3), "mul")),
    "bi_rnn_ave_seq": lambda K: _masked(K, _bi(K, K.layers.SimpleRNN(3, return_sequences=True), "ave")),
    "bi_rnn_concat_unmasked": lambda K: _unmasked(K, _bi(K, K.layers.SimpleRNN(3))),
    "gru_last": lambda K: _unmasked(K, K.layers.GRU(3)),
    "gru_seq_backwards_before_reset": lambda K: _unmasked(
        K, K.layers.GRU(3, return_sequences=True, go_backwards=True, reset_after=False)),
    "gru_options": lambda K: _unmasked(
        K, K.layers.GRU(3, activation="relu", recurrent_activation="hard_sigmoid", use_bias=False)),
    "gru_masked_last": lambda K: _masked(K, K.layers.GRU(3)),
    "gru_masked_seq_before_reset_zero_output": lambda K: _masked(
        K, K.layers.GRU(3, return_sequences=True, reset_after=False, zero_output_for_mask=True)),
    "bi_gru_concat_seq_then_gru": lambda K: _masked(
        K, _bi(K, K.layers.GRU(3, return_sequences=True)), K.layers.GRU(2, go_backwards=True)),
    "bi_gru_ave_before_reset": lambda K: _masked(K, _bi(K, K.layers.GRU(3, reset_after=False, use_bias=False), "ave")),
    "batchnorm_masked_then_gru": lambda K: _masked(K, K.layers.BatchNormalization(), K.layers.GRU(3)),
    "layernorm_masked_then_lstm": lambda K: _masked(K, K.layers.LayerNormalization(), K.layers.LSTM(3)),
    # GlobalAveragePooling1D leaves padding out of the mean (a row without tokens: NaN, in Keras too)
    "global_avg1d_masked": lambda K: _masked(
        K, K.layers.Dense(4, activation="tanh"), K.layers.GlobalAveragePooling1D()),
    "global_avg1d_unmasked_keepdims": lambda K: _unmasked(K, K.layers.GlobalAveragePooling1D(keepdims=True)),
    "bi_stacked_masked": lambda K: _masked(
        K, _bi(K, K.layers.LSTM(4, return_sequences=True)), _bi(K, K.layers.SimpleRNN(3, return_sequences=True)),
        K.layers.LSTM(2)),
    "bi_go_backwards_inner": lambda K: _masked(K, _bi(K, K.layers.LSTM(3, return_sequences=True, go_backwards=True))),
    "bi_custom_backward": lambda K: _masked(K, K.layers.Bidirectional(
        K.layers.LSTM(3, return_sequences=True),
        backward_layer=K.layers.LSTM(2, return_sequences=True, go_backwards=True, activation="relu"))),
}


# tf-keras .keras files of non-recurrent layers go through the same reader path as Keras 3 .keras files;
# what differs in that flavour (module names, RNN weight layout, text layers) is covered by
# test_recurrent_parity and test_parity_text, so these cases skip it to keep the suite's time down.
LAYER_FORMATS = [f for f in FORMATS if f != ("tf_keras", ".keras")]


@pytest.mark.parametrize("flavour,ext", LAYER_FORMATS, ids=[f"{f}{e}" for f, e in LAYER_FORMATS])
@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_parity(case, flavour, ext, tmp_path):
    K = keras_module(flavour)
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    model, x = CASES[case](K, flavour, rng)
    randomize_weights(model, seed=1)
    expected = keras_predict(model, x)
    runtime, _ = save_and_convert(model, tmp_path, ext)
    assert_parity(runtime.predict(x), expected)


# Keras 3 refuses an inner layer with go_backwards=True in Bidirectional (it sets the backward copy's
# go_backwards to True instead of flipping it); tf-keras flips it, so that case exists only there.
TF_KERAS_ONLY = {"bi_go_backwards_inner"}
RECURRENT_PARAMS = [pytest.param(case, flavour, ext, id=f"{case}-{flavour}{ext}")
                    for case in sorted(RECURRENT_CASES) for flavour, ext in FORMATS
                    if case not in TF_KERAS_ONLY or flavour == "tf_keras"]


# post and pre padding take the runtime's packed inference path, scattered masks its general one;
# the two paths share no step code, so every case runs both (scattered in one file flavour, for time).
PADDED_PARAMS = [pytest.param(*p.values, padding, id=f"{p.id}-{padding}")
                 for p in RECURRENT_PARAMS for padding in ("post", "pre")]
SCATTERED_PARAMS = [pytest.param(*p.values, "scattered", id=f"{p.id}-scattered")
                    for p in RECURRENT_PARAMS if p.values[1:] == FORMATS[0] or p.values[0] in TF_KERAS_ONLY]


def predict_both_ways(runtime, x, monkeypatch):
    """runtime.predict(x) with every embedding -> recurrent pair on a projection table (runtime/projection.py),
    then with none: (with tables, without, whether any table was built)."""
    monkeypatch.setattr(projection, "MIN_WORK_PER_ROW", 0)
    with_tables = runtime.predict(x)
    built = bool(runtime._projections._entries)
    monkeypatch.setattr(projection, "MIN_WORK_PER_ROW", float("inf"))
    return with_tables, runtime.predict(x), built


# An Embedding read only by the recurrent layer: the first layer's input projections come from a table.
PROJECTED_CASES = {case for case in RECURRENT_CASES if case not in (
    "mask_through_dense_dropout", "batchnorm_masked_then_gru", "global_avg1d_masked", "global_avg1d_unmasked_keepdims",
    "layernorm_masked_then_lstm")}


@pytest.mark.parametrize("case,flavour,ext,padding", PADDED_PARAMS + SCATTERED_PARAMS)
def test_recurrent_parity(case, padding, flavour, ext, tmp_path, monkeypatch):
    K = keras_module(flavour)
    model = RECURRENT_CASES[case](K)
    randomize_weights(model, seed=2)
    x = padded_ids(np.random.default_rng(3), batch=6, steps=7, vocab=20, where=padding)
    expected = keras_predict(model, x)
    runtime, _ = save_and_convert(model, tmp_path, ext)
    with_tables, without, built = predict_both_ways(runtime, x, monkeypatch)
    assert built == (case in PROJECTED_CASES)
    assert_parity(with_tables, expected)
    assert_parity(without, expected)


EMPTY_PARAMS = [pytest.param("layer", case, id=case) for case in sorted(CASES)] + [
    pytest.param("recurrent", case, id=case) for case in sorted(RECURRENT_CASES) if case not in TF_KERAS_ONLY]


@pytest.mark.parametrize("kind,case", EMPTY_PARAMS)
def test_no_rows_give_keras_empty_output(kind, case, tmp_path, monkeypatch):
    # e.g. a filter upstream left nothing to classify: (0, ...) out, not a crash. Keras 3.15 itself fails on
    # 0 rows in LSTMCell (BiasAdd) and GlobalMaxPooling2D, so the expected value is its output's first 0 rows.
    K = keras_module("keras3")
    if kind == "layer":
        model, x = CASES[case](K, "keras3", np.random.default_rng(0))
    else:
        model, x = RECURRENT_CASES[case](K), padded_ids(np.random.default_rng(3), batch=6, steps=7, vocab=20)
    randomize_weights(model, seed=1)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    expected = keras_predict(model, x)[:0]
    for with_tables in predict_both_ways(runtime, x[:0], monkeypatch)[:2]:
        assert_parity(with_tables, expected)
