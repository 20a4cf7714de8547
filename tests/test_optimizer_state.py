"""A trained model's optimizer state (iteration count, moments) through conversion: the runtime's fit continues
as keras.models.load_model + fit does, a second fit continues the first as Keras's does, and a saved graph
continues where it stopped."""
import json
import os
import re

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import keras_module, padded_ids, randomize_weights
from kconvert.converter import convert
from kconvert.runtime import load
from kconvert.schema import ConversionError, GraphError, InputDataError

FIT_RTOL, FIT_ATOL = 1e-4, 1e-6

OPTIMIZERS = {
    "adam": lambda K: K.optimizers.Adam(learning_rate=0.01),
    "adam_amsgrad": lambda K: K.optimizers.Adam(learning_rate=0.01, amsgrad=True),
    "adamw": lambda K: K.optimizers.AdamW(learning_rate=0.01, weight_decay=0.05),
    "sgd_nesterov": lambda K: K.optimizers.SGD(learning_rate=0.05, momentum=0.9, nesterov=True),
    "sgd": lambda K: K.optimizers.SGD(learning_rate=0.05),  # the state is the iteration count alone
    "rmsprop_centered_momentum": lambda K: K.optimizers.RMSprop(learning_rate=0.01, momentum=0.5, centered=True),
    # A schedule continues from the saved iteration count, and Keras 3 keeps no learning-rate variable then.
    "adam_schedule": lambda K: K.optimizers.Adam(K.optimizers.schedules.ExponentialDecay(0.02, 3, 0.5)),
}


def _dense(K):
    """Dense layers around a frozen one: Keras's trainable_variables (and so the slots' order) skip it."""
    return K.Sequential([K.Input((5,)), K.layers.Dense(6, activation="tanh"),
                         K.layers.Dense(4, activation="relu", trainable=False),
                         K.layers.Dense(3, activation="softmax")])


def _text(K):
    return K.Sequential([K.Input((7,), dtype="int32"), K.layers.Embedding(20, 4, mask_zero=True),
                         K.layers.Bidirectional(K.layers.LSTM(3)), K.layers.Dense(3, activation="softmax")])


def _text_gru(K):
    return K.Sequential([K.Input((7,), dtype="int32"), K.layers.Embedding(20, 4, mask_zero=True),
                         K.layers.GRU(3, return_sequences=True),
                         K.layers.Bidirectional(K.layers.GRU(2, reset_after=False)),
                         K.layers.Dense(3, activation="softmax")])


def _cnn(K):
    return K.Sequential([K.Input((6, 6, 2)), K.layers.Conv2D(3, 3, padding="same", activation="relu"),
                         K.layers.MaxPooling2D(), K.layers.Flatten(), K.layers.Dense(3, activation="softmax")])


def _cnn_batchnorm(K):
    """Moving statistics have no slots; a frozen BatchNormalization has none at all."""
    return K.Sequential([K.Input((6, 6, 2)), K.layers.Conv2D(3, 3, use_bias=False), K.layers.BatchNormalization(),
                         K.layers.ReLU(), K.layers.Flatten(), K.layers.BatchNormalization(trainable=False),
                         K.layers.Dense(3, activation="softmax")])


DATA = {
    _cnn_batchnorm: lambda rng: rng.normal(1, 2, size=(16, 6, 6, 2)).astype(np.float32),
    _dense: lambda rng: rng.normal(size=(16, 5)).astype(np.float32),
    _text: lambda rng: padded_ids(rng, 16, 7, 20, where="post"),
    _text_gru: lambda rng: padded_ids(rng, 16, 7, 20, where="pre"),
    _cnn: lambda rng: rng.normal(size=(16, 6, 6, 2)).astype(np.float32),
}


def _trained(K, build, optimizer, tmp_path, ext=".keras", epochs=2, seed=0):
    """A Keras model trained `epochs` epochs (4 steps each) and saved; returns (model, path, x, y)."""
    rng = np.random.default_rng(seed)
    x, y = DATA[build](rng), rng.integers(0, 3, 16)
    model = build(K)
    randomize_weights(model, seed=seed + 1, scale=0.4)
    model.compile(optimizer=OPTIMIZERS[optimizer](K), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=4, shuffle=False, verbose=0)
    path = str(tmp_path / f"model{ext}")
    model.save(path)
    return model, path, x, y


def _assert_same_weights(runtime, keras_model):
    theirs = keras_model.get_weights()  # every weight, frozen ones too, in the graph's order
    ours = list(runtime._params().items())
    assert len(ours) == len(theirs)
    for (key, value), expected in zip(ours, theirs):
        np.testing.assert_allclose(value, expected, rtol=FIT_RTOL, atol=FIT_ATOL, err_msg=str(key))


def _continue_both(K, path, x, y, runtime, keras_model=None):
    """One more epoch in Keras (load_model + fit, or keras_model's own fit) and in the runtime (fit with the
    graph's optimizer)."""
    keras_model = keras_model or K.models.load_model(path)
    keras_history = keras_model.fit(x, y, epochs=1, batch_size=4, shuffle=False, verbose=0)
    history = runtime.fit(x, y, epochs=1, batch_size=4, shuffle=False, metrics=[])
    np.testing.assert_allclose(history.history["loss"], keras_history.history["loss"], rtol=FIT_RTOL)
    _assert_same_weights(runtime, keras_model)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_fit_continues_like_load_model_then_fit(optimizer, tmp_path):
    K = keras_module("keras3")
    model, path, x, y = _trained(K, _dense, optimizer, tmp_path)
    runtime = load(convert(path, str(tmp_path / "graph")))
    state = runtime.doc["training"]["optimizer_state"]
    assert state["iterations"] == int(model.optimizer.iterations) == 8
    assert runtime.optimizer.iterations == 8
    _continue_both(K, path, x, y, runtime)


@pytest.mark.parametrize("flavour,ext", [("keras3", ".h5"), ("tf_keras", ".h5"), ("tf_keras", ".keras")])
def test_fit_continues_from_other_formats(flavour, ext, tmp_path):
    K = keras_module(flavour)
    model, path, x, y = _trained(K, _dense, "adam_amsgrad", tmp_path, ext=ext)
    runtime = load(convert(path, str(tmp_path / "graph")))
    assert runtime.optimizer.iterations == 8
    # Keras 3.15's own load_model of a .h5 cannot fit on ("Unknown variable": its legacy loader builds the
    # optimizer on other variables), so there the trained model itself goes on.
    _continue_both(K, path, x, y, runtime, keras_model=model if flavour == "keras3" else None)


@pytest.mark.parametrize("build,optimizer", [(_text, "adam"), (_text_gru, "adam_amsgrad"),
                                             (_cnn, "rmsprop_centered_momentum"), (_cnn_batchnorm, "adam")],
                         ids=["embedding_bilstm-adam", "gru_bigru-adam_amsgrad", "cnn-rmsprop", "batchnorm-adam"])
def test_fit_continues_nested_and_conv_layers(build, optimizer, tmp_path):
    """An Embedding's and both directions' slots land on the right weights (Keras's order: forward, backward)."""
    K = keras_module("keras3")
    _, path, x, y = _trained(K, build, optimizer, tmp_path)
    _continue_both(K, path, x, y, load(convert(path, str(tmp_path / "graph"))))


def test_second_fit_continues_the_first_and_a_saved_graph_continues(tmp_path):
    """Keras's model.fit twice continues one optimizer; so do runtime fit twice and fit, save, load, fit."""
    K = keras_module("keras3")
    rng = np.random.default_rng(5)
    x, y = DATA[_dense](rng), rng.integers(0, 3, 16)
    model = _dense(K)
    randomize_weights(model, seed=6, scale=0.4)
    model.compile(optimizer=OPTIMIZERS["adam_schedule"](K), loss="sparse_categorical_crossentropy")
    fresh = str(tmp_path / "fresh.keras")
    model.save(fresh)
    runtime = load(convert(fresh, str(tmp_path / "fresh_graph")))
    assert "optimizer_state" not in runtime.doc["training"]  # compiled, never trained: nothing to carry
    for _ in range(2):
        model.fit(x, y, epochs=1, batch_size=4, shuffle=False, verbose=0)
        runtime.fit(x, y, epochs=1, batch_size=4, shuffle=False, metrics=[])
        _assert_same_weights(runtime, model)
    saved = load(runtime.save(str(tmp_path / "saved")))
    assert saved.doc["training"]["optimizer_state"]["iterations"] == 8
    assert saved.doc["training"]["optimizer"]["config"]["learning_rate"]["class_name"] == "ExponentialDecay"
    model.fit(x, y, epochs=1, batch_size=4, shuffle=False, verbose=0)
    saved.fit(x, y, epochs=1, batch_size=4, shuffle=False, metrics=[])
    _assert_same_weights(saved, model)


def test_a_state_keras_would_skip_is_left_out_with_a_note(tmp_path):
    """Frozen after training without recompiling: the saved slots no longer match the trainable weights, so
    load_model skips them (fresh moments) and the converter leaves them out, saying so."""
    K = keras_module("keras3")
    model, _, x, y = _trained(K, _dense, "adam", tmp_path)
    model.layers[0].trainable = False
    path = str(tmp_path / "refrozen.keras")
    model.save(path)
    notes = []
    runtime = load(convert(path, str(tmp_path / "graph"), notes=notes.append))
    assert len(notes) == 1 and "not carried" in notes[0]
    assert "optimizer_state" not in runtime.doc["training"]
    _continue_both(K, path, x, y, runtime)


@pytest.mark.parametrize("ext", [".h5", ".keras"])
def test_tf_keras_legacy_optimizer_state_left_out(ext, tmp_path):
    """tf-keras's legacy optimizers lay their slots out otherwise (all m, then all v): never misplaced."""
    K = keras_module("tf_keras")
    rng = np.random.default_rng(2)
    x, y = DATA[_dense](rng), rng.integers(0, 3, 16)
    model = _dense(K)
    model.compile(optimizer=K.optimizers.legacy.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    path = str(tmp_path / f"model{ext}")
    model.save(path)
    notes = []
    runtime = load(convert(path, str(tmp_path / "graph"), notes=notes.append))
    assert "optimizer_state" not in runtime.doc["training"] and runtime.optimizer.iterations == 0
    legacy_note = "a tf-keras legacy optimizer's state is not carried; fit starts it afresh"
    assert notes == ([legacy_note] if ext == ".h5" else [])  # a .keras file holds no legacy optimizer variables


def test_no_optimizer_state_option_and_from_scratch_start_afresh(tmp_path):
    from kconvert.converter.cli import main as kconvert_main
    K = keras_module("keras3")
    _, path, x, y = _trained(K, _dense, "adam", tmp_path)
    result = CliRunner().invoke(kconvert_main, [path, "-o", str(tmp_path / "lean"), "--no-optimizer-state", "-q"])
    assert result.exit_code == 0, result.output
    lean = load(str(tmp_path / "lean"))
    assert "optimizer_state" not in lean.doc["training"] and lean.optimizer.iterations == 0
    assert not os.path.exists(tmp_path / "lean" / "weights" / "000_optimizer_momentum.npy")
    full = load(convert(path, str(tmp_path / "full")))
    assert full.optimizer.iterations == 8
    assert full.reinitialize(seed=1).optimizer.iterations == 0 and not full.optimizer.slots


def test_ktrain_continues_the_graphs_optimizer(tmp_path):
    from kconvert.runtime.cli_train import main as ktrain_main
    K = keras_module("keras3")
    _, path, x, y = _trained(K, _dense, "adamw", tmp_path)
    graph = convert(path, str(tmp_path / "graph"))
    np.savez(tmp_path / "train.npz", x=x, y=y)
    result = CliRunner().invoke(ktrain_main, [graph, str(tmp_path / "train.npz"), "-o", str(tmp_path / "out"),
                                              "--epochs", "1", "--batch-size", "4", "--no-shuffle", "--metrics", ""])
    assert result.exit_code == 0, result.output
    keras_model = K.models.load_model(path)
    keras_model.fit(x, y, epochs=1, batch_size=4, shuffle=False, verbose=0)
    trained = load(str(tmp_path / "out"))
    _assert_same_weights(trained, keras_model)
    assert trained.doc["training"]["optimizer_state"]["iterations"] == 12


def _edited(tmp_path, edit):
    """Convert a trained model, apply edit(doc) to its graph.json, and load it."""
    K = keras_module("keras3")
    _, path, _, _ = _trained(K, _dense, "adam", tmp_path)
    graph = convert(path, str(tmp_path / "graph"))
    with open(graph, encoding="utf-8") as fh:
        doc = json.load(fh)
    edit(doc)
    with open(graph, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
    return load(graph)


def _slots(doc):
    return doc["training"]["optimizer_state"]["slots"]


@pytest.mark.parametrize("edit,message", [
    (lambda d: _slots(d)[0].update(weight="gamma"), "names a weight the graph does not have"),
    (lambda d: _slots(d)[0].update(node=d["nodes"][1]["name"]), "belongs to a frozen weight"),
    (lambda d: _slots(d)[1].update(slot="momentum"), "is given twice"),
    (lambda d: _slots(d)[0]["value"].update(shape=[6, 5]), re.escape("the weight is float32 [5, 6]")),
    (lambda d: _slots(d)[0]["value"].update(file=d["nodes"][0]["weights"]["kernel"]["file"]), "reuses the file"),
], ids=["unknown_weight", "frozen_weight", "duplicate", "shape", "shared_file"])
def test_malformed_state_refused_at_load(edit, message, tmp_path):
    with pytest.raises(GraphError, match=message):
        _edited(tmp_path, edit)


def test_state_of_another_optimizer_refused_at_fit(tmp_path):
    """Adam's moments under an SGD record (edited by hand) do not fit: fit says how to start afresh."""
    runtime = _edited(tmp_path, lambda d: d["training"].update(
        optimizer={"class_name": "SGD", "config": {"learning_rate": 0.1, "momentum": 0.9}}))
    with pytest.raises(InputDataError, match="does not fit SGD.*optimizer="):
        runtime.fit(np.zeros((4, 5), np.float32), np.zeros(4, int), epochs=1)
    runtime.fit(np.zeros((4, 5), np.float32), np.zeros(4, int), epochs=1, optimizer="sgd")


def _edited_h5(tmp_path, edit):
    """A trained Keras 3 .h5 file with its optimizer_weights group edited by edit(group)."""
    import h5py
    K = keras_module("keras3")
    _, path, _, _ = _trained(K, _dense, "adam", tmp_path, ext=".h5")
    with h5py.File(path, "r+") as f:
        edit(f["optimizer_weights"])
    return path


def _replace(group, index, data):
    """Replace the index-th optimizer variable (0: the iteration count, 2: the first slot) by data."""
    name = group.attrs["weight_names"][index]
    name = name.decode() if isinstance(name, bytes) else name
    del group[name]
    group.create_dataset(name, data=data)


@pytest.mark.parametrize("edit,match", [
    (lambda g: g.attrs.modify("weight_names", [b"../../model_weights/x"] + list(g.attrs["weight_names"])[1:]),
     "contains an empty, '.' or '..' component"),
    (lambda g: _replace(g, 0, np.float32(8.0)), "expected an integer scalar"),
    (lambda g: _replace(g, 0, np.int64(-1)), "expected a count of optimizer steps"),
], ids=["path_escape", "float_count", "negative_count"])
def test_hostile_optimizer_weights_refused(edit, match, tmp_path):
    path = _edited_h5(tmp_path, edit)
    with pytest.raises(ConversionError, match=match) as info:
        convert(path, str(tmp_path / "graph"))
    assert "\n" not in str(info.value) and not (tmp_path / "graph").exists()


def test_slot_shaped_unlike_its_weight_left_out(tmp_path):
    """A slot shaped unlike its weight (checked before its data is read) leaves the state out, with a note."""
    path = _edited_h5(tmp_path, lambda g: _replace(g, 2, np.zeros((512, 1024), np.float32)))
    notes = []
    runtime = load(convert(path, str(tmp_path / "graph"), notes=notes.append))
    assert "optimizer_state" not in runtime.doc["training"] and "has shape [512, 1024]" in notes[0]
