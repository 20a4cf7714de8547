"""pytest set-up: quiet TensorFlow before anything imports it."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import shutil

import pytest


@pytest.fixture(scope="session")
def converted_demo(tmp_path_factory):
    """The bundled demo model converted once per session (treat as read-only)."""
    from helpers import ROOT
    from kconvert.converter import convert
    out = tmp_path_factory.mktemp("demo") / "graph"
    convert(f"{ROOT}/examples/models/sentiment.keras", str(out))
    return out


@pytest.fixture
def demo_copy(converted_demo, tmp_path):
    """A private copy of the converted demo graph folder, free to break."""
    return shutil.copytree(converted_demo, tmp_path / "graph_copy")
