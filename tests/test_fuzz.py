"""Property-based tests over the converter's readers and the graph loader (hypothesis)."""
import io
import json
import os
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz_targets import fuzz_convert, fuzz_graph
from helpers import ROOT
from kconvert.converter import convert

DEMO_MODEL = os.path.join(ROOT, "examples", "models", "sentiment.keras")
# KCONVERT_FUZZ_EXAMPLES raises the budget for a longer campaign (the suite runs 60 per property).
SETTINGS = dict(deadline=None, max_examples=int(os.environ.get("KCONVERT_FUZZ_EXAMPLES", "60")), suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                      HealthCheck.too_slow])
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 40, 2 ** 40) | st.floats(allow_nan=False)
                    | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                                     max_size=4), max_leaves=12)


def demo_bytes():
    with open(DEMO_MODEL, "rb") as fh:
        return fh.read()


@pytest.fixture(scope="module")
def small_h5(tmp_path_factory):
    """Path of a small valid .h5 (a path, so hypothesis does not print the bytes with every failure)."""
    import keras
    tmp = tmp_path_factory.mktemp("h5")
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(tmp / "m.h5")
    return tmp / "m.h5"


@pytest.fixture(scope="module")
def demo_graph(tmp_path_factory):
    out = tmp_path_factory.mktemp("g") / "demo"
    convert(DEMO_MODEL, str(out))
    return str(out)


def _mutate(value, path, replacement):
    """Replace the node at `path` (indices chosen modulo the container sizes) by `replacement`."""
    if not path or not isinstance(value, (dict, list)) or not value:
        return replacement
    keys = list(value) if isinstance(value, dict) else list(range(len(value)))
    key = keys[path[0] % len(keys)]
    value[key] = _mutate(value[key], path[1:], replacement)
    return value


@settings(**SETTINGS)
@given(data=st.binary(max_size=2048), magic=st.sampled_from([b"", b"PK\x03\x04", b"\x89HDF\r\n\x1a\n"]))
def test_random_bytes_never_escape(data, magic):
    assert fuzz_convert(magic + data, ".h5" if magic.startswith(b"\x89") else ".keras") is False


@settings(**SETTINGS)
@given(positions=st.lists(st.integers(0, 10 ** 9), min_size=1, max_size=8), value=st.integers(0, 255))
def test_corrupted_h5_never_escapes(small_h5, positions, value):
    data = bytearray(small_h5.read_bytes())
    for p in positions:
        data[p % len(data)] = value
    fuzz_convert(bytes(data), ".h5")


@settings(**SETTINGS)
@given(positions=st.lists(st.integers(0, 10 ** 9), min_size=1, max_size=8), value=st.integers(0, 255))
def test_corrupted_keras_weights_never_escape(positions, value):
    """Bytes of a .keras archive's model.weights.h5 corrupted under a valid zip (as a crafted file would be)."""
    archive = zipfile.ZipFile(io.BytesIO(demo_bytes()))
    weights = bytearray(archive.read("model.weights.h5"))
    for p in positions:
        weights[p % len(weights)] = value
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as out:
        for info in archive.infolist():
            content = bytes(weights) if info.filename == "model.weights.h5" else archive.read(info.filename)
            out.writestr(info.filename, content)
    fuzz_convert(buffer.getvalue(), ".keras")


@settings(**SETTINGS)
@given(path=st.lists(st.integers(0, 50), max_size=8), replacement=JSON)
def test_mutated_keras_config_never_escapes(path, replacement):
    archive = zipfile.ZipFile(io.BytesIO(demo_bytes()))
    config = _mutate(json.loads(archive.read("config.json")), path, replacement)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as out:
        for info in archive.infolist():
            out.writestr(info.filename, json.dumps(config) if info.filename == "config.json" else archive.read(info.filename))
    fuzz_convert(buffer.getvalue(), ".keras")


@settings(**SETTINGS)
@given(path=st.lists(st.integers(0, 50), max_size=8), replacement=JSON)
def test_mutated_graph_never_escapes(demo_graph, path, replacement):
    with open(os.path.join(demo_graph, "graph.json"), encoding="utf-8") as fh:
        doc = json.load(fh)
    fuzz_graph(json.dumps(_mutate(doc, path, replacement)).encode(), demo_graph)


@settings(**SETTINGS)
@given(data=st.binary(max_size=512))
def test_random_graph_json_never_escapes(demo_graph, data):
    assert fuzz_graph(data, demo_graph) is False
