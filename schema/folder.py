"""Writing a graph folder atomically: build everything in a temporary sibling folder, then rename."""
import hashlib
import io
import json
import os
import shutil
import tempfile

import numpy as np

from .errors import GraphError
from .validate import validate_document


def _npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_graph(doc, weight_files, asset_files, out_dir, force=False):
    """Write graph.json, weights/ and assets/ into out_dir; returns the graph.json path."""
    out_dir = os.path.abspath(out_dir)
    if os.path.lexists(out_dir) and not force:
        raise GraphError(f"{out_dir} already exists; pass --force to replace it or choose another -o")
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise GraphError(f"{out_dir} exists and is not a folder; refusing to replace it")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        for sub in ("weights", "assets"):
            os.mkdir(os.path.join(tmp, sub))
        by_file = {}
        for file, array in weight_files.items():
            by_file[file] = _npy_bytes(array)
        for file, values in asset_files.items():
            try:
                by_file[file] = json.dumps(values, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                raise GraphError(f"{file} holds text that is not valid Unicode; nothing was written") from None
        state = (doc.get("training") or {}).get("optimizer_state") or {}
        refs = [ref for node in doc["nodes"] for ref in (*node["weights"].values(), *node.get("assets", {}).values())]
        for ref in refs + [entry["value"] for entry in state.get("slots", [])]:
            ref["sha256"] = hashlib.sha256(by_file[ref["file"]]).hexdigest()
        validate_document(doc)  # never write a graph that would not load
        try:
            graph_json = (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode("utf-8")
        except UnicodeEncodeError:
            raise GraphError("the graph holds text that is not valid Unicode (from the source file); nothing was written") from None
        for file, data in by_file.items():
            with open(os.path.join(tmp, file), "xb") as fh:
                fh.write(data)
        if not asset_files:
            os.rmdir(os.path.join(tmp, "assets"))
        with open(os.path.join(tmp, "graph.json"), "xb") as fh:
            fh.write(graph_json)
        if os.path.lexists(out_dir):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=parent)
            os.rename(out_dir, os.path.join(old, "graph"))
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return os.path.join(out_dir, "graph.json")
