"""Embedding -> recurrent layer through a projection table (runtime/projection.py): Keras's outputs whatever
happened to the weights since the table was built, from any thread, and the plain path where a table does
not pay. test_parity_layers runs every recurrent case both ways."""
import numpy as np
import pytest

from helpers import assert_parity, keras_module, keras_predict, padded_ids, randomize_weights, save_and_convert
from kconvert.runtime import InputDataError, projection

VOCAB, STEPS = 40, 9


def _model():
    K = keras_module("keras3")
    model = K.Sequential([K.Input((STEPS,), dtype="int32"), K.layers.Embedding(VOCAB, 6, mask_zero=True),
                          K.layers.Bidirectional(K.layers.LSTM(5)), K.layers.Dense(3, activation="softmax")])
    randomize_weights(model, seed=11)
    model.compile(optimizer=K.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    return model


def _to_keras(runtime, model):
    """Copy the runtime's current weights into the Keras model (same layers, same weight order)."""
    by_op = {node["op"]: runtime.weights[node["name"]] for node in runtime.doc["nodes"]}
    model.layers[0].set_weights([by_op["embedding"]["embeddings"]])
    model.layers[1].set_weights([by_op["bidirectional"][f"{d}_{k}"] for d in ("forward", "backward")
                                 for k in ("kernel", "recurrent_kernel", "bias")])
    model.layers[2].set_weights([by_op["dense"]["kernel"], by_op["dense"]["bias"]])


def _node(runtime, op):
    return next(node["name"] for node in runtime.doc["nodes"] if node["op"] == op)


def test_tables_follow_every_change_of_the_weights(tmp_path):
    model = _model()
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    x = padded_ids(np.random.default_rng(0), 64, STEPS, VOCAB)
    assert_parity(runtime.predict(x), keras_predict(model, x))
    assert list(runtime._projections._entries) == [_node(runtime, "bidirectional")]
    rng = np.random.default_rng(1)
    embedding = runtime.weights[_node(runtime, "embedding")]
    recurrent = runtime.weights[_node(runtime, "bidirectional")]

    def kernel():
        return rng.normal(0, 0.5, (6, 20)).astype(np.float32)
    changes = {
        "embeddings edited in place": lambda: embedding["embeddings"].__imul__(-1.5),
        "one id's row edited": lambda: embedding["embeddings"][x[3, 0]].__iadd__(0.25),
        "backward kernel replaced": lambda: recurrent.__setitem__("backward_kernel", kernel()),
        "forward bias edited": lambda: recurrent["forward_bias"].__iadd__(0.5),
        "set_weights": lambda: runtime.set_weights({_node(runtime, "bidirectional"): {"forward_kernel": kernel()}}),
        "fit": lambda: runtime.fit(x, rng.integers(0, 3, len(x)), epochs=2, batch_size=16, seed=0),
        "reinitialize": lambda: runtime.reinitialize(seed=3),
    }
    for what, change in changes.items():
        change()
        _to_keras(runtime, model)
        np.testing.assert_allclose(runtime.predict(x), keras_predict(model, x), rtol=1e-5, atol=1e-6, err_msg=what)


def test_worker_threads_share_one_table(tmp_path):
    model = _model()
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    x = padded_ids(np.random.default_rng(2), 300, STEPS, VOCAB, where="pre")
    assert_parity(runtime.predict(x, threads=2, batch_size=100), keras_predict(model, x))
    assert len(runtime._projections._entries) == 1


def test_plain_path_where_a_table_does_not_pay(tmp_path, monkeypatch):
    model = _model()
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    small = padded_ids(np.random.default_rng(3), 1, STEPS, VOCAB, full_rows=False)  # 9 ids x 40 columns < 16 x 40 rows
    assert_parity(runtime.predict(small), keras_predict(model, small))
    assert not runtime._projections._entries
    large = padded_ids(np.random.default_rng(4), 50, STEPS, VOCAB)
    monkeypatch.setattr(projection, "MAX_TABLE_BYTES", VOCAB * 40 * 4 - 1)  # one byte short of both directions'
    assert_parity(runtime.predict(large), keras_predict(model, large))
    assert not runtime._projections._entries
    monkeypatch.undo()
    assert_parity(runtime.predict(large), keras_predict(model, large))
    assert runtime._projections._entries


def test_ids_outside_the_vocabulary_refused_on_the_table_path(tmp_path):
    runtime, _ = save_and_convert(_model(), tmp_path, ".keras")
    x = padded_ids(np.random.default_rng(5), 50, STEPS, VOCAB)
    runtime.predict(x)
    assert runtime._projections._entries
    x[7, 0] = VOCAB
    with pytest.raises(InputDataError, match=f"embedding id {VOCAB} is outside \\[0, {VOCAB}\\)"):
        runtime.predict(x)
