"""CIFAR-10 in its three distributed forms; the python batches through a restricted unpickler."""
import io
import os
import pickle
import tarfile

import numpy as np
import pytest

from helpers import DATA_DIR
from kconvert.examples.cifar10 import load_cifar10


def _fake_batches(rng, n=20):
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    return images, labels


def _channel_major(images):
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def test_python_batches_in_a_tarball(tmp_path):
    rng = np.random.default_rng(0)
    parts = [_fake_batches(rng) for _ in range(6)]
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name, (images, labels) in zip([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], parts):
            data = pickle.dumps({b"data": _channel_major(images), b"labels": list(map(int, labels))}, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (x_train, y_train), (x_test, y_test) = load_cifar10(str(tmp_path / "cifar-10-python.tar.gz"))
    np.testing.assert_array_equal(x_train, np.concatenate([p[0] for p in parts[:5]]))
    np.testing.assert_array_equal(y_test, parts[5][1])
    assert x_test.shape == (20, 32, 32, 3) and x_train.dtype == np.uint8


def test_binary_batches_in_a_folder(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    parts = [_fake_batches(rng, 7) for _ in range(6)]
    for name, (images, labels) in zip([f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"], parts):
        records = np.concatenate([labels[:, None].astype(np.uint8), _channel_major(images)], axis=1)
        (folder / name).write_bytes(records.tobytes())
    (x_train, y_train), (x_test, y_test) = load_cifar10(str(tmp_path))
    np.testing.assert_array_equal(x_test, parts[5][0])
    np.testing.assert_array_equal(y_train, np.concatenate([p[1] for p in parts[:5]]))


def test_malicious_python_batch_is_not_unpickled(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(pickle.UnpicklingError, match="never contain"):
        load_cifar10(str(tmp_path))
    assert not (tmp_path / "pwned").exists()


def test_shared_folder_tree():
    (x_train, y_train), (x_test, y_test) = load_cifar10(DATA_DIR, limit_per_class=3)
    assert x_train.shape == (30, 32, 32, 3) and x_test.shape == (30, 32, 32, 3)
    assert sorted(set(y_train.tolist())) == list(range(10))


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 under"):
        load_cifar10(str(tmp_path))
