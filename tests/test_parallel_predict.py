"""Data-parallel predict: each batch's rows split over threads still gives Keras's output, row for row, and
OpenBLAS is held to one thread only while the workers run."""
import sys
import threading

import numpy as np
import pytest
from helpers import assert_parity, keras_predict, randomize_weights, save_and_convert

from kconvert.runtime import InputDataError, load, parallel


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
    assert threading.current_thread().name in names and any(n.startswith("kconvert-predict") for n in names)
    assert {b for _, _, b in split} == {1}
    assert [c[1] for c in calls if c[1] == 6] == [6]
    assert parallel._openblas().threads() == before  # restored


def test_split_text_model_gives_the_one_thread_result(converted_demo, monkeypatch):
    model = load(converted_demo)
    texts = [f"film ini {'sangat ' * (i % 7)}bagus dan tidak membosankan {i}" for i in range(40)]
    texts += ["pelayanan buruk sekali", "", "enak"] * 4
    one = model.predict(texts, threads=1)
    calls = _spy(model, monkeypatch)
    split = model.predict(texts, threads=2)
    assert len(calls) == 2 and {rows for _, rows, _ in calls} == {26}
    np.testing.assert_allclose(split, one, rtol=1e-5, atol=1e-6)
    assert split.shape == (52, 3) and (split.argmax(1) == one.argmax(1)).all()


def test_worker_error_propagates_and_releases_openblas(converted_demo, monkeypatch):
    model = load(converted_demo)
    blas, run = parallel._openblas(), model._run
    before = blas.threads()

    def failing(batch, **options):
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("worker failed")
        return run(batch, **options)
    monkeypatch.setattr(model, "_run", failing)
    with pytest.raises(RuntimeError, match="worker failed"):
        model.predict(["bagus"] * 32, threads=2)
    assert blas.threads() == before
    monkeypatch.setattr(model, "_run", run)  # the hold was released: the next split predict splits again
    calls = _spy(model, monkeypatch)
    model.predict(["bagus"] * 32, threads=2)
    assert len(calls) == 2


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
    two = CliRunner().invoke(krun, [str(converted_demo), *texts, "--threads", "2", "-o", tmp_path / "two.npy"])
    assert two.exit_code == 0 and sorted(c[1:] for c in calls) == [(10, 1), (10, 1)]
    np.testing.assert_allclose(np.load(tmp_path / "two.npy"), np.load(tmp_path / "one.npy"), rtol=1e-5, atol=1e-6)
    refused = CliRunner().invoke(krun, [str(converted_demo), "--text", "enak", "--threads", "0"])
    assert refused.exit_code == 2 and "--threads" in refused.output


@pytest.mark.parametrize("threads", [0, -1, 1.5, "2"])
def test_bad_thread_count_is_refused(converted_demo, threads):
    with pytest.raises(InputDataError, match="threads must be a positive integer"):
        load(converted_demo).predict(["bagus"], threads=threads)
