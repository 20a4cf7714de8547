"""Frozen layers, regularizers and constraints: recorded by the converter, applied by fit as Keras applies them."""
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

from helpers import FORMATS, keras_module, padded_ids, randomize_weights, save_and_convert
from kconvert.runtime import load
from kconvert.runtime.regularization import _project, frozen_weights, penalty
from kconvert.runtime.training import make_trainer
from kconvert.schema import GraphError, InputDataError

FIT_RTOL = 1e-4
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-6


def _dense(K):
    R, C = K.regularizers, K.constraints
    return K.Sequential([
        K.Input((5,)),
        K.layers.Dense(6, activation="tanh", kernel_regularizer=R.L1L2(0.01, 0.02), bias_regularizer=R.L2(0.03),
                       activity_regularizer=R.L1L2(0.01, 0.05), kernel_constraint=C.MaxNorm(0.8)),
        K.layers.Dense(4, activation="relu", kernel_regularizer=R.L2(0.5),
                       kernel_constraint=C.MinMaxNorm(0.2, 0.9, 0.7), bias_constraint="non_neg", trainable=False),
        K.layers.Dense(5, activation="elu", kernel_constraint=C.MinMaxNorm(0.3, 0.6, 0.4, axis=[0]),
                       bias_constraint="non_neg", activity_regularizer=R.L1(0.02)),
        K.layers.Dense(3, activation="softmax", kernel_regularizer=R.L1(0.02), kernel_constraint=C.UnitNorm(axis=1),
                       activity_regularizer=R.L2(0.5))])  # on the output: through the softmax, not the logits


def _cnn(K):
    R, C = K.regularizers, K.constraints
    return K.Sequential([
        K.Input((8, 8, 2)),
        K.layers.Conv2D(3, 3, padding="same", activation="relu", kernel_regularizer=R.L2(0.05),
                        bias_regularizer=R.L1(0.02), kernel_constraint=C.MaxNorm(0.7, axis=[0, 1, 2]),
                        activity_regularizer=R.L2(0.01)),
        K.layers.MaxPooling2D(),
        K.layers.Conv2D(4, 2, activation="tanh", trainable=False, kernel_regularizer=R.L2(1.0)),
        K.layers.Flatten(),
        K.layers.Dense(3, kernel_regularizer=R.L1L2(0.01, 0.01), bias_constraint="non_neg"),
        K.layers.Softmax(activity_regularizer=R.L1L2(0.2, 0.3))])


def _text_lstm(K):
    R, C = K.regularizers, K.constraints
    return K.Sequential([
        K.Input((7,), dtype="int32"),
        K.layers.Embedding(20, 4, mask_zero=True, embeddings_regularizer=R.L2(0.05),
                           embeddings_constraint=C.UnitNorm(axis=1)),
        K.layers.LSTM(3, kernel_regularizer=R.L1(0.01), recurrent_regularizer=R.L2(0.05),
                      bias_regularizer=R.L1L2(0.01, 0.02), recurrent_constraint=C.MaxNorm(0.9),
                      activity_regularizer=R.L2(0.02)),
        K.layers.Dense(4, activation="tanh", trainable=False, bias_regularizer=R.L2(1.0)),
        K.layers.Dense(3, activation="softmax")])


def _text_bidirectional(K):
    R, C = K.regularizers, K.constraints
    backward = K.layers.SimpleRNN(2, return_sequences=True, go_backwards=True, kernel_regularizer=R.L2(0.1),
                                  recurrent_constraint=C.UnitNorm())
    return K.Sequential([
        K.Input((7,), dtype="int32"),
        K.layers.Embedding(20, 4, mask_zero=True, trainable=False, embeddings_regularizer=R.L1(1.0)),
        K.layers.Bidirectional(K.layers.SimpleRNN(2, return_sequences=True, trainable=False), backward_layer=backward),
        K.layers.Bidirectional(K.layers.LSTM(3, kernel_regularizer=R.L1L2(0.02, 0.03), bias_constraint="non_neg"),
                               merge_mode="sum", activity_regularizer=R.L1(0.05)),
        K.layers.Dense(3, activation="softmax", bias_regularizer=R.L2(0.1))])


def _text_gru(K):
    R, C = K.regularizers, K.constraints
    return K.Sequential([  # MaxNorm(axis=0) on the (2, 3 * units) bias: norms over its input and recurrent rows
        K.Input((7,), dtype="int32"),
        K.layers.Embedding(20, 4, mask_zero=True),
        K.layers.GRU(3, return_sequences=True, kernel_regularizer=R.L2(0.05), bias_regularizer=R.L1L2(0.01, 0.02),
                     bias_constraint=C.MaxNorm(0.3, axis=0)),
        K.layers.GRU(2, reset_after=False, trainable=False),
        K.layers.Dense(3, activation="softmax")])


def _cnn_batchnorm(K):
    R, C = K.regularizers, K.constraints
    return K.Sequential([  # regularized and constrained gamma and beta; a frozen one normalizes as in inference
        K.Input((6, 6, 2)),
        K.layers.Conv2D(3, 3, use_bias=False),
        K.layers.BatchNormalization(gamma_regularizer=R.L2(0.05), beta_regularizer=R.L1(0.02),
                                    gamma_constraint=C.MaxNorm(0.9), beta_constraint="non_neg"),
        K.layers.ReLU(), K.layers.Flatten(),
        K.layers.BatchNormalization(trainable=False, gamma_regularizer=R.L2(1.0)),
        K.layers.Dense(3, activation="softmax")])


def _depthwise(K):
    R, C = K.regularizers, K.constraints
    return K.Sequential([
        K.Input((8, 8, 2)),
        K.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="relu",
                                 depthwise_regularizer=R.L2(0.05), bias_regularizer=R.L1(0.02),
                                 depthwise_constraint=C.MaxNorm(0.7, axis=[0, 1, 2]), bias_constraint="non_neg"),
        K.layers.DepthwiseConv2D(2, strides=2, trainable=False, depthwise_regularizer=R.L2(1.0)),
        K.layers.SeparableConv2D(3, 2, depthwise_regularizer=R.L1(0.03), pointwise_regularizer=R.L2(0.04),
                                 bias_regularizer=R.L2(0.05), pointwise_constraint=C.MaxNorm(0.6, axis=[0, 1, 2]),
                                 depthwise_constraint="non_neg"),
        K.layers.Flatten(), K.layers.Dense(3, activation="softmax")])


MODELS = {
    "depthwise": (_depthwise, lambda r: r.normal(size=(12, 8, 8, 2)).astype(np.float32)),
    "cnn_batchnorm": (_cnn_batchnorm, lambda r: r.normal(1, 2, size=(12, 6, 6, 2)).astype(np.float32)),
    "dense": (_dense, lambda r: r.normal(size=(18, 5)).astype(np.float32)),
    "cnn": (_cnn, lambda r: r.normal(size=(12, 8, 8, 2)).astype(np.float32)),
    "text_lstm": (_text_lstm, lambda r: padded_ids(r, 12, 7, 20, where="post")),
    "text_bidirectional": (_text_bidirectional, lambda r: padded_ids(r, 12, 7, 20, where="pre")),
    "text_gru": (_text_gru, lambda r: padded_ids(r, 12, 7, 20, where="post")),
}
OPTIMIZERS = {"sgd_momentum": ("SGD", {"learning_rate": 0.05, "momentum": 0.9}),
              "adam": ("Adam", {"learning_rate": 0.02})}


def _data(kind, seed=51):
    rng = np.random.default_rng(seed)
    x = MODELS[kind][1](rng)
    return x, rng.integers(0, 3, len(x))


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_loss_and_gradients_match_tensorflow(kind, tmp_path):
    """One step: Keras's total loss (with model.losses) and its gradients w.r.t. the trainable weights."""
    import keras
    import tensorflow as tf
    K = keras_module("keras3")
    model = MODELS[kind][0](K)
    randomize_weights(model, seed=52, scale=0.4)
    x, y = _data(kind)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()

    @tf.function  # graph mode, as in fit
    def step(x, y):
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            loss = loss_fn(y, out) + tf.add_n(model.losses)
        return loss, tape.gradient(loss, model.trainable_weights)

    expected_loss, expected = step(tf.constant(x), tf.constant(y))
    expected = [tf.convert_to_tensor(g).numpy() for g in expected]
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    trainer = make_trainer(runtime, "sparse_categorical_crossentropy", "sgd", [], False)
    feed, _ = runtime._prepare(x)
    values, caches = runtime._forward_train(feed, SimpleNamespace(training=True, rng=None))
    loss, grads = trainer.gradients(values, caches, y)
    trainable = list(grads)
    assert len(trainable) == len(expected) < len(runtime._params())  # every case freezes something
    np.testing.assert_allclose(loss, float(expected_loss), rtol=GRAD_RTOL)
    for key, e in zip(trainable, expected):
        np.testing.assert_allclose(np.asarray(grads[key]), e, rtol=GRAD_RTOL, atol=GRAD_ATOL, err_msg=str(key))


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_fit_matches_keras(kind, optimizer, tmp_path):
    """History (loss and val_loss include the penalties) and final weights, frozen ones unchanged."""
    K = keras_module("keras3")
    model = MODELS[kind][0](K)
    randomize_weights(model, seed=53, scale=0.4)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    before = {k: v.copy() for k, v in runtime._params().items()}
    x, y = _data(kind)
    cls, kwargs = OPTIMIZERS[optimizer]
    model.compile(optimizer=getattr(K.optimizers, cls)(**kwargs), loss="sparse_categorical_crossentropy")
    expected = model.fit(x, y, epochs=3, batch_size=4, shuffle=False, verbose=0, validation_split=0.25).history
    history = runtime.fit(x, y, epochs=3, batch_size=4, shuffle=False, loss="sparse_categorical_crossentropy",
                          optimizer={"class_name": cls, "config": kwargs}, metrics=[], validation_split=0.25).history
    assert sorted(history) == sorted(expected)
    for key, values in expected.items():
        np.testing.assert_allclose(history[key], values, rtol=FIT_RTOL, err_msg=key)
    frozen = {(node["name"], w) for node in runtime.doc["nodes"] for w in frozen_weights(node)}
    for (key, ours), theirs in zip(runtime._params().items(), model.get_weights()):
        np.testing.assert_allclose(ours, theirs, rtol=FIT_RTOL, atol=1e-6, err_msg=str(key))
        if key in frozen:
            np.testing.assert_array_equal(ours, before[key], err_msg=str(key))
        else:
            assert not np.array_equal(ours, before[key]), f"{key} did not train"
    assert frozen


@pytest.mark.parametrize("l1,l2", [(0.3, 0.0), (0.0, 0.7), (0.3, 0.7)])
def test_penalty_gradient_matches_finite_differences(l1, l2):
    x = np.random.default_rng(54).normal(size=(4, 5))  # float64; no element near |x| = 0, where L1 has its kink
    x[np.abs(x) < 0.05] = 0.5
    upstream = 1 / 3
    loss, grad = penalty(x, l1, l2, upstream)
    numeric = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        old = x[index]
        x[index] = old + 1e-6
        plus = penalty(x, l1, l2)[0]
        x[index] = old - 1e-6
        minus = penalty(x, l1, l2)[0]
        x[index] = old
        numeric[index] = upstream * (plus - minus) / 2e-6
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(loss, np.float32(l1) * np.abs(x).sum() + np.float32(l2) * (x * x).sum(), rtol=1e-12)


CONSTRAINTS = [("MaxNorm", {"max_value": 0.5, "axis": 0}, (6, 4)),
               ("MaxNorm", {"max_value": 0.9, "axis": [0, 1, 2]}, (3, 3, 2, 4)),
               ("UnitNorm", {"axis": 1}, (6, 4)), ("UnitNorm", {"axis": [0, 1]}, (3, 3, 2, 4)),
               ("MinMaxNorm", {"min_value": 0.8, "max_value": 1.2, "rate": 0.3, "axis": 0}, (6, 4)),
               ("MinMaxNorm", {"min_value": 0.5, "max_value": 0.6, "rate": 1.0, "axis": -1}, (3, 3, 2, 4)),
               ("NonNeg", {}, (6, 4))]


@pytest.mark.parametrize("cls,config,shape", CONSTRAINTS, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(CONSTRAINTS)])
def test_constraints_match_keras(cls, config, shape):
    K = keras_module("keras3")
    w = np.random.default_rng(55).normal(0, 0.5, shape).astype(np.float32)
    expected = np.asarray(getattr(K.constraints, cls)(**config)(w))
    kinds = {"MaxNorm": "max_norm", "UnitNorm": "unit_norm", "MinMaxNorm": "min_max_norm", "NonNeg": "non_neg"}
    spec = {"kind": kinds[cls],
            **{k: (v if isinstance(v, list) else [v]) if k == "axis" else v for k, v in config.items()}}
    actual = _project(w, spec)
    assert actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-7)
    assert not np.allclose(actual, w) or cls == "NonNeg" and (w >= 0).all()  # the case must change something


def _recorded(flavour, ext, tmp_path):
    K = keras_module(flavour)
    R, C = K.regularizers, K.constraints
    model = K.Sequential([
        K.Input((4,)),
        K.layers.Dense(3, kernel_regularizer=R.L1L2(l1=0.25, l2=0.5), bias_regularizer=R.L2(0.125),
                       kernel_constraint=C.MaxNorm(1.5, axis=0), activity_regularizer=R.L1(0.25)),
        K.layers.Dense(2, trainable=False, kernel_constraint=C.MinMaxNorm(0.5, 1.0, 0.25, axis=[0]),
                       bias_constraint=C.NonNeg()),
        K.layers.Dense(2, kernel_constraint=C.UnitNorm(axis=1), use_bias=False, bias_regularizer=R.L2(1.0))])
    runtime, _ = save_and_convert(model, tmp_path, ext)
    return [node.get("training") for node in runtime.doc["nodes"]]


@pytest.mark.parametrize("flavour,ext", FORMATS)
def test_converter_records_training_settings(flavour, ext, tmp_path):
    records = _recorded(flavour, ext, tmp_path)
    assert records == [
        {"regularizers": {"kernel": {"l1": 0.25, "l2": 0.5}, "bias": {"l1": 0.0, "l2": 0.125}},
         "constraints": {"kernel": {"kind": "max_norm", "max_value": 1.5, "axis": [0]}},
         "activity_regularizer": {"l1": 0.25, "l2": 0.0}},
        {"non_trainable": ["kernel", "bias"],
         "constraints": {
             "kernel": {"kind": "min_max_norm", "min_value": 0.5, "max_value": 1.0, "rate": 0.25, "axis": [0]},
             "bias": {"kind": "non_neg"}}},
        {"constraints": {"kernel": {"kind": "unit_norm", "axis": [1]}}}]  # no bias: its regularizer is moot


def test_unsupported_regularizer_is_recorded_and_refused_by_fit_only(tmp_path):
    K = keras_module("keras3")
    model = K.Sequential([K.Input((4,)), K.layers.Dense(4, kernel_regularizer=K.regularizers.OrthogonalRegularizer(),
                                                        name="orthogonal"),
                          K.layers.Dense(2, trainable=False, kernel_regularizer=K.regularizers.OrthogonalRegularizer()),
                          K.layers.Dense(2, activation="softmax")])
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    expected = {"unsupported": ["kernel_regularizer OrthogonalRegularizer on kernel"]}
    assert runtime.doc["nodes"][0]["training"] == expected
    assert "unsupported" not in runtime.doc["nodes"][1]["training"]  # Keras does not regularize a frozen weight
    x = np.ones((3, 4), np.float32)
    assert runtime.predict(x).shape == (3, 2)
    message = "node 'orthogonal' was saved with kernel_regularizer OrthogonalRegularizer on kernel, which fit cannot"
    with pytest.raises(InputDataError, match=message):
        runtime.fit(x, np.zeros(3, int), loss="sparse_categorical_crossentropy", optimizer="sgd")


def test_frozen_model_trains_nothing(tmp_path):
    K = keras_module("keras3")
    model = K.Sequential([K.Input((4,)), K.layers.Dense(3, activation="relu"), K.layers.Dense(2, activation="softmax")])
    model.trainable = False
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    assert [n["training"] for n in runtime.doc["nodes"]] == [{"non_trainable": ["kernel", "bias"]}] * 2
    frozen = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    assert f"Trainable params: 0\nNon-trainable params: {frozen}" in runtime.summary() and frozen == 23
    before = runtime.get_weights()
    runtime.fit(np.ones((4, 4), np.float32), np.zeros(4, int), loss="sparse_categorical_crossentropy", optimizer="sgd")
    after = runtime.get_weights()
    assert all(np.array_equal(before[n][k], after[n][k]) for n in before for k in before[n])


@pytest.mark.parametrize("record,message", [
    ({"regularizers": {"gamma": {"l1": 0.1, "l2": 0.0}}}, "names weight"),
    ({"non_trainable": ["kernel", "recurrent_kernel"]}, "names weight"),
    ({"constraints": {"kernel": {"kind": "max_norm", "max_value": 1.0, "axis": [2]}}}, "does not fit weight kernel"),
    ({"constraints": {"kernel": {"kind": "unit_norm", "axis": [0, -2]}}}, "does not fit weight kernel"),
    ({"constraints": {"kernel": {"kind": "unit_norm"}}}, "does not match the kgraph v1 schema"),
    ({"activity_regularizer": {"l1": 0.1}}, "does not match the kgraph v1 schema"),
    ({}, "does not match the kgraph v1 schema"),
])
def test_invalid_training_records_are_refused(record, message, tmp_path):
    K = keras_module("keras3")
    model = K.Sequential([K.Input((4,)), K.layers.Dense(2)])
    _, graph = save_and_convert(model, tmp_path, ".keras")
    with open(graph, encoding="utf-8") as fh:
        doc = json.load(fh)
    doc["nodes"][0]["training"] = record
    with open(graph, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
    with pytest.raises(GraphError, match=message):
        load(os.path.dirname(graph))


def test_all_zero_penalties_in_a_hand_written_record_add_nothing(tmp_path):
    """The converter leaves zero regularizers out; a graph written by another tool may not."""
    K = keras_module("keras3")
    model = K.Sequential([K.Input((4,)), K.layers.Dense(3, activation="tanh"), K.layers.Dense(2, activation="softmax")])
    _, graph = save_and_convert(model, tmp_path, ".keras")
    with open(graph, encoding="utf-8") as fh:
        doc = json.load(fh)
    doc["nodes"][0]["training"] = {"regularizers": {"kernel": {"l1": 0, "l2": 0.0}},
                                   "activity_regularizer": {"l1": 0.0, "l2": 0}}
    with open(graph, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
    edited, plain = load(os.path.dirname(graph)), load(os.path.dirname(graph))
    plain.doc["nodes"][0].pop("training")
    x, y = np.random.default_rng(56).normal(size=(6, 4)).astype(np.float32), np.array([0, 1] * 3)
    for runtime in (edited, plain):
        runtime.fit(x, y, loss="sparse_categorical_crossentropy", optimizer="sgd", shuffle=False)
    for node, weights in plain.get_weights().items():
        for key, value in weights.items():
            np.testing.assert_array_equal(edited.weights[node][key], value)
