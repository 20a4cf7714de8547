"""Reading a graph folder safely: bounded JSON, weight files confined to the folder, no pickle."""
import hashlib
import io
import json
import os
import stat

import numpy as np

from kconvert.schema import GraphError, migrate, validate_document
from kconvert.schema import limits


def resolve_graph_path(path):
    """Return (folder, graph.json path) for a graph.json path or its folder."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "graph.json")
    if not os.path.isfile(path):
        raise GraphError(f"no graph found at {path}: pass a graph.json or the folder kconvert wrote")
    return os.path.dirname(os.path.abspath(path)), path


def _reject_duplicates(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise GraphError(f"graph.json has the key {key!r} twice")
        seen[key] = value
    return seen


def _reject_constant(name):
    raise GraphError(f"graph.json contains {name}, which is not valid JSON")


def read_document(path):
    """Parse and validate graph.json; return (document, tensor shapes and dtypes)."""
    size = os.path.getsize(path)
    if size > limits.MAX_GRAPH_JSON_BYTES:
        raise GraphError(f"{path} is {size} bytes; graph.json is limited to {limits.MAX_GRAPH_JSON_BYTES}")
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicates,
                         parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GraphError(f"{path} is not valid JSON: {str(exc)[:200]}") from None
    except RecursionError:
        doc = None
    if doc is None or limits.json_depth(doc) > limits.MAX_JSON_DEPTH:
        raise GraphError(f"{path} is nested more than {limits.MAX_JSON_DEPTH} levels deep")
    doc = migrate(doc)
    tensors = validate_document(doc)
    total = sum(4 * int(np.prod(ref["shape"], dtype=np.float64)) for n in doc["nodes"] for ref in n["weights"].values())
    if total > limits.MAX_TOTAL_WEIGHT_BYTES:
        raise GraphError(f"the graph declares {total} bytes of weights, more than the {limits.MAX_TOTAL_WEIGHT_BYTES} allowed")
    return doc, tensors


def _read_confined(folder, relative, what):
    """Read a file that must be a regular, non-linked file inside `folder`."""
    full = os.path.join(folder, relative)
    real_folder = os.path.realpath(folder)
    if os.path.commonpath([os.path.realpath(full), real_folder]) != real_folder:
        raise GraphError(f"{what} file {relative} points outside the graph folder")
    try:
        info = os.lstat(full)
    except FileNotFoundError:
        raise GraphError(f"{what} file {relative} is missing from {folder}; re-run kconvert") from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
        raise GraphError(f"{what} file {relative} is a link or not a regular file; refusing to read it")
    if info.st_nlink > 1:
        raise GraphError(f"{what} file {relative} is a hard link; refusing to read it")
    if info.st_size > limits.MAX_TENSOR_BYTES + 4096:
        raise GraphError(f"{what} file {relative} is {info.st_size} bytes, more than the {limits.MAX_TENSOR_BYTES} allowed")
    with open(full, "rb") as fh:
        return fh.read()


def _check_sha(data, ref, what):
    digest = hashlib.sha256(data).hexdigest()
    if digest != ref["sha256"]:
        raise GraphError(f"{what} file {ref['file']} does not match its sha256 in graph.json (altered or corrupted)")


def _parse_npy(data, what, ref):
    """Check an .npy header against graph.json before touching the data; return the array (no pickle)."""
    buffer = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buffer)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = reader(buffer)
    except (ValueError, OSError, EOFError, TypeError, SyntaxError) as exc:
        raise GraphError(f"{what} file {ref['file']} is not a valid .npy file: {str(exc)[:200]}") from None
    if dtype != np.dtype("<f4") or list(shape) != list(ref["shape"]):
        raise GraphError(f"{what} file {ref['file']} holds {dtype.str} {list(shape)}, "
                         f"graph.json says float32 {ref['shape']}")
    payload = data[buffer.tell():]
    if len(payload) != int(np.prod(shape, dtype=np.int64)) * 4:
        raise GraphError(f"{what} file {ref['file']} is not a valid .npy file: its header promises "
                         f"{int(np.prod(shape, dtype=np.int64)) * 4} bytes of data, it holds {len(payload)}")
    array = np.frombuffer(payload, dtype="<f4").reshape(shape, order="F" if fortran_order else "C")
    return np.array(array, order="C")  # a writable, C-ordered copy (training updates weights in place)


def load_weight(folder, ref, what):
    """Load one .npy weight, checking sha256, then the header's dtype (little-endian float32) and shape."""
    data = _read_confined(folder, ref["file"], what)
    _check_sha(data, ref, what)
    return _parse_npy(data, what, ref)


def load_asset(folder, ref, what):
    """Load a JSON array-of-strings asset, checking sha256 and count."""
    data = _read_confined(folder, ref["file"], what)
    if len(data) > limits.MAX_ASSET_BYTES:
        raise GraphError(f"{what} file {ref['file']} is larger than {limits.MAX_ASSET_BYTES} bytes")
    _check_sha(data, ref, what)
    try:
        values = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GraphError(f"{what} file {ref['file']} is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values) or len(values) != ref["count"]:
        raise GraphError(f"{what} file {ref['file']} must be a JSON array of {ref['count']} strings")
    return values
