"""The converter and the runtime never import TensorFlow or Keras, not even lazily (nor h5py, in the converter's process)."""
import os
import subprocess
import sys

from helpers import ROOT

SCRIPT = r"""
import sys
from kconvert.converter import convert
from kconvert.converter.cli import main as kconvert_cli
from kconvert.runtime import load
from kconvert.runtime.cli import main as krun_cli
graph = convert(sys.argv[1], sys.argv[2], labels=["negative", "neutral", "positive"])
model = load(graph)
probs = model.predict(["Makanannya enak sekali!", "Pelayanannya buruk."])
assert probs.shape == (2, 3), probs.shape
# h5py too: HDF5 files are read in a child process (a damaged file can crash or hang the HDF5 library)
forbidden = [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras", "h5py")]
assert not forbidden, forbidden
print("ok", model.summary().count("\n"))
"""


def test_converter_and_runtime_work_with_tensorflow_unimportable(tmp_path):
    fake = tmp_path / "fake_site"
    for name in ("tensorflow", "keras", "tf_keras"):
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text(f"raise ImportError('kconvert must not import {name}')\n")
    env = dict(os.environ, PYTHONPATH=str(fake))
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, os.path.join(ROOT, "examples", "models", "sentiment.keras"),
         str(tmp_path / "graph")], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


def test_runtime_import_leaves_validation_libraries_for_load():
    """`import kconvert.runtime` stays cheap (issue #5: < 0.3 s): jsonschema, 120 ms of it, loads with the first graph."""
    script = ("import sys, kconvert.runtime; "
              "print(sorted({m.split('.')[0] for m in sys.modules} & {'jsonschema', 'click', 'tensorflow'}))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
