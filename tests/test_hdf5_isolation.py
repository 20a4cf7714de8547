"""HDF5 is read in a child process: a crash or hang of the HDF5 library on a damaged file is one ConversionError.

tests/corpus holds two files fuzzing found (one corrupted byte or a few in a small Keras .h5): with HDF5 1.14.6
the first segfaults in an attribute read and the second loops forever in the global-heap decoder, both inside
C code that no Python exception or signal handler can interrupt. The fake-child tests pin the parent's side
for any HDF5 version.
"""
import os
import signal
import sys

import pytest

from helpers import ROOT
from kconvert.converter import convert, hdf5_snapshot
from kconvert.schema import ConversionError, limits

CORPUS = os.path.join(ROOT, "tests", "corpus")


def refused(path, tmp_path, match):
    with pytest.raises(ConversionError, match=match) as info:
        convert(path, str(tmp_path / "out"))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()
    assert sorted(os.listdir(tmp_path)) == [], "a refused conversion left files behind"
    return str(info.value)


@pytest.fixture(params=["fork server", "process per file"])
def reader_mode(request, monkeypatch):
    """Both ways of starting the reader: forked per file by a server (Linux), or a new Python per file."""
    if request.param == "fork server" and not hasattr(os, "fork"):
        pytest.skip("no os.fork on this system: the fork server cannot exist here (CI runs Linux, where it is used)")
    monkeypatch.setattr(hdf5_snapshot, "FORK_SERVER", request.param == "fork server")
    return request.param


def test_file_that_segfaults_hdf5_is_refused(tmp_path, reader_mode):
    message = refused(os.path.join(CORPUS, "hdf5_segfault_attribute_read.h5"), tmp_path, "HDF5")
    assert "damaged" in message or "corrupt" in message, message


def test_file_that_hangs_hdf5_is_refused_in_time(tmp_path, monkeypatch, reader_mode):
    monkeypatch.setattr(limits, "HDF5_READ_SECONDS", 3)
    message = refused(os.path.join(CORPUS, "hdf5_hang_global_heap.h5"), tmp_path, "HDF5")
    assert "damaged" in message or "corrupt" in message, message


def test_fork_server_forks_a_fresh_reader_per_file_and_survives_crashes(tmp_path, monkeypatch):
    if not hasattr(os, "fork"):
        pytest.skip("no os.fork on this system: the fork server cannot exist here (CI runs Linux, where it is used)")
    monkeypatch.setattr(hdf5_snapshot, "FORK_SERVER", True)
    monkeypatch.setattr(limits, "HDF5_READ_SECONDS", 3)
    image = _small_h5_bytes(tmp_path / "small.h5")
    first = hdf5_snapshot.read_hdf5(image, "small.h5")
    server = hdf5_snapshot._SERVER.process.pid
    second = hdf5_snapshot.read_hdf5(image, "small.h5")
    assert len({first.reader_pid, second.reader_pid, server, os.getpid()}) == 4
    for name, match in [("hdf5_segfault_attribute_read.h5", "crashed"), ("hdf5_hang_global_heap.h5", "did not finish")]:
        with open(os.path.join(CORPUS, name), "rb") as fh:
            with pytest.raises(ConversionError, match=match):
                hdf5_snapshot.read_hdf5(fh.read(), name)
        assert hdf5_snapshot.read_hdf5(image, "small.h5").link("w").array().tolist() == [1.0, 2.0, 3.0]
    os.kill(hdf5_snapshot._SERVER.process.pid, signal.SIGKILL)  # a server killed from outside is replaced
    hdf5_snapshot._SERVER.process.wait()
    assert hdf5_snapshot.read_hdf5(image, "small.h5").link("w").array().tolist() == [1.0, 2.0, 3.0]


@pytest.fixture
def fake_child(monkeypatch, tmp_path):
    """Replace the HDF5 reader by a Python snippet; returns a function taking the snippet."""
    monkeypatch.setattr(hdf5_snapshot, "FORK_SERVER", False)  # the fake speaks the one-request protocol

    def use(code):
        script = tmp_path.parent / f"{tmp_path.name}_child.py"
        script.write_text(code)
        monkeypatch.setattr(hdf5_snapshot, "_child_command", lambda: [sys.executable, str(script)])
    return use


DEMO_H5 = os.path.join(CORPUS, "hdf5_segfault_attribute_read.h5")  # any HDF5 signature will do for a fake child


@pytest.mark.parametrize("code,match", [
    ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n", "the HDF5 library crashed reading it \\(SIGSEGV\\)"),
    ("import os\nos.abort()\n", "crashed reading it \\(SIGABRT\\)"),
    ("import sys\nsys.stderr.write('ImportError: no h5py\\n')\nsys.exit(1)\n",
     "failed in its HDF5 reader process: ImportError: no h5py"),
    ("", "failed in its HDF5 reader process: no answer \\(exit status 0\\)"),
    ("import sys\nsys.stdout.buffer.write(b'\\xff' * 16)\n", "not in the expected frames"),
    ("import sys, time\nsys.stdin.buffer.read()\ntime.sleep(60)\n", "did not finish in 1 s"),
])
def test_reader_process_failures_become_one_error(fake_child, tmp_path, monkeypatch, code, match):
    monkeypatch.setattr(limits, "HDF5_READ_SECONDS", 1)
    monkeypatch.setattr(limits, "HDF5_READ_BYTES_PER_SECOND", 10 ** 9)
    fake_child(code)
    refused(DEMO_H5, tmp_path, match)


def test_reader_process_answer_is_checked(fake_child, tmp_path):
    # a manifest whose array runs past the bytes the reader wrote
    fake_child("import json, struct, sys\nrequest = json.loads(sys.stdin.buffer.readline())\n"
               "open(request['arrays'], 'xb').write(bytes(8))\n"
               "root = {'type': 'group', 'attrs': {}, 'links': [['w', {'node': 1}]]}\n"
               "m = json.dumps({'nodes': [root, {'type': 'dataset', 'kind': 'f', 'itemsize': 4, 'shape': [4],"
               " 'storage': 16, 'data': [0, 16]}]}).encode()\n"
               "sys.stdout.buffer.write(b'M' + struct.pack('<Q', len(m)) + m)\n")
    root = hdf5_snapshot.read_hdf5(b"\x89HDF", "x.h5")
    with pytest.raises(ConversionError, match="inconsistent answer"):
        root.link("w").array()


def test_reader_imports_nothing_from_the_working_folder(tmp_path, monkeypatch):
    """A module named like one the reader imports, in the current folder, is not imported by it."""
    marker = tmp_path / "imported"
    for name in ("h5py", "numpy", "json"):
        (tmp_path / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').write('{name}')\nraise SystemExit(3)\n")
    monkeypatch.chdir(tmp_path)
    root = hdf5_snapshot.read_hdf5(_small_h5_bytes(tmp_path.parent / "small.h5"), "small.h5")
    assert root.link("w").array().tolist() == [1.0, 2.0, 3.0]
    assert not marker.exists(), marker.read_text()


def _small_h5_bytes(path):
    import h5py
    import numpy as np
    with h5py.File(path, "w") as f:
        f["w"] = np.array([1, 2, 3], "<f8")
    return path.read_bytes()


def test_reader_reports_every_object_once_and_follows_no_soft_link(tmp_path):
    import h5py
    import numpy as np
    path = tmp_path.parent / "links.h5"
    with h5py.File(path, "w") as f:
        f["a/b/w"] = np.arange(6, dtype="<f2").reshape(2, 3)
        f["a/b"].attrs["names"] = np.array([b"x", b"\xff"], dtype=object)
        f["a/again"] = f["a/b"]                       # a second hard link to the same group
        f["a/b/loop"] = f["a"]                        # a cycle of hard links
        f["a/soft"] = h5py.SoftLink("/a/b/w")
        f["n"] = np.int64(7)
    root = hdf5_snapshot.read_hdf5(path.read_bytes(), "links.h5")
    group = root.link("a")
    assert group.link("b") is group.link("again") and group.link("b").link("loop") is group
    assert group.link("soft") == "SoftLink"
    assert group.link("b").link("w").array().tolist() == [[0, 1, 2], [3, 4, 5]]
    assert group.link("b").attr("names") == ["x", "\udcff"]   # invalid UTF-8 kept visible for the caller to refuse
    assert root.link("n").value == 7 and root.link("n").array() is None
    assert root.link("missing") is None


def test_object_limit(tmp_path, monkeypatch):
    import h5py
    path = tmp_path.parent / "many.h5"
    with h5py.File(path, "w") as f:
        for i in range(5):
            f.create_group(f"g{i}")
    monkeypatch.setattr(limits, "MAX_HDF5_OBJECTS", 5)
    with pytest.raises(ConversionError, match="more than 5 HDF5 objects"):
        hdf5_snapshot.read_hdf5(path.read_bytes(), "many.h5")
