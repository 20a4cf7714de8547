"""A worker process of runtime/processes.py: runs rows of predict batches on the model its parent saved.

Started by the parent as `python -P -c "...worker.main()" <socket fd> <memfd fd>`, with both descriptors
inherited. Requests arrive on the socket, one JSON line each:
  {"load": folder}      load the graph folder the parent saved (the same checked loader as load())
  {"run": {"numerics": ..., "size": bytes, "inputs": [[name, dtype, shape, offset], ...]}}
                        run the inputs found in the shared memory (the memfd, `size` bytes long)
Answers are one JSON line, {"loaded": true}, {"outputs": [[name, dtype, shape], ...]} followed by the
outputs' raw bytes in that order, or {"error": message, "type": class name}. The process ends when the
parent closes the socket (also when the parent dies).
"""
import json
import mmap
import socket
import sys

import numpy as np

MAX_REQUEST_BYTES = 1 << 20
INPUT_DTYPES = ("float32", "int32", "bool")  # what Model._prepare makes of numeric inputs


class _Worker:
    def __init__(self, memfd):
        self.memfd, self.shared, self.model, self.runs = memfd, None, None, {}  # runs: numerics -> run(batch)

    def load(self, folder):
        """Load the parent's saved model; the memo of derived weights restarts with it."""
        from .model import load
        self.model, self.runs = load(folder), {}
        return {"loaded": True}, []

    def run(self, request):
        """The model's outputs for the inputs the request locates in the shared memory."""
        if self.shared is None or len(self.shared) != request["size"]:  # the parent grew it
            if self.shared is not None:
                self.shared.close()
            self.shared = mmap.mmap(self.memfd, request["size"])
        batch = {}
        for name, dtype, shape, offset in request["inputs"]:
            if dtype not in INPUT_DTYPES:
                raise ValueError(f"unexpected input dtype {dtype!r}")
            batch[name] = np.frombuffer(self.shared, dtype, int(np.prod(shape)), offset).reshape(shape)
        # The weights stay as loaded until the next load, so what ops derive from them is kept across requests.
        if request["numerics"] not in self.runs:
            self.runs[request["numerics"]] = self.model._batch_run(request["numerics"])
        outputs = self.runs[request["numerics"]](batch)
        arrays = [np.ascontiguousarray(outputs[out["name"]]) for out in self.model.outputs]
        header = [[out["name"], a.dtype.str, list(a.shape)] for out, a in zip(self.model.outputs, arrays)]
        return {"outputs": header}, arrays


def main():
    """Serve the parent's requests until it closes the socket."""
    from .allocator import reuse_freed_memory
    reuse_freed_memory()  # a process of kconvert's own, as the CLIs are: freed arrays are kept for reuse
    link = socket.socket(fileno=int(sys.argv[1]))
    worker = _Worker(int(sys.argv[2]))
    requests = link.makefile("rb")
    while True:
        line = requests.readline(MAX_REQUEST_BYTES)
        if not line:
            return
        try:
            request = json.loads(line)
            answer, arrays = worker.load(request["load"]) if "load" in request else worker.run(request["run"])
        except Exception as exc:  # reported to the parent, which raises it there
            answer, arrays = {"error": str(exc) or type(exc).__name__, "type": type(exc).__name__}, []
        try:
            link.sendall(json.dumps(answer).encode() + b"\n")
            for array in arrays:
                link.sendall(memoryview(array).cast("B") if array.size else b"")
        except OSError:  # the parent closed the pool while this request ran
            return
