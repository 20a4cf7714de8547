"""Reading Keras model files (.keras zip and legacy .h5) with zipfile, json and h5py only.

Nothing read here is imported, evaluated or unpickled: configs are parsed as JSON (duplicate keys
and NaN refused), HDF5 objects are reached only through hard links, and datasets with external
or virtual storage are refused.
"""
import functools
import hashlib
import io
import json
import os
import re
import zipfile

import h5py
import numpy as np

from kconvert.schema import ConversionError
from kconvert.schema import limits

# Keras's recurrent layer classes and their graph ops; a .keras file keeps their weights under cell/vars.
RECURRENT_CLASSES = {"SimpleRNN": "simple_rnn", "LSTM": "lstm", "GRU": "gru"}


# What h5py raises on corrupt files (bad heap signatures, broken B-trees, truncated chunks, ...).
_H5_FAILURES = (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError, OverflowError)


def h5_guard(function):
    """Turn h5py's failures on corrupt data into one ConversionError."""
    @functools.wraps(function)
    def guarded(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except ConversionError:
            raise
        except _H5_FAILURES as exc:
            raise ConversionError(f"the model's HDF5 data is corrupt or unreadable "
                                  f"({type(exc).__name__}: {str(exc)[:200]})") from None
    return guarded


def parse_json(text, what):
    """Parse JSON text, refusing duplicate keys, NaN/Infinity and absurd nesting."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8", errors="strict")
        except UnicodeDecodeError as exc:
            raise ConversionError(f"{what} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    if len(text) > limits.MAX_CONFIG_JSON_BYTES:
        raise ConversionError(f"{what} is {len(text)} bytes, more than the {limits.MAX_CONFIG_JSON_BYTES} allowed")

    def pairs(items):
        out = {}
        for key, value in items:
            if key in out:
                raise ConversionError(f"{what} has the key {key!r} twice")
            out[key] = value
        return out

    def constant(name):
        raise ConversionError(f"{what} contains {name}, which is not valid JSON")

    try:
        value = json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except RecursionError:
        value = None
    except json.JSONDecodeError as exc:
        raise ConversionError(f"{what} is not valid JSON: {exc}") from None
    if value is None and text.strip() != "null" or limits.json_depth(value) > limits.MAX_JSON_DEPTH:
        raise ConversionError(f"{what} is nested more than {limits.MAX_JSON_DEPTH} levels deep")
    return value


def _check_name(name, what):
    """A weight or layer path inside HDF5 must be relative and free of '.'/'..' parts."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name or "\x00" in name:
        raise ConversionError(f"{what} {name!r} is not a plain relative HDF5 path")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise ConversionError(f"{what} {name!r} contains an empty, '.' or '..' component")


@h5_guard
def safe_get(group, path, what):
    """Follow `path` from `group` through hard links only; return the dataset or group."""
    _check_name(path, what)
    node = group
    for part in path.split("/"):
        link = node.get(part, getlink=True)
        if link is None:
            raise ConversionError(f"{what} {path!r} is missing from the file")
        if not isinstance(link, h5py.HardLink):
            raise ConversionError(f"{what} {path!r} goes through a {type(link).__name__}; only plain HDF5 objects are read")
        node = node[part]
    return node


@h5_guard
def read_dataset(dataset, what):
    """Read a float dataset into a float32 array, refusing external/virtual storage and lying shapes."""
    if not isinstance(dataset, h5py.Dataset):
        raise ConversionError(f"{what} is not a dataset")
    if dataset.is_virtual or dataset.external:
        raise ConversionError(f"{what} uses external or virtual storage; refusing to read files it points to")
    if dataset.dtype.kind != "f" or dataset.dtype.itemsize not in (2, 4, 8):
        raise ConversionError(f"{what} has dtype {dataset.dtype}; expected floating point weights")
    shape = dataset.shape or ()
    if len(shape) > limits.MAX_RANK:
        raise ConversionError(f"{what} has rank {len(shape)}, more than {limits.MAX_RANK}")
    nbytes = int(np.prod(shape, dtype=np.float64)) * dataset.dtype.itemsize
    if nbytes > limits.MAX_TENSOR_BYTES:
        raise ConversionError(f"{what} declares {nbytes} bytes, more than the {limits.MAX_TENSOR_BYTES} allowed per weight")
    if dataset.compression is None and dataset.id.get_storage_size() < nbytes and nbytes > 0:
        # Uncompressed data must be stored in full; a shape larger than the bytes behind it is a lie.
        raise ConversionError(f"{what} declares shape {shape} ({nbytes} bytes) but stores only "
                              f"{dataset.id.get_storage_size()} bytes")
    try:
        return np.asarray(dataset[()], dtype=np.float32)
    except (OSError, ValueError, TypeError) as exc:
        raise ConversionError(f"{what} cannot be read: {exc}") from None


@h5_guard
def read_counter(dataset, what):
    """Read a scalar integer dataset (an optimizer's iteration count) as a Python int."""
    if not isinstance(dataset, h5py.Dataset) or dataset.is_virtual or dataset.external:
        raise ConversionError(f"{what} is not a plain dataset")
    if dataset.dtype.kind not in "iu" or (dataset.shape or ()) != ():
        raise ConversionError(f"{what} has dtype {dataset.dtype} and shape {dataset.shape}; expected an integer scalar")
    value = int(dataset[()])
    if not 0 <= value < 2 ** 53:
        raise ConversionError(f"{what} is {value}; expected a count of optimizer steps")
    return value


def _attr_text(value):
    """Text of an HDF5 attribute; h5py may hand back lone surrogates for invalid UTF-8, which are refused."""
    try:
        text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        text.encode("utf-8")
    except UnicodeError:
        raise ConversionError("the model file has a text attribute that is not valid UTF-8") from None
    return text


@h5_guard
def read_name_list(group, name):
    """Read a string-list attribute, including Keras's chunked form name0, name1, ..."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, chunk = [], 0
        while f"{name}{chunk}" in group.attrs:
            values.extend(group.attrs[f"{name}{chunk}"])
            chunk += 1
    return [_attr_text(v) for v in values]


class KerasFile:
    """The parts of a Keras model file the converter needs: config, weights, assets, versions."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.name = os.path.basename(self.path)
        try:
            with open(self.path, "rb") as fh:
                self.raw = fh.read()
        except FileNotFoundError:
            raise ConversionError(f"model file {self.path} does not exist") from None
        except IsADirectoryError:
            raise ConversionError(f"{self.path} is a folder; pass a .keras or .h5 model file "
                                  "(SavedModel folders are not supported)") from None
        self.sha256 = hashlib.sha256(self.raw).hexdigest()
        self.assets = {}
        if self.raw.startswith(b"PK"):
            self.kind = "keras"
            self._open_keras_zip()
        elif self.raw.startswith(b"\x89HDF\r\n\x1a\n"):
            self.kind = "h5"
            self._open_h5()
        elif not self.raw:
            raise ConversionError(f"{self.name} is empty")
        else:
            raise ConversionError(f"{self.name} is neither a .keras (zip) nor an HDF5 (.h5) file")
        if self.keras_version[:1].isdigit() and not re.fullmatch(r"\d+(\.[0-9A-Za-z+_-]+)*", self.keras_version):
            # Keras 2 and 3 read a file differently, so a damaged version is not guessed at
            raise ConversionError(f"{self.name} records keras_version {self.keras_version!r}, which is not a version "
                                  "number; the file is damaged: save the model again")
        self.major = int(self.keras_version.split(".")[0]) if self.keras_version[:1].isdigit() else 3

    # -- .keras ---------------------------------------------------------------------------
    def _open_keras_zip(self):
        try:
            archive = zipfile.ZipFile(io.BytesIO(self.raw))
            infos = archive.infolist()
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise ConversionError(f"{self.name} is not a readable .keras zip: {exc}") from None
        if len(infos) > limits.MAX_ZIP_MEMBERS:
            raise ConversionError(f"{self.name} has {len(infos)} members, more than {limits.MAX_ZIP_MEMBERS}")
        members = {}
        for info in infos:
            name = info.filename
            if name.startswith("/") or "\\" in name or ".." in name.split("/") or "\x00" in name or ":" in name:
                raise ConversionError(f"{self.name} has an unsafe member name {name!r}")
            if name in members:
                raise ConversionError(f"{self.name} has the member {name!r} twice")
            if info.file_size > limits.MAX_ZIP_MEMBER_BYTES or (
                    info.file_size > 1024 * 1024
                    and info.file_size > limits.MAX_ZIP_RATIO * max(info.compress_size, 1)):
                raise ConversionError(f"{self.name}: member {name!r} declares {info.file_size} bytes "
                                      f"from {info.compress_size} compressed (zip bomb?)")
            members[name] = info

        def read(name):
            info = members.get(name)
            if info is None:
                raise ConversionError(f"{self.name} has no {name}; it is not a complete .keras file")
            with archive.open(info) as fh:
                data = fh.read(info.file_size + 1)
            if len(data) != info.file_size:
                raise ConversionError(f"{self.name}: member {name!r} is not the size it declares")
            return data

        meta = parse_json(read("metadata.json"), f"{self.name} metadata.json")
        self.keras_version = str(meta.get("keras_version", "unknown")) if isinstance(meta, dict) else "unknown"
        self.backend = None
        config = parse_json(read("config.json"), f"{self.name} config.json")
        if not isinstance(config, dict) or "class_name" not in config:
            raise ConversionError(f"{self.name} config.json is not a model config")
        self.model_config = config
        self.training_config = config.get("compile_config")
        self._asset_members = {n: i for n, i in members.items() if n.startswith("assets/")}
        self._read_member = read
        try:
            self.h5 = h5py.File(io.BytesIO(read("model.weights.h5")), "r")
        except OSError as exc:
            raise ConversionError(f"{self.name}: model.weights.h5 is not a readable HDF5 file: {exc}") from None

    def asset_text(self, path):
        """Return the text of an asset member (e.g. assets/layers/x/vocabulary.txt), or None."""
        if path not in self._asset_members:
            return None
        try:
            return self._read_member(path).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConversionError(f"{self.name}: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None

    # -- legacy .h5 -------------------------------------------------------------------------
    @h5_guard
    def _open_h5(self):
        try:
            self.h5 = h5py.File(io.BytesIO(self.raw), "r")
        except OSError as exc:
            raise ConversionError(f"{self.name} is not a readable HDF5 file: {exc}") from None
        attrs = self.h5.attrs
        if "model_config" not in attrs:
            raise ConversionError(f"{self.name} has no model_config: it holds weights only. "
                                  "Save the whole model (model.save('model.keras') or model.save('model.h5'))")
        self.model_config = parse_json(_attr_text(attrs["model_config"]), f"{self.name} model_config")
        self.training_config = (parse_json(_attr_text(attrs["training_config"]), f"{self.name} training_config")
                                if "training_config" in attrs else None)
        self.keras_version = _attr_text(attrs.get("keras_version", "unknown"))
        self.backend = _attr_text(attrs["backend"]) if "backend" in attrs else None
        self.layer_names = read_name_list(safe_get(self.h5, "model_weights", "weights group"), "layer_names")

    # -- weights ------------------------------------------------------------------------------
    def layer_weights(self, layer_name, saving_key, class_name):
        """Return [(source path, float32 array)] for a layer, in Keras's weight order."""
        if self.kind == "h5":
            weights = self._h5_layer_weights(layer_name)
        else:
            weights = self._keras_layer_weights(saving_key, class_name)
        self.total_bytes = getattr(self, "total_bytes", 0) + sum(a.nbytes for _, a in weights)
        if self.total_bytes > limits.MAX_TOTAL_WEIGHT_BYTES:
            raise ConversionError(f"{self.name} holds more than {limits.MAX_TOTAL_WEIGHT_BYTES} bytes of weights")
        return weights

    @h5_guard
    def _h5_layer_weights(self, layer_name):
        if layer_name not in self.layer_names:
            return []
        group = safe_get(self.h5, "model_weights/" + layer_name, f"layer {layer_name!r}")
        out = []
        for weight_name in read_name_list(group, "weight_names"):
            what = f"weight {weight_name!r} of layer {layer_name!r}"
            out.append((f"model_weights/{layer_name}/{weight_name}", read_dataset(safe_get(group, weight_name, what), what)))
        return out

    @h5_guard
    def _keras_layer_weights(self, key, class_name):
        base = f"layers/{key}"
        if class_name in RECURRENT_CLASSES:
            subs = ["cell/vars"]
        elif class_name == "Bidirectional":
            subs = ["forward_layer/cell/vars", "backward_layer/cell/vars"]
        else:
            subs = ["vars"]
        out = []
        for sub in subs:
            path = f"{base}/{sub}"
            if self.h5.get(path, getlink=False) is None:
                continue
            group = safe_get(self.h5, path, f"weights of {key!r}")
            names = sorted(group.keys(), key=lambda n: int(n) if n.isdigit() else -1)
            for name in names:
                if not name.isdigit():
                    raise ConversionError(f"unexpected entry {path}/{name} in model.weights.h5")
                what = f"weight {path}/{name}"
                out.append((f"{path}/{name}", read_dataset(safe_get(group, name, what), what)))
        return out

    # -- optimizer ----------------------------------------------------------------------------
    @h5_guard
    def optimizer_variables(self):
        """[(source path, h5py dataset)] of the saved optimizer's variables in Keras's order, or [] if none."""
        if self.kind == "keras":
            if self.h5.get("optimizer/vars", getlink=False) is None:
                return []
            group = safe_get(self.h5, "optimizer/vars", "optimizer variables")
            names = list(group.keys())
            if not all(n.isdigit() for n in names) or sorted(map(int, names)) != list(range(len(names))):
                raise ConversionError("model.weights.h5 optimizer/vars is not numbered 0..n-1")
            return [(f"optimizer/vars/{i}", safe_get(group, str(i), "optimizer variable")) for i in range(len(names))]
        if self.h5.get("optimizer_weights", getlink=False) is None:
            return []
        group = safe_get(self.h5, "optimizer_weights", "optimizer weights")
        return [(f"optimizer_weights/{name}", safe_get(group, name, "optimizer weight"))
                for name in read_name_list(group, "weight_names")]
