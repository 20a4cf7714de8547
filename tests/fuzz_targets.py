"""Fuzz targets: the only exceptions allowed out of the converter and the graph loader are KConvertError.

Run under atheris for coverage-guided fuzzing (pip install atheris):
    python tests/fuzz_targets.py convert  [corpus_dir]
    python tests/fuzz_targets.py graph    [corpus_dir]
tests/test_fuzz.py drives the same functions with hypothesis in the normal suite.
"""
import os
import shutil
import sys
import tempfile

from kconvert.converter import convert
from kconvert.runtime import load
from kconvert.schema import KConvertError


def fuzz_convert(data, suffix=".keras"):
    """Convert `data` as a model file; returns True if it converted, False if refused with a KConvertError."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model" + suffix)
        with open(path, "wb") as fh:
            fh.write(data)
        out = os.path.join(tmp, "out")
        try:
            convert(path, out)
        except KConvertError:
            leftovers = sorted(os.listdir(tmp))
            assert leftovers == ["model" + suffix], f"a refused conversion left {leftovers}"
            return False
        return True


def fuzz_graph(graph_json, folder):
    """Load a copy of graph folder `folder` whose graph.json is `graph_json` bytes; True if it loaded."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = shutil.copytree(folder, os.path.join(tmp, "g"))
        with open(os.path.join(copy, "graph.json"), "wb") as fh:
            fh.write(graph_json)
        try:
            model = load(copy)
        except KConvertError:
            return False
        try:  # a graph that loads must also run, or refuse the input with a KConvertError
            spec = model.inputs[0]
            sample = ["a b c"] if spec["dtype"] == "string" else None
            if sample is not None:
                model.predict(sample)
        except KConvertError:
            pass
        return True


def main():
    import atheris  # optional: only for coverage-guided runs

    target = sys.argv[1] if len(sys.argv) > 1 else "convert"
    if target == "graph":
        folder = tempfile.mkdtemp()
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        convert(os.path.join(root, "examples", "models", "sentiment.keras"), os.path.join(folder, "g"))

        def one(data):
            fuzz_graph(data, os.path.join(folder, "g"))
    else:
        def one(data):
            fuzz_convert(data, ".h5" if data[:1] == b"\x89" else ".keras")
    atheris.Setup(sys.argv[:1] + sys.argv[2:], one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
