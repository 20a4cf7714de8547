"""Recurrent dropout in training against Keras: the same masks given to both, outputs and gradients compared.

Keras draws a recurrent layer's dropout masks once per call and reuses them at every step: one input
mask and one recurrent mask, or for an LSTM or GRU with recurrent_dropout one of each per gate. The runtime
draws its own masks (NumPy's generator, not Keras's); here the runtime's masks are handed to Keras's
cells, so the comparison is of where and how the masks apply, in float64 at a tight tolerance.
"""
from types import SimpleNamespace

import numpy as np
import pytest

from helpers import keras_module
from kconvert.runtime.ops import TRAIN_OPS
from kconvert.runtime.ops.recurrent import dropout_masks

B, T, F, UNITS, SEED = 4, 6, 5, 3, 11
RTOL, ATOL = 1e-9, 1e-12


def _padding_mask(where):
    if where is None:
        return None
    if where == "holes":  # not a padding pattern: the general masked loop
        return np.array([[1, 0, 1, 1, 0, 1], [1, 1, 1, 1, 1, 1], [0, 1, 0, 0, 1, 0], [1, 1, 0, 1, 1, 1]], bool)
    mask = np.arange(T)[None, :] < np.array([T, 4, 1, 0])[:, None]
    return mask if where == "post" else mask[:, ::-1].copy()


def _attrs(op, layer):
    attrs = dict(units=UNITS, activation="tanh", use_bias=True, return_sequences=layer.return_sequences,
                 go_backwards=layer.go_backwards, zero_output_for_mask=layer.zero_output_for_mask,
                 dropout=layer.dropout, recurrent_dropout=layer.recurrent_dropout)
    if op in ("lstm", "gru"):
        attrs["recurrent_activation"] = "sigmoid"
    if op == "gru":
        attrs["reset_after"] = layer.cell.reset_after
    return attrs


def _give_masks(cell, input_masks, recurrent_masks):
    """Make a Keras cell use the runtime's masks: (K, B, 1, F) and (K, B, units) arrays, or None."""
    import tensorflow as tf

    def as_keras(masks, squeeze):
        if masks is None:
            return None
        masks = [tf.constant(m[:, 0] if squeeze else m) for m in masks]
        return masks if len(masks) > 1 else masks[0]
    cell.get_dropout_mask = lambda step_input: as_keras(input_masks, True)
    cell.get_recurrent_dropout_mask = lambda step_input: as_keras(recurrent_masks, False)


def _runtime_masks(rng, op, attrs, dtype):
    count = {"lstm": 4, "gru": 3}.get(op, 1) if attrs["recurrent_dropout"] else 1
    return (dropout_masks(rng, count, (B, 1, F), attrs["dropout"], dtype),
            dropout_masks(rng, count, (B, UNITS), attrs["recurrent_dropout"], dtype))


def _keras_output_and_grads(layer, x, mask, dy):
    import tensorflow as tf
    xv = tf.Variable(x)
    with tf.GradientTape() as tape:
        y = layer(xv, mask=None if mask is None else tf.constant(mask), training=True)
        objective = tf.reduce_sum(y * dy)
    grads = tape.gradient(objective, [xv] + layer.trainable_weights)
    return np.asarray(y), [np.asarray(g) for g in grads]


def _runtime_output_and_grads(op, x, attrs, weights, mask, seed, dy=None):
    forward, backward = TRAIN_OPS[op]
    y, cache = forward(x, attrs, weights, mask, SimpleNamespace(training=True, rng=np.random.default_rng(seed)))
    if dy is None:
        return y, None, None
    dx, grads = backward(dy, cache, attrs, weights)
    return y, dx, grads


LAYER_CASES = [  # (op, dropout, recurrent_dropout, options)
    ("simple_rnn", 0.3, 0.0, {}),
    ("simple_rnn", 0.3, 0.4, {"return_sequences": True}),
    ("simple_rnn", 0.0, 0.4, {"go_backwards": True}),
    ("lstm", 0.3, 0.0, {}),                                    # one input mask: the fused LSTM path
    ("lstm", 0.3, 0.0, {"return_sequences": True, "go_backwards": True}),
    ("lstm", 0.3, 0.4, {}),                                    # per-gate masks: the general loop
    ("lstm", 0.0, 0.4, {"return_sequences": True, "zero_output_for_mask": True}),
    ("gru", 0.3, 0.0, {}),                                     # one input mask (Keras's implementation 2)
    ("gru", 0.3, 0.4, {"return_sequences": True}),             # per-gate masks (implementation 1)
    ("gru", 0.3, 0.4, {"reset_after": False, "go_backwards": True}),
    ("gru", 0.0, 0.4, {"reset_after": False, "return_sequences": True, "zero_output_for_mask": True}),
]


@pytest.mark.parametrize("masking", [None, "post", "pre", "holes"])
@pytest.mark.parametrize("op,dropout,recurrent_dropout,options", LAYER_CASES,
                         ids=[f"{c[0]}-d{c[1]}-r{c[2]}-{'-'.join(c[3]) or 'last'}" for c in LAYER_CASES])
def test_layer_dropout_matches_keras(op, dropout, recurrent_dropout, options, masking):
    K = keras_module("keras3")
    cls = {"simple_rnn": K.layers.SimpleRNN, "lstm": K.layers.LSTM, "gru": K.layers.GRU}[op]
    layer = cls(UNITS, dropout=dropout, recurrent_dropout=recurrent_dropout, dtype="float64", **options)
    layer.build((B, T, F))
    rng = np.random.default_rng(3)
    layer.set_weights([rng.normal(0, 0.6, w.shape) for w in layer.get_weights()])
    names = ["kernel", "recurrent_kernel", "bias"]
    weights = {k: np.asarray(w) for k, w in zip(names, layer.get_weights())}
    attrs = _attrs(op, layer)
    x, mask = rng.normal(size=(B, T, F)), _padding_mask(masking)
    y, _, _ = _runtime_output_and_grads(op, x, attrs, weights, mask, SEED)
    dy = rng.normal(size=y.shape)
    y, dx, grads = _runtime_output_and_grads(op, x, attrs, weights, mask, SEED, dy)
    _give_masks(layer.cell, *_runtime_masks(np.random.default_rng(SEED), op, attrs, np.dtype(np.float64)))
    expected_y, expected_grads = _keras_output_and_grads(layer, x, mask, dy)
    np.testing.assert_allclose(y, expected_y, rtol=RTOL, atol=ATOL)
    for name, ours, theirs in zip(["x"] + names, [dx] + [grads[k] for k in names], expected_grads):
        np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL, err_msg=name)


@pytest.mark.parametrize("layer_name", ["simple_rnn", "lstm", "gru"])
def test_bidirectional_directions_draw_their_own_masks(layer_name):
    K = keras_module("keras3")
    cls = {"simple_rnn": K.layers.SimpleRNN, "lstm": K.layers.LSTM, "gru": K.layers.GRU}[layer_name]
    layer = K.layers.Bidirectional(cls(UNITS, dropout=0.3, recurrent_dropout=0.2, return_sequences=True,
                                       dtype="float64"), dtype="float64")
    layer.build((B, T, F))
    rng = np.random.default_rng(4)
    layer.set_weights([rng.normal(0, 0.6, w.shape) for w in layer.get_weights()])
    names = ["kernel", "recurrent_kernel", "bias"]
    values = [np.asarray(w) for w in layer.get_weights()]
    weights = {f"{d}_{k}": v for (d, k), v in zip([(d, k) for d in ("forward", "backward") for k in names], values)}
    fwd = _attrs(layer_name, layer.forward_layer)
    attrs = {"layer": layer_name, "merge_mode": "concat", "forward": fwd, "backward": dict(fwd, go_backwards=True)}
    x, mask = rng.normal(size=(B, T, F)), _padding_mask("post")
    dy = rng.normal(size=(B, T, 2 * UNITS))
    y, dx, grads = _runtime_output_and_grads("bidirectional", x, attrs, weights, mask, SEED, dy)
    draws = np.random.default_rng(SEED)  # forward direction's masks first, then the backward direction's
    for direction in (layer.forward_layer, layer.backward_layer):
        _give_masks(direction.cell, *_runtime_masks(draws, layer_name, fwd, np.dtype(np.float64)))
    expected_y, expected_grads = _keras_output_and_grads(layer, x, mask, dy)
    np.testing.assert_allclose(y, expected_y, rtol=RTOL, atol=ATOL)
    ours = [dx] + [grads[f"{d}_{k}"] for d in ("forward", "backward") for k in names]
    for ours_g, theirs in zip(ours, expected_grads):
        np.testing.assert_allclose(ours_g, theirs, rtol=RTOL, atol=ATOL)


def test_no_dropout_outside_training():
    """evaluate() runs the training forward with training=False: no masks, the inference result."""
    rng = np.random.default_rng(5)
    attrs = dict(units=UNITS, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 return_sequences=False, go_backwards=False, zero_output_for_mask=False, dropout=0.5,
                 recurrent_dropout=0.5)
    weights = {"kernel": rng.normal(size=(F, 4 * UNITS)), "recurrent_kernel": rng.normal(size=(UNITS, 4 * UNITS)),
               "bias": rng.normal(size=4 * UNITS)}
    x = rng.normal(size=(B, T, F))
    forward, _ = TRAIN_OPS["lstm"]
    evaluated, _ = forward(x, attrs, weights, None, SimpleNamespace(training=False, rng=np.random.default_rng(0)))
    trained, _ = forward(x, attrs, weights, None, SimpleNamespace(training=True, rng=np.random.default_rng(0)))
    from kconvert.runtime.ops import OPS
    np.testing.assert_array_equal(evaluated, OPS["lstm"](x, attrs, weights))
    assert np.abs(trained - evaluated).max() > 1e-3  # the masks do change the training output


@pytest.mark.parametrize("rate", [0.04, 0.15, 0.42, 0.5, 0.71, 0.88])
def test_dropout_scale_is_tensorflows(rate):
    """Kept values are scaled by float32(1 / (1 - rate)) as tf.nn.dropout computes it (in float64, cast
    once); 1 / float32(1 - rate) differs by an ulp for five of these rates."""
    import tensorflow as tf
    kept = np.unique(tf.nn.dropout(tf.ones((4000,), tf.float32), rate=rate, seed=3).numpy())
    recurrent = np.unique(dropout_masks(np.random.default_rng(0), 1, (4000,), rate, np.dtype(np.float32)))
    forward = TRAIN_OPS["dropout"][0]
    dense, _ = forward(np.ones((4000,), np.float32), {"rate": rate, "seed": None}, {}, None,
                       SimpleNamespace(training=True, rng=np.random.default_rng(0)))
    for ours in (recurrent, np.unique(dense)):
        assert ours.dtype == np.float32
        np.testing.assert_array_equal(ours, kept)
