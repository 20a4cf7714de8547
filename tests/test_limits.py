"""Each limit of schema/limits.py: documented in SECURITY.md and enforced (lowered here to keep tests small)."""
import os
import re

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import ROOT, keras_module
from kconvert.converter import convert
from kconvert.runtime import GraphError, load
from kconvert.runtime.cli import main as krun_main
from kconvert.schema import ConversionError, limits

DEMO_MODEL = os.path.join(ROOT, "examples", "models", "sentiment.keras")


def test_every_limit_is_documented():
    with open(os.path.join(ROOT, "SECURITY.md"), encoding="utf-8") as fh:
        text = fh.read()
    names = [n for n in dir(limits) if n.startswith("MAX_")]
    assert len(names) == 14
    for name in names:
        assert re.search(rf"\| `{name}` \|", text), f"{name} is not in SECURITY.md's limits table"


@pytest.fixture(scope="module")
def dense_keras(tmp_path_factory):
    K = keras_module("keras3")
    path = tmp_path_factory.mktemp("m") / "m.keras"
    K.Sequential([K.Input((3,)), K.layers.Dense(2)]).save(path)
    return str(path)


@pytest.mark.parametrize("name,value,match", [
    ("MAX_TOTAL_WEIGHT_BYTES", 16, "more than 16 bytes of weights"),
    ("MAX_TENSOR_BYTES", 16, "more than the 16 allowed per weight"),
    ("MAX_ZIP_MEMBER_BYTES", 100, "zip bomb"),
    ("MAX_ZIP_MEMBERS", 2, "has 3 members, more than 2"),
    ("MAX_LAYERS", 1, "more than the 1 allowed"),
    ("MAX_RANK", 1, "1 to 1 dimensions"),
    ("MAX_CONFIG_JSON_BYTES", 100, "more than the 100 allowed"),
    ("MAX_JSON_DEPTH", 3, "nested more than 3 levels"),
    ("MAX_HDF5_OBJECTS", 3, "more than 3 HDF5 objects"),
    ("MAX_HDF5_READ_BYTES", 16, "the file's float datasets exceed 16 bytes in all"),
])
def test_converter_limits(dense_keras, tmp_path, monkeypatch, name, value, match):
    monkeypatch.setattr(limits, name, value)
    with pytest.raises(ConversionError, match=match):
        convert(dense_keras, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_vocabulary_limit(tmp_path, monkeypatch):
    K = keras_module("keras3")
    layer = K.layers.TextVectorization(output_sequence_length=2)
    layer.adapt(["a b"])
    inputs = K.Input((), dtype="string")
    K.Model(inputs, layer(inputs)).save(tmp_path / "t.h5")
    (tmp_path / "v.txt").write_text("\n[UNK]\na\nb\n", encoding="utf-8")
    monkeypatch.setattr(limits, "MAX_ASSET_BYTES", 4)
    with pytest.raises(ConversionError, match="larger than 4 bytes"):
        convert(str(tmp_path / "t.h5"), str(tmp_path / "out"), vocabulary=str(tmp_path / "v.txt"))


@pytest.mark.parametrize("name,value,match", [
    ("MAX_GRAPH_JSON_BYTES", 100, "graph.json is limited to 100"),
    ("MAX_JSON_DEPTH", 3, "nested more than 3 levels"),
    ("MAX_TENSOR_BYTES", 16, "more than the 16 allowed"),
    ("MAX_ASSET_BYTES", 16, "larger than 16 bytes"),
    ("MAX_TOTAL_WEIGHT_BYTES", 16, "declares .* bytes of weights, more than the 16 allowed"),
])
def test_runtime_limits(tmp_path, monkeypatch, name, value, match):
    graph = convert(DEMO_MODEL, str(tmp_path / "g"))
    monkeypatch.setattr(limits, name, value)
    if name == "MAX_ASSET_BYTES":
        monkeypatch.setattr(limits, "MAX_TENSOR_BYTES", 10 ** 9)  # let weights through to reach the asset
    with pytest.raises(GraphError, match=match):
        load(graph)


def test_text_input_limit(tmp_path, monkeypatch):
    graph = convert(DEMO_MODEL, str(tmp_path / "g"))
    (tmp_path / "t.txt").write_text("enak sekali\n" * 10, encoding="utf-8")
    monkeypatch.setattr(limits, "MAX_TEXT_INPUT_BYTES", 50)
    result = CliRunner().invoke(krun_main, [graph, str(tmp_path / "t.txt")])
    assert result.exit_code == 1 and "larger than 50 bytes" in result.output
