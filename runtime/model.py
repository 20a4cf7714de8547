"""The runtime Model: a validated graph with its weights, run node by node in NumPy."""
import numpy as np

from kconvert.schema import InputDataError
from kconvert.schema.summary import format_summary

from .graph_io import load_asset, load_weight, read_document, resolve_graph_path
from .ops import OPS
from .ops.text import text_vectorization

_NUMPY_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}


def load(path):
    """Load a graph folder (or its graph.json), verifying schema, semantics and every weight file."""
    folder, json_path = resolve_graph_path(path)
    doc, tensors = read_document(json_path)
    return Model(doc, tensors, folder)


class Model:
    """A loaded kgraph model: `predict`, `summary`, and its `inputs`, `outputs`, `labels`."""

    def __init__(self, doc, tensors, folder):
        self.doc = doc
        self._tensors = tensors
        self.inputs = doc["inputs"]
        self.outputs = doc["outputs"]
        self.labels = doc.get("labels")
        self.weights = {}
        self._vocab_index = {}
        for node in doc["nodes"]:
            what = f"node {node['name']!r}"
            self.weights[node["name"]] = {k: load_weight(folder, ref, what) for k, ref in node["weights"].items()}
            if "vocabulary" in node.get("assets", {}):
                vocab = load_asset(folder, node["assets"]["vocabulary"], what)
                index = {}
                for i, token in enumerate(vocab):
                    index.setdefault(token, i)
                self._vocab_index[node["name"]] = index

    def summary(self):
        """Return a model.summary()-style table as a string."""
        return format_summary(self.doc, self._tensors)

    def _prepare(self, x):
        """Map user data to {input name: array}, checking dtype and shape."""
        if not isinstance(x, dict):
            if len(self.inputs) != 1:
                names = ", ".join(i["name"] for i in self.inputs)
                raise InputDataError(f"this model has {len(self.inputs)} inputs ({names}); pass a dict of arrays")
            x = {self.inputs[0]["name"]: x}
        unknown = set(x) - {i["name"] for i in self.inputs}
        if unknown:
            raise InputDataError(f"unknown input name(s) {sorted(unknown)}; the model's inputs: {[i['name'] for i in self.inputs]}")
        feed, count = {}, None
        for spec in self.inputs:
            if spec["name"] not in x:
                raise InputDataError(f"input {spec['name']!r} is missing")
            feed[spec["name"]] = arr = _coerce(spec, x[spec["name"]])
            if count is not None and len(arr) != count:
                raise InputDataError("all inputs must have the same number of rows")
            count = len(arr)
        return feed, count

    def predict(self, x, batch_size=256):
        """Run the model on x (array, list of texts, or dict of those) in batches; returns an array, or a dict for several outputs."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputDataError(f"batch_size must be a positive integer, got {batch_size!r}")
        feed, count = self._prepare(x)
        chunks = []
        for start in range(0, max(count, 1), batch_size):
            batch = {k: v[start:start + batch_size] for k, v in feed.items()}
            chunks.append(self._run(batch))
        results = {}
        for out in self.outputs:
            parts = [c[out["name"]] for c in chunks]
            results[out["name"]] = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
        return results[self.outputs[0]["name"]] if len(self.outputs) == 1 else results

    def _run(self, batch):
        values = dict(batch)
        for node in self.doc["nodes"]:
            x = values[node["inputs"][0]]
            mask = values[node["mask"]] if "mask" in node else None
            weights = self.weights[node["name"]]
            if node["op"] == "text_vectorization":
                values[node["name"]] = text_vectorization(x, node["attrs"], weights, vocabulary_index=self._vocab_index[node["name"]])
            else:
                values[node["name"]] = OPS[node["op"]](x, node["attrs"], weights, mask)
        return {o["name"]: values[o["name"]] for o in self.outputs}


def _coerce(spec, value):
    """Convert one input to the array the graph expects, or raise InputDataError."""
    name, shape = spec["name"], spec["shape"]
    if spec["dtype"] == "string":
        if isinstance(value, str):
            raise InputDataError(f"input {name!r} takes a list of texts; wrap a single text in a list")
        arr = np.asarray(value, dtype=object)
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1 or not all(isinstance(t, str) for t in arr):
            raise InputDataError(f"input {name!r} takes a 1-D list of texts (str)")
        return arr
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise InputDataError(f"input {name!r} must be numeric ({spec['dtype']}), got dtype {arr.dtype}")
    if arr.ndim != len(shape) or any(d is not None and d != a for d, a in zip(shape[1:], arr.shape[1:])):
        expected = "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"
        raise InputDataError(f"input {name!r} must have shape {expected}, got {tuple(arr.shape)}")
    return arr.astype(_NUMPY_DTYPES[spec["dtype"]], copy=False)
