"""Loading graph folders safely and feeding inputs: each broken case gets a one-line GraphError/InputDataError."""
import hashlib
import io
import json
import os
import shutil

import numpy as np
import pytest

from helpers import ROOT
from kconvert.runtime import GraphError, InputDataError, load

DEMO_MODEL = os.path.join(ROOT, "examples", "models", "sentiment.keras")



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


def test_symlinked_weight_refused(demo_copy, tmp_path):
    _, _, ref = _first_weight(demo_copy)
    outside = tmp_path / "outside.npy"
    shutil.move(demo_copy / ref["file"], outside)
    os.symlink(outside, demo_copy / ref["file"])
    with pytest.raises(GraphError, match="outside the graph folder|link"):
        load(demo_copy)


def test_hardlinked_weight_refused(demo_copy, tmp_path):
    _, _, ref = _first_weight(demo_copy)
    os.link(demo_copy / ref["file"], tmp_path / "second_name.npy")
    with pytest.raises(GraphError, match="hard link"):
        load(demo_copy)


def test_object_dtype_npy_refused(demo_copy):
    _, _, ref = _first_weight(demo_copy)
    _replace_weight(demo_copy, np.array([{"pickled": True}] * int(np.prod(ref["shape"])), dtype=object).reshape(ref["shape"]))
    with pytest.raises(GraphError, match="holds \\|O"):  # refused from the header: nothing is unpickled
        load(demo_copy)


def test_big_endian_npy_refused(demo_copy):
    _, _, ref = _first_weight(demo_copy)
    _replace_weight(demo_copy, np.zeros(ref["shape"], dtype=">f4"))
    with pytest.raises(GraphError, match=">f4"):
        load(demo_copy)


def test_duplicate_keys_and_nan_refused(demo_copy):
    text = (demo_copy / "graph.json").read_text(encoding="utf-8")
    (demo_copy / "graph.json").write_text(text.replace('"format": "kgraph"', '"format": "kgraph", "format": "kgraph"', 1))
    with pytest.raises(GraphError, match="the key 'format' twice"):
        load(demo_copy)
    (demo_copy / "graph.json").write_text(text.replace('"value": 0', '"value": NaN', 1))
    with pytest.raises(GraphError, match="NaN"):
        load(demo_copy)


def test_missing_graph(tmp_path):
    with pytest.raises(GraphError, match="no graph found"):
        load(tmp_path)


def test_predict_batches_and_input_checks(converted_demo):
    model = load(converted_demo)
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
