"""Reading model inputs from files for krun: .npy, .npz, .txt, images and image folders."""
import os
import zipfile

import numpy as np

from kconvert.schema import InputDataError
from kconvert.schema import limits

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def read_npz(path):
    """All arrays of an .npz archive, without pickle."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputDataError(f"{path} is not a readable .npz archive (object arrays are refused): {exc}") from None


def read_input(path, model, pixel_scale=1.0):
    """Return (data for Model.predict, row descriptions) from an input path."""
    if not os.path.exists(path):
        raise InputDataError(f"input {path} does not exist")
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise InputDataError(f"folder {path} has no image files ({', '.join(IMAGE_EXTENSIONS)})")
        return read_images([os.path.join(path, f) for f in files], model, pixel_scale), files
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InputDataError(f"{path} is not a readable .npy array (object arrays are refused): {exc}") from None
        return array, [str(i) for i in range(len(array))] if array.ndim else []
    if ext == ".npz":
        data = read_npz(path)
        if len(model.inputs) == 1 and len(data) == 1:
            data = {model.inputs[0]["name"]: next(iter(data.values()))}
        rows = len(next(iter(data.values()))) if data else 0
        return data, [str(i) for i in range(rows)]
    if ext == ".txt":
        if os.path.getsize(path) > limits.MAX_TEXT_INPUT_BYTES:
            raise InputDataError(f"{path} is larger than {limits.MAX_TEXT_INPUT_BYTES} bytes")
        try:
            with open(path, encoding="utf-8") as fh:
                texts = fh.read().splitlines()
        except UnicodeDecodeError:
            raise InputDataError(f"{path} is not UTF-8 text") from None
        if not texts:
            raise InputDataError(f"{path} is empty: put one text per line")
        return texts, texts
    if ext in IMAGE_EXTENSIONS:
        return read_images([path], model, pixel_scale), [os.path.basename(path)]
    raise InputDataError(f"unknown input type {ext or '(no extension)'} for {path}: use .npy, .npz, .txt, "
                         f"an image ({', '.join(IMAGE_EXTENSIONS)}) or a folder of images")


def read_images(paths, model, pixel_scale=1.0):
    """Load images as float32 NHWC pixels (0-255, times pixel_scale), checking the model's image size."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise InputDataError("reading images needs Pillow: pip install 'kconvert[images]'") from None
    spec = model.inputs[0]
    if len(model.inputs) != 1 or len(spec["shape"]) != 4:
        raise InputDataError("image input needs a model with one (batch, height, width, channels) input")
    _, height, width, channels = spec["shape"]
    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels)
    if mode is None:
        raise InputDataError(f"the model takes {channels} channels; images can give 1, 3 or 4")
    arrays = []
    for path in paths:
        try:
            with Image.open(path) as img:
                if (height, width) != (None, None) and img.size != (width, height):
                    raise InputDataError(f"{path} is {img.size[0]}x{img.size[1]} pixels; the model takes "
                                         f"{width}x{height}: resize it first")
                arrays.append(np.asarray(img.convert(mode), dtype=np.float32).reshape(img.size[1], img.size[0], channels))
        except (UnidentifiedImageError, OSError) as exc:
            raise InputDataError(f"{path} is not a readable image: {exc}") from None
    return np.stack(arrays) * np.float32(pixel_scale)


def _label_index(labels, model):
    """Map label names (CSV, folders) to class ids, using the graph's labels when it has them."""
    names = model.labels or sorted(set(labels))
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise InputDataError(f"labels {unknown[:5]} are not among the graph's labels {names}")
    return np.array([index[label] for label in labels], dtype=np.int64)


def read_training_data(path, model, pixel_scale=1.0):
    """(x, y, sample_weight or None) for training: .npz with x and y (or named inputs and y) and optionally
    sample_weight, a text,label CSV with an optional weight column, or class folders of images."""
    import csv
    if not os.path.exists(path):
        raise InputDataError(f"training data {path} does not exist")
    if os.path.isdir(path):
        classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
        if not classes:
            raise InputDataError(f"{path} has no class subfolders (expected {path}/<class>/<image>)")
        files, labels = [], []
        for cls in classes:
            for name in sorted(os.listdir(os.path.join(path, cls))):
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(os.path.join(path, cls, name))
                    labels.append(cls)
        return read_images(files, model, pixel_scale), _label_index(labels, model), None
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        arrays = read_npz(path)
        if "y" not in arrays:
            raise InputDataError(f"{path} needs an array named y (and x, or one array per model input)")
        y, weights = arrays.pop("y"), arrays.pop("sample_weight", None)
        x = arrays.pop("x") if "x" in arrays and len(arrays) == 1 else arrays
        return x, y, weights
    if ext == ".csv":
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
        if not rows or "text" not in rows[0] or "label" not in rows[0]:
            raise InputDataError(f"{path} must be a CSV with a header and columns text and label")
        labels = [r["label"] for r in rows]
        y = (np.array(labels, dtype=np.int64) if all(l.strip().lstrip("-").isdigit() for l in labels)
             else _label_index(labels, model))
        return [r["text"] for r in rows], y, _csv_weights(path, rows)
    raise InputDataError(f"unknown training data type {ext or '(none)'} for {path}: use .npz (x, y), "
                         ".csv (text,label) or a folder of class subfolders of images")


def _csv_weights(path, rows):
    """The CSV's optional weight column as float32 sample weights, or None without one."""
    if "weight" not in rows[0]:
        return None
    weights = np.empty(len(rows), np.float32)
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        try:
            weights[line - 2] = float(row["weight"])
        except (TypeError, ValueError):
            raise InputDataError(f"{path} line {line}: weight {row['weight']!r} is not a number") from None
    return weights
