"""Parallel predict (and fit, runtime/row_split.py): each batch's rows split over worker threads,
OpenBLAS held to one thread meanwhile.

NumPy releases the GIL inside its array loops and BLAS calls, so workers on separate rows of a batch run
on separate cores, and the work outside BLAS (im2col copies, bias, ReLU, pooling), single-threaded when
OpenBLAS parallelises each GEMM instead, runs in parallel too. OpenBLAS's own pool is set to one thread
while the workers run: two callers sharing its pthread pool would spin waiting for each other's threads.

Only OpenBLAS with its pthreads layer (what NumPy's wheels load), found among the libraries the process
has already loaded, can be held to one thread this way; with any other BLAS, or off Linux, predict runs
each batch in the calling thread as before. Results differ from a one-thread run in the last bits only
(OpenBLAS itself rounds differently at different thread counts and matrix sizes). The thread count is
process-wide: while a split predict runs, other threads' matrix products in the process use one thread too.
An explicit predict(threads=n) is a cap on the threads computing: a batch too small to split over n runs
in the calling thread with OpenBLAS at no more than n threads, so threads=1 means one core throughout.

Recurrent layers are the exception (Model.predict picks the mode). A recurrent step is a dozen NumPy calls
on small arrays, each holding the GIL to start, so two threads stepping through halves of a batch mostly
wait for each other: one 64-unit LSTM step on a 2-core AMD EPYC runs 1.57x faster on two threads at 128
rows each, 0.82x at 32 and 0.59x at 8, and row-split predict of the benchmark 2-layer SimpleRNN took 13
instead of 9 ms. Graphs with recurrent layers run each batch whole in the calling thread instead; a
Bidirectional's two directions, independent until they are merged, run on two threads (split="parts").
"""
import contextlib
import functools
import itertools
import os
import threading

import numpy as np

# Below this many rows per worker a batch is not split: a few rows' work is mostly Python and NumPy call
# overhead, which holds the GIL and so does not run in parallel.
MIN_ROWS_PER_WORKER = 8
_OPENBLAS_PTHREADS = 1       # openblas_get_parallel(): 0 sequential, 1 pthreads, 2 OpenMP
_HOLD = threading.Lock()     # one split predict at a time holds OpenBLAS at one thread


class _OpenBLAS:
    """get/set of the thread count of an OpenBLAS that NumPy already loaded."""

    def __init__(self, library, affix):
        import ctypes
        prefix, suffix = affix
        self._get = getattr(library, f"{prefix}openblas_get_num_threads{suffix}")
        self._set = getattr(library, f"{prefix}openblas_set_num_threads{suffix}")
        self._get.restype, self._get.argtypes = ctypes.c_int, []
        self._set.restype, self._set.argtypes = None, [ctypes.c_int]
        self._corename = getattr(library, f"{prefix}openblas_get_corename{suffix}", None)
        if self._corename is not None:
            self._corename.restype, self._corename.argtypes = ctypes.c_char_p, []

    def threads(self):
        """OpenBLAS's current thread count."""
        return int(self._get())

    def set_threads(self, count):
        """Set OpenBLAS's process-wide thread count."""
        self._set(int(count))

    def corename(self):
        """The name of the CPU core OpenBLAS picked its kernels for (e.g. "SkylakeX", "Haswell"), or ""."""
        name = self._corename() if self._corename is not None else None
        return name.decode("ascii", "replace") if name else ""


def _loaded_libraries():
    """Paths of the shared libraries mapped into this process whose file name mentions openblas."""
    try:  # lines: address perms offset device inode [path]
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {fields[5].strip() for fields in (line.split(None, 5) for line in maps) if len(fields) == 6}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith("/") and "openblas" in os.path.basename(p).lower())


@functools.cache
def _openblas():
    """The process's OpenBLAS (pthreads layer) as an _OpenBLAS, or None where there is none to control."""
    if not hasattr(os, "RTLD_NOLOAD"):
        return None
    import ctypes  # here, not at module level: it costs import time
    for path in _loaded_libraries():
        try:  # RTLD_NOLOAD: a handle to what NumPy already loaded; never loads a file
            library = ctypes.CDLL(path, mode=os.RTLD_NOLOAD)
        except OSError:
            continue
        for affix in (("scipy_", "64_"), ("scipy_", ""), ("", "64_"), ("", "_64"), ("", "")):
            parallel = getattr(library, f"{affix[0]}openblas_get_parallel{affix[1]}", None)
            if parallel is None or not hasattr(library, f"{affix[0]}openblas_set_num_threads{affix[1]}"):
                continue
            parallel.restype, parallel.argtypes = ctypes.c_int, []
            if parallel() == _OPENBLAS_PTHREADS:
                return _OpenBLAS(library, affix)
    return None


def default_workers():
    """Threads predict splits a batch over by default: OpenBLAS's thread count (so OPENBLAS_NUM_THREADS
    controls both), or 1 where OpenBLAS cannot be held to one thread."""
    blas = _openblas()
    return blas.threads() if blas is not None else 1


def _serial(run, batch):
    return run(batch)


def run_on(pool, function, calls):
    """[function(*args) for args in calls]: the first in this thread, the others on the pool's threads.
    Returns once every call has ended, even when one fails (then re-raising its error)."""
    from concurrent.futures import wait  # here, not at module level: it costs import time
    futures = [pool.submit(function, *args) for args in calls[1:]]
    try:
        first = function(*calls[0])
    finally:
        wait(futures)
    return [first] + [f.result() for f in futures]


def split_rows(batch, workers, run_slices):
    """A batch's outputs from run_slices(slices) -> their outputs, the slices up to `workers` contiguous row
    slices of the batch (row_bounds), the outputs concatenated along rows (as they are, for one slice)."""
    bounds = row_bounds(len(next(iter(batch.values()))), workers)
    results = run_slices([{k: v[a:b] for k, v in batch.items()} for a, b in itertools.pairwise(bounds)])
    if len(results) == 1:
        return results[0]
    return {name: np.concatenate([r[name] for r in results], axis=0) for name in results[0]}


def _split_run(pool, workers, run, batch):
    """run(batch) as up to `workers` contiguous row slices on the pool's threads."""
    return split_rows(batch, workers, lambda slices: run_on(pool, run, [(part,) for part in slices]))


def _pooled(pool, run, batch):
    return run(batch, pool=pool)


@contextlib.contextmanager
def thread_pool(workers, limit=None):
    """Yield a pool of workers - 1 threads, OpenBLAS at one thread meanwhile (workers > 1), or None: the
    caller computes alone, OpenBLAS at no more than `limit` threads (as it is, for limit None). None too
    where OpenBLAS is out of reach or another split run holds it (OpenBLAS left as it is)."""
    blas = _openblas() if workers > 1 or limit is not None else None
    if blas is None or not _HOLD.acquire(blocking=False):
        yield None
        return
    previous = blas.threads()
    try:
        if workers > 1:
            from concurrent.futures import ThreadPoolExecutor  # here: it costs import time
            blas.set_threads(1)
            with ThreadPoolExecutor(workers - 1, thread_name_prefix="kconvert-worker") as pool:
                yield pool
        else:
            blas.set_threads(min(previous, limit))
            yield None
    finally:
        blas.set_threads(previous)
        _HOLD.release()


def row_bounds(count, workers):
    """Boundaries of up to `workers` contiguous row slices of `count` rows, at least MIN_ROWS_PER_WORKER rows
    each: [0, ..., count], or [0, count] when the rows are too few to split."""
    parts = max(1, min(workers, count // MIN_ROWS_PER_WORKER))
    return np.linspace(0, count, parts + 1).round().astype(int).tolist()


@contextlib.contextmanager
def batch_runner(workers, limit=None, split="rows"):
    """Yield call(run, batch). With workers > 1 and split="rows": run(batch) split over `workers` threads;
    with split="parts": run(batch, pool=...) in this thread, the pool's workers - 1 threads there for the
    parts of the batch's work that an op runs side by side; OpenBLAS at one thread in both. With one
    worker, or split="none": run in this thread with OpenBLAS at no more than `limit` threads (as it is,
    for limit None). Where OpenBLAS is out of reach, or another split run holds it, run in this thread
    as it is."""
    with thread_pool(1 if split == "none" else workers, limit) as pool:
        if pool is None:
            yield _serial
        elif split == "rows":
            yield functools.partial(_split_run, pool, workers)
        else:
            yield functools.partial(_pooled, pool)
