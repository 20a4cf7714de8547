"""Per-step outputs that carry a sequence mask: recorded on the graph output, and fit / evaluate weight
the loss and the metrics by it as Keras does (padded steps count for nothing)."""
import json
import os

import numpy as np
import pytest

from helpers import TEXT_FORMATS, keras_module, randomize_weights, save_and_convert, targets_for
from kconvert.runtime import load
from kconvert.runtime.metrics import macro_f1
from kconvert.schema import GraphError

FIT_RTOL = 1e-4


def _ids(rng, batch=12, steps=7):
    ids = rng.integers(1, 20, (batch, steps)).astype(np.int32)
    lengths = rng.integers(1, steps + 1, batch)
    ids[np.arange(steps)[None, :] >= lengths[:, None]] = 0
    ids[0] = 0  # a fully padded row
    ids[1] = rng.integers(1, 20, steps)  # an unpadded one
    return ids


def _sequence_model(K, final="softmax", bidirectional=False):
    layer = K.layers.LSTM(3, return_sequences=True)
    return K.Sequential([K.Input((7,), dtype="int32"), K.layers.Embedding(20, 4, mask_zero=True),
                         K.layers.Bidirectional(layer) if bidirectional else layer,
                         K.layers.Dense(5, activation="tanh"), K.layers.Dense(3, activation=final)])


CASES = [("sparse_categorical_crossentropy", "softmax", False), ("categorical_crossentropy", "softmax", True),
         ("binary_crossentropy", "sigmoid", False), ("mean_squared_error", "linear", False),
         ("sparse_categorical_crossentropy", "relu", False)]  # no logits: Keras clips probabilities


@pytest.mark.parametrize("loss,final,bidirectional", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_fit_and_evaluate_match_keras(loss, final, bidirectional, tmp_path):
    K = keras_module("keras3")
    model = _sequence_model(K, final, bidirectional)
    randomize_weights(model, seed=61, scale=0.4)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    assert "mask" in runtime.outputs[0]
    rng = np.random.default_rng(62)
    x = _ids(rng)
    y = targets_for(loss, rng, x.shape)
    metrics = ["accuracy"]
    model.compile(optimizer=K.optimizers.Adam(0.02), loss=loss, metrics=metrics)
    expected = model.fit(x, y, epochs=3, batch_size=4, shuffle=False, verbose=0, validation_split=0.25).history
    history = runtime.fit(x, y, epochs=3, batch_size=4, shuffle=False, loss=loss, metrics=metrics,
                          optimizer={"class_name": "Adam", "config": {"learning_rate": 0.02}},
                          validation_split=0.25).history
    assert sorted(history) == sorted(expected)
    for key, values in expected.items():
        np.testing.assert_allclose(history[key], values, rtol=FIT_RTOL, err_msg=key)
    for (key, ours), theirs in zip(runtime._params().items(), model.get_weights(), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=FIT_RTOL, atol=1e-6, err_msg=str(key))
    expected_eval = model.evaluate(x, y, batch_size=5, verbose=0, return_dict=True)  # batches weigh by rows
    ours_eval = runtime.evaluate(x, y, batch_size=5)
    for key, value in expected_eval.items():
        np.testing.assert_allclose(ours_eval[key], value, rtol=FIT_RTOL, err_msg=key)


def test_a_batch_with_no_real_step_contributes_zero_loss(tmp_path):
    """Keras divides by the number of real steps with divide_no_nan: an all-padding batch has loss 0."""
    K = keras_module("keras3")
    model = _sequence_model(K)
    randomize_weights(model, seed=63, scale=0.4)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    x = _ids(np.random.default_rng(64), batch=8)
    x[:4] = 0
    y = np.random.default_rng(65).integers(0, 3, x.shape)
    model.compile(optimizer=K.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    expected = model.fit(x, y, epochs=2, batch_size=4, shuffle=False, verbose=0).history["loss"]
    history = runtime.fit(x, y, epochs=2, batch_size=4, shuffle=False, loss="sparse_categorical_crossentropy",
                          optimizer={"class_name": "SGD", "config": {"learning_rate": 0.1}}).history["loss"]
    np.testing.assert_allclose(history, expected, rtol=FIT_RTOL)


def test_macro_f1_counts_only_real_steps(tmp_path):
    K = keras_module("keras3")
    model = _sequence_model(K)
    randomize_weights(model, seed=66, scale=0.4)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    rng = np.random.default_rng(67)
    x = _ids(rng)
    y = rng.integers(0, 3, x.shape)
    real = x != 0
    pred = runtime.predict(x).argmax(-1)
    y[~real] = (pred[~real] + 1) % 3  # padded steps all wrong: counting them would lower the score
    scores = runtime.evaluate(x, y, loss="sparse_categorical_crossentropy", metrics=["accuracy", "macro_f1"])
    expected = macro_f1(y[real], pred[real])  # the metric itself is tested in test_training_api.py
    assert scores["macro_f1"] == pytest.approx(expected, abs=1e-12)
    assert scores["accuracy"] == pytest.approx(np.mean(pred[real] == y[real]), abs=1e-12)
    assert macro_f1(y.ravel(), pred.ravel()) < expected - 0.05


@pytest.mark.parametrize("flavour,ext", TEXT_FORMATS)
def test_converter_records_the_output_mask(flavour, ext, tmp_path):
    K = keras_module(flavour)
    sequence = _sequence_model(K)
    runtime, _ = save_and_convert(sequence, tmp_path, ext)
    mask = runtime.outputs[0]["mask"]
    assert runtime.node(mask)["op"] == "not_equal"
    # Embedding(mask_zero) straight into Dense: the mask passes Dense, so the output carries it too.
    direct = K.Sequential([K.Input((7,), dtype="int32"), K.layers.Embedding(20, 4, mask_zero=True), K.layers.Dense(2)])
    os.makedirs(tmp_path / "direct")
    runtime, _ = save_and_convert(direct, tmp_path / "direct", ext)
    assert runtime.node(runtime.outputs[0]["mask"])["op"] == "not_equal"
    # A last-step output has no mask.
    last = K.Sequential([K.Input((7,), dtype="int32"), K.layers.Embedding(20, 4, mask_zero=True), K.layers.LSTM(2)])
    os.makedirs(tmp_path / "last")
    runtime, _ = save_and_convert(last, tmp_path / "last", ext)
    assert "mask" not in runtime.outputs[0]


@pytest.mark.parametrize("edit,message", [
    (lambda doc: doc["outputs"][0].update(mask="nowhere"), "not an input or a node"),
    (lambda doc: doc["outputs"][0].update(mask=doc["nodes"][0]["name"]), "must be a bool"),  # the embedding
    (lambda doc: doc["inputs"][0].update(mask=doc["outputs"][0]["mask"]), "only outputs carry a mask"),
])
def test_invalid_output_masks_are_refused(edit, message, tmp_path):
    K = keras_module("keras3")
    _, graph = save_and_convert(_sequence_model(K), tmp_path, ".keras")
    with open(graph, encoding="utf-8") as fh:
        doc = json.load(fh)
    edit(doc)
    with open(graph, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
    with pytest.raises(GraphError, match=message):
        load(os.path.dirname(graph))
