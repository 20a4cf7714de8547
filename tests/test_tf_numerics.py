"""numerics="tensorflow": TensorFlow's tanh and sigmoid kernels, bit for bit, and what they give a whole model.

The kernels are compared with the installed TensorFlow on millions of points. The model tests use weights and
inputs on a coarse dyadic grid so that every matmul is exact whatever its summation order: what remains between
the runtime and Keras is then the activations' rounding alone, which numerics="tensorflow" must reproduce
exactly (and NumPy's kernels do not).
"""
import os

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import keras_module, keras_predict, padded_ids, save_and_convert
from kconvert.runtime.cli import main as krun
from kconvert.runtime.ops import tf_kernels
from kconvert.schema import InputDataError

F32 = np.finfo(np.float32)
SPECIAL = np.array([0.0, -0.0, 1e-39, -1e-40, 1e-45, -1e-45, F32.tiny, -F32.tiny, np.inf, -np.inf, np.nan, F32.max,
                    -F32.max, 7.90738964, -7.90738964, 7.9074, 16.6355324, 16.64, -104.0, -103.99, -87.3, -88.0,
                    1e-4, -3e-5], np.float32)


def _points():
    rng = np.random.default_rng(0)
    return np.concatenate([SPECIAL, rng.uniform(-10, 10, 1_500_000), rng.normal(0, 1, 500_000),
                           rng.uniform(-120, 30, 200_000), rng.uniform(-1e-3, 1e-3, 100_000)]).astype(np.float32)


def _same_bits(a, b):
    """Equal values, NaN where the other has NaN, and the same sign (so -0.0 is not 0.0)."""
    return np.array_equal(a, b, equal_nan=True) and np.array_equal(np.signbit(a), np.signbit(b))


@pytest.mark.parametrize("name", ["tanh", "sigmoid"])
def test_kernel_is_tensorflows_bit_for_bit(name):
    import tensorflow as tf
    ours, theirs = getattr(tf_kernels, name), {"tanh": tf.math.tanh, "sigmoid": tf.math.sigmoid}[name]
    x = _points()
    assert _same_bits(ours(x), theirs(x).numpy())
    # Sizes that are not a multiple of Eigen's 8-float packet: the last values take its scalar path.
    for size in list(range(1, 20)) + [len(x) - 3]:
        assert _same_bits(ours(x[-size:]), theirs(x[-size:]).numpy()), size
    grid = np.random.default_rng(1).normal(0, 4, (5, 3)).astype(np.float32)
    assert _same_bits(ours(grid), theirs(grid).numpy())
    assert _same_bits(ours(grid.T), theirs(grid.T).numpy())  # a non-contiguous view


def _dyadic(rng, shape, steps=16):
    """Multiples of 1/steps in [-1, 1]: products and short sums of them are exact in float32."""
    return (rng.integers(-steps, steps + 1, shape) / steps).astype(np.float32)


def _signed_permutation(rng, rows, cols):
    """(rows, cols) with one nonzero (+-0.5 or +-1) per column: x @ it is exact whatever the order."""
    out = np.zeros((rows, cols), np.float32)
    out[rng.integers(0, rows, cols), np.arange(cols)] = rng.choice([-1.0, -0.5, 0.5, 1.0], cols)
    return out


def _exact_matmul_weights(model, seed):
    rng = np.random.default_rng(seed)
    weights = []
    for variable in model.weights:
        shape, path = tuple(variable.shape), variable.path
        if "recurrent_kernel" in path:
            weights.append(_signed_permutation(rng, *shape))
        else:
            weights.append(_dyadic(rng, shape))
    model.set_weights(weights)


def _recurrent_model(K, kind):
    inner = {"lstm": lambda: K.layers.LSTM(16, use_bias=False, return_sequences=True),
             "simple_rnn": lambda: K.layers.SimpleRNN(16, return_sequences=True),
             "bidirectional": lambda: K.layers.Bidirectional(K.layers.LSTM(8, use_bias=False)),
             "hard_sigmoid_lstm": lambda: K.layers.LSTM(16, use_bias=False, recurrent_activation="hard_sigmoid"),
             "gru": lambda: K.layers.GRU(16, return_sequences=True),
             "gru_reset_before": lambda: K.layers.GRU(16, reset_after=False, return_sequences=True)}[kind]
    return K.Sequential([K.Input((40,), dtype="int32"), K.layers.Embedding(30, 8, mask_zero=True), inner()])


# An LSTM's bias is left out: Keras adds it after the recurrent term, the runtime before (an order that moves
# results by an ulp, not an activation matter). SimpleRNN's and GRU's orders agree, so they keep a (dyadic) bias.
@pytest.mark.parametrize("kind", ["lstm", "simple_rnn", "bidirectional", "hard_sigmoid_lstm", "gru",
                                  "gru_reset_before"])
def test_recurrent_model_matches_keras_bit_for_bit(kind, tmp_path):
    K = keras_module("keras3")
    model = _recurrent_model(K, kind)
    _exact_matmul_weights(model, seed=3)
    x = padded_ids(np.random.default_rng(4), 48, 40, 30)
    expected = keras_predict(model, x)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    assert np.array_equal(runtime.predict(x, numerics="tensorflow"), expected)
    # The premise: with NumPy's kernels the same model differs (in the last bits) from Keras.
    default = runtime.predict(x)
    assert not np.array_equal(default, expected)
    np.testing.assert_allclose(default, expected, rtol=1e-5, atol=1e-6)


def test_odd_sized_gates_take_eigens_scalar_tail(tmp_path):
    """5 units: each (rows, 5) gate tensor ends in values Eigen computes off its 8-float packets. With every row
    live and the batch in one piece, the runtime's gate arrays are Keras's tensors, tails included."""
    K = keras_module("keras3")
    model = K.Sequential([K.Input((12, 4)), K.layers.LSTM(5, use_bias=False, return_sequences=True)])
    _exact_matmul_weights(model, seed=7)
    x = _dyadic(np.random.default_rng(8), (13, 12, 4), steps=4)
    expected = keras_predict(model, x)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    assert np.array_equal(runtime.predict(x, numerics="tensorflow", threads=1), expected)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_dense_and_activation_layers_match_keras_bit_for_bit(activation, tmp_path):
    K = keras_module("keras3")
    model = K.Sequential([K.Input((12,)), K.layers.Dense(37, activation=activation), K.layers.Activation(activation)])
    _exact_matmul_weights(model, seed=5)
    x = _dyadic(np.random.default_rng(6), (203, 12), steps=8) * 4  # reaches both functions' saturated ends
    expected = keras_predict(model, x)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    assert np.array_equal(runtime.predict(x, numerics="tensorflow", batch_size=203, threads=1), expected)
    assert not np.array_equal(runtime.predict(x), expected)


def test_numerics_leaves_the_graph_and_the_default_alone(tmp_path):
    K = keras_module("keras3")
    model = K.Sequential([K.Input((6,)), K.layers.Dense(5, activation="tanh")])
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    x = np.random.default_rng(0).normal(0, 2, (9, 6)).astype(np.float32)
    before = runtime.predict(x)
    runtime.predict(x, numerics="tensorflow")
    assert runtime.doc["nodes"][-1]["attrs"]["activation"] == "tanh"
    assert np.array_equal(runtime.predict(x), before)
    with pytest.raises(InputDataError, match="numerics must be one of numpy, tensorflow, got 'tf'"):
        runtime.predict(x, numerics="tf")


def test_krun_numerics_option(tmp_path):
    K = keras_module("keras3")
    model = K.Sequential([K.Input((6,)), K.layers.Dense(4, activation="sigmoid")])
    runtime, graph = save_and_convert(model, tmp_path, ".keras")
    x = np.random.default_rng(1).normal(0, 3, (11, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = os.path.join(tmp_path, "y.npy")
    result = CliRunner().invoke(krun, [graph, str(tmp_path / "x.npy"), "--numerics", "tensorflow", "-o", out])
    assert result.exit_code == 0, result.output
    assert np.array_equal(np.load(out), runtime.predict(x, numerics="tensorflow"))
    result = CliRunner().invoke(krun, [graph, str(tmp_path / "x.npy"), "--numerics", "tf"])
    assert result.exit_code == 2 and "'tf' is not one of 'numpy', 'tensorflow'" in result.output
