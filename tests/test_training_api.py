"""fit / evaluate / save / reinitialize and the ktrain command: behaviour a user relies on."""
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import ROOT, keras_module, keras_predict, randomize_weights, save_and_convert
from kconvert.runtime import InputDataError, load
from kconvert.runtime.cli_train import main as ktrain_main
from kconvert.runtime.metrics import macro_f1
from kconvert.schema import validate_document

DEMO_MODEL = os.path.join(ROOT, "examples", "models", "sentiment.keras")


@pytest.fixture
def dense_model(tmp_path):
    K = keras_module("keras3")
    model = K.Sequential([K.Input((4,)), K.layers.Dense(8, activation="relu"), K.layers.Dropout(0.3),
                          K.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=K.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    randomize_weights(model, seed=3)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5)  # learnable: 3 classes from two thresholds
    return runtime, x, y


def test_macro_f1_hand_computed():
    # class 0: P=1/2 R=1/2 -> 0.5; class 1: P=2/3 R=1 -> 0.8; class 2: nothing right -> 0
    assert macro_f1([0, 0, 1, 1, 2], [0, 1, 1, 1, 0]) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_fit_uses_the_compiled_training_record_and_learns(dense_model):
    runtime, x, y = dense_model
    assert runtime.doc["training"]["optimizer"]["class_name"] == "Adam"
    before = runtime.evaluate(x, y)
    history = runtime.fit(x, y, epochs=30, batch_size=16, validation_split=0.2, seed=1, metrics=["accuracy", "macro_f1"])
    assert sorted(history.history) == ["accuracy", "loss", "macro_f1", "val_accuracy", "val_loss", "val_macro_f1"]
    assert all(len(v) == 30 for v in history.history.values()) and history.epoch == list(range(30))
    after = runtime.evaluate(x, y)
    assert after["loss"] < 0.6 * before["loss"] and after["accuracy"] > 0.8


def test_fit_is_reproducible_with_a_seed(dense_model):
    runtime, x, y = dense_model
    start, compiled = runtime.get_weights(), runtime.doc["training"]["optimizer"]
    first = runtime.fit(x, y, epochs=3, batch_size=8, seed=7).history["loss"]
    runtime.set_weights(start)  # and a fresh optimizer of the same settings: a later fit continues the last one
    assert runtime.fit(x, y, epochs=3, batch_size=8, seed=7, optimizer=compiled).history["loss"] == first
    runtime.set_weights(start)
    assert runtime.fit(x, y, epochs=3, batch_size=8, seed=8, optimizer=compiled).history["loss"] != first


def test_verbose_as_keras_takes_it(dense_model, capsys):
    """Code written for Keras passes verbose: fit prints Keras's verbose=2 line per epoch, predict and evaluate
    accept it and print nothing, and values outside those Keras documents are refused."""
    runtime, x, y = dense_model
    history = runtime.fit(x, y, epochs=2, batch_size=16, seed=0, validation_split=0.25, verbose=2)
    lines = capsys.readouterr().out.splitlines()
    assert [lines[0], lines[2]] == ["Epoch 1/2", "Epoch 2/2"] and len(lines) == 4
    for epoch, line in enumerate(lines[1::2]):
        assert line.startswith("3/3 - ") and "ms/step" in line  # 45 training rows in batches of 16
        for key, values in history.history.items():
            assert f" - {key}: {values[epoch]:.4f}" in line
    runtime.fit(x, y, epochs=1, verbose=0)
    runtime.predict(x, verbose=0)
    runtime.evaluate(x, y, verbose="auto")
    assert capsys.readouterr().out == ""
    for bad in (3, True, "yes"):
        with pytest.raises(InputDataError, match="verbose must be 0, 1, 2 or 'auto'"):
            runtime.predict(x, verbose=bad)


def test_save_round_trip(dense_model, tmp_path):
    runtime, x, y = dense_model
    runtime.fit(x, y, epochs=2, batch_size=16, seed=0)
    path = runtime.save(tmp_path / "trained")
    doc = json.loads(open(path, encoding="utf-8").read())
    validate_document(doc)
    reloaded = load(path)
    np.testing.assert_array_equal(reloaded.predict(x), runtime.predict(x))
    assert doc["producer"] == runtime.doc["producer"]
    with pytest.raises(Exception, match="already exists"):
        runtime.save(tmp_path / "trained")


def test_reinitialize_follows_keras_defaults(tmp_path):
    model = load(os.path.dirname(__import__("kconvert.converter", fromlist=["convert"]).convert(
        DEMO_MODEL, str(tmp_path / "g"))))
    before = model.predict(["enak sekali"])
    model.reinitialize(seed=11)
    w = model.get_weights()
    again = load(tmp_path / "g").reinitialize(seed=11).get_weights()
    for node in w:
        for key in w[node]:
            np.testing.assert_array_equal(w[node][key], again[node][key])
    bi = next(n for n in model.doc["nodes"] if n["op"] == "bidirectional")
    units = bi["attrs"]["forward"]["units"]
    rec = w[bi["name"]]["forward_recurrent_kernel"]  # (u, 4u), orthogonal rows
    np.testing.assert_allclose(rec @ rec.T, np.eye(units), atol=1e-5)
    bias = w[bi["name"]]["forward_bias"]
    assert np.all(bias[units:2 * units] == 1) and np.all(np.delete(bias, np.s_[units:2 * units]) == 0)
    kernel = w[bi["name"]]["forward_kernel"]
    limit = np.sqrt(6 / sum(kernel.shape))
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.9 * limit
    emb = next(n for n in model.doc["nodes"] if n["op"] == "embedding")
    assert np.abs(w[emb["name"]]["embeddings"]).max() <= 0.05
    assert not np.allclose(model.predict(["enak sekali"]), before)


def test_reinitialize_gru_follows_keras_defaults(tmp_path):
    """GRU: glorot kernel, orthogonal recurrent kernel, zero (2, 3u) bias; the model still runs afterwards."""
    K = keras_module("keras3")
    model = K.Sequential([K.Input((6,), dtype="int32"), K.layers.Embedding(10, 4), K.layers.GRU(5)])
    randomize_weights(model, seed=4)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    x = np.random.default_rng(0).integers(0, 10, (3, 6))
    before = runtime.predict(x)
    gru = next(n["name"] for n in runtime.doc["nodes"] if n["op"] == "gru")
    w = runtime.reinitialize(seed=2).get_weights()[gru]
    assert w["bias"].shape == (2, 15) and not w["bias"].any()
    np.testing.assert_allclose(w["recurrent_kernel"] @ w["recurrent_kernel"].T, np.eye(5), atol=1e-5)
    limit = np.sqrt(6 / sum(w["kernel"].shape))
    assert limit >= np.abs(w["kernel"]).max() > 0.9 * limit
    assert not np.allclose(runtime.predict(x), before)


def test_reinitialize_normalizations_follows_keras_defaults(tmp_path):
    """BatchNormalization and LayerNormalization: gamma and moving variance ones, beta and moving mean zeros, as
    fresh Keras layers."""
    K = keras_module("keras3")
    model = K.Sequential([K.Input((5,)), K.layers.BatchNormalization(), K.layers.LayerNormalization()])
    fresh = [np.asarray(w).copy() for w in model.get_weights()]
    randomize_weights(model, seed=4)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    x = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    weights = runtime.reinitialize(seed=2).get_weights()
    ours = [w for node in runtime.doc["nodes"] for w in weights[node["name"]].values()]
    assert len(ours) == len(fresh) == 6
    for a, b in zip(ours, fresh):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(runtime.predict(x), keras_predict(model.from_config(model.get_config()), x), rtol=1e-5)


@pytest.mark.parametrize("kwargs,message", [
    (dict(loss="hinge"), "unsupported loss 'hinge'"),
    (dict(optimizer="adagrad"), "unsupported optimizer 'adagrad'"),
    (dict(metrics=["auc"]), "unsupported metric 'auc'"),
    (dict(validation_split=0.999), "leaves no training or no validation rows"),
])
def test_fit_errors(dense_model, kwargs, message):
    runtime, x, y = dense_model
    with pytest.raises(InputDataError, match=message):
        runtime.fit(x, y, **kwargs)
    with pytest.raises(InputDataError, match="x has 60 rows but y has 59"):
        runtime.fit(x, y[:-1])


def test_fit_without_a_training_record_asks_for_loss(tmp_path):
    K = keras_module("keras3")
    runtime, _ = save_and_convert(K.Sequential([K.Input((2,)), K.layers.Dense(2)]), tmp_path, ".keras")
    with pytest.raises(InputDataError, match="no loss given"):
        runtime.fit(np.zeros((2, 2)), [0, 1])


def test_ktrain_text_csv_and_npz(tmp_path):
    graph = __import__("kconvert.converter", fromlist=["convert"]).convert(
        DEMO_MODEL, str(tmp_path / "g"), labels=["negative", "neutral", "positive"])
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("id,text,label\n1,enak sekali,positive\n2,buruk sekali,negative\n3,biasa saja,neutral\n",
                        encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(ktrain_main, [graph, str(csv_path), "--epochs", "2", "--batch-size", "2",
                                         "--metrics", "accuracy,macro_f1", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "Epoch 2/2" in result.output and "macro_f1" in result.output
    assert load(tmp_path / "out").predict(["enak"]).shape == (1, 3)
    again = runner.invoke(ktrain_main, [graph, str(csv_path), "-o", str(tmp_path / "out")])
    assert again.exit_code == 1 and "already exists" in again.output
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nx,happy\n", encoding="utf-8")
    result = runner.invoke(ktrain_main, [graph, str(bad), "-o", str(tmp_path / "o2")])
    assert result.exit_code == 1 and "not among the graph's labels" in result.output


def test_ktrain_images_from_scratch(tmp_path):
    from PIL import Image
    K = keras_module("keras3")
    model = K.Sequential([K.Input((6, 6, 3)), K.layers.Rescaling(1 / 255.0), K.layers.Conv2D(2, 3, activation="relu"),
                          K.layers.GlobalAveragePooling2D(), K.layers.Dense(2, activation="softmax")])
    _, graph = save_and_convert(model, tmp_path, ".h5", labels=["dark", "light"])
    rng = np.random.default_rng(0)
    for cls, low in (("dark", 0), ("light", 200)):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(low, low + 50, (6, 6, 3)).astype(np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    result = CliRunner().invoke(ktrain_main, [graph, str(tmp_path / "imgs"), "--from-scratch", "--loss",
                                              "sparse_categorical_crossentropy", "--optimizer", "adam",
                                              "--learning-rate", "0.05", "--epochs", "3", "--validation-split",
                                              "0.25", "--early-stopping", "1", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "val_loss" in result.output
    assert (tmp_path / "out" / "graph.json").is_file()
