"""sample_weight and class_weight in fit and evaluate, against keras Model.fit / Model.evaluate."""
import numpy as np
import pytest

from helpers import keras_module, randomize_weights, save_and_convert
from kconvert.schema import InputDataError

FIT_RTOL = 1e-4


def _fit_both(model, x, y, tmp_path, loss="sparse_categorical_crossentropy", weighted=None, **options):
    """Fit in Keras and in the runtime with the same options (`weighted`: compile's weighted_metrics); compare
    every History entry and the weights."""
    K = keras_module("keras3")
    randomize_weights(model, seed=71, scale=0.4)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    model.compile(optimizer=K.optimizers.Adam(0.02), loss=loss, metrics=["accuracy"], weighted_metrics=weighted)
    expected = model.fit(x, y, epochs=3, batch_size=5, shuffle=False, verbose=0, **options).history
    history = runtime.fit(x, y, epochs=3, batch_size=5, shuffle=False, loss=loss, metrics=["accuracy"],
                          optimizer={"class_name": "Adam", "config": {"learning_rate": 0.02}},
                          weighted_metrics=weighted, **options).history
    assert sorted(history) == sorted(expected)
    for key, values in expected.items():
        np.testing.assert_allclose(history[key], values, rtol=FIT_RTOL, err_msg=key)
    for (key, ours), theirs in zip(runtime._params().items(), model.get_weights(), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=FIT_RTOL, atol=1e-6, err_msg=str(key))
    return runtime


def _classifier(K, units=3, final="softmax"):
    return K.Sequential([K.Input((5,)), K.layers.Dense(6, activation="tanh"), K.layers.Dense(units, activation=final)])


def _data(seed=72, n=24):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = rng.integers(0, 3, n)
    weights = rng.uniform(0, 3, n).astype(np.float32)
    weights[::5] = 0  # rows that count for nothing
    return x, y, weights


def test_sample_weight_with_validation_split(tmp_path):
    """The split takes the last rows' weights along: val_loss and val_accuracy are weighted too."""
    K = keras_module("keras3")
    x, y, weights = _data()
    _fit_both(_classifier(K), x, y, tmp_path, sample_weight=weights, validation_split=0.25)


def test_class_weight_weighs_training_rows_only(tmp_path):
    """Keras makes sample weights from class_weight after the split: validation stays unweighted.
    Class 2 has no entry and weighs 1."""
    K = keras_module("keras3")
    x, y, _ = _data(73)
    _fit_both(_classifier(K), x, y, tmp_path, class_weight={0: 0.5, 1: 3.5}, validation_split=0.25)


def test_class_weight_with_one_hot_labels(tmp_path):
    K = keras_module("keras3")
    x, y, _ = _data(74)
    _fit_both(_classifier(K), x, np.eye(3, dtype=np.float32)[y], tmp_path, loss="categorical_crossentropy",
              class_weight={0: 2.0, 1: 0.25, 2: 1.5})


def test_binary_class_weight_and_weighted_validation_data(tmp_path):
    K = keras_module("keras3")
    x, y, weights = _data(75)
    y = y % 2
    _fit_both(_classifier(K, 1, "sigmoid"), x[:16], y[:16], tmp_path, loss="binary_crossentropy",
              class_weight={1: 4.0}, validation_data=(x[16:], y[16:], weights[16:]))


def _masked_per_step(seed):
    """A per-step classifier after a padding mask, with post-padded ids, step labels and step weights."""
    K = keras_module("keras3")
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 20, (15, 6)).astype(np.int32)
    ids[np.arange(6)[None, :] >= rng.integers(1, 7, 15)[:, None]] = 0
    y = rng.integers(0, 3, ids.shape)
    weights = rng.uniform(0.2, 2, ids.shape).astype(np.float32)  # per step: Keras refuses (n,) here
    model = K.Sequential([K.Input((6,), dtype="int32"), K.layers.Embedding(20, 4, mask_zero=True),
                          K.layers.SimpleRNN(3, return_sequences=True), K.layers.Dense(3, activation="softmax")])
    return model, ids, y, weights


def test_sample_weight_on_a_masked_per_step_output(tmp_path):
    """Step weights times the mask's weights (Keras's apply_mask multiplies them)."""
    model, ids, y, weights = _masked_per_step(76)
    _fit_both(model, ids, y, tmp_path, sample_weight=weights, validation_split=0.2)


def test_evaluate_with_sample_weight(tmp_path):
    K = keras_module("keras3")
    x, y, weights = _data(77)
    model = _classifier(K)
    randomize_weights(model, seed=78, scale=0.6)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    expected = model.evaluate(x, y, sample_weight=weights, batch_size=7, verbose=0, return_dict=True)
    ours = runtime.evaluate(x, y, sample_weight=weights, batch_size=7, loss="sparse_categorical_crossentropy",
                            metrics=["accuracy"])
    for key, value in expected.items():
        np.testing.assert_allclose(ours[key], value, rtol=1e-5, err_msg=key)
    unweighted = runtime.evaluate(x, y, batch_size=7, loss="sparse_categorical_crossentropy")
    assert abs(unweighted["loss"] - ours["loss"]) > 1e-3  # the case must show the weights


@pytest.mark.parametrize("options,message", [
    ({"sample_weight": np.ones(24), "class_weight": {0: 1.0}}, "class_weight or sample_weight, not both"),
    ({"sample_weight": np.ones(23)}, "one finite weight per row"),
    ({"sample_weight": np.full(24, np.nan)}, "one finite weight per row"),
    ({"sample_weight": np.ones((24, 2))}, "does not fit a loss of shape"),
    ({"class_weight": [1.0, 2.0]}, "class_weight must map class indices"),
    ({"class_weight": {"a": 1.0}}, "class_weight must map class indices"),
    ({"validation_data": (np.ones((2, 5), np.float32),)}, "validation_data must be"),
])
def test_bad_weights_are_refused(options, message, tmp_path):
    K = keras_module("keras3")
    runtime, _ = save_and_convert(_classifier(K), tmp_path, ".keras")
    x, y, _ = _data()
    with pytest.raises(InputDataError, match=message):
        runtime.fit(x, y, loss="sparse_categorical_crossentropy", optimizer="sgd", **options)


def test_ktrain_class_weight(tmp_path):
    """--class-weight balanced / NAME=W reach fit as Keras's class_weight dict."""
    from click.testing import CliRunner

    from kconvert.runtime.cli_train import class_weights
    from kconvert.runtime.cli_train import main as ktrain_main
    y = np.array([0, 0, 0, 1, 2, 2])
    assert class_weights("balanced", y, None) == {0: 6 / 9, 1: 2.0, 2: 1.0}
    assert class_weights("balanced", np.eye(3)[y], None) == {0: 6 / 9, 1: 2.0, 2: 1.0}
    assert class_weights("b=3,0=0.5", y, ["a", "b", "c"]) == {1: 3.0, 0: 0.5}
    K = keras_module("keras3")
    x, y, _ = _data(79)
    _, graph = save_and_convert(_classifier(K), tmp_path, ".keras", labels=["a", "b", "c"])
    np.savez(tmp_path / "train.npz", x=x, y=y)
    runner = CliRunner()
    args = [graph, str(tmp_path / "train.npz"), "--loss", "sparse_categorical_crossentropy", "--optimizer", "sgd",
            "--epochs", "1", "--no-shuffle"]
    for spec in ("balanced", "c=4"):
        result = runner.invoke(ktrain_main, [*args, "--class-weight", spec, "-o", str(tmp_path / spec)])
        assert result.exit_code == 0, result.output
    bad = runner.invoke(ktrain_main, [*args, "--class-weight", "d=2", "-o", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "not NAME=WEIGHT" in bad.output
    # The balanced run equals fit(class_weight=...) with the same dict.
    from kconvert.runtime import load
    expected = load(graph)
    expected.fit(x, y, epochs=1, shuffle=False, loss="sparse_categorical_crossentropy", optimizer="sgd",
                 class_weight=class_weights("balanced", y, None))
    trained = load(tmp_path / "balanced")
    for node, weights in expected.get_weights().items():
        for key, value in weights.items():
            np.testing.assert_array_equal(trained.weights[node][key], value)
    assert not np.array_equal(load(tmp_path / "c=4").weights[expected.outputs[0]["name"]]["kernel"],
                              trained.weights[expected.outputs[0]["name"]]["kernel"])


def test_ktrain_sample_weights_from_npz_match_keras(tmp_path):
    """An .npz's sample_weight array weighs training rows, and validation rows in --validation, as in model.fit."""
    from click.testing import CliRunner

    from kconvert.runtime import load
    from kconvert.runtime.cli_train import main as ktrain_main
    K = keras_module("keras3")
    model = _classifier(K)
    randomize_weights(model, seed=81, scale=0.4)
    _, graph = save_and_convert(model, tmp_path, ".keras")
    x, y, weights = _data(82, n=40)
    np.savez(tmp_path / "train.npz", x=x[:30], y=y[:30], sample_weight=weights[:30])
    np.savez(tmp_path / "valid.npz", x=x[30:], y=y[30:], sample_weight=weights[30:])
    result = CliRunner().invoke(ktrain_main, [graph, str(tmp_path / "train.npz"), "--validation",
                                              str(tmp_path / "valid.npz"), "--loss", "sparse_categorical_crossentropy",
                                              "--optimizer", "sgd", "--epochs", "3", "--batch-size", "8",
                                              "--no-shuffle", "--early-stopping", "1", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    model.compile(optimizer=K.optimizers.SGD(), loss="sparse_categorical_crossentropy")
    stop = K.callbacks.EarlyStopping(patience=1, restore_best_weights=True)
    model.fit(x[:30], y[:30], sample_weight=weights[:30], validation_data=(x[30:], y[30:], weights[30:]), epochs=3,
              batch_size=8, shuffle=False, verbose=0, callbacks=[stop])
    trained = load(tmp_path / "out")
    for (key, ours), theirs in zip(trained._params().items(), model.get_weights(), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=FIT_RTOL, atol=1e-6, err_msg=str(key))
    both = CliRunner().invoke(ktrain_main, [graph, str(tmp_path / "train.npz"), "--class-weight", "balanced",
                                            "--loss", "sparse_categorical_crossentropy", "-o", str(tmp_path / "both")])
    assert both.exit_code == 1 and "pass class_weight or sample_weight, not both" in both.output
    assert not (tmp_path / "both").exists()


def test_csv_weight_column(tmp_path):
    from kconvert.runtime.inputs import read_training_data
    path = tmp_path / "train.csv"
    path.write_text("text,label,weight\nenak,0,1.5\nburuk,1,0\n", encoding="utf-8")
    texts, labels, weights = read_training_data(str(path), None)
    assert texts == ["enak", "buruk"] and labels.tolist() == [0, 1] and weights.tolist() == [1.5, 0.0]
    path.write_text("text,label,weight\nenak,0,1.5\nburuk,1,heavy\n", encoding="utf-8")
    with pytest.raises(InputDataError, match=r"train.csv line 3: weight 'heavy' is not a number"):
        read_training_data(str(path), None)
    path.write_text("text,label\nenak,0\n", encoding="utf-8")
    assert read_training_data(str(path), None)[2] is None


def test_weighted_metrics_match_keras(tmp_path):
    """weighted_metrics=['accuracy'] beside metrics=['accuracy']: Keras names it weighted_accuracy and weighs
    it by the sample weights, validation split rows included."""
    K = keras_module("keras3")
    x, y, weights = _data(83)
    runtime = _fit_both(_classifier(K), x, y, tmp_path, weighted=["accuracy"], sample_weight=weights,
                        validation_split=0.25)
    history = runtime.fit(x, y, epochs=1, batch_size=5, shuffle=False, sample_weight=weights, optimizer="sgd",
                          loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                          weighted_metrics=["accuracy"]).history
    assert abs(history["weighted_accuracy"][0] - history["accuracy"][0]) > 0.01  # the case must show the weights


def test_weighted_metrics_with_class_weight_binary_and_validation_data(tmp_path):
    K = keras_module("keras3")
    x, y, weights = _data(84)
    y = y % 2
    _fit_both(_classifier(K, 1, "sigmoid"), x[:16], y[:16], tmp_path, loss="binary_crossentropy",
              weighted=["accuracy"], class_weight={1: 4.0}, validation_data=(x[16:], y[16:], weights[16:]))


def test_weighted_metrics_on_a_masked_per_step_output(tmp_path):
    model, ids, y, weights = _masked_per_step(85)
    _fit_both(model, ids, y, tmp_path, weighted=["accuracy"], sample_weight=weights, validation_split=0.2)


@pytest.mark.parametrize("flavour,ext", [("keras3", ".keras"), ("tf_keras", ".h5")])
def test_weighted_metrics_are_recorded_and_followed(flavour, ext, tmp_path):
    """Compiled with weighted_metrics only: the graph records them, and fit and evaluate report 'accuracy'
    weighted, as Keras does when no plain metric takes the name."""
    K = keras_module(flavour)
    x, y, weights = _data(86)
    model = _classifier(K)
    randomize_weights(model, seed=87, scale=0.5)
    model.compile(optimizer=K.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy",
                  weighted_metrics=["accuracy"])
    runtime, _ = save_and_convert(model, tmp_path, ext)
    assert runtime.doc["training"]["weighted_metrics"] == ["accuracy"]
    ours = runtime.evaluate(x, y, sample_weight=weights, batch_size=7)
    if flavour == "keras3":  # tf-keras is here for the converter's record; its fit is not Keras 3's
        expected = model.evaluate(x, y, sample_weight=weights, batch_size=7, verbose=0, return_dict=True)
        assert sorted(ours) == sorted(expected) == ["accuracy", "loss"]
        for key, value in expected.items():
            np.testing.assert_allclose(ours[key], value, rtol=1e-5, err_msg=key)
    unweighted = runtime.evaluate(x, y, batch_size=7)["accuracy"]
    assert abs(ours["accuracy"] - unweighted) > 0.01
    with pytest.raises(InputDataError, match="unsupported weighted metric 'macro_f1'; supported: accuracy"):
        runtime.fit(x, y, weighted_metrics=["macro_f1"])
