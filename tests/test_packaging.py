"""The package maps the card's folders into one kconvert namespace, in regular and editable installs."""
import os
import subprocess
import sys

from helpers import ROOT

CHECK = r"""
import importlib.util, json, sys
import kconvert.converter, kconvert.runtime, kconvert.schema
from kconvert.schema.validate import graph_schema
assert graph_schema()["$id"]
for generic in ("runtime", "schema", "converter"):  # nothing generic at the top level
    assert importlib.util.find_spec(generic) is None, generic
print(json.dumps({m: sys.modules[m].__file__ for m in ("kconvert.converter", "kconvert.runtime", "kconvert.schema")}))
"""


def _check(env, cwd):
    result = subprocess.run([sys.executable, "-c", CHECK], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_editable_install_points_at_the_card_folders(tmp_path):
    files = _check(dict(os.environ), tmp_path)
    assert os.path.join(ROOT, "runtime", "__init__.py") in files
    assert os.path.join(ROOT, "schema", "__init__.py") in files


def test_regular_wheel_install(tmp_path):
    wheel_dir, target = tmp_path / "dist", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheel_dir), ROOT],
                   check=True, capture_output=True, timeout=300)
    wheels = list(wheel_dir.glob("kconvert-*.whl"))
    assert len(wheels) == 1
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheels[0])],
                   check=True, capture_output=True, timeout=300)
    # Only the wheel's copy may be importable: put it first and hide the editable finder's path hooks.
    env = dict(os.environ, PYTHONPATH=str(target), PYTHONNOUSERSITE="1")
    script = "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in type(f).__module__]\n"
    result = subprocess.run([sys.executable, "-c", script + CHECK], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert str(target) in result.stdout and ROOT not in result.stdout
    assert (target / "kconvert" / "schema" / "graph.v1.schema.json").is_file()
    assert (target / "kconvert" / "schema" / "ops.v1.json").is_file()
