"""Training steps with each batch's rows split over threads (Model.fit and Model.evaluate, threads=...).

A step's forward pass runs as contiguous row slices of the batch, one per thread, OpenBLAS at one thread
each (runtime/parallel.py); the loss and its output gradient are computed once, on the slices' outputs
put back together, so the loss's reductions (the mean over rows, sample weights, activity regularizers)
are exactly Keras's; the backward pass runs on the same slices, and each weight's gradient is the sum of
the slices' gradients (a sum over rows, split in parts; only the rounding differs).

Why: with the batch whole, OpenBLAS runs each GEMM on both cores but everything else (im2col copies,
ReLU, pooling and their gradients) on one. One step of the benchmark CIFAR CNN (batch 64, 2-core AMD
EPYC) took 153-155 ms that way and 118-123 ms split.

Only graphs whose ops treat rows independently, forward and backward, are split (ROW_WISE_OPS): not
recurrent layers, whose steps are GIL-bound (see parallel.py), nor embeddings, whose gradients Keras
keeps one row per lookup, nor a batch_norm that trains, whose statistics are the whole batch's. A split
graph's dropout draws from one generator per slice, seeded from the step's, so a seed repeats a run at
the same thread count (not across counts, where rounding differs too).
"""
import functools
import itertools
import operator
from types import SimpleNamespace

import numpy as np

from . import parallel
from .regularization import runs_frozen

ROW_WISE_OPS = frozenset({"dense", "activation", "relu", "leaky_relu", "softmax", "rescaling", "dropout", "flatten",
                          "conv2d", "max_pool2d", "avg_pool2d", "global_avg_pool2d", "global_max_pool2d"})


def splits_rows(doc):
    """Whether fit may split this graph's batches by rows: every op treats rows independently (a batch_norm
    does only when frozen: in training it normalizes with the whole batch's statistics)."""
    return all(node["op"] in ROW_WISE_OPS or (node["op"] == "batch_norm" and runs_frozen(node))
               for node in doc["nodes"])


class RowSplit:
    """Forward and backward passes of one model over row slices of a batch, on a thread pool."""

    def __init__(self, model, pool, workers):
        self.model, self.pool, self.workers = model, pool, workers
        self.draws = any(node["op"] == "dropout" for node in model.doc["nodes"])

    def forward(self, batch, ctx):
        """None for a batch too small to split; else (row bounds, [(values, caches) of each slice])."""
        bounds = parallel.row_bounds(len(next(iter(batch.values()))), self.workers)
        if len(bounds) < 3:
            return None
        slices = list(itertools.pairwise(bounds))
        if self.draws and ctx.rng is not None:  # seeds from the step's generator, only when dropout draws
            rngs = [np.random.default_rng(s) for s in ctx.rng.integers(0, 2 ** 63, size=len(slices))]
        else:
            rngs = [ctx.rng] * len(slices)
        calls = [({k: v[a:b] for k, v in batch.items()}, SimpleNamespace(training=ctx.training, rng=rng))
                 for (a, b), rng in zip(slices, rngs)]
        return bounds, parallel.run_on(self.pool, self.model._forward_train, calls)

    def backward(self, split, output_grads, skip_activation):
        """{(node, weight): gradient} of the whole batch: each slice's backward pass, summed."""
        bounds, parts = split
        calls = [({name: g[a:b] for name, g in output_grads.items()}, caches, skip_activation)
                 for (a, b), (_, caches) in zip(itertools.pairwise(bounds), parts)]
        grads = parallel.run_on(self.pool, self.model._backward, calls)
        return {key: functools.reduce(operator.add, (g[key] for g in grads)) for key in grads[0]}


def merge(parts, value_names, cache_names):
    """(values, caches) of the whole batch for the named tensors and the named nodes' z and y (what the loss
    reads: logits, and an output activation's inputs), from the slices'."""
    values = {name: np.concatenate([values[name] for values, _ in parts]) for name in value_names}
    caches = {name: {key: np.concatenate([c[name][key] for _, c in parts]) for key in ("z", "y")
                     if key in parts[0][1][name]}
              for name in cache_names}
    return values, caches
