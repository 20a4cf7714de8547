"""Training steps with each batch's rows split over threads (Model.fit and Model.evaluate, threads=...).

A step's forward pass runs as contiguous row slices of the batch, one per thread, OpenBLAS at one thread
each (runtime/parallel.py); the loss and its output gradient are computed once, on the slices' outputs
put back together, so the loss's reductions (the mean over rows, sample weights, activity regularizers)
are exactly Keras's; the backward pass runs on the same slices, and each weight's gradient is the sum of
the slices' gradients (a sum over rows, split in parts; only the rounding differs).

Why: with the batch whole, OpenBLAS runs each GEMM on both cores but everything else (im2col copies,
ReLU, pooling and their gradients) on one. One step of the benchmark CIFAR CNN (batch 64, 2-core AMD
EPYC) took 153-155 ms that way and 118-123 ms split.

Only graphs whose ops treat rows independently, forward and backward, are split (ROW_WISE_OPS), and
batch_norm, whose batch statistics the slices add up across threads (RowSums: each slice's partial sums
of a step meet at a barrier and every slice continues with their total, added in slice order, so all
slices normalize alike); not recurrent layers, whose steps are GIL-bound (see parallel.py), nor
embeddings, whose gradients Keras keeps one row per lookup. A split graph's dropout draws from one
generator per slice, seeded from the step's, so a seed repeats a run at the same thread count (not
across counts, where rounding differs too).
"""
import functools
import itertools
import operator
import threading
from types import SimpleNamespace

import numpy as np

from kconvert.schema.shapes import MERGE_OPS

from . import parallel

ROW_WISE_OPS = frozenset({"dense", "activation", "relu", "leaky_relu", "softmax", "rescaling", "dropout", "flatten",
                          "conv2d", "depthwise_conv2d", "separable_conv2d", "max_pool2d", "avg_pool2d",
                          "global_avg_pool2d", "global_max_pool2d",
                          "conv1d", "max_pool1d", "avg_pool1d", "global_avg_pool1d", "global_max_pool1d",
                          "layer_norm", *MERGE_OPS, "reshape", "permute", "zero_padding2d", "cropping2d",
                          "up_sampling2d"})
# Ops that reduce over the batch in training, through ctx.row_total (RowSums) when the rows are split.
BATCH_REDUCING_OPS = frozenset({"batch_norm"})


def splits_rows(doc):
    """Whether fit may split this graph's batches by rows: every op treats rows independently, or adds its
    batch statistics up across the slices."""
    return all(node["op"] in ROW_WISE_OPS | BATCH_REDUCING_OPS for node in doc["nodes"])


class RowSums:
    """Totals of the slices' partial sums within one step: total(index, partial) returns, in every slice's
    thread, the sum of all slices' partials (in slice order, so every slice gets the same array). Each
    slice must call it the same number of times; abort() releases the others when one slice fails."""

    def __init__(self, parties):
        self._barrier = threading.Barrier(parties)
        self._parts = [None] * parties
        self._error = None  # the first slice's failure, which the slices it released re-raise

    def total(self, index, partial):
        """The sum over slices of `partial` (an array of the same shape in every slice)."""
        self._parts[index] = partial
        self._barrier.wait()
        total = functools.reduce(operator.add, self._parts)
        self._barrier.wait()  # nobody writes the next partial before every slice has read this total
        return total

    def abort(self):
        """Break the barrier: slices waiting at it, or arriving later, raise BrokenBarrierError."""
        self._barrier.abort()

    def guarded(self, function):
        """function, aborting the barrier when it raises, so the other slices do not wait for it forever; they
        raise the failing slice's error rather than the broken barrier's."""
        def run(*args):
            try:
                return function(*args)
            except threading.BrokenBarrierError:
                if self._error is not None:
                    raise self._error from None
                raise
            except BaseException as exc:
                self._error = exc
                self.abort()
                raise
        return run


class RowSplit:
    """Forward and backward passes of one model over row slices of a batch, on a thread pool."""

    def __init__(self, model, pool, workers):
        self.model, self.pool, self.workers = model, pool, workers
        self.draws = any(node["op"] == "dropout" for node in model.doc["nodes"])
        self.reduces = any(node["op"] in BATCH_REDUCING_OPS for node in model.doc["nodes"])

    def forward(self, batch, ctx):
        """None for a batch too small to split; else (row bounds, [(values, caches) of each slice], the step's
        RowSums or None)."""
        bounds = parallel.row_bounds(len(next(iter(batch.values()))), self.workers)
        if len(bounds) < 3:
            return None
        slices = list(itertools.pairwise(bounds))
        if self.draws and ctx.rng is not None:  # seeds from the step's generator, only when dropout draws
            rngs = [np.random.default_rng(s) for s in ctx.rng.integers(0, 2 ** 63, size=len(slices))]
        else:
            rngs = [ctx.rng] * len(slices)
        sums = RowSums(len(slices)) if self.reduces and ctx.training else None
        calls = [({k: v[a:b] for k, v in batch.items()},
                  SimpleNamespace(training=ctx.training, rng=rng,
                                  row_total=None if sums is None else functools.partial(sums.total, i)))
                 for i, ((a, b), rng) in enumerate(zip(slices, rngs))]
        forward = self.model._forward_train if sums is None else sums.guarded(self.model._forward_train)
        return bounds, parallel.run_on(self.pool, forward, calls), sums

    def backward(self, split, output_grads, skip_activation):
        """{(node, weight): gradient} of the whole batch: each slice's backward pass, summed."""
        bounds, parts, sums = split
        calls = [({name: g[a:b] for name, g in output_grads.items()}, caches, skip_activation)
                 for (a, b), (_, caches) in zip(itertools.pairwise(bounds), parts)]
        backward = self.model._backward if sums is None else sums.guarded(self.model._backward)
        grads = parallel.run_on(self.pool, backward, calls)
        return {key: functools.reduce(operator.add, (g[key] for g in grads)) for key in grads[0]}


def merge(parts, value_names, cache_names):
    """(values, caches) of the whole batch for the named tensors and the named nodes' z and y (what the loss
    reads: logits, and an output activation's inputs), from the slices'."""
    values = {name: np.concatenate([values[name] for values, _ in parts]) for name in value_names}
    caches = {name: {key: np.concatenate([c[name][key] for _, c in parts]) for key in ("z", "y")
                     if key in parts[0][1][name]}
              for name in cache_names}
    return values, caches
