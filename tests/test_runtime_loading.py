"""Loading graph folders safely and feeding inputs: each broken case gets a one-line GraphError/InputDataError."""
import hashlib
import io
import json
import os
import shutil

import numpy as np
import pytest

from helpers import ROOT
from kconvert.converter import convert
from kconvert.runtime import GraphError, InputDataError, load

DEMO_MODEL = os.path.join(ROOT, "examples", "models", "sentiment.keras")


@pytest.fixture(scope="module")
def graph_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("g") / "demo"
    convert(DEMO_MODEL, str(out))
    return out


@pytest.fixture
def copy(graph_dir, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(graph_dir, dst)
    return dst


def _doc(folder):
    return json.loads((folder / "graph.json").read_text(encoding="utf-8"))


def _first_weight(folder):
    doc = _doc(folder)
    node = next(n for n in doc["nodes"] if n["weights"])
    return doc, node, next(iter(node["weights"].values()))


def _replace_weight(folder, array):
    """Write `array` as the first weight file and update its sha256, so only the content check can catch it."""
    doc, node, ref = _first_weight(folder)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    (folder / ref["file"]).write_bytes(buffer.getvalue())
    ref["sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    (folder / "graph.json").write_text(json.dumps(doc), encoding="utf-8")
    return ref


def test_symlinked_weight_refused(copy, tmp_path):
    _, _, ref = _first_weight(copy)
    outside = tmp_path / "outside.npy"
    shutil.move(copy / ref["file"], outside)
    os.symlink(outside, copy / ref["file"])
    with pytest.raises(GraphError, match="outside the graph folder|link"):
        load(copy)


def test_hardlinked_weight_refused(copy, tmp_path):
    _, _, ref = _first_weight(copy)
    os.link(copy / ref["file"], tmp_path / "second_name.npy")
    with pytest.raises(GraphError, match="hard link"):
        load(copy)


def test_object_dtype_npy_refused(copy):
    _, _, ref = _first_weight(copy)
    _replace_weight(copy, np.array([{"pickled": True}] * int(np.prod(ref["shape"])), dtype=object).reshape(ref["shape"]))
    with pytest.raises(GraphError, match="holds \\|O"):  # refused from the header: nothing is unpickled
        load(copy)


def test_big_endian_npy_refused(copy):
    _, _, ref = _first_weight(copy)
    _replace_weight(copy, np.zeros(ref["shape"], dtype=">f4"))
    with pytest.raises(GraphError, match=">f4"):
        load(copy)


def test_duplicate_keys_and_nan_refused(copy):
    text = (copy / "graph.json").read_text(encoding="utf-8")
    (copy / "graph.json").write_text(text.replace('"format": "kgraph"', '"format": "kgraph", "format": "kgraph"', 1))
    with pytest.raises(GraphError, match="the key 'format' twice"):
        load(copy)
    (copy / "graph.json").write_text(text.replace('"value": 0', '"value": NaN', 1))
    with pytest.raises(GraphError, match="NaN"):
        load(copy)


def test_missing_graph(tmp_path):
    with pytest.raises(GraphError, match="no graph found"):
        load(tmp_path)


def test_predict_batches_and_input_checks(graph_dir):
    model = load(graph_dir)
    texts = [f"teks nomor {i} enak" for i in range(11)]
    # BLAS picks kernels by matrix size, so batch 3 and batch 256 may differ in the last bit.
    np.testing.assert_allclose(model.predict(texts, batch_size=3), model.predict(texts, batch_size=256),
                               rtol=1e-6, atol=1e-7)
    with pytest.raises(InputDataError, match="wrap a single text in a list"):
        model.predict("one text")
    with pytest.raises(InputDataError, match="1-D list of texts"):
        model.predict(np.zeros((2, 3)))
    with pytest.raises(InputDataError, match="unknown input name"):
        model.predict({"nope": texts})
    with pytest.raises(InputDataError, match="batch_size must be a positive integer"):
        model.predict(texts, batch_size=0)
    assert "bidirectional(lstm)" in model.summary() and "Total params" in model.summary()
