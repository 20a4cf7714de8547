"""fit and evaluate with each batch's rows split over threads (runtime/row_split.py): Keras's gradients,
losses and weights still, on graphs of row-wise ops; graphs with recurrent layers train each batch whole."""
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
import test_regularization as regularized
import test_training_parity as parity
from helpers import keras_module, padded_ids, randomize_weights, save_and_convert

from kconvert.runtime import InputDataError, load, parallel, row_split
from kconvert.runtime.model import Model
from kconvert.runtime.training import make_trainer

if parallel._openblas() is None:  # CI and development machines run NumPy's OpenBLAS wheel on Linux
    pytest.fail("OpenBLAS not found: fit cannot split rows here (see test_parallel_predict)", pytrace=False)


@pytest.fixture
def small_slices(monkeypatch):
    """Split batches of 4-5 rows (2 rows per thread at least), so Keras-sized test batches split."""
    monkeypatch.setattr(parallel, "MIN_ROWS_PER_WORKER", 2)


def _spy(monkeypatch):
    """Record (thread name, rows) of every training-mode forward pass any model runs."""
    calls, forward = [], Model._forward_train

    def recorded(self, batch, ctx):
        calls.append((threading.current_thread().name, len(next(iter(batch.values())))))
        return forward(self, batch, ctx)
    monkeypatch.setattr(Model, "_forward_train", recorded)
    return calls


def _assert_split(calls, rows, whole=()):
    """Batches of `rows` rows ran as two slices, one on a pool thread; those of `whole` rows unsplit."""
    assert all(name == "MainThread" for name, r in calls if r in whole), calls
    halves = [(name, r) for name, r in calls if r not in whole]
    assert halves and all(r in (rows // 2, rows - rows // 2) for _, r in halves), calls
    assert sum(name.startswith("kconvert-worker") for name, _ in halves) == len(halves) // 2, calls


@pytest.mark.parametrize("kind", ["dense", "cnn"])
def test_split_gradients_match_tensorflow(kind, tmp_path, small_slices):
    """One step over 2 + 2 + 2 slices (activity regularizers on hidden layers and the output, frozen layers)
    against tf.GradientTape on the whole batch."""
    import keras
    import tensorflow as tf
    K = keras_module("keras3")
    model = regularized.MODELS[kind][0](K)
    randomize_weights(model, seed=61, scale=0.4)
    x, y = regularized._data(kind, seed=62)
    x, y = x[:6], y[:6]
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True)) + tf.add_n(model.losses)
    expected = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, model.trainable_weights)]
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    trainer = make_trainer(runtime, "sparse_categorical_crossentropy", "sgd", [], False)
    feed, _ = runtime._prepare(x)
    with ThreadPoolExecutor(2) as pool:
        trainer.row_split = row_split.RowSplit(runtime, pool, workers=3)
        values, caches, split = trainer._forward(feed, SimpleNamespace(training=True, rng=None))
        ours_loss, grads = trainer.gradients(values, caches, y, split=split)
    assert split[0] == [0, 2, 4, 6]
    np.testing.assert_allclose(ours_loss, float(loss), rtol=regularized.GRAD_RTOL)
    assert len(grads) == len(expected)
    for (key, ours), theirs in zip(grads.items(), expected):
        np.testing.assert_allclose(ours, theirs, rtol=regularized.GRAD_RTOL, atol=regularized.GRAD_ATOL,
                                   err_msg=str(key))


@pytest.mark.parametrize("kind,optimizer", [("cnn", "adam"), ("cnn", "rmsprop_centered_momentum_clipvalue"),
                                            ("cnn_global", "sgd_nesterov_clipnorm"), ("cnn_global", "adamw"),
                                            ("sequence_cnn", "adam"), ("residual_cnn", "sgd_momentum"),
                                            ("reshaping_cnn", "adam"), ("depthwise_cnn", "rmsprop"),
                                            ("separable_cnn", "adam")])
def test_split_fit_matches_keras(kind, optimizer, tmp_path, monkeypatch, small_slices):
    """History (val_loss from a split evaluate too) and final weights, batches of 4 as 2 + 2 rows."""
    K = keras_module("keras3")
    build, data = parity.MODELS[kind]
    rng = np.random.default_rng(63)
    x = np.concatenate([data(rng), data(rng)])
    y = rng.integers(0, 3, len(x))
    cls, kwargs = parity.OPTIMIZERS[optimizer]
    before = parallel._openblas().threads()
    calls = _spy(monkeypatch)
    parity._fit_both(K, build(K), x, y, cls, kwargs, tmp_path, threads=2)
    _assert_split(calls, 4, whole=(1, 3))  # 9 training rows in batches of 4, 4, 1; 3 validation rows
    assert parallel._openblas().threads() == before  # restored after fit


@pytest.mark.parametrize("optimizer", sorted(regularized.OPTIMIZERS))
def test_split_fit_with_penalties_and_constraints_matches_keras(optimizer, tmp_path, monkeypatch, small_slices):
    """The regularized dense model (activity regularizers, constraints, a frozen layer) split 2 + 2."""
    K = keras_module("keras3")
    model = regularized.MODELS["dense"][0](K)
    randomize_weights(model, seed=53, scale=0.4)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    calls = _spy(monkeypatch)
    x, y = regularized._data("dense")
    cls, kwargs = regularized.OPTIMIZERS[optimizer]
    model.compile(optimizer=getattr(K.optimizers, cls)(**kwargs), loss="sparse_categorical_crossentropy")
    expected = model.fit(x, y, epochs=3, batch_size=4, shuffle=False, verbose=0, validation_split=0.25).history
    history = runtime.fit(x, y, epochs=3, batch_size=4, shuffle=False, loss="sparse_categorical_crossentropy",
                          optimizer={"class_name": cls, "config": kwargs}, metrics=[], validation_split=0.25,
                          threads=2).history
    for key, values in expected.items():
        np.testing.assert_allclose(history[key], values, rtol=regularized.FIT_RTOL, err_msg=key)
    for (key, ours), theirs in zip(runtime._params().items(), model.get_weights()):
        np.testing.assert_allclose(ours, theirs, rtol=regularized.FIT_RTOL, atol=1e-6, err_msg=str(key))
    _assert_split(calls, 4, whole=(1,))  # 13 training rows in batches of 4, 4, 4, 1; 5 validation: 4, 1


def test_split_evaluate_matches_keras(tmp_path, monkeypatch, small_slices):
    K = keras_module("keras3")
    model = parity.MODELS["cnn"][0](K)
    randomize_weights(model, seed=64, scale=0.4)
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(65)
    x, y = parity.MODELS["cnn"][1](rng), rng.integers(0, 3, 6)
    expected = model.evaluate(x, y, batch_size=6, verbose=0, return_dict=True)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    calls = _spy(monkeypatch)
    ours = runtime.evaluate(x, y, batch_size=6, threads=2)
    np.testing.assert_allclose(ours["loss"], expected["loss"], rtol=parity.FIT_RTOL)
    assert ours["accuracy"] == pytest.approx(expected["accuracy"])
    _assert_split(calls, 6)


def _dropout_model(K):
    return K.Sequential([K.Input((6,)), K.layers.Dense(8, activation="relu"), K.layers.Dropout(0.5),
                         K.layers.Dense(3, activation="softmax")])


def test_split_dropout_draws_per_slice_and_repeats_with_the_seed(tmp_path, monkeypatch, small_slices):
    K = keras_module("keras3")
    model = _dropout_model(K)
    randomize_weights(model, seed=66)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    runtime, folder = save_and_convert(model, tmp_path, ".keras")
    x = np.tile(np.random.default_rng(67).normal(size=(1, 6)).astype(np.float32), (8, 1))  # identical rows
    y = np.zeros(8, int)
    from kconvert.runtime.ops import TRAIN_OPS
    masks, dropout = [], TRAIN_OPS["dropout"][0]

    def recorded(x, attrs, weights, mask, ctx):
        y, cache = dropout(x, attrs, weights, mask, ctx)
        masks.append(y != 0)
        return y, cache
    monkeypatch.setitem(TRAIN_OPS, "dropout", (recorded, TRAIN_OPS["dropout"][1]))
    runtime.fit(x, y, epochs=1, batch_size=8, seed=3, threads=2)
    assert len(masks) == 2 and masks[0].shape == (4, 8)
    assert not np.array_equal(masks[0], masks[1])  # each slice its own stream, not one seed twice
    again = load(folder)
    again.fit(x, y, epochs=1, batch_size=8, seed=3, threads=2)
    for key, value in runtime._params().items():
        np.testing.assert_array_equal(again._params()[key], value, err_msg=str(key))


def test_recurrent_and_embedding_graphs_train_whole_batches(tmp_path, monkeypatch, small_slices):
    K = keras_module("keras3")
    for i, model in enumerate([
            K.Sequential([K.Input((7,), dtype="int32"), K.layers.Embedding(20, 4), K.layers.Flatten(),
                          K.layers.Dense(3, activation="softmax")]),
            parity.MODELS["text_lstm"][0](K)]):
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        (tmp_path / str(i)).mkdir()
        runtime, _ = save_and_convert(model, tmp_path / str(i), ".keras")
        assert not row_split.splits_rows(runtime.doc)
        calls = _spy(monkeypatch)
        runtime.fit(padded_ids(np.random.default_rng(68), 8, 7, 20), np.zeros(8, int), batch_size=8, threads=2)
        assert calls == [("MainThread", 8)]


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_fit_and_evaluate_refuse_bad_thread_counts(threads, tmp_path):
    K = keras_module("keras3")
    model = _dropout_model(K)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    x, y = np.zeros((4, 6), np.float32), np.zeros(4, int)
    for call in (lambda: runtime.fit(x, y, threads=threads), lambda: runtime.evaluate(x, y, threads=threads)):
        with pytest.raises(InputDataError, match="threads must be a positive integer"):
            call()


def test_one_thread_holds_openblas_to_one_thread(tmp_path, monkeypatch):
    K = keras_module("keras3")
    model = _dropout_model(K)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    blas, seen = parallel._openblas(), []
    forward = Model._forward_train
    monkeypatch.setattr(Model, "_forward_train",
                        lambda self, b, c: (seen.append(blas.threads()), forward(self, b, c))[1])
    before = blas.threads()
    runtime.fit(np.zeros((64, 6), np.float32), np.zeros(64, int), batch_size=64, threads=1)
    assert seen == [1] and blas.threads() == before


def test_ktrain_passes_threads_to_fit(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from kconvert.runtime.cli_train import main as ktrain_main
    K = keras_module("keras3")
    model = _dropout_model(K)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    _, folder = save_and_convert(model, tmp_path, ".keras")
    np.savez(tmp_path / "train.npz", x=np.zeros((16, 6), np.float32), y=np.zeros(16, int))
    seen, fit = [], Model.fit
    monkeypatch.setattr(Model, "fit", lambda self, *a, **k: (seen.append(k["threads"]), fit(self, *a, **k))[1])
    args = [str(folder), str(tmp_path / "train.npz"), "--epochs", "1"]
    assert CliRunner().invoke(ktrain_main, [*args, "--threads", "2", "-o", str(tmp_path / "a")]).exit_code == 0
    assert CliRunner().invoke(ktrain_main, [*args, "-o", str(tmp_path / "b")]).exit_code == 0
    refused = CliRunner().invoke(ktrain_main, [*args, "--threads", "0", "-o", str(tmp_path / "c")])
    assert seen == [2, None] and refused.exit_code == 2 and "--threads" in refused.output


def test_evaluate_in_a_callback_keeps_fit_split(tmp_path, monkeypatch, small_slices):
    """A callback's evaluate inside fit shares fit's pool and leaves the later epochs split."""
    K = keras_module("keras3")
    model = _dropout_model(K)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    x, y = np.random.default_rng(69).normal(size=(8, 6)).astype(np.float32), np.zeros(8, int)
    calls = _spy(monkeypatch)

    class Evaluating:
        def on_epoch_end(self, epoch, logs):
            runtime.evaluate(x, y, batch_size=8, threads=2)
    runtime.fit(x, y, epochs=2, batch_size=8, threads=2, callbacks=[Evaluating()])
    assert len(calls) == 8  # per epoch: a step and an evaluate, each as two slices
    _assert_split(calls, 8)
    _assert_split(calls[4:6], 8)  # epoch 2's step


def test_split_fit_with_sample_weights_matches_keras(tmp_path, monkeypatch, small_slices):
    """Sample weights weigh the loss on the whole batch, so slices see Keras's weighted gradient."""
    K = keras_module("keras3")
    model = parity.MODELS["cnn"][0](K)
    randomize_weights(model, seed=70, scale=0.4)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    rng = np.random.default_rng(71)
    x = np.concatenate([parity.MODELS["cnn"][1](rng), parity.MODELS["cnn"][1](rng)])
    y, weights = rng.integers(0, 3, len(x)), rng.uniform(0.1, 3.0, len(x)).astype(np.float32)
    model.compile(optimizer=K.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    expected = model.fit(x, y, sample_weight=weights, epochs=2, batch_size=6, shuffle=False, verbose=0).history
    calls = _spy(monkeypatch)
    history = runtime.fit(x, y, sample_weight=weights, epochs=2, batch_size=6, shuffle=False,
                          optimizer={"class_name": "Adam", "config": {"learning_rate": 0.01}},
                          loss="sparse_categorical_crossentropy", metrics=[], threads=2).history
    _assert_split(calls, 6)
    np.testing.assert_allclose(history["loss"], expected["loss"], rtol=parity.FIT_RTOL)
    for (key, ours), theirs in zip(runtime._params().items(), model.get_weights()):
        np.testing.assert_allclose(ours, theirs, rtol=parity.FIT_RTOL, atol=1e-6, err_msg=str(key))


@pytest.mark.parametrize("frozen", [False, True])
def test_batchnorm_graphs_split_rows_with_whole_batch_statistics(frozen, tmp_path, monkeypatch, small_slices):
    """A training BatchNormalization's slices add their statistics up across threads (row_split.RowSums), so the
    split step normalizes with the whole batch's moments; frozen, it normalizes row by row. Keras's losses,
    weights and moving statistics either way."""
    K = keras_module("keras3")
    model = parity.MODELS["cnn_batchnorm"][0](K)
    for layer in model.layers:
        layer.trainable = not (frozen and isinstance(layer, K.layers.BatchNormalization))
    rng = np.random.default_rng(69)
    x, y = rng.normal(1, 2, size=(8, 6, 6, 2)).astype(np.float32), rng.integers(0, 3, 8)
    calls = _spy(monkeypatch)
    parity._fit_both(K, model, x, y, "SGD", dict(learning_rate=0.1, momentum=0.5), tmp_path, epochs=2, batch_size=4,
                     validation_split=0.0, threads=2)
    _assert_split(calls, 4)


def test_a_failing_slice_does_not_leave_the_others_waiting(tmp_path, monkeypatch, small_slices):
    """One slice raising inside a step breaks the slices' barrier: fit raises its error instead of hanging."""
    from kconvert.runtime.ops import TRAIN_OPS, normalization
    K = keras_module("keras3")
    runtime, _ = save_and_convert(parity.MODELS["cnn_batchnorm"][0](K), tmp_path, ".keras")
    forward = normalization.batch_norm_train

    def failing(x, attrs, weights, mask, ctx):
        if threading.current_thread().name.startswith("kconvert-worker"):
            raise ValueError("slice failed")
        return forward(x, attrs, weights, mask, ctx)
    monkeypatch.setitem(TRAIN_OPS, "batch_norm", (failing, TRAIN_OPS["batch_norm"][1]))
    errors = []

    def train():
        try:
            runtime.fit(np.ones((8, 6, 6, 2), np.float32), np.zeros(8, int), batch_size=8, threads=2,
                        loss="sparse_categorical_crossentropy", optimizer="sgd")
        except Exception as exc:  # noqa: BLE001 -- the test inspects it
            errors.append(exc)
    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "fit hangs when one slice fails"
    assert len(errors) == 1 and "slice failed" in str(errors[0])
