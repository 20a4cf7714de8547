"""HDF5 files read in a child process (hdf5_child.py), so a crash or hang of the HDF5 library is one error.

The converter's own process never runs HDF5 code on a file: a child walks the whole file through hard
links, reads its attributes and float/counter datasets within the limits, and reports them; this side
checks what the converter asks for (hard links only, plain storage, dtypes, sizes) on that snapshot.
On Linux the child is forked, per file, from a fork server started with the first file (one Python start-up,
~0.1 s, per process instead of per file); elsewhere each file gets a new Python process.
"""
import atexit
import json
import mmap
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from kconvert.schema import ConversionError
from kconvert.schema import limits

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hdf5_child.py")
# fork() without exec is only safe where the system libraries allow it (not macOS's) and exists at all.
FORK_SERVER = sys.platform.startswith("linux")


def _child_command():
    # -P: the child's sys.path gets neither its own folder nor the working folder (no module there is imported)
    return [sys.executable, "-P", CHILD]


def _child_env():
    # "::" turns off HDF5's filter plugins (a file cannot make it load a shared library); one BLAS thread, as the
    # child only copies arrays (and the fork server must have no threads when it forks)
    return {**os.environ, "HDF5_PLUGIN_PRELOAD": "::", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1"}


class _Timeout(Exception):
    pass


def read_hdf5(image, what):
    """Root group of the HDF5 file `image` (bytes), read in a child process; `what` names the file in errors."""
    with tempfile.TemporaryDirectory(prefix="kconvert-hdf5-") as folder:  # private (0700), removed in any case
        bounds = {"max_objects": limits.MAX_HDF5_OBJECTS, "max_rank": limits.MAX_RANK,
                  "max_tensor_bytes": limits.MAX_TENSOR_BYTES, "max_read_bytes": limits.MAX_HDF5_READ_BYTES}
        request = {"limits": bounds, "image": os.path.join(folder, "image.h5"),
                   "arrays": os.path.join(folder, "arrays.f32")}
        with open(request["image"], "xb") as fh:
            fh.write(image)
        timeout = limits.HDF5_READ_SECONDS + len(image) / limits.HDF5_READ_BYTES_PER_SECOND
        line = json.dumps(request).encode() + b"\n"
        try:
            manifest, error, status, stderr = _SERVER.ask(line, timeout) if FORK_SERVER else _run_once(line, timeout)
        except _Timeout:
            raise ConversionError(f"{what}: reading its HDF5 data did not finish in {timeout:.0f} s (the HDF5 library "
                                  "loops on some damaged files); the file is damaged: save the model again") from None
        except OSError as exc:
            raise ConversionError(f"cannot run {sys.executable!r} to read {what}: {exc}") from None
        if status < 0:
            try:
                name = signal.Signals(-status).name
            except ValueError:
                name = f"signal {-status}"
            raise ConversionError(f"{what}: the HDF5 library crashed reading it ({name}); the file is damaged: "
                                  "save the model again")
        if error is not None or status != 0 or manifest is None:
            detail = ((error or stderr).decode("utf-8", "replace").strip().splitlines()
                      or [f"no answer (exit status {status})"])
            raise ConversionError(f"reading {what} failed in its HDF5 reader process: {detail[-1][:300]}")
        manifest = json.loads(manifest)
        if "open_error" in manifest:
            raise ConversionError(f"{what} is not a readable HDF5 file: {manifest['open_error']}")
        if "error" in manifest:
            raise ConversionError(f"{what}: {manifest['error']}")
        data = _read_arrays(request["arrays"])
    root = _Snapshot(manifest["nodes"], data).node(0)
    root.reader_pid = manifest.get("pid")  # which process parsed the file (tests: a fresh one per file)
    return root


def _read_arrays(path):
    """The child's float32 arrays, back to back, as one writable buffer (the arrays are views of it)."""
    size = os.path.getsize(path)
    if size > limits.MAX_HDF5_READ_BYTES:
        raise ConversionError("the HDF5 reader process wrote more than it may")
    with open(path, "rb") as fh:
        if size and os.name == "posix":
            # a private copy-on-write mapping: no copy, and it outlives the file (removed with the folder)
            return mmap.mmap(fh.fileno(), size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        data = bytearray(size)
        if fh.readinto(data) != size:
            raise ConversionError("the HDF5 reader process's arrays could not be read back")
    return data


def _frames(read):
    """(manifest, error text, exit status or None) from the frames `read(n)` returns (None: end of output)."""
    manifest, error = None, None
    while (head := read(9)) is not None:
        tag, (size,) = head[:1], struct.unpack("<Q", head[1:])
        payload = read(size) if size else b""
        if payload is None:
            raise EOFError
        if tag == b"S":
            return manifest, error, struct.unpack("<q", payload)[0]
        if tag == b"M":
            manifest = bytes(payload)
        elif tag == b"E":
            error = bytes(payload)
        else:
            raise EOFError
    return manifest, error, None


def _run_once(line, timeout):
    """Answer one request in a new Python process: (manifest, error, exit status, stderr)."""
    try:
        done = subprocess.run(_child_command(), input=line, capture_output=True, timeout=timeout, env=_child_env())
    except subprocess.TimeoutExpired:
        raise _Timeout from None
    output, position = memoryview(done.stdout), 0

    def read(size):
        nonlocal position
        if position + size > len(output):
            return None
        position += size
        return output[position - size:position]
    try:
        manifest, error, _ = _frames(read)
    except EOFError:
        manifest, error = None, b"its answer is not in the expected frames"
    return manifest, error, done.returncode, done.stderr


class _ForkServer:
    """hdf5_child.py --serve, started on first use in each process; restarted after it is killed or lost."""

    def __init__(self):
        self.lock, self.process, self.owner = threading.Lock(), None, None

    def ask(self, line, timeout):
        """(manifest, error, exit status, b"") of one request answered by a freshly forked reader."""
        with self.lock:
            deadline = time.monotonic() + timeout
            for attempt in (0, 1):
                process = self._running()
                try:
                    process.stdin.write(line)
                    process.stdin.flush()
                    break
                except BrokenPipeError:  # the server is gone (killed from outside): start another once
                    self.stop()
                    if attempt:
                        raise
            fd = process.stdout.fileno()
            poller = select.poll()  # not select.select: that fails on descriptors past 1023 in busy processes
            poller.register(fd, select.POLLIN)
            buffered = bytearray()

            def read(size):
                while len(buffered) < size:
                    wait = deadline - time.monotonic()
                    if wait <= 0 or not poller.poll(wait * 1000):
                        raise _Timeout
                    chunk = os.read(fd, min(size - len(buffered), 1 << 24))
                    if not chunk:
                        raise EOFError
                    buffered.extend(chunk)
                out = bytes(buffered[:size])
                del buffered[:size]
                return out
            try:
                manifest, error, status = _frames(read)
            except _Timeout:
                self.stop()
                raise
            except EOFError:
                self.stop()
                return None, b"the HDF5 reader process stopped unexpectedly", 1, b""
            return manifest, error, status, b""

    def _running(self):
        if self.process is None or self.owner != os.getpid() or self.process.poll() is not None:
            # a forked copy of this process must not share the parent's pipes: it starts its own server
            self.process = subprocess.Popen(_child_command() + ["--serve"], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_child_env(),
                                            start_new_session=True)
            self.owner = os.getpid()
        return self.process

    def stop(self):
        """Kill the server and any reader it forked (they share its process group)."""
        if self.process is not None and self.owner == os.getpid():
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
            self.process.stdin.close()
            self.process.stdout.close()
        self.process = None

    def close(self):
        """Let the server end on its own (end of input) at interpreter exit."""
        if self.process is not None and self.owner == os.getpid():
            self.process.stdin.close()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.stop()


_SERVER = _ForkServer()
atexit.register(_SERVER.close)


class _Snapshot:
    def __init__(self, nodes, data):
        self.nodes, self.data, self.made = nodes, data, {}

    def node(self, index):
        if index not in self.made:
            # the answer is checked as far as it is used: even a reader process subverted by a file gets one error
            entry = self.nodes[index] if isinstance(index, int) and 0 <= index < len(self.nodes) else None
            if not isinstance(entry, dict) or entry.get("type") not in ("group", "dataset"):
                raise ConversionError("the HDF5 reader process gave an inconsistent answer")
            self.made[index] = (Group if entry["type"] == "group" else Dataset)(self, entry)
        return self.made[index]


def _corrupt(detail):
    return ConversionError(f"the model's HDF5 data is corrupt or unreadable ({detail})")


class Group:
    """An HDF5 group: its attributes and links as the child read them."""

    def __init__(self, snapshot, entry):
        self._snapshot, self._error = snapshot, entry.get("error")
        self._attrs = entry.get("attrs", {})
        self._links = dict(entry.get("links", []))

    def _check(self):
        if self._error:
            raise _corrupt(self._error)

    def keys(self):
        """Names of the group's links, in the file's order."""
        self._check()
        return list(self._links)

    def has_attr(self, name):
        """Whether the group has attribute `name`."""
        self._check()
        return name in self._attrs

    def attr(self, name):
        """Attribute `name`: a str, or a list of str for a string-list attribute."""
        self._check()
        value = self._attrs[name]
        if "error" in value:
            raise _corrupt(value["error"])
        return value["text"] if "text" in value else value["list"]

    def link(self, name):
        """The Group or Dataset a hard link `name` points to, the class name of any other link, or None."""
        self._check()
        entry = self._links.get(name)
        if entry is None:
            return None
        if "error" in entry:
            raise _corrupt(entry["error"])
        return self._snapshot.node(entry["node"]) if "node" in entry else entry["link"]


class Dataset:
    """An HDF5 dataset's metadata, and its values if the child read them (floats as float32, integer scalars)."""

    def __init__(self, snapshot, entry):
        self._snapshot, self._entry = snapshot, entry
        self.error = entry.get("error")
        self.shape = tuple(entry.get("shape", ()))
        self.dtype = entry.get("dtype", "unknown")
        self.kind, self.itemsize = entry.get("kind"), entry.get("itemsize", 0)
        self.plain = not entry.get("virtual") and not entry.get("external")
        self.compressed, self.storage = entry.get("compressed", False), entry.get("storage", 0)
        self.value = entry.get("value")

    def array(self):
        """The values as a float32 array, or None if the child did not read them."""
        if "data" not in self._entry:
            return None
        offset, nbytes = self._entry["data"]
        count = int(np.prod(self.shape, dtype=np.int64))
        if offset < 0 or nbytes != 4 * count or offset + nbytes > len(self._snapshot.data):
            raise ConversionError("the HDF5 reader process gave an inconsistent answer")
        # a writable view of the mapped file (or bytearray) the child's arrays came in: no copy
        return np.frombuffer(self._snapshot.data, dtype="<f4", count=count, offset=offset).reshape(self.shape)
