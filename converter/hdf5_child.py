"""Child process of hdf5_snapshot: walk one HDF5 file with h5py; report it as JSON, its arrays as raw float32.

The HDF5 C library can crash or loop forever on a damaged file (a segfault in an attribute read, a hang
decoding a global heap: both found by fuzzing), which no Python code can catch. So the converter never
runs it in its own process: hdf5_snapshot starts this file as a script (`python -P hdf5_child.py`, which
imports nothing of kconvert and nothing from the working folder) and turns a crash or a timeout into one
ConversionError.

Requests on stdin: one JSON line with the limits, the path of the HDF5 file to read and the path of a new
file for the float32 arrays, back to back (both in the parent's private temporary folder: bulk data does
not go through pipes). Answers on stdout are frames, a tag byte and a little-endian uint64 length, then
the payload: M (the JSON manifest) or E (a Python error in the reader). With --serve this process is a
fork server: it reads requests one after another and forks a fresh process for each (so no file is ever
parsed by a process that parsed another, or by the server itself), then adds frame S with the fork's exit
status (negative: the signal that killed it).
"""
import json
import math
import os
import struct
import sys
import traceback

import h5py
import numpy as np


def _text(value):
    """An attribute value as text; invalid UTF-8 becomes lone surrogates, which the parent refuses."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


def _failure(exc):
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _attribute(attrs, name):
    """{"text": str} or {"list": [str]} (a string-list attribute such as weight_names), or {"error": ...}."""
    try:
        value = attrs[name]
        if isinstance(value, np.ndarray):
            return {"list": [_text(v) for v in value.ravel().tolist()]}
        return {"text": _text(value)}
    except Exception as exc:  # noqa: BLE001 - any failure of a damaged attribute is reported, not raised
        return {"error": _failure(exc)}


class Walk:
    """Every object reachable through hard links, each listed once (hard links may form cycles)."""

    def __init__(self, limits, arrays):
        self.limits, self.arrays = limits, arrays
        self.nodes, self.index, self.pending = [], {}, []
        self.written = 0

    def node(self, obj):
        """Index of `obj` in the manifest, queueing it to be described the first time it is seen."""
        address = h5py.h5o.get_info(obj.id).addr
        if address not in self.index:
            if len(self.nodes) >= self.limits["max_objects"]:
                raise OverflowError(f"the file has more than {self.limits['max_objects']} HDF5 objects")
            self.index[address] = len(self.nodes)
            self.nodes.append(None)
            self.pending.append((self.index[address], obj))
        return self.index[address]

    def run(self, root):
        """Describe everything reachable from `root`; returns the list of node descriptions."""
        self.node(root)
        while self.pending:
            position, obj = self.pending.pop()
            try:
                described = self.group(obj) if isinstance(obj, h5py.Group) else self.dataset(obj)
            except OverflowError:
                raise
            except Exception as exc:  # noqa: BLE001 - a damaged object is reported; the parent refuses it if used
                described = {"type": "group" if isinstance(obj, h5py.Group) else "dataset", "error": _failure(exc)}
            self.nodes[position] = described
        return self.nodes

    def group(self, group):
        attrs = {name: _attribute(group.attrs, name) for name in group.attrs}
        links = []
        for name in group:
            try:
                link = group.get(name, getlink=True)
                if not isinstance(link, h5py.HardLink):
                    links.append([name, {"link": type(link).__name__}])
                    continue
                obj = group[name]
                if isinstance(obj, (h5py.Group, h5py.Dataset)):
                    links.append([name, {"node": self.node(obj)}])
                else:
                    links.append([name, {"link": type(obj).__name__}])
            except OverflowError:
                raise
            except Exception as exc:  # noqa: BLE001
                links.append([name, {"error": _failure(exc)}])
        return {"type": "group", "attrs": attrs, "links": links}

    def dataset(self, dataset):
        dtype = dataset.dtype
        shape = [int(n) for n in dataset.shape or ()]
        entry = {"type": "dataset", "dtype": str(dtype), "kind": dtype.kind, "itemsize": int(dtype.itemsize),
                 "shape": shape, "virtual": bool(dataset.is_virtual), "external": bool(dataset.external),
                 "compressed": dataset.compression is not None, "storage": int(dataset.id.get_storage_size())}
        count = math.prod(shape)
        declared = count * entry["itemsize"]
        plain = not entry["virtual"] and not entry["external"] and len(shape) <= self.limits["max_rank"]
        # Uncompressed data must be stored in full; a shape larger than the bytes behind it is not read.
        stored = entry["compressed"] or entry["storage"] >= declared
        floats = dtype.kind == "f" and dtype.itemsize in (2, 4, 8)
        if plain and floats and stored and declared <= self.limits["max_tensor_bytes"]:
            if self.written + 4 * count > self.limits["max_read_bytes"]:
                entry["error"] = f"the file's float datasets exceed {self.limits['max_read_bytes']} bytes in all"
                return entry
            try:
                array = np.ascontiguousarray(dataset[()], dtype="<f4")
            except Exception as exc:  # noqa: BLE001
                entry["error"] = _failure(exc)
                return entry
            if list(array.shape) != shape:
                entry["error"] = f"read shape {list(array.shape)} differs from the declared {shape}"
                return entry
            entry["data"] = [self.written, array.nbytes]
            self.arrays.write(memoryview(array).cast("B"))
            self.written += array.nbytes
        elif plain and dtype.kind in "iu" and shape == []:
            try:
                entry["value"] = int(dataset[()])
            except Exception as exc:  # noqa: BLE001
                entry["error"] = _failure(exc)
        return entry


def _frame(out, tag, payload):
    out.write(tag + struct.pack("<Q", len(payload)))
    out.write(payload)


def _read_request(stream):
    """The next request (a dict), or None when the parent closed the pipe."""
    line = stream.readline()
    return json.loads(line) if line else None


def answer(request, out):
    """Describe the HDF5 file request["image"]: arrays to request["arrays"], then frame M to `out`."""
    try:
        root = h5py.File(request["image"], "r")
    except Exception as exc:  # noqa: BLE001
        manifest = {"open_error": _failure(exc)}
    else:
        with open(request["arrays"], "xb") as arrays:
            try:
                manifest = {"nodes": Walk(request["limits"], arrays).run(root), "pid": os.getpid()}
            except OverflowError as exc:
                manifest = {"error": str(exc)}
    _frame(out, b"M", json.dumps(manifest, ensure_ascii=True, allow_nan=False).encode("ascii"))
    out.flush()


def _answer_or_report(request, out):
    try:
        answer(request, out)
        return 0
    except Exception:  # noqa: BLE001 - a bug of this reader, reported to the parent in one frame
        _frame(out, b"E", traceback.format_exc(limit=4).encode("utf-8", "replace"))
        out.flush()
        return 1


def serve(stdin, stdout):
    """Fork server: one fresh process per request; this process reads requests but never parses a file."""
    while (request := _read_request(stdin)) is not None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _answer_or_report(request, stdout)
            finally:
                os._exit(code)  # no finalizers: h5py's clean-up of a damaged file is not needed
        _, status = os.waitpid(pid, 0)
        _frame(stdout, b"S", struct.pack("<q", os.waitstatus_to_exitcode(status)))
        stdout.flush()


def main():
    """Answer one request from stdin (or, with --serve, every request, each in a forked process)."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    if sys.argv[1:] == ["--serve"]:
        serve(stdin, stdout)
        return
    request = _read_request(stdin)
    if request is None:
        sys.exit("no request on stdin")
    sys.exit(_answer_or_report(request, stdout))


if __name__ == "__main__":
    main()
