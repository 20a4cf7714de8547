"""Reading Keras model files (.keras zip and legacy .h5) with zipfile, json and h5py (in a child process) only.

Nothing read here is imported, evaluated or unpickled: configs are parsed as JSON (duplicate keys
and NaN refused), HDF5 objects are reached only through hard links, and datasets with external
or virtual storage are refused.
"""
import hashlib
import io
import json
import os
import re
import zipfile

import numpy as np

from kconvert.schema import ConversionError
from kconvert.schema import limits

from . import hdf5_snapshot as hdf5

# Keras's recurrent layer classes and their graph ops; a .keras file keeps their weights under cell/vars.
RECURRENT_CLASSES = {"SimpleRNN": "simple_rnn", "LSTM": "lstm", "GRU": "gru"}


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


def safe_get(group, path, what):
    """Follow `path` from `group` through hard links only; return the Dataset or Group."""
    _check_name(path, what)
    node = group
    for part in path.split("/"):
        if not isinstance(node, hdf5.Group):
            raise ConversionError(f"{what} {path!r} is missing from the file")
        link = node.link(part)
        if link is None:
            raise ConversionError(f"{what} {path!r} is missing from the file")
        if isinstance(link, str):
            raise ConversionError(f"{what} {path!r} goes through a {link}; only plain HDF5 objects are read")
        node = link
    return node


def exists(group, path):
    """Whether `path` names something under `group` (a link of any kind counts; safe_get judges it)."""
    node = group
    for part in path.split("/"):
        if not isinstance(node, hdf5.Group):
            return False
        node = node.link(part)
        if node is None:
            return False
        if isinstance(node, str):
            return True
    return True


def _dataset(dataset, what):
    if not isinstance(dataset, hdf5.Dataset):
        raise ConversionError(f"{what} is not a dataset")
    if dataset.error and dataset.kind is None:  # its metadata could not be read
        raise ConversionError(f"the model's HDF5 data is corrupt or unreadable ({dataset.error})")
    if not dataset.plain:
        raise ConversionError(f"{what} uses external or virtual storage; refusing to read files it points to")
    return dataset


def read_dataset(dataset, what):
    """Read a float dataset into a float32 array, refusing external/virtual storage and lying shapes."""
    dataset = _dataset(dataset, what)
    if dataset.kind != "f" or dataset.itemsize not in (2, 4, 8):
        raise ConversionError(f"{what} has dtype {dataset.dtype}; expected floating point weights")
    shape = dataset.shape
    if len(shape) > limits.MAX_RANK:
        raise ConversionError(f"{what} has rank {len(shape)}, more than {limits.MAX_RANK}")
    nbytes = int(np.prod(shape, dtype=np.float64)) * dataset.itemsize
    if nbytes > limits.MAX_TENSOR_BYTES:
        raise ConversionError(f"{what} declares {nbytes} bytes, more than the {limits.MAX_TENSOR_BYTES} allowed per weight")
    if not dataset.compressed and dataset.storage < nbytes and nbytes > 0:
        # Uncompressed data must be stored in full; a shape larger than the bytes behind it is a lie.
        raise ConversionError(f"{what} declares shape {shape} ({nbytes} bytes) but stores only "
                              f"{dataset.storage} bytes")
    array = dataset.array()
    if array is None:
        raise ConversionError(f"{what} cannot be read: {dataset.error}")
    return array


def read_counter(dataset, what):
    """Read a scalar integer dataset (an optimizer's iteration count) as a Python int."""
    dataset = _dataset(dataset, what)
    if dataset.kind not in ("i", "u") or dataset.shape != ():
        raise ConversionError(f"{what} has dtype {dataset.dtype} and shape {dataset.shape}; expected an integer scalar")
    if dataset.value is None:
        raise ConversionError(f"{what} cannot be read: {dataset.error}")
    if not 0 <= dataset.value < 2 ** 53:
        raise ConversionError(f"{what} is {dataset.value}; expected a count of optimizer steps")
    return dataset.value


def _attr_text(value):
    """Text of an HDF5 attribute; invalid UTF-8 (lone surrogates from the reader) is refused."""
    if not isinstance(value, str):
        raise ConversionError("the model file has a list where a text attribute belongs")
    try:
        value.encode("utf-8")
    except UnicodeError:
        raise ConversionError("the model file has a text attribute that is not valid UTF-8") from None
    return value


def read_name_list(group, name):
    """Read a string-list attribute, including Keras's chunked form name0, name1, ..."""
    if group.has_attr(name):
        values = group.attr(name)
        values = [values] if isinstance(values, str) else values
    else:
        values, chunk = [], 0
        while group.has_attr(f"{name}{chunk}"):
            chunk_values = group.attr(f"{name}{chunk}")
            values.extend([chunk_values] if isinstance(chunk_values, str) else chunk_values)
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
        self.h5 = hdf5.read_hdf5(read("model.weights.h5"), f"{self.name}: model.weights.h5")

    def asset_text(self, path):
        """Return the text of an asset member (e.g. assets/layers/x/vocabulary.txt), or None."""
        if path not in self._asset_members:
            return None
        try:
            return self._read_member(path).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConversionError(f"{self.name}: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None

    # -- legacy .h5 -------------------------------------------------------------------------
    def _open_h5(self):
        self.h5 = root = hdf5.read_hdf5(self.raw, self.name)
        if not root.has_attr("model_config"):
            raise ConversionError(f"{self.name} has no model_config: it holds weights only. "
                                  "Save the whole model (model.save('model.keras') or model.save('model.h5'))")
        self.model_config = parse_json(_attr_text(root.attr("model_config")), f"{self.name} model_config")
        self.training_config = (parse_json(_attr_text(root.attr("training_config")), f"{self.name} training_config")
                                if root.has_attr("training_config") else None)
        self.keras_version = _attr_text(root.attr("keras_version")) if root.has_attr("keras_version") else "unknown"
        self.backend = _attr_text(root.attr("backend")) if root.has_attr("backend") else None
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

    def _h5_layer_weights(self, layer_name):
        if layer_name not in self.layer_names:
            return []
        group = safe_get(self.h5, "model_weights/" + layer_name, f"layer {layer_name!r}")
        out = []
        for weight_name in read_name_list(group, "weight_names"):
            what = f"weight {weight_name!r} of layer {layer_name!r}"
            out.append((f"model_weights/{layer_name}/{weight_name}", read_dataset(safe_get(group, weight_name, what), what)))
        return out

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
            if not exists(self.h5, path):
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
    def optimizer_variables(self):
        """[(source path, hdf5 Dataset)] of the saved optimizer's variables in Keras's order, or [] if none."""
        if self.kind == "keras":
            if not exists(self.h5, "optimizer/vars"):
                return []
            group = safe_get(self.h5, "optimizer/vars", "optimizer variables")
            names = list(group.keys())
            if not all(n.isdigit() for n in names) or sorted(map(int, names)) != list(range(len(names))):
                raise ConversionError("model.weights.h5 optimizer/vars is not numbered 0..n-1")
            return [(f"optimizer/vars/{i}", safe_get(group, str(i), "optimizer variable")) for i in range(len(names))]
        if not exists(self.h5, "optimizer_weights"):
            return []
        group = safe_get(self.h5, "optimizer_weights", "optimizer weights")
        return [(f"optimizer_weights/{name}", safe_get(group, name, "optimizer weight"))
                for name in read_name_list(group, "weight_names")]
