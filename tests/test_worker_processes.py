"""predict on worker processes (runtime/processes.py): Keras's outputs, with the child processes' slices checked
to have come from them, weights kept in step, and failures turned into one error with the pool closed."""
import os
import signal
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import assert_parity, keras_predict, padded_ids, randomize_weights, save_and_convert

from kconvert.runtime import InputDataError, KConvertError
from kconvert.runtime.cli import main as krun
from kconvert.runtime import processes
from kconvert.runtime.processes import WorkerProcesses


def _cnn():
    import keras
    layers = keras.layers
    return keras.Sequential([keras.Input((12, 10, 3)), layers.Conv2D(32, 3, padding="same", activation="relu"),
                             layers.Conv2D(32, 3, padding="same"), layers.BatchNormalization(),
                             layers.Activation("relu"), layers.MaxPooling2D(), layers.Flatten(),
                             layers.Dense(4, activation="softmax")])


def _rows_run_here(runtime, monkeypatch):
    """A list that gets the row count of each slice this process computes."""
    rows, real = [], runtime._run

    def recorded(batch, **kwargs):
        rows.append(len(next(iter(batch.values()))))
        return real(batch, **kwargs)
    monkeypatch.setattr(runtime, "_run", recorded)
    return rows


def test_cnn_matches_keras_and_the_threads_with_the_children_computing_their_slices(tmp_path, monkeypatch):
    model = _cnn()
    randomize_weights(model, seed=31, scale=0.1)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    x = np.random.default_rng(32).normal(size=(150, 12, 10, 3)).astype(np.float32)
    threads = runtime.predict(x, batch_size=64, threads=3)
    rows = _rows_run_here(runtime, monkeypatch)
    with runtime.worker_processes(3) as workers:
        ours = workers.predict(x, batch_size=64)
        children = [child.process for child in workers._children]
        assert len(children) == 2 and all(process.poll() is None for process in children)
    assert_parity(ours, keras_predict(model, x))
    assert np.array_equal(ours, threads)  # the same slices, each computed alike
    # batches of 64, 64 and 22 rows (two slices of 11: at least 8 rows each): only the first slice ran here
    assert rows == [21, 21, 11]
    assert all(process.wait(timeout=10) is not None for process in children)  # ended by close


def test_children_reload_weights_that_changed_since_they_started(tmp_path):
    model = _cnn()
    randomize_weights(model, seed=33, scale=0.1)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    x = np.random.default_rng(34).normal(size=(40, 12, 10, 3)).astype(np.float32)
    with runtime.worker_processes(2) as workers:
        assert_parity(workers.predict(x), keras_predict(model, x))
        randomize_weights(model, seed=35, scale=0.1)
        retrained, _ = save_and_convert(model, tmp_path, ".h5")
        runtime.set_weights(retrained.get_weights())
        assert_parity(workers.predict(x), keras_predict(model, x))
        runtime.weights[model.layers[-1].name]["bias"][0] += 1.0  # edited in place: seen too
        shifted = workers.predict(x)
        assert np.array_equal(shifted, runtime.predict(x, threads=2))


def test_masked_recurrent_model_with_two_inputs_and_two_outputs(tmp_path):
    import keras
    layers = keras.layers
    ids, extra = keras.Input((9,), dtype="int32", name="ids"), keras.Input((5,), name="extra")
    seq = layers.LSTM(6)(layers.Embedding(30, 8, mask_zero=True)(ids))
    joined = layers.Concatenate()([seq, layers.Dense(4)(extra)])
    model = keras.Model([ids, extra], [layers.Dense(3, activation="softmax", name="label")(joined),
                                       layers.Dense(2, name="score")(joined)])
    randomize_weights(model, seed=36)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    rng = np.random.default_rng(37)
    feed = {"ids": padded_ids(rng, 70, 9, 30), "extra": rng.normal(size=(70, 5)).astype(np.float32)}
    with runtime.worker_processes(2) as workers:
        ours = workers.predict(feed, batch_size=32)
    label, score = keras_predict(model, feed)
    assert sorted(ours) == ["label", "score"]
    assert_parity(ours["label"], label)
    assert_parity(ours["score"], score)


def test_a_child_that_dies_is_one_error_and_closes_the_pool(tmp_path):
    model = _cnn()
    randomize_weights(model, seed=38, scale=0.1)
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    x = np.zeros((40, 12, 10, 3), np.float32)
    workers = runtime.worker_processes(2)
    child = workers._children[0].process
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    with pytest.raises(KConvertError, match=r"^a worker process stopped \(exit status -9\)$"):
        workers.predict(x)
    with pytest.raises(KConvertError, match="these worker processes are closed; start new ones"):
        workers.predict(x)
    assert runtime.predict(x, threads=2).shape == (40, 4)  # the model itself is untouched


def test_a_child_that_cannot_start_is_one_error_naming_why(tmp_path, monkeypatch):
    model = _cnn()
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    monkeypatch.setattr(processes, "_WORKER_CODE", "import kconvert_no_such_module")
    with pytest.raises(KConvertError, match=r"^a worker process stopped \(exit status 1\): ModuleNotFoundError: "
                                            r"No module named 'kconvert_no_such_module'$"):
        runtime.worker_processes(2)


def test_an_interrupted_predict_closes_the_pool_and_its_children(tmp_path, monkeypatch):
    model = _cnn()
    runtime, _ = save_and_convert(model, tmp_path, ".keras")
    workers = runtime.worker_processes(2)
    child = workers._children[0].process

    def interrupted(batch, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(runtime, "_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        workers.predict(np.zeros((40, 12, 10, 3), np.float32))
    assert child.wait(timeout=10) is not None  # its answer would be out of step with the next request's
    with pytest.raises(KConvertError, match="these worker processes are closed"):
        workers.predict(np.zeros((40, 12, 10, 3), np.float32))


def test_refusals():
    texts = SimpleNamespace(inputs=[{"name": "review", "dtype": "string"}])
    with pytest.raises(InputDataError, match="worker processes take numeric inputs only, and 'review' takes texts"):
        WorkerProcesses(texts, 2)
    with pytest.raises(InputDataError, match="threads must be a positive integer, got 0"):
        WorkerProcesses(texts, 0)


def test_krun_processes_writes_keras_outputs(tmp_path):
    model = _cnn()
    randomize_weights(model, seed=39, scale=0.1)
    _, graph = save_and_convert(model, tmp_path, ".keras")
    x = np.random.default_rng(40).normal(size=(30, 12, 10, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "y.npy"
    result = CliRunner().invoke(krun, [str(graph), str(tmp_path / "x.npy"), "--processes", "--threads", "2",
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert_parity(np.load(out), keras_predict(model, x))
    # no worker is left behind: every child of this process has ended
    assert subprocess.run(["pgrep", "-P", str(os.getpid()), "-f", "kconvert.runtime.worker"],
                          capture_output=True).stdout == b""
