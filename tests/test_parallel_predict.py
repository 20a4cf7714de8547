"""Data-parallel predict: each batch's rows split over threads still gives Keras's output, row for row, and
OpenBLAS is held to one thread only while the workers run."""
import sys
import threading

import numpy as np
import pytest
from helpers import assert_parity, keras_predict, padded_ids, randomize_weights, save_and_convert

from kconvert.runtime import InputDataError, load, parallel
from kconvert.runtime.ops import recurrent


def _numpy_uses_openblas():
    config = np.show_config(mode="dicts")
    return "openblas" in str(config["Build Dependencies"]["blas"].get("name", "")).lower()


def _spy(model, monkeypatch):
    """Record (thread name, rows, OpenBLAS threads) for every _run call the model makes."""
    calls, run, blas = [], model._run, parallel._openblas()

    def recorded(batch, **options):
        rows = len(next(iter(batch.values())))
        calls.append((threading.current_thread().name, rows, blas.threads()))
        return run(batch, **options)
    monkeypatch.setattr(model, "_run", recorded)
    return calls


def test_openblas_is_found_where_numpy_ships_it():
    # CI and development machines run Linux with NumPy's OpenBLAS wheel: the split must be available
    # there, or every test below would pass through the one-thread path without exercising anything.
    blas = parallel._openblas()
    if sys.platform == "linux" and _numpy_uses_openblas():
        assert blas is not None and parallel.default_workers() == blas.threads() >= 1
    else:  # elsewhere predict falls back to one thread
        assert blas is None and parallel.default_workers() == 1


@pytest.mark.parametrize("threads", [2, 3])
def test_split_cnn_matches_keras(threads, tmp_path, monkeypatch):
    import keras
    layers = keras.layers
    model = keras.Sequential([keras.Input((12, 12, 3)),
                              layers.Conv2D(8, 3, padding="same", activation="relu"), layers.MaxPooling2D(2),
                              layers.Conv2D(6, 3, activation="relu"), layers.AveragePooling2D(2),
                              layers.Flatten(), layers.Dense(10, activation="softmax")])
    randomize_weights(model, seed=4)
    x = np.random.default_rng(5).normal(0, 1, (70, 12, 12, 3)).astype(np.float32)  # 70: uneven slices
    expected = keras_predict(model, x)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    before = parallel._openblas().threads()
    calls = _spy(runtime, monkeypatch)
    assert_parity(runtime.predict(x, batch_size=64, threads=threads), expected)
    # batch 64 is split into `threads` slices, OpenBLAS at one thread inside;
    # the last batch (6 rows) is too small to split and runs in the caller's thread.
    split = [c for c in calls if c[1] != 6]
    assert sorted(rows for _, rows, _ in split) == sorted(np.diff(np.linspace(0, 64, threads + 1).round()).astype(int))
    names = {name for name, _, _ in split}  # the caller takes a slice; the pool's threads the others
    assert threading.current_thread().name in names and any(n.startswith("kconvert-worker") for n in names)
    assert {b for _, _, b in split} == {1}
    assert [c[1] for c in calls if c[1] == 6] == [6]
    assert parallel._openblas().threads() == before  # restored


def _directions_spy(monkeypatch):
    """Record the thread each recurrent direction runs on."""
    threads, infer = [], recurrent.infer_recurrent

    def recorded(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return infer(*args, **kwargs)
    monkeypatch.setattr(recurrent, "infer_recurrent", recorded)
    return threads


def test_bidirectional_model_runs_its_directions_side_by_side(converted_demo, monkeypatch):
    model = load(converted_demo)
    texts = [f"film ini {'sangat ' * (i % 7)}bagus dan tidak membosankan {i}" for i in range(40)]
    texts += ["pelayanan buruk sekali", "", "enak"] * 4
    one = model.predict(texts, threads=1)
    calls, directions = _spy(model, monkeypatch), _directions_spy(monkeypatch)
    both = model.predict(texts, threads=2)
    # rows are not split (recurrent steps are GIL-bound): one call, OpenBLAS at one thread, the backward
    # direction on the pool's thread while the caller runs the forward one
    here = threading.current_thread().name
    assert calls == [(here, 52, 1)]
    assert len(directions) == 2 and here in directions and any(d.startswith("kconvert-worker") for d in directions)
    assert np.array_equal(both, one)  # the same operations on the same rows, on two threads


def test_recurrent_model_runs_unsplit(tmp_path, monkeypatch, openblas_at_two):
    import keras
    model = keras.Sequential([keras.Input((9,), dtype="int32"), keras.layers.Embedding(30, 6, mask_zero=True),
                              keras.layers.LSTM(5, return_sequences=True), keras.layers.SimpleRNN(4)])
    randomize_weights(model, seed=6)
    x = padded_ids(np.random.default_rng(7), 64, 9, 30)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    calls = _spy(runtime, monkeypatch)
    assert_parity(runtime.predict(x, threads=2), keras_predict(model, x))
    assert calls == [(threading.current_thread().name, 64, 2)]  # OpenBLAS as it was, capped at 2


def test_two_branch_model_with_pooled_conv_and_bidirectional(tmp_path):
    # an image branch (conv2d + the pool fused with it) and a text branch (Bidirectional) in one graph:
    # the fused pool must not be taken for the thread pool that runs the backward direction
    import keras
    layers = keras.layers
    image, tokens = keras.Input((8, 8, 3)), keras.Input((9,), dtype="int32")
    pooled = layers.MaxPooling2D(2)(layers.Conv2D(4, 3, padding="same", activation="relu")(image))
    image_out = layers.Dense(3, activation="softmax")(layers.Flatten()(pooled))
    text = layers.Bidirectional(layers.LSTM(5))(layers.Embedding(30, 6, mask_zero=True)(tokens))
    model = keras.Model([image, tokens], [image_out, layers.Dense(2)(text)])
    randomize_weights(model, seed=8)
    rng = np.random.default_rng(9)
    x = [rng.normal(0, 1, (40, 8, 8, 3)).astype(np.float32), padded_ids(rng, 40, 9, 30)]
    expected = [np.asarray(o) for o in model(x, training=False)]  # (keras_predict takes a list for texts)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    assert runtime._pooled_by and runtime._split == "parts"
    out = runtime.predict({spec["name"]: v for spec, v in zip(runtime.inputs, x)}, threads=2)
    for spec, want in zip(runtime.outputs, expected):
        assert_parity(out[spec["name"]], want)


def test_worker_error_propagates_and_releases_openblas(converted_demo, monkeypatch):
    model = load(converted_demo)
    blas, infer = parallel._openblas(), recurrent.infer_recurrent
    before = blas.threads()

    def failing(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("worker failed")
        return infer(*args, **kwargs)
    monkeypatch.setattr(recurrent, "infer_recurrent", failing)
    with pytest.raises(RuntimeError, match="worker failed"):
        model.predict(["bagus"] * 32, threads=2)
    assert blas.threads() == before
    monkeypatch.setattr(recurrent, "infer_recurrent", infer)  # the hold was released: the pool is used again
    directions = _directions_spy(monkeypatch)
    model.predict(["bagus"] * 32, threads=2)
    assert any(d.startswith("kconvert-worker") for d in directions)


@pytest.fixture
def openblas_at_two():
    """OpenBLAS set to 2 threads for the test (so a cap to 1 is visible), its count restored after."""
    blas = parallel._openblas()
    before = blas.threads()
    blas.set_threads(2)
    yield blas
    blas.set_threads(before)


def test_small_batches_and_one_thread_run_in_the_calling_thread(converted_demo, monkeypatch, openblas_at_two):
    model = load(converted_demo)
    calls = _spy(model, monkeypatch)
    model.predict(["bagus"] * (2 * parallel.MIN_ROWS_PER_WORKER - 1), threads=2)  # too few rows to split
    model.predict(["bagus"] * 64, threads=1)  # one thread: OpenBLAS held to one as well
    model.predict(["bagus"] * 3, threads=5)  # a cap above OpenBLAS's count leaves it as it is
    model.predict(["bagus"] * 3)  # the default touches nothing (batch-1 latency)
    here = threading.current_thread().name
    assert calls == [(here, 15, 2), (here, 64, 1), (here, 3, 2), (here, 3, 2)]
    assert openblas_at_two.threads() == 2


def test_krun_threads_option(converted_demo, monkeypatch, openblas_at_two, tmp_path):
    from click.testing import CliRunner

    from kconvert.runtime.cli import main as krun
    from kconvert.runtime.model import Model
    calls, run = [], Model._run

    def recorded(self, batch, **options):
        calls.append((threading.current_thread().name, len(next(iter(batch.values()))), parallel._openblas().threads()))
        return run(self, batch, **options)
    monkeypatch.setattr(Model, "_run", recorded)
    texts = [arg for i in range(20) for arg in ("--text", f"enak sekali {i}")]
    one = CliRunner().invoke(krun, [str(converted_demo), *texts, "--threads", "1", "-o", tmp_path / "one.npy"])
    assert one.exit_code == 0 and calls == [(threading.current_thread().name, 20, 1)]
    calls.clear()
    directions = _directions_spy(monkeypatch)
    two = CliRunner().invoke(krun, [str(converted_demo), *texts, "--threads", "2", "-o", tmp_path / "two.npy"])
    assert two.exit_code == 0 and [c[1:] for c in calls] == [(20, 1)]  # a Bidirectional: directions split
    assert any(d.startswith("kconvert-worker") for d in directions)
    assert np.array_equal(np.load(tmp_path / "two.npy"), np.load(tmp_path / "one.npy"))
    refused = CliRunner().invoke(krun, [str(converted_demo), "--text", "enak", "--threads", "0"])
    assert refused.exit_code == 2 and "--threads" in refused.output


@pytest.mark.parametrize("threads", [0, -1, 1.5, "2"])
def test_bad_thread_count_is_refused(converted_demo, threads):
    with pytest.raises(InputDataError, match="threads must be a positive integer"):
        load(converted_demo).predict(["bagus"], threads=threads)
