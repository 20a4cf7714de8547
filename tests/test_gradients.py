"""Float64 central-difference gradient checks for every op and option (relative error < 1e-6)."""
import itertools
from types import SimpleNamespace

import numpy as np
import pytest

from kconvert.runtime.ops import TRAIN_OPS
from kconvert.schema import ACTIVATIONS

EPS, MAX_REL_ERROR = 1e-6, 1e-6


def _ctx(training=False):
    # A fresh generator per call, so dropout draws the same mask in every finite-difference evaluation.
    return SimpleNamespace(training=training, rng=np.random.default_rng(123))


def relative_error(a, b):
    """Norm-based relative error between two gradients."""
    a, b = np.ravel(a), np.ravel(b)
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    return 0.0 if denom == 0 else np.linalg.norm(a - b) / denom


def check_gradients(op, x, attrs, weights, mask=None, training=False, check_x=True):
    """Compare the op's backward with central differences of sum(forward * dy), for x and every weight."""
    forward, backward = TRAIN_OPS[op]
    y, cache = forward(x, attrs, weights, mask, _ctx(training))
    dy = np.random.default_rng(7).normal(size=y.shape)
    dx, grads = backward(dy, cache, attrs, weights)
    assert set(grads) == set(weights)
    grads = {k: np.asarray(g) for k, g in grads.items()}  # sparse embedding rows summed per id

    def objective():
        return float(np.sum(forward(x, attrs, weights, mask, _ctx(training))[0] * dy))

    targets = ([("x", x, dx)] if check_x else []) + [(k, weights[k], grads[k]) for k in weights]
    for name, array, analytic in targets:
        assert analytic.shape == array.shape, name
        numeric = np.zeros_like(array)
        for index in np.ndindex(array.shape):
            old = array[index]
            array[index] = old + EPS
            plus = objective()
            array[index] = old - EPS
            minus = objective()
            array[index] = old
            numeric[index] = (plus - minus) / (2 * EPS)
        err = relative_error(analytic, numeric)
        assert err < MAX_REL_ERROR, f"{op} d{name}: relative error {err:.2e}"


def _rng(seed=0):
    return np.random.default_rng(seed)


def _normal(*shape, seed=0, scale=1.0):
    return _rng(seed).normal(0, scale, shape)


@pytest.mark.parametrize("activation", ["linear", "relu", "tanh", "softmax", "glu", "sigmoid"])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("rank", [2, 3])
def test_dense(activation, use_bias, rank):
    x = _normal(3, 4) if rank == 2 else _normal(2, 3, 4)
    weights = {"kernel": _normal(4, 6, seed=1)}
    if use_bias:
        weights["bias"] = _normal(6, seed=2)
    check_gradients("dense", x, {"units": 6, "activation": activation, "use_bias": use_bias}, weights)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation(name):
    x = _normal(3, 6, seed=3, scale=2.0)
    check_gradients("activation", x, {"function": name}, {})


@pytest.mark.parametrize("attrs", [
    {"max_value": None, "negative_slope": 0.0, "threshold": 0.0},
    {"max_value": 1.5, "negative_slope": 0.0, "threshold": 0.0},
    {"max_value": 6.0, "negative_slope": 0.0, "threshold": 0.0},
    {"max_value": None, "negative_slope": 0.2, "threshold": 0.0},
    {"max_value": 2.0, "negative_slope": 0.1, "threshold": 0.5},
], ids=["plain", "max", "relu6", "leaky", "all"])
def test_relu(attrs):
    check_gradients("relu", _normal(4, 5, seed=4, scale=2.0), attrs, {})


def test_leaky_relu_softmax_rescaling_flatten():
    x = _normal(3, 4, 5, seed=5)
    check_gradients("leaky_relu", x, {"negative_slope": 0.3}, {})
    check_gradients("softmax", x, {"axis": -1}, {})
    check_gradients("softmax", x, {"axis": 1}, {})
    check_gradients("rescaling", x, {"scale": 0.5, "offset": 1.0}, {})
    check_gradients("rescaling", x, {"scale": [1.0, 2.0, -1.0, 0.5, 3.0], "offset": [0.0] * 5}, {})
    check_gradients("flatten", x, {}, {})


BATCH_NORM_CASES = [dict(axis=-1, center=True, scale=True), dict(axis=1, center=True, scale=False),
                    dict(axis=-2, center=False, scale=True), dict(axis=2, center=False, scale=False)]


@pytest.mark.parametrize("options", BATCH_NORM_CASES, ids=lambda o: "-".join(f"{k}{v}" for k, v in o.items()))
@pytest.mark.parametrize("mode", ["inference", "batch", "batch_masked"])
def test_batch_norm(options, mode):
    """Inference uses the moving statistics; training the batch's moments (under a mask, of real steps only)."""
    attrs = dict(options, momentum=0.9, epsilon=0.01, unbiased_moving_variance=False)
    x = _normal(4, 3, 5, seed=11, scale=2.0) + 0.5
    features = x.shape[attrs["axis"]]
    weights = {"moving_mean": _normal(features, seed=12), "moving_variance": np.abs(_normal(features, seed=13)) + 0.3}
    if attrs["scale"]:
        weights["gamma"] = _normal(features, seed=14)
    if attrs["center"]:
        weights["beta"] = _normal(features, seed=15)
    mask = None
    if mode == "batch_masked":
        mask = np.array([[True, True, False], [True, False, False], [False, True, True], [False, False, False]])
    check_gradients("batch_norm", x, attrs, weights, mask=mask, training=mode != "inference")


@pytest.mark.parametrize("axis,center,scale", [([-1], True, True), ([1, 2], True, False), ([1], False, True),
                                               ([2, 1], False, False)])
def test_layer_norm(axis, center, scale):
    x = _normal(3, 4, 5, seed=21, scale=2.0) + 0.5
    sizes = tuple(x.shape[a] for a in axis)
    weights = {}
    if scale:
        weights["gamma"] = _normal(*sizes, seed=22)
    if center:
        weights["beta"] = _normal(*sizes, seed=23)
    check_gradients("layer_norm", x, {"axis": axis, "epsilon": 0.01, "center": center, "scale": scale}, weights,
                    training=True)


CONV1D_CASES = [dict(kernel_size=3, strides=1, padding="valid", dilation_rate=1),
                dict(kernel_size=4, strides=2, padding="same", dilation_rate=1),
                dict(kernel_size=3, strides=1, padding="causal", dilation_rate=2),
                dict(kernel_size=2, strides=3, padding="causal", dilation_rate=1)]


@pytest.mark.parametrize("geometry", CONV1D_CASES,
                         ids=lambda g: f"{g['padding']}-k{g['kernel_size']}-s{g['strides']}-d{g['dilation_rate']}")
@pytest.mark.parametrize("use_bias,activation", [(True, "relu"), (False, "tanh")])
def test_conv1d(geometry, use_bias, activation):
    weights = {"kernel": _normal(geometry["kernel_size"], 3, 4, seed=16)}
    if use_bias:
        weights["bias"] = _normal(4, seed=17)
    attrs = dict(geometry, filters=4, activation=activation, use_bias=use_bias)
    check_gradients("conv1d", _normal(2, 9, 3, seed=18), attrs, weights)


@pytest.mark.parametrize("pool,strides,padding", [(2, 2, "valid"), (3, 2, "same"), (2, 1, "valid"), (3, 3, "same")])
@pytest.mark.parametrize("op", ["max_pool1d", "avg_pool1d"])
def test_pool1d(op, pool, strides, padding):
    check_gradients(op, _normal(2, 10, 3, seed=19), {"pool_size": pool, "strides": strides, "padding": padding}, {})


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("op,masked", [("global_avg_pool1d", False), ("global_avg_pool1d", True),
                                       ("global_max_pool1d", False)])
def test_global_pool1d(op, masked, keepdims):
    mask = np.array([[True, True, False, False, True], [False, True, True, True, True]]) if masked else None
    check_gradients(op, _normal(2, 5, 3, seed=20), {"keepdims": keepdims}, {}, mask=mask)


def test_dropout_in_training():
    check_gradients("dropout", _normal(4, 6, seed=6), {"rate": 0.4, "seed": None}, {}, training=True)


CONV_CASES = [
    dict(kernel_size=[3, 3], strides=[1, 1], padding="valid", dilation_rate=[1, 1]),
    dict(kernel_size=[3, 2], strides=[2, 2], padding="same", dilation_rate=[1, 1]),
    dict(kernel_size=[4, 3], strides=[2, 1], padding="same", dilation_rate=[1, 1]),
    dict(kernel_size=[2, 2], strides=[1, 1], padding="same", dilation_rate=[2, 2]),
    dict(kernel_size=[2, 2], strides=[1, 1], padding="valid", dilation_rate=[2, 1]),
    dict(kernel_size=[3, 3], strides=[1, 1], padding="same", dilation_rate=[1, 1]),
    dict(kernel_size=[4, 3], strides=[1, 1], padding="same", dilation_rate=[1, 2]),  # asymmetric padding
]


def _conv_id(g):
    return f"{g['padding']}-k{g['kernel_size']}-s{g['strides']}-d{g['dilation_rate']}"


@pytest.mark.parametrize("geometry", CONV_CASES, ids=_conv_id)
@pytest.mark.parametrize("use_bias,activation", [(True, "relu"), (False, "linear")])
def test_conv2d(geometry, use_bias, activation):
    kh, kw = geometry["kernel_size"]
    weights = {"kernel": _normal(kh, kw, 2, 3, seed=8)}
    if use_bias:
        weights["bias"] = _normal(3, seed=9)
    attrs = dict(geometry, filters=3, activation=activation, use_bias=use_bias)
    check_gradients("conv2d", _normal(2, 5, 6, 2, seed=10), attrs, weights)


@pytest.mark.parametrize("geometry", CONV_CASES, ids=_conv_id)
@pytest.mark.parametrize("multiplier,use_bias,activation", [(1, True, "tanh"), (2, False, "linear")])
def test_depthwise_conv2d(geometry, multiplier, use_bias, activation):
    kh, kw = geometry["kernel_size"]
    weights = {"kernel": _normal(kh, kw, 2, multiplier, seed=28)}
    if use_bias:
        weights["bias"] = _normal(2 * multiplier, seed=29)
    attrs = dict(geometry, depth_multiplier=multiplier, activation=activation, use_bias=use_bias)
    check_gradients("depthwise_conv2d", _normal(2, 5, 6, 2, seed=30), attrs, weights)


@pytest.mark.parametrize("op", ["depthwise_conv2d", "separable_conv2d"])
@pytest.mark.parametrize("multiplier,strides", [(1, [1, 1]), (2, [2, 1])])
def test_depthwise_ops_in_blocks_of_one_sample(monkeypatch, op, multiplier, strides):
    """Forward and backward run block by block of samples; blocks of one sample each must give the same gradients."""
    from kconvert.runtime.ops import depthwise
    monkeypatch.setattr(depthwise, "_BLOCK_BYTES", 1)
    weights = {"kernel": _normal(3, 3, 2, multiplier, seed=35), "bias": _normal(2 * multiplier, seed=36)}
    if op == "separable_conv2d":
        weights = {"depthwise_kernel": weights["kernel"], "pointwise_kernel": _normal(1, 1, 2 * multiplier, 3, seed=37),
                   "bias": _normal(3, seed=38)}
    attrs = dict(kernel_size=[3, 3], strides=strides, dilation_rate=[1, 1], padding="same", filters=3,
                 depth_multiplier=multiplier, activation="tanh", use_bias=True)
    check_gradients(op, _normal(3, 5, 6, 2, seed=39), attrs, weights)


@pytest.mark.parametrize("geometry", CONV_CASES, ids=_conv_id)
@pytest.mark.parametrize("multiplier,use_bias,activation", [(1, True, "relu"), (2, False, "tanh")])
def test_separable_conv2d(geometry, multiplier, use_bias, activation):
    kh, kw = geometry["kernel_size"]
    weights = {"depthwise_kernel": _normal(kh, kw, 2, multiplier, seed=31),
               "pointwise_kernel": _normal(1, 1, 2 * multiplier, 3, seed=32)}
    if use_bias:
        weights["bias"] = _normal(3, seed=33)
    attrs = dict(geometry, filters=3, depth_multiplier=multiplier, activation=activation, use_bias=use_bias)
    check_gradients("separable_conv2d", _normal(2, 5, 6, 2, seed=34), attrs, weights)


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
@pytest.mark.parametrize("pool,strides,padding", [([2, 2], [2, 2], "valid"), ([3, 3], [2, 2], "same"),
                                                  ([2, 3], [1, 1], "valid"), ([2, 2], [1, 2], "same")])
def test_pools(op, pool, strides, padding):
    check_gradients(op, _normal(2, 5, 7, 3, seed=11), {"pool_size": pool, "strides": strides, "padding": padding}, {})


@pytest.mark.parametrize("op", ["global_avg_pool2d", "global_max_pool2d"])
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pools(op, keepdims):
    check_gradients(op, _normal(2, 3, 4, 3, seed=12), {"keepdims": keepdims}, {})


def test_embedding_accumulates_repeated_ids():
    ids = np.array([[1, 2, 1, 0], [3, 3, 3, 1]])
    check_gradients("embedding", ids, {"input_dim": 5, "output_dim": 3}, {"embeddings": _normal(5, 3, seed=13)},
                    check_x=False)


def _mask(where, batch=3, steps=5):
    if where == "holes":  # no padding pattern: the general masked loop (the LSTM's fused path takes padding only)
        return np.array([[1, 0, 1, 1, 0], [0, 1, 1, 0, 1], [0, 0, 0, 1, 0]], bool)[:batch, :steps]
    lengths = np.array([steps, 2, 0])[:batch]
    mask = np.arange(steps)[None, :] < lengths[:, None]
    return mask if where == "post" else mask[:, ::-1].copy()


def _recurrent_weights(op, units, features, use_bias, seed, prefix="", reset_after=True):
    gates = {"simple_rnn": 1, "lstm": 4, "gru": 3}[op] * units
    weights = {f"{prefix}kernel": _normal(features, gates, seed=seed, scale=0.7),
               f"{prefix}recurrent_kernel": _normal(units, gates, seed=seed + 1, scale=0.7)}
    if use_bias:  # a GRU with reset_after: input and recurrent bias rows
        bias_shape = (2, gates) if op == "gru" and reset_after else (gates,)
        weights[f"{prefix}bias"] = _normal(*bias_shape, seed=seed + 2, scale=0.5)
    return weights


def _recurrent_attrs(op, units=3, **options):
    attrs = dict(units=units, activation="tanh", use_bias=True, return_sequences=False, go_backwards=False,
                 zero_output_for_mask=False, dropout=0.0, recurrent_dropout=0.0)
    if op in ("lstm", "gru"):
        attrs["recurrent_activation"] = "sigmoid"
    if op == "gru":
        attrs["reset_after"] = True
    attrs.update(options)
    return attrs


# The recurrent cells under test: (op, attrs that select a variant).
CELLS = {"simple_rnn": ("simple_rnn", {}), "lstm": ("lstm", {}), "gru": ("gru", {}),
         "gru_reset_before": ("gru", {"reset_after": False})}


RECURRENT_OPTIONS = [dict(return_sequences=rs, go_backwards=gb, zero_output_for_mask=zo)
                     for rs, gb, zo in itertools.product([False, True], [False, True], [False, True])]


@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("masking", [None, "post", "pre", "holes"])
@pytest.mark.parametrize("options", RECURRENT_OPTIONS, ids=lambda o: "-".join(k for k, v in o.items() if v) or "last")
def test_recurrent(cell, masking, options):
    op, variant = CELLS[cell]
    attrs = _recurrent_attrs(op, **variant, **options)
    weights = _recurrent_weights(op, 3, 4, True, seed=14, reset_after=attrs.get("reset_after", True))
    mask = None if masking is None else _mask(masking)
    check_gradients(op, _normal(3, 5, 4, seed=17), attrs, weights, mask=mask)


@pytest.mark.parametrize("cell,activation,recurrent_activation", [
    ("simple_rnn", "relu", None), ("lstm", "relu", "hard_sigmoid"), ("lstm", "tanh", "hard_sigmoid_slope_0_2"),
    ("gru", "relu", "hard_sigmoid"), ("gru_reset_before", "elu", "hard_sigmoid_slope_0_2")])
def test_recurrent_options_without_bias(cell, activation, recurrent_activation):
    op, variant = CELLS[cell]
    attrs = _recurrent_attrs(op, use_bias=False, activation=activation, return_sequences=True, **variant)
    if recurrent_activation:
        attrs["recurrent_activation"] = recurrent_activation
    check_gradients(op, _normal(3, 5, 4, seed=18), attrs, _recurrent_weights(op, 3, 4, False, seed=19),
                    mask=_mask("post"))


@pytest.mark.parametrize("cell,dropout,recurrent_dropout", [("simple_rnn", 0.4, 0.3), ("lstm", 0.4, 0.0),
                                                               ("lstm", 0.4, 0.3), ("gru", 0.4, 0.0), ("gru", 0.4, 0.3),
                                                               ("gru_reset_before", 0.4, 0.3)])
@pytest.mark.parametrize("masking", [None, "post", "holes"])
def test_recurrent_dropout_in_training(cell, dropout, recurrent_dropout, masking):
    op, variant = CELLS[cell]
    attrs = _recurrent_attrs(op, return_sequences=True, dropout=dropout, recurrent_dropout=recurrent_dropout, **variant)
    weights = _recurrent_weights(op, 3, 4, True, seed=23, reset_after=attrs.get("reset_after", True))
    check_gradients(op, _normal(3, 5, 4, seed=22), attrs, weights, mask=None if masking is None else _mask(masking),
                    training=True)


@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave"])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("masking", [None, "pre"])
def test_bidirectional(cell, merge_mode, return_sequences, masking):
    layer, variant = CELLS[cell]
    forward = _recurrent_attrs(layer, return_sequences=return_sequences, zero_output_for_mask=return_sequences,
                               **variant)
    backward = dict(forward, go_backwards=True)
    reset_after = forward.get("reset_after", True)
    weights = {**_recurrent_weights(layer, 3, 4, True, seed=20, prefix="forward_", reset_after=reset_after),
               **_recurrent_weights(layer, 3, 4, True, seed=30, prefix="backward_", reset_after=reset_after)}
    attrs = {"layer": layer, "merge_mode": merge_mode, "forward": forward, "backward": backward}
    mask = None if masking is None else _mask(masking)
    check_gradients("bidirectional", _normal(3, 5, 4, seed=21), attrs, weights, mask=mask)


@pytest.mark.parametrize("case,fused", [("no_mask", True), ("post", True), ("pre", True), ("holes", False),
                                        ("hard_sigmoid", False), ("recurrent_dropout", False)])
def test_lstm_training_takes_the_fused_path_where_it_applies(case, fused, monkeypatch):
    """The fused LSTM step trains Keras-default layers under padding masks; its forward is inference's, bitwise."""
    from kconvert.runtime.ops import OPS, lstm_fused
    calls = []
    original = lstm_fused.train_forward
    monkeypatch.setattr(lstm_fused, "train_forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    options = {"hard_sigmoid": dict(recurrent_activation="hard_sigmoid"),
               "recurrent_dropout": dict(recurrent_dropout=0.3)}.get(case, {})
    attrs = _recurrent_attrs("lstm", return_sequences=True, **options)
    weights = {k: v.astype(np.float32) for k, v in _recurrent_weights("lstm", 3, 4, True, seed=24).items()}
    x = _normal(3, 5, 4, seed=25).astype(np.float32)
    mask = _mask(case) if case in ("post", "pre", "holes") else None
    training = case == "recurrent_dropout"  # outside training there are no dropout masks and the fused path applies
    y, _ = TRAIN_OPS["lstm"][0](x, attrs, weights, mask, _ctx(training=training))
    assert bool(calls) == fused
    if not training:
        np.testing.assert_array_equal(y, OPS["lstm"](x, attrs, weights, mask))


RESHAPINGS = [("reshape", {"target_shape": [-1, 2]}), ("permute", {"dims": [3, 1, 2]}),
              ("zero_padding2d", {"padding": [[1, 0], [2, 1]]}), ("cropping2d", {"cropping": [[0, 1], [1, 1]]}),
              ("up_sampling2d", {"size": [2, 3]})]


@pytest.mark.parametrize("op,attrs", RESHAPINGS, ids=[r[0] for r in RESHAPINGS])
def test_reshaping(op, attrs):
    check_gradients(op, _normal(2, 3, 4, 2, seed=34), attrs, {})


MERGES = [("add", 3), ("subtract", 2), ("multiply", 3), ("average", 3), ("maximum", 3), ("minimum", 3),
          ("concatenate", 3)]


@pytest.mark.parametrize("op,count", MERGES, ids=[m[0] for m in MERGES])
def test_merge(op, count):
    """Each input's gradient against central differences (continuous inputs: no ties)."""
    forward, backward = TRAIN_OPS[op]
    attrs = {"axis": 1} if op == "concatenate" else {}
    xs = [_normal(2, 3, 4, seed=30 + i) for i in range(count)]
    y, cache = forward(xs, attrs, {}, None, _ctx())
    dy = np.random.default_rng(7).normal(size=y.shape)
    dxs, grads = backward(dy, cache, attrs, {})
    assert len(dxs) == count and grads == {}
    for x, analytic in zip(xs, dxs):
        numeric = np.zeros_like(x)
        for index in np.ndindex(x.shape):
            old = x[index]
            x[index] = old + EPS
            plus = float(np.sum(forward(xs, attrs, {}, None, _ctx())[0] * dy))
            x[index] = old - EPS
            minus = float(np.sum(forward(xs, attrs, {}, None, _ctx())[0] * dy))
            x[index] = old
            numeric[index] = (plus - minus) / (2 * EPS)
        assert relative_error(analytic, numeric) < MAX_REL_ERROR, op


@pytest.mark.parametrize("layer,op", [("Maximum", "maximum"), ("Minimum", "minimum")])
def test_maximum_minimum_ties_route_like_tensorflow(layer, op):
    """Inputs from {0, 1, 2} tie often: each input's gradient must be TensorFlow's (the earlier input wins)."""
    import keras
    import tensorflow as tf
    rng = np.random.default_rng(33)
    xs = [rng.integers(0, 3, (4, 5)).astype(np.float32) for _ in range(3)]
    dy = rng.normal(size=(4, 5)).astype(np.float32)
    tensors = [tf.constant(x) for x in xs]
    with tf.GradientTape() as tape:
        for t in tensors:
            tape.watch(t)
        y = getattr(keras.layers, layer)()(tensors)
    expected = tape.gradient(y, tensors, output_gradients=tf.constant(dy))
    forward, backward = TRAIN_OPS[op]
    ours, cache = forward(xs, {}, {}, None, _ctx())
    np.testing.assert_array_equal(ours, y.numpy())
    for got, want in zip(backward(dy, cache, {}, {})[0], expected):
        np.testing.assert_array_equal(got, want.numpy())
