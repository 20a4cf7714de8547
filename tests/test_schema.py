"""Graph schema and semantic validation: written graphs validate, invalid documents are refused clearly."""
import copy
import json
import os
import re

import jsonschema
import pytest

from helpers import ROOT, keras_module, save_and_convert
from kconvert.converter import convert
from kconvert.runtime import load
from kconvert.schema import FORMAT_VERSION, GraphError, validate_document
from kconvert.schema.catalogue import load_catalogue
from kconvert.schema.catalogue_doc import render
from kconvert.schema.validate import graph_schema
from kconvert.runtime.ops import OPS

DEMO_MODEL = os.path.join(ROOT, "examples", "models", "sentiment.keras")


@pytest.fixture(scope="module")
def demo_graph(tmp_path_factory):
    out = tmp_path_factory.mktemp("schema") / "demo"
    return convert(DEMO_MODEL, str(out), labels=["negative", "neutral", "positive"])


@pytest.fixture
def doc(demo_graph):
    with open(demo_graph, encoding="utf-8") as fh:
        return json.load(fh)


def test_written_graph_validates_against_json_schema(doc):
    jsonschema.Draft202012Validator(graph_schema()).validate(doc)
    tensors = validate_document(doc)
    assert tensors[doc["outputs"][0]["name"]] == ((None, 3), "float32")
    assert doc["format_version"] == FORMAT_VERSION and doc["producer"]["source_file"] == "sentiment.keras"
    assert doc["training"]["loss"] == "sparse_categorical_crossentropy"
    assert doc["training"]["optimizer"]["class_name"] == "Adam"


def test_schema_has_id_and_is_draft_2020_12():
    schema = graph_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema" and schema["$id"]


def test_ops_markdown_is_generated_from_catalogue():
    with open(os.path.join(ROOT, "schema", "OPS.md"), encoding="utf-8") as fh:
        assert fh.read() == render(), "schema/OPS.md is stale: python -m kconvert.schema.catalogue_doc > schema/OPS.md"


def test_every_catalogue_op_has_a_runtime_implementation():
    assert set(load_catalogue()["ops"]) == set(OPS)


def _node(doc, op):
    return next(n for n in doc["nodes"] if n["op"] == op)


def _break(mutation):
    def apply(doc):
        mutation(doc)
        return doc
    return apply


INVALID = {
    "newer_major": (_break(lambda d: d.update(format_version="2.0.0")), "newer than this kconvert reads"),
    "not_kgraph": (_break(lambda d: d.update(format="onnx")), "not a kgraph document"),
    "unknown_top_key": (_break(lambda d: d.update(extra=1)), "Additional properties"),
    "unknown_op": (_break(lambda d: _node(d, "dense").update(op="dense_v2")), "unknown op 'dense_v2'; known ops:"),
    "missing_attr": (_break(lambda d: _node(d, "dense")["attrs"].pop("use_bias")), "missing attrs use_bias"),
    "extra_attr": (_break(lambda d: _node(d, "dense")["attrs"].update(units_x=3)), "unknown attrs units_x"),
    "bad_attr_value": (_break(lambda d: _node(d, "dense")["attrs"].update(activation="swishy")), "activation='swishy'"),
    "forward_reference": (_break(lambda d: d["nodes"].insert(0, d["nodes"].pop(-1))), "topological order"),
    "self_cycle": (_break(lambda d: _node(d, "dense").update(inputs=[_node(d, "dense")["name"]])), "topological order"),
    "weight_shape": (_break(lambda d: _node(d, "dense")["weights"]["kernel"].update(shape=[3, 3])), "weight kernel has shape"),
    "missing_weight": (_break(lambda d: _node(d, "dense")["weights"].pop("bias")), "weights missing ['bias']"),
    "weight_path_escape": (_break(lambda d: _node(d, "dense")["weights"]["kernel"].update(file="../x.npy")), "does not match"),
    "mask_on_dense": (_break(lambda d: _node(d, "dense").update(mask=_node(d, "not_equal")["name"])), "does not take a mask"),
    "bidirectional_same_direction": (
        _break(lambda d: _node(d, "bidirectional")["attrs"]["backward"].update(go_backwards=False)), "opposite go_backwards"),
    "output_unknown": (_break(lambda d: d["outputs"][0].update(name="nope")), "output 'nope' is not an input or a node"),
    "duplicate_name": (_break(lambda d: _node(d, "dense").update(name=d["inputs"][0]["name"])), "used twice"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_documents_refused(doc, case):
    mutate, message = INVALID[case]
    with pytest.raises(GraphError, match=None) as info:
        validate_document(mutate(copy.deepcopy(doc)))
    assert message in str(info.value), str(info.value)


def test_older_minor_and_patch_accepted(doc):
    doc["format_version"] = "1.0.7"
    validate_document(doc)


def test_runtime_refuses_newer_major_with_clear_message(doc, demo_graph, tmp_path):
    folder = os.path.dirname(demo_graph)
    doc["format_version"] = "2.1.0"
    for name in os.listdir(folder):
        if name != "graph.json":
            os.symlink(os.path.join(folder, name), tmp_path / name)
    (tmp_path / "graph.json").write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(GraphError, match="graph format 2.1.0 is newer than this kconvert reads"):
        load(str(tmp_path))


@pytest.fixture(scope="module")
def batchnorm_doc(tmp_path_factory):
    """A converted Embedding(mask_zero) -> BatchNormalization -> LSTM model and a conv one, as one document each."""
    import keras
    from helpers import save_and_convert
    tmp = tmp_path_factory.mktemp("batchnorm")
    text = keras.Sequential([keras.Input((5,), dtype="int32"), keras.layers.Embedding(9, 4, mask_zero=True),
                             keras.layers.BatchNormalization(), keras.layers.LSTM(2)])
    (tmp / "text").mkdir()
    (tmp / "images").mkdir()
    images = keras.Sequential([keras.Input((4, 4, 2)), keras.layers.BatchNormalization()])
    return tuple(save_and_convert(model, tmp / folder, ".keras")[0].doc
                 for model, folder in ((text, "text"), (images, "images")))


def _with_state_slot(doc):
    node = _node(doc, "batch_norm")
    value = dict(node["weights"]["moving_mean"], file="weights/900_slot.npy")
    doc["training"] = {"loss": None, "loss_config": None, "optimizer": None, "metrics": None,
                       "optimizer_state": {"iterations": 1, "slots": [
                           {"node": node["name"], "weight": "moving_mean", "slot": "momentum", "value": value}]}}


def _with_sequence_mask(doc):
    """A bool (batch, 4) mask on the (batch, 4, 4, 2) images: right dtype and length, but not a sequence."""
    doc["inputs"].append({"name": "ids", "dtype": "int32", "shape": [None, 4]})
    doc["nodes"].insert(0, {"name": "ids_mask", "op": "not_equal", "inputs": ["ids"], "attrs": {"value": 0},
                            "weights": {}})
    _node(doc, "batch_norm")["mask"] = "ids_mask"


BATCHNORM_INVALID = {
    "batch_axis": (0, lambda d: _node(d, "batch_norm")["attrs"].update(axis=0), "is not a non-batch axis"),
    "axis_out_of_range": (1, lambda d: _node(d, "batch_norm")["attrs"].update(axis=-5), "is not a non-batch axis"),
    "mask_on_images": (1, _with_sequence_mask, "matching its input (batch_norm: a rank-3 input)"),
    "optimizer_slot_on_state": (0, _with_state_slot, "belongs to a state weight, which its op updates"),
}


@pytest.mark.parametrize("case", sorted(BATCHNORM_INVALID))
def test_invalid_batchnorm_documents_refused(batchnorm_doc, case):
    which, mutate, message = BATCHNORM_INVALID[case]
    doc = copy.deepcopy(batchnorm_doc[which])
    validate_document(doc)  # the converted document itself is valid, masked batch_norm included
    assert "mask" in _node(batchnorm_doc[0], "batch_norm")
    mutate(doc)
    with pytest.raises(GraphError, match=re.escape(message)):
        validate_document(doc)


def _merge_doc(producer):
    """A hand-written graph: two dense layers on one input, added."""
    weight = {"file": "weights/000_dense_kernel.npy", "shape": [3, 2], "dtype": "float32", "sha256": "0" * 64}
    dense = {"op": "dense", "attrs": {"units": 2, "activation": "linear", "use_bias": False}, "inputs": ["x"]}
    return {"format": "kgraph", "format_version": FORMAT_VERSION, "producer": producer,
            "inputs": [{"name": "x", "dtype": "float32", "shape": [None, 3]}],
            "outputs": [{"name": "sum", "dtype": "float32", "shape": [None, 2]}],
            "nodes": [dict(copy.deepcopy(dense), name="a", weights={"kernel": weight}),
                      dict(copy.deepcopy(dense), name="b",
                           weights={"kernel": dict(weight, file="weights/001_dense_kernel.npy")}),
                      {"name": "sum", "op": "add", "inputs": ["a", "b"], "attrs": {}, "weights": {}}]}


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d["nodes"][2].update(inputs=["a"]), "node 'sum' (add) takes two or more inputs, got 1"),
    (lambda d: d["nodes"][2].update(op="subtract", inputs=["a", "b", "a"]),
     "node 'sum' (subtract) takes 2 input(s), got 3"),
    (lambda d: (d["nodes"][1]["attrs"].update(units=4), d["nodes"][1]["weights"]["kernel"].update(shape=[3, 4])),
     "add inputs differ on axis 1: (None, 2), (None, 4)"),
    (lambda d: d["nodes"][2].update(op="concatenate", attrs={"axis": 0}), "concatenate axis 0 is not a non-batch axis"),
], ids=["one_input", "three_to_subtract", "shapes_differ", "batch_axis"])
def test_invalid_merges_refused(doc, mutate, message):
    merged = _merge_doc(doc["producer"])
    validate_document(copy.deepcopy(merged))
    mutate(merged)
    with pytest.raises(GraphError, match=re.escape(message)):
        validate_document(merged)


@pytest.mark.parametrize("node,message", [
    ({"op": "reshape", "attrs": {"target_shape": [3]}}, "cannot reshape (None, 2) to (None, 3)"),
    ({"op": "reshape", "attrs": {"target_shape": [-1, -1]}}, "may hold one -1 and no 0"),
    ({"op": "permute", "attrs": {"dims": [2]}}, "permute dims [2] are not a permutation of 1..1"),
    ({"op": "up_sampling2d", "attrs": {"size": [2, 2]}}, "expects a rank-4 input"),
], ids=["size", "two_wildcards", "permutation", "rank"])
def test_invalid_reshapes_refused(doc, node, message):
    reshaped = _merge_doc(doc["producer"])
    reshaped["nodes"][2] = dict(node, name="sum", inputs=["a"], weights={})
    with pytest.raises(GraphError, match=re.escape(message)):
        validate_document(reshaped)


@pytest.mark.parametrize("attrs,message", [
    ({"depth_multiplier": 2}, "weight kernel has shape [3, 3, 2, 1], expected [3, 3, 2, 2]"),
    ({"depth_multiplier": 0}, "depth_multiplier=0 is invalid"),
    ({"kernel_size": [6, 3]}, "window (6, 3) does not fit input (None, 5, 5, 2)"),
], ids=["multiplier_vs_kernel", "multiplier_zero", "window_larger_than_input"])
def test_invalid_depthwise_documents_refused(attrs, message, tmp_path):
    K = keras_module("keras3")
    _, graph = save_and_convert(K.Sequential([K.Input((5, 5, 2)), K.layers.DepthwiseConv2D(3)]), tmp_path, ".keras")
    with open(graph, encoding="utf-8") as fh:
        doc = json.load(fh)
    validate_document(copy.deepcopy(doc))
    doc["nodes"][0]["attrs"].update(attrs)
    with pytest.raises(GraphError, match=re.escape(message)):
        validate_document(doc)


def test_invalid_separable_documents_refused(tmp_path):
    K = keras_module("keras3")
    model = K.Sequential([K.Input((5, 5, 2)), K.layers.SeparableConv2D(4, 3)])
    _, graph = save_and_convert(model, tmp_path, ".keras")
    with open(graph, encoding="utf-8") as fh:
        doc = json.load(fh)
    validate_document(copy.deepcopy(doc))
    doc["nodes"][0]["attrs"]["filters"] = 3
    message = "weight pointwise_kernel has shape [1, 1, 2, 4], expected [1, 1, 2, 3]"
    with pytest.raises(GraphError, match=re.escape(message)):
        validate_document(doc)
