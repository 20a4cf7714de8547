"""CIFAR-10 loaders for the three forms users have: class-per-folder images, the official binary
batches, and the official python (pickled) batches, read with a restricted unpickler that only
allows what those batches contain (dicts, lists, bytes, str, ints and NumPy arrays)."""
import io
import os
import pickle
import tarfile

import numpy as np

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_BYTES = 32 * 32 * 3


class _BatchUnpickler(pickle.Unpickler):
    """Unpickle CIFAR-10 python batches only: any global other than NumPy's array rebuild is refused."""

    # _codecs.encode appears when Python 3 writes bytes with protocol 2; it only turns text into bytes.
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("_codecs", "encode"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"CIFAR-10 batches never contain {module}.{name}; refusing to load it")
        return super().find_class(module, name)


def _from_python_batch(data):
    batch = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError("not a CIFAR-10 python batch (no data/labels)")
    images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, np.asarray(batch[b"labels"], dtype=np.int64)


def _from_binary_batch(data):
    if len(data) % (IMAGE_BYTES + 1):
        raise ValueError("not a CIFAR-10 binary batch (size is not a multiple of 3073 bytes)")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, IMAGE_BYTES + 1)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # channel-major -> NHWC
    return np.ascontiguousarray(images), records[:, 0].astype(np.int64)


def _from_folder(root, split, limit_per_class):
    from PIL import Image
    images, labels = [], []
    for label, cls in enumerate(CLASSES):
        folder = os.path.join(root, split, cls)
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith((".png", ".jpg", ".jpeg")))
        for name in files[:limit_per_class]:
            with Image.open(os.path.join(folder, name)) as img:
                images.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
            labels.append(label)
    return np.stack(images), np.array(labels, dtype=np.int64)


def _batches(root, kind):
    """{name: bytes} of the batch files in a folder or a .tar.gz archive of the official distributions."""
    wanted = {f"data_batch_{i}" for i in range(1, 6)} | {"test_batch"} if kind == "python" else \
        {f"data_batch_{i}.bin" for i in range(1, 6)} | {"test_batch.bin"}
    found = {}
    if os.path.isfile(root) and tarfile.is_tarfile(root):
        with tarfile.open(root) as tar:
            for member in tar.getmembers():  # read members' bytes only; nothing is extracted to disk
                base = os.path.basename(member.name)
                if member.isfile() and base in wanted:
                    found[base.removesuffix(".bin")] = tar.extractfile(member).read()
    elif os.path.isdir(root):
        for base in wanted:
            path = os.path.join(root, base)
            if os.path.isfile(path):
                with open(path, "rb") as fh:
                    found[base.removesuffix(".bin")] = fh.read()
    return found


def detect(root):
    """Where and in which form `root` holds CIFAR-10: ('folder' | 'python' | 'binary', path), or (None, None)."""
    if os.path.isdir(os.path.join(root, "train", CLASSES[0])):
        return "folder", root
    for sub in ("", "cifar-10-batches-py", "cifar-10-batches-bin", "cifar-10-python.tar.gz", "cifar-10-binary.tar.gz"):
        path = os.path.join(root, sub) if sub else root
        if os.path.exists(path):
            for kind in ("python", "binary"):
                if _batches(path, kind):
                    return kind, path
    return None, None


def load_cifar10(root, limit_per_class=None):
    """Return ((x_train, y_train), (x_test, y_test)) as uint8 NHWC images and int labels."""
    for candidate in (root, os.path.join(root, "cifar10")):
        kind, path = detect(candidate) if os.path.exists(candidate) else (None, None)
        if kind == "folder":
            return (_from_folder(path, "train", limit_per_class), _from_folder(path, "test", limit_per_class))
        if kind in ("python", "binary"):
            read = _from_python_batch if kind == "python" else _from_binary_batch
            batches = _batches(path, kind)
            train = [read(batches[f"data_batch_{i}"]) for i in range(1, 6) if f"data_batch_{i}" in batches]
            if not train or "test_batch" not in batches:
                raise FileNotFoundError(f"{path} lacks CIFAR-10 training or test batches")
            x_train, y_train = np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train])
            x_test, y_test = read(batches["test_batch"])
            if limit_per_class:
                x_train, y_train = _per_class(x_train, y_train, limit_per_class)
                x_test, y_test = _per_class(x_test, y_test, limit_per_class)
            return (x_train, y_train), (x_test, y_test)
    raise FileNotFoundError(
        f"no CIFAR-10 under {root}: expected train/<class>/*.jpg folders, the python batches "
        "(cifar-10-python.tar.gz or cifar-10-batches-py/) or the binary batches (cifar-10-binary.tar.gz or "
        "cifar-10-batches-bin/); download them from https://www.cs.toronto.edu/~kriz/cifar.html")


def _per_class(x, y, limit):
    keep = np.concatenate([np.flatnonzero(y == c)[:limit] for c in range(len(CLASSES))])
    keep.sort()
    return x[keep], y[keep]
