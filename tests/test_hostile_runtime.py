"""Hostile and broken graph folders and inputs: one GraphError / InputDataError each, no code run."""
import hashlib
import io
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import ROOT
from kconvert.converter import convert
from kconvert.runtime import GraphError, load
from kconvert.runtime.cli import main as krun_main
from kconvert.schema import limits

DEMO_MODEL = os.path.join(ROOT, "examples", "models", "sentiment.keras")


@pytest.fixture
def graph(demo_copy):
    return demo_copy


def _doc(folder):
    return json.loads((folder / "graph.json").read_text(encoding="utf-8"))


def _save_doc(folder, doc):
    (folder / "graph.json").write_text(json.dumps(doc), encoding="utf-8")


def _weighted(doc):
    node = next(n for n in doc["nodes"] if n["op"] == "dense")
    return node, node["weights"]["kernel"]


def _swap_weight_bytes(folder, data):
    """Replace the dense kernel file by `data` and fix its sha256, so only the content checks can object."""
    doc = _doc(folder)
    _, ref = _weighted(doc)
    (folder / ref["file"]).write_bytes(data)
    ref["sha256"] = hashlib.sha256(data).hexdigest()
    _save_doc(folder, doc)


def _lying_header(shape):
    """A float32 .npy whose header claims 4 TB; reading it must not allocate that."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": (10 ** 12, 1)})
    return buffer.getvalue() + np.zeros(shape, "<f4").tobytes()


def _npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=array.dtype.hasobject)
    return buffer.getvalue()


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.npy", "weights/../../x.npy", "weights\\000_x.npy",
                                  "weights/000_dense_kernel.npy.exe"])
def test_weight_paths_outside_the_folder_refused(graph, path):
    doc = _doc(graph)
    _weighted(doc)[1]["file"] = path
    _save_doc(graph, doc)
    with pytest.raises(GraphError, match="does not match the kgraph v1 schema"):
        load(graph)


@pytest.mark.parametrize("make,match", [
    (lambda shape: _npy(np.zeros(shape, dtype=[("a", "<f4")])), "holds \\|V4|holds .*V"),
    (lambda shape: _npy(np.zeros(shape, dtype="<f8")), "holds <f8"),
    (lambda shape: _npy(np.zeros((shape[0] + 1, shape[1]), dtype="<f4")), "holds <f4 \\[\\d+, \\d+\\]"),
    (lambda shape: _npy(np.zeros(shape, dtype=">f4")), "holds >f4"),
    (lambda shape: _npy(np.array([[None] * shape[1]] * shape[0], dtype=object)), "holds \\|O"),
    (lambda shape: _npy(np.zeros(shape, "<f4"))[:128] + b"\0" * 8, "not a valid .npy"),  # header promises more
    (lambda shape: b"\x93NUMPY\x01\x00" + b"\xff\xff" + b"{" * 40, "not a valid .npy"),
    (lambda shape: _lying_header(shape), "holds <f4 \\[1000000000000, 1\\]"),
])
def test_bad_npy_contents_refused(graph, make, match):
    shape = _weighted(_doc(graph))[1]["shape"]
    _swap_weight_bytes(graph, make(shape))
    with pytest.raises(GraphError, match=match):
        load(graph)


def test_oversized_files_refused_before_reading(graph):
    _, ref = _weighted(_doc(graph))
    with open(graph / ref["file"], "r+b") as fh:  # a sparse file: large on paper, nothing on disk
        fh.truncate(limits.MAX_TENSOR_BYTES + 10 ** 6)
    with pytest.raises(GraphError, match="more than the .* allowed"):
        load(graph)
    with open(graph / "graph.json", "r+b") as fh:
        fh.truncate(limits.MAX_GRAPH_JSON_BYTES + 1)
    with pytest.raises(GraphError, match="graph.json is limited to"):
        load(graph)


def test_deeply_nested_graph_refused(graph):
    (graph / "graph.json").write_text('{"format": "kgraph", "x": ' + "[" * 50_000 + "]" * 50_000 + "}")
    with pytest.raises(GraphError, match="nested more than"):
        load(graph)


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d["nodes"].reverse(), "topological order"),
    (lambda d: d["nodes"][1].update(op="exec"), "unknown op 'exec'"),
    (lambda d: d["nodes"][1]["attrs"].update(__class__="os.system"), "unknown attrs __class__"),
    (lambda d: d.update(format_version="9.0.0"), "newer than this kconvert reads"),
    (lambda d: d["producer"].update(pickle="cos\nsystem\n"), "Additional properties"),
    (lambda d: d.update(format_version="one"), "not MAJOR.MINOR.PATCH"),
])
def test_bad_graph_documents_refused_on_load(graph, mutate, match):
    doc = _doc(graph)
    mutate(doc)
    _save_doc(graph, doc)
    with pytest.raises(GraphError, match=match):
        load(graph)


def test_strict_mode_refuses_nan_and_inf(tmp_path):
    import keras
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.save(tmp_path / "m.keras")
    graph = convert(str(tmp_path / "m.keras"), str(tmp_path / "g"))
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones((2, 3), np.float32)
        x[1, 2] = bad
        np.save(tmp_path / "x.npy", x)
        result = CliRunner().invoke(krun_main, [graph, str(tmp_path / "x.npy"), "--strict"])
        assert result.exit_code == 1 and "contains NaN or Inf (refused in strict mode)" in result.output
        assert CliRunner().invoke(krun_main, [graph, str(tmp_path / "x.npy")]).exit_code == 0  # default: runs
    np.save(tmp_path / "empty.npy", np.zeros((0, 3), np.float32))
    result = CliRunner().invoke(krun_main, [graph, str(tmp_path / "empty.npy")])
    assert result.exit_code == 1 and "has no rows" in result.output


def test_odd_unicode_texts(graph, tmp_path):
    model = load(graph)
    texts = ["\ud800 lone surrogate", "nul\x00inside", "\u202eRTL override", "e\u0301 combining", "\ufeffbom",
             "\U0001F600" * 1000, "", " \t\n ", "ẞ ǅ ΣΑΣ"]
    probs = model.predict(texts)
    assert probs.shape == (len(texts), 3) and np.all(np.isfinite(probs))
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\xfe\xfd\n")
    result = CliRunner().invoke(krun_main, [str(graph), str(tmp_path / "bad.txt")])
    assert result.exit_code == 1 and "is not UTF-8 text" in result.output


def test_graph_declaring_huge_weights_refused(graph):
    doc = _doc(graph)
    node = next(n for n in doc["nodes"] if n["op"] == "embedding")
    node["attrs"]["input_dim"] = 10 ** 8
    node["weights"]["embeddings"]["shape"] = [10 ** 8, node["attrs"]["output_dim"]]  # 12.8 GB, consistently declared
    _save_doc(graph, doc)
    with pytest.raises(GraphError, match="more than the .* allowed"):
        load(graph)
