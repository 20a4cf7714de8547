"""Predict on worker processes (Linux): each batch's rows split between this process and child processes,
which share no GIL.

Why: predict's threads (runtime/parallel.py) hand the GIL to each other around every NumPy call, and the
short ones (the 7-34 us transform passes of a Winograd block) serialise. On the benchmark CNN on 2 cores, two
threads predicting 256 images each took 172-174 ms where two processes took 155-156; this module's split of
512 images over this process and one child takes 0.84-0.96x the time of predict(threads=2) (8 A/Bs; in the
benchmark 0.86x, and 0.85-0.87x on its BiLSTM and SimpleRNN, whose recurrent steps threads cannot split).

How: WorkerProcesses(model, workers) starts workers - 1 children (`python -P`, a fresh interpreter: nothing
of this process is forked), saves the model to a private temporary folder and has each child load it with
load()'s own checks; weights are compared with what the children loaded before every predict and saved
again when they changed (set_weights, fit). Per batch, each child's rows are copied into a memfd shared
with it and named in one JSON line; this process computes the first slice meanwhile, OpenBLAS at one
thread, and each child answers with a JSON line and its outputs' raw bytes, checked against the model's
outputs and the slice's rows. Nothing a child sends is unpickled or evaluated. The children end when the
pool is closed, garbage-collected, or this process exits.
"""
import json
import mmap
import os
import subprocess
import sys
import tempfile
import threading
import weakref

import numpy as np

from kconvert.schema import InputDataError, KConvertError

from . import parallel
from .model import _check_threads
from .worker import INPUT_DTYPES, MAX_REQUEST_BYTES

_OUTPUT_DTYPES = {np.dtype(t).str for t in ("float32", "float64", "int32", "int64", "bool")}
_ALIGN = 64  # bytes: each input in the shared memory starts on a cache line
_WORKER_CODE = "from kconvert.runtime.worker import main; main()"


class WorkerProcessError(KConvertError):
    """A worker process failed or stopped; the pool is closed."""


class _Child:
    """One worker process: its socket and its shared memory."""

    def __init__(self):
        import socket
        self.link, theirs = socket.socketpair()
        self.memfd = os.memfd_create("kconvert-worker", 0)  # not inheritable except through pass_fds
        self.size, self.shared = 0, None
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        # Its stderr goes to a file (a pipe nobody reads could fill up), whose last line names why it stopped.
        self.stderr = tempfile.TemporaryFile()
        try:  # a new session: a Ctrl-C in the terminal reaches this process only, which then closes the pool
            command = [sys.executable, "-P", "-c", _WORKER_CODE, str(theirs.fileno()), str(self.memfd)]
            self.process = subprocess.Popen(command, pass_fds=(theirs.fileno(), self.memfd), stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=self.stderr, env=env,
                                            start_new_session=True)
        except OSError as exc:
            self.close()
            raise WorkerProcessError(f"cannot start a worker process with {sys.executable!r}: {exc}") from None
        finally:
            theirs.close()
        self.answers = self.link.makefile("rb")

    def ask(self, request):
        """Send one request line."""
        try:
            self.link.sendall(json.dumps(request).encode() + b"\n")
        except OSError:  # its end of the socket is closed
            raise self.stopped() from None

    def stopped(self):
        """The error for a child that has gone, with its exit status."""
        try:
            code = self.process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            code = None
        self.stderr.seek(0)
        lines = self.stderr.read()[-4096:].decode("utf-8", "replace").strip().splitlines()
        return WorkerProcessError("a worker process stopped" + (f" (exit status {code})" if code is not None else "")
                                  + (f": {lines[-1]}" if lines else ""))

    def answer(self):
        """The next answer's header (a dict); the arrays it announces follow in the stream (read())."""
        try:
            line = self.answers.readline(MAX_REQUEST_BYTES)
        except OSError:
            line = b""
        if not line.endswith(b"\n"):
            raise self.stopped()
        try:
            header = json.loads(line)
        except ValueError:
            header = None
        if not isinstance(header, dict):
            raise WorkerProcessError("a worker process answered something other than a JSON object")
        if "error" in header:
            raise WorkerProcessError(f"a worker process failed: {header.get('type')}: {header['error']}")
        return header

    def read(self, count):
        """Exactly count bytes of the answer."""
        data = self.answers.read(count)
        if len(data) != count:
            raise WorkerProcessError("a worker process stopped in the middle of an answer")
        return data

    def place(self, batch):
        """Copy a slice's inputs into the shared memory; their [name, dtype, shape, offset] list."""
        entries, offset = [], 0
        for name, array in batch.items():
            entries.append([name, array.dtype.name, list(array.shape), offset])
            offset += -(-array.nbytes // _ALIGN) * _ALIGN
        if offset > self.size or self.shared is None:  # grown, never shrunk; the child maps it on its next request
            if self.shared is not None:
                self.shared.close()
            self.size = max(offset, 2 * self.size, _ALIGN)
            os.ftruncate(self.memfd, self.size)
            self.shared = mmap.mmap(self.memfd, self.size)
        for (name, dtype, shape, start), array in zip(entries, batch.values()):
            np.frombuffer(self.shared, dtype, array.size, start).reshape(shape)[...] = array
        return entries

    def close(self):
        """End the process (it exits when its socket closes) and free the shared memory."""
        for closing in (getattr(self, "answers", None), self.link):
            if closing is not None:
                closing.close()
        process = getattr(self, "process", None)
        if process is not None:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.shared is not None:
            self.shared.close()
        os.close(self.memfd)
        self.stderr.close()


def _bits(array):
    """An array's bytes as a flat uint8 array (a view where it is contiguous)."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def _close_children(children):
    for child in children:
        child.close()
    children.clear()


class WorkerProcesses:
    """A model's predict with each batch's rows split between this process and workers - 1 child processes
    (Linux only); a context manager. Results equal predict(threads=workers)'s, bit for bit."""

    def __init__(self, model, workers=None):
        _check_threads(workers)
        if not sys.executable:
            raise WorkerProcessError("this Python has no executable to start worker processes with (sys.executable is "
                                     "empty); use predict(threads=...)")
        if not hasattr(os, "memfd_create"):
            raise WorkerProcessError("worker processes need Linux (memfd_create); use predict(threads=...)")
        texts = [spec["name"] for spec in model.inputs if spec["dtype"] not in INPUT_DTYPES]
        if texts:
            raise InputDataError(f"worker processes take numeric inputs only, and {texts[0]!r} takes texts: "
                                 "use predict(threads=...)")
        self.model = model
        self.workers = parallel.default_workers() if workers is None else workers
        self._children, self._loaded, self._lock, self._owner = [], {}, threading.Lock(), os.getpid()
        self._checked = self._closed = False
        self._finalizer = weakref.finalize(self, _close_children, self._children)
        try:
            for _ in range(self.workers - 1):
                self._children.append(_Child())
            self._load()
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Stop the worker processes; predict cannot be called afterwards."""
        self._finalizer()
        self._closed = True

    def _load(self):
        """Have every child load the model's current weights (saved to a private temporary folder)."""
        if self._children:
            snapshot = {key: (value.shape, value.dtype, _bits(value).copy()) for key, value in self._weights().items()}
            with tempfile.TemporaryDirectory(prefix="kconvert-workers-") as folder:  # 0700, removed in any case
                path = self.model.save(os.path.join(folder, "graph"))
                for child in self._children:
                    child.ask({"load": os.fspath(path)})
                for child in self._children:
                    child.answer()
            self._loaded = snapshot

    def _weights(self):
        """{(node, weight name): array} of the model's current weights."""
        return {(node, key): np.asarray(value) for node, weights in self.model.weights.items()
                for key, value in weights.items()}

    def _weights_changed(self):
        """Whether any weight differs, bit for bit, from what the children loaded (0.3 ms for 2.2 MB)."""
        current = self._weights()
        return current.keys() != self._loaded.keys() or not all(
            value.shape == self._loaded[key][0] and value.dtype == self._loaded[key][1] and
            np.array_equal(_bits(value), self._loaded[key][2]) for key, value in current.items())

    def predict(self, x, batch_size=256, strict=False, numerics="numpy", verbose=0):
        """Model.predict's result for x (same arguments but threads), each batch's rows split over the
        workers as predict(threads=workers) splits them over threads."""
        with self._lock:
            if self._closed:
                raise WorkerProcessError("these worker processes are closed; start new ones")
            if os.getpid() != self._owner:
                raise WorkerProcessError("worker processes belong to the process that started them")
            model = self.model
            feed, count, run = model._predict_setup(x, batch_size, strict, numerics, verbose)
            self._checked = False  # weights are compared once per call, before a child first gets rows
            try:
                with parallel.thread_pool(1, limit=1):  # this process's slices: OpenBLAS at one thread
                    return model._predict_batches(feed, count, batch_size, lambda batch: parallel.split_rows(
                        batch, self.workers, lambda slices: self._run_slices(run, slices, numerics)))
            except BaseException:  # a child may still be answering (a Ctrl-C here): its stream is out of step
                self.close()
                raise

    def _run_slices(self, run, slices, numerics):
        """The slices' outputs: the first computed here, the others on the children."""
        children = self._children[:len(slices) - 1]
        if children and not self._checked:  # (a batch run here alone, like batch-1 latency, skips the 0.3 ms)
            if self._weights_changed():
                self._load()
            self._checked = True
        for child, part in zip(children, slices[1:]):
            inputs = child.place(part)  # first: it may grow the shared memory
            child.ask({"run": {"numerics": numerics, "size": child.size, "inputs": inputs}})
        try:
            results = [run(slices[0])]
        finally:  # every asked child's answer is read, even when this slice failed: the streams stay in step
            answers = [self._outputs(child, len(next(iter(part.values())))) for child, part in
                       zip(children, slices[1:])]
        return results + answers

    def _outputs(self, child, rows):
        """A child's answer as {output name: array}, checked against the model's outputs and the slice's rows."""
        header = child.answer()
        entries = header.get("outputs")
        names = [out["name"] for out in self.model.outputs]
        if not isinstance(entries, list) or names != [
                e[0] if isinstance(e, list) and len(e) == 3 else None for e in entries]:
            raise WorkerProcessError("a worker process answered with other outputs than the model's")
        outputs = {}
        for name, dtype, shape in entries:
            if (dtype not in _OUTPUT_DTYPES or not isinstance(shape, list) or not shape or shape[0] != rows
                    or not all(isinstance(d, int) and d >= 0 for d in shape)):
                raise WorkerProcessError(f"a worker process answered output {name!r} with dtype {dtype!r}, "
                                         f"shape {shape!r}")
            count = int(np.prod(shape)) * np.dtype(dtype).itemsize
            outputs[name] = np.frombuffer(child.read(count), dtype).reshape(shape)
        return outputs
