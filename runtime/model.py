"""The runtime Model: a validated graph with its weights, run node by node in NumPy."""
import contextlib
import copy
import functools
from types import SimpleNamespace

import numpy as np

from kconvert.schema import InputDataError
from kconvert.schema.catalogue import state_weights
from kconvert.schema.folder import write_graph
from kconvert.schema.summary import format_summary

from . import optimizers, parallel, projection, row_split, training
from .graph_io import load_asset, load_weight, read_document, resolve_graph_path
from .folding import fold_plan, folded_weights
from .initializers import initial_weights
from .ops import INPUT_GRADIENT_OPTIONAL, MULTI_INPUT_OPS, OPS, TRAIN_OPS, activations
from .ops.conv import POOLS_PER_SAMPLE, conv2d_pooled
from .ops.run_weights import RunWeights
from .ops.text import text_vectorization
from .regularization import frozen_weights, runs_frozen

_NUMPY_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}


def load(path):
    """Load a graph folder (or its graph.json), verifying schema, semantics and every weight file."""
    folder, json_path = resolve_graph_path(path)
    doc, tensors = read_document(json_path)
    return Model(doc, tensors, folder)


class Model:
    """A loaded kgraph model: `predict`, `summary`, and its `inputs`, `outputs`, `labels`."""

    def __init__(self, doc, tensors, folder):
        self.doc = doc
        self._tensors = tensors
        self.inputs = doc["inputs"]
        self.outputs = doc["outputs"]
        self.labels = doc.get("labels")
        self.weights = {}
        self._vocab_index, self._vocabularies = {}, {}
        self._nodes = {node["name"]: node for node in doc["nodes"]}
        # Nodes with a trainable weight at or above them: only their outputs need a gradient in backprop.
        self._learns, self._trains = set(), {}
        for node in doc["nodes"]:
            self._trains[node["name"]] = set(node["weights"]) - frozen_weights(node) - state_weights(node["op"])
            if self._trains[node["name"]] or any(source in self._learns for source in node["inputs"]):
                self._learns.add(node["name"])
        sole_readers = _sole_readers(doc)
        # What predict runs: batch_norms folded into the conv or dense before them (runtime/folding.py).
        self._plan = fold_plan(doc, sole_readers, tensors)
        plan_readers = _sole_readers({"nodes": self._plan, "outputs": doc["outputs"]})
        self._pooled_by = _poolings_to_fuse(self._plan, plan_readers)
        self._embedded_by = _embeddings_to_fuse(doc, sole_readers)
        self._fused_embeddings = {source["name"] for source in self._embedded_by.values()}
        self._projections = projection.ProjectionTables()
        # How predict uses its threads (runtime/parallel.py): recurrent steps are GIL-bound, so graphs with
        # them never split rows; a Bidirectional runs its directions side by side instead.
        ops = {node["op"] for node in doc["nodes"]}
        self._split = ("parts" if "bidirectional" in ops else "none" if ops & set(projection.RECURRENT_OPS)
                       else "rows")
        self._splits_training = row_split.splits_rows(doc)  # fit and evaluate: rows over threads, or whole
        # Nodes whose state is frozen (a BatchNormalization with trainable=False) run in inference mode in fit.
        self._frozen_state = {node["name"] for node in doc["nodes"] if runs_frozen(node)}
        self._updates_state = [node["name"] for node in doc["nodes"]
                               if state_weights(node["op"]) and node["name"] not in self._frozen_state]
        self._run_attrs = {"numpy": {node["name"]: node["attrs"] for node in self._plan}}  # numerics -> attrs
        for node in doc["nodes"]:
            what = f"node {node['name']!r}"
            self.weights[node["name"]] = {k: load_weight(folder, ref, what) for k, ref in node["weights"].items()}
            if "vocabulary" in node.get("assets", {}):
                vocab = load_asset(folder, node["assets"]["vocabulary"], what)
                index = {}
                for i, token in enumerate(vocab):
                    index.setdefault(token, i)
                self._vocab_index[node["name"]] = index
                self._vocabularies[node["name"]] = vocab
        # The source model's optimizer state (training.optimizer_state), which fit continues from; and the
        # optimizer fit continues (the last one it used, Keras's compiled optimizer), made on first use.
        state = (doc.get("training") or {}).get("optimizer_state")
        self._saved_state = None if state is None else (state["iterations"], {
            (e["slot"], (e["node"], e["weight"])): load_weight(folder, e["value"], f"the {e['slot']} of {e['node']}")
            for e in state["slots"]})
        self._optimizer = None

    def node(self, name):
        """The graph node called `name`, or None for graph inputs."""
        return self._nodes.get(name)

    def summary(self):
        """Return a model.summary()-style table as a string."""
        return format_summary(self.doc, self._tensors)

    def _prepare(self, x):
        """Map user data to {input name: array}, checking dtype and shape."""
        if not isinstance(x, dict):
            if len(self.inputs) != 1:
                names = ", ".join(i["name"] for i in self.inputs)
                raise InputDataError(f"this model has {len(self.inputs)} inputs ({names}); pass a dict of arrays")
            x = {self.inputs[0]["name"]: x}
        unknown = set(x) - {i["name"] for i in self.inputs}
        if unknown:
            raise InputDataError(f"unknown input name(s) {sorted(unknown)}; the model's inputs: {[i['name'] for i in self.inputs]}")
        feed, count = {}, None
        for spec in self.inputs:
            if spec["name"] not in x:
                raise InputDataError(f"input {spec['name']!r} is missing")
            feed[spec["name"]] = arr = _coerce(spec, x[spec["name"]])
            if count is not None and len(arr) != count:
                raise InputDataError("all inputs must have the same number of rows")
            count = len(arr)
        return feed, count

    def predict(self, x, batch_size=256, strict=False, threads=None, numerics="numpy", verbose=0):
        """Run the model on x (array, list of texts, or dict of those) in batches; returns an array, or a dict
        for several outputs. With strict=True, inputs containing NaN or Inf are refused. Each batch's rows
        are split over up to `threads` threads, OpenBLAS at one thread each, except in graphs with recurrent
        layers, which run each batch whole (a Bidirectional's two directions on two threads); threads=1 runs
        in the calling thread with OpenBLAS at one thread (default: OpenBLAS's thread count; see
        runtime.parallel; worker_processes() splits them over processes instead, which share no GIL).
        numerics="tensorflow" computes tanh and sigmoid with TensorFlow's CPU kernels (runtime/ops/tf_kernels.py)
        instead of NumPy's more accurate ones, so outputs follow Keras's float32 rounding more closely.
        `verbose` is accepted as Keras's is (code written for Keras passes verbose=0); nothing is printed."""
        _check_threads(threads)
        feed, count, run = self._predict_setup(x, batch_size, strict, numerics, verbose)
        workers = parallel.default_workers() if threads is None else threads
        workers = min(workers, min(count, batch_size) // parallel.MIN_ROWS_PER_WORKER)  # 1-row calls: no split
        with parallel.batch_runner(workers, limit=threads, split=self._split) as runner:
            return self._predict_batches(feed, count, batch_size, functools.partial(runner, run))

    def worker_processes(self, workers=None):
        """A WorkerProcesses pool (runtime/processes.py, Linux): predict with each batch's rows split between this
        process and workers - 1 child processes instead of threads, which share no GIL (0.84-0.96x the time of
        threads on the benchmark CNN on 2 cores); use it as a context manager, or close() it."""
        from .processes import WorkerProcesses  # here: its modules cost import time
        return WorkerProcesses(self, workers)

    def _predict_setup(self, x, batch_size, strict, numerics, verbose):
        """predict's checks: (feed {input name: array}, row count, run(batch) -> {output name: array})."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputDataError(f"batch_size must be a positive integer, got {batch_size!r}")
        _check_verbose(verbose)
        run = self._batch_run(numerics)
        feed, count = self._prepare(x)
        if strict:
            for name, arr in feed.items():
                if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                    raise InputDataError(f"input {name!r} contains NaN or Inf (refused in strict mode)")
        return feed, count, run

    def _batch_run(self, numerics):
        """run(batch) -> {output name: array} on the current weights, with the folded weights and what ops derive
        from weights (runtime/ops/run_weights.py) computed once for all its calls: valid while weights stay."""
        run_attrs = self._attrs_for(numerics)
        run_weights = {node["name"]: RunWeights(self._run_weights(node)) for node in self._plan}
        return functools.partial(self._run, run_attrs=run_attrs, run_weights=run_weights)

    def _predict_batches(self, feed, count, batch_size, run_batch):
        """predict's result: run_batch(batch) on each batch of batch_size rows, outputs concatenated."""
        chunks = [run_batch({k: v[start:start + batch_size] for k, v in feed.items()})
                  for start in range(0, max(count, 1), batch_size)]
        results = {}
        for out in self.outputs:
            parts = [c[out["name"]] for c in chunks]
            results[out["name"]] = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
        return results[self.outputs[0]["name"]] if len(self.outputs) == 1 else results

    # -- training ------------------------------------------------------------------------------
    def get_weights(self):
        """A copy of every weight: {node name: {weight name: array}}."""
        return {n: {k: v.copy() for k, v in w.items()} for n, w in self.weights.items()}

    def set_weights(self, weights):
        """Replace weights in place from a get_weights()-style dict (shapes must match)."""
        for node, values in weights.items():
            for key, value in values.items():
                target = self.weights[node][key]
                if np.shape(value) != target.shape:
                    raise InputDataError(f"weight {node}/{key} must have shape {target.shape}, got {np.shape(value)}")
                target[...] = value

    def _params(self):
        return {(n, k): v for n, w in self.weights.items() for k, v in w.items()}

    def _trainable_params(self):
        """The (node, weight) arrays fit updates: all but the graph's non_trainable ones."""
        return {(n, k): v for n, w in self.weights.items() for k, v in w.items() if k in self._trains[n]}

    @property
    def optimizer(self):
        """The optimizer `fit` continues when given none (Keras's compiled one): the last one fit used, else the
        graph's recorded optimizer resumed from its saved state (iteration count, moments), if the graph has
        one; None when the graph records no optimizer."""
        record = (self.doc.get("training") or {}).get("optimizer")
        if self._optimizer is None and record is not None:
            self._optimizer = optimizers.get(record)
            if self._saved_state is not None:
                self._optimizer.restore(*self._saved_state, self._trainable_params())
        return self._optimizer

    def reinitialize(self, seed=0):
        """Replace every weight with Keras's default initialisation (glorot_uniform, orthogonal, zeros,
        unit_forget_bias, uniform embeddings), seeded; returns self, ready to train from scratch (the
        optimizer too starts afresh: the saved state belonged to the old weights)."""
        self._saved_state = self._optimizer = None
        rng = np.random.default_rng(seed)
        for node in self.doc["nodes"]:
            shapes = {k: tuple(ref["shape"]) for k, ref in node["weights"].items()}
            if shapes:
                self.set_weights({node["name"]: initial_weights(node, shapes, rng)})
        return self

    def _forward_train(self, batch, ctx):
        values, caches = dict(batch), {}
        inference = SimpleNamespace(training=False, rng=ctx.rng)
        for node in self.doc["nodes"]:
            name, x = node["name"], _input_of(node, values)
            if node["op"] == "text_vectorization":
                values[name] = text_vectorization(x, node["attrs"], {}, vocabulary_index=self._vocab_index[name])
                continue
            mask = values[node["mask"]] if "mask" in node else None
            node_ctx = inference if name in self._frozen_state else ctx
            values[name], caches[name] = TRAIN_OPS[node["op"]][0](x, node["attrs"], self.weights[name], mask, node_ctx)
        return values, caches

    def _update_state(self, caches):
        """Write the state weights' next values a training forward pass computed (batch_norm's moving
        statistics) into the model's arrays."""
        for name in self._updates_state:
            for key, value in caches[name]["state"].items():
                self.weights[name][key][...] = value

    def _backward(self, output_grads, caches, skip_activation=None):
        """Backpropagate {tensor: gradient} through the nodes in reverse order; returns {(node, weight): grad}."""
        pending, grads = dict(output_grads), {}
        for node in reversed(self.doc["nodes"]):
            name = node["name"]
            dy = pending.pop(name, None)
            if dy is None or name not in caches:
                continue
            need_dx = any(source in self._learns for source in node["inputs"])
            if not need_dx and not self._trains[name]:
                continue  # nothing at or above this node learns
            backward = TRAIN_OPS[node["op"]][1]
            extra = {"skip_activation": True} if name == skip_activation else {}
            if not need_dx and node["op"] in INPUT_GRADIENT_OPTIONAL:
                extra["need_dx"] = False  # e.g. a first conv2d: its input gradient is half its backward
            dx, node_grads = backward(dy, caches[name], node["attrs"], self.weights[name], **extra)
            grads.update({(name, k): g for k, g in node_grads.items()})
            if dx is None or not need_dx:
                continue
            for source, d in zip(node["inputs"], dx if node["op"] in MULTI_INPUT_OPS else [dx]):
                if source in self._learns:  # fan-out: a tensor several nodes read gets their gradients' sum
                    pending[source] = d if source not in pending else pending[source] + d
        for key, value in self._trainable_params().items():  # trainable weights the loss does not reach get zeros
            grads.setdefault(key, np.zeros_like(value))
        return grads

    def _dataset(self, x, y, sample_weight=None):
        """(feed, y, row count, float32 sample weights or None) of one dataset, checked against each other."""
        feed, count = self._prepare(x)
        y = np.asarray(y)
        if len(y) != count:
            raise InputDataError(f"x has {count} rows but y has {len(y)}")
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight, dtype=np.float32)
            if sample_weight.ndim == 0 or len(sample_weight) != count or not np.isfinite(sample_weight).all():
                raise InputDataError(f"sample_weight must hold one finite weight per row ({count} rows), "
                                     f"got shape {sample_weight.shape}")
        return feed, y, count, sample_weight

    def fit(self, x, y, epochs=1, batch_size=32, validation_data=None, validation_split=0.0, shuffle=True,
            seed=None, loss=None, optimizer=None, metrics=None, from_logits=False, early_stopping=None,
            callbacks=(), sample_weight=None, class_weight=None, weighted_metrics=None, threads=None, verbose=0):
        """Train in place like keras.Model.fit; returns a History. Loss, optimizer, metrics and weighted
        metrics (Keras's compile(weighted_metrics=...): 'accuracy' weighted by the sample / class weights)
        default to what the source model was compiled with (the graph's training record); with no `optimizer`,
        fit continues `self.optimizer` (the last fit's, else the graph's from its saved state). `validation_data`
        is (x, y) or (x, y, sample_weight); `class_weight` maps class index -> weight of training rows.
        `threads` as in predict: each batch's rows split over up to that many threads, forward and backward,
        in graphs of row-wise ops (dense, conv, pooling, dropout...) and batch norm (its statistics summed across
        the slices; runtime/row_split.py); graphs with recurrent layers or embeddings train each batch whole;
        threads=1 keeps OpenBLAS at one thread. verbose=1 or 2 prints Keras's verbose=2 line after each epoch
        (no progress bar); 0, the default, prints nothing."""
        if not isinstance(batch_size, int) or batch_size < 1 or not isinstance(epochs, int) or epochs < 0:
            raise InputDataError("epochs must be a non-negative integer and batch_size a positive one")
        _check_threads(threads)
        _check_verbose(verbose)
        trainer = training.make_trainer(self, loss, self.optimizer if optimizer is None else optimizer, metrics,
                                        from_logits, weighted_metric_names=weighted_metrics)
        self._optimizer = trainer.optimizer  # a later fit continues it, as Keras's does
        if class_weight is not None:
            if sample_weight is not None:
                raise InputDataError("pass class_weight or sample_weight, not both (Keras refuses both too)")
            sample_weight = training.class_weight_to_sample_weight(y, class_weight)
        feed, y, count, weights = self._dataset(x, y, sample_weight)
        validation = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise InputDataError("validation_data must be (x, y) or (x, y, sample_weight)")
            validation = self._dataset(*validation_data)
        elif validation_split:
            split_at = int(np.floor(count * (1.0 - validation_split)))  # Keras: the last rows, before shuffling
            if split_at in (0, count):
                raise InputDataError(f"validation_split={validation_split} leaves no training or no validation rows")
            tail, head = slice(split_at, None), slice(None, split_at)
            # Keras splits the caller's sample weights with the rows; class_weight weighs training rows only.
            validation = ({k: v[tail] for k, v in feed.items()}, y[tail], count - split_at,
                          None if weights is None or class_weight is not None else weights[tail])
            feed, y, count, weights = ({k: v[head] for k, v in feed.items()}, y[head], split_at,
                                       None if weights is None else weights[head])
        self._trainer = trainer
        with self._row_split(trainer, threads, batch_size):
            return training.fit(trainer, (feed, y, count, weights), epochs, batch_size, validation, shuffle, seed,
                                early_stopping, list(callbacks) + ([training.EpochLines(epochs)] if verbose else []))

    @contextlib.contextmanager
    def _row_split(self, trainer, threads, batch_size):
        """Hold a thread pool for trainer's steps while fit or evaluate runs, where this graph's batches of
        batch_size rows split (OpenBLAS at one thread meanwhile); else OpenBLAS at no more than `threads`."""
        if trainer.row_split is not None:  # evaluate from a callback inside fit: fit's pool serves it too
            yield
            return
        workers = (parallel.default_workers() if threads is None else threads) if self._splits_training else 1
        workers = min(workers, batch_size // parallel.MIN_ROWS_PER_WORKER)  # batches that never split: no pool
        with parallel.thread_pool(workers, limit=threads) as pool:
            trainer.row_split = row_split.RowSplit(self, pool, workers) if pool is not None else None
            try:
                yield
            finally:
                trainer.row_split = None

    def evaluate(self, x, y, batch_size=256, loss=None, metrics=None, from_logits=False, sample_weight=None,
                 weighted_metrics=None, threads=None, verbose=0):
        """Loss and metrics in inference mode, as keras.Model.evaluate(return_dict=True) reports them;
        `threads` as in fit; `verbose` is accepted as Keras's is, and nothing is printed."""
        _check_threads(threads)
        _check_verbose(verbose)
        trainer = getattr(self, "_trainer", None)
        if trainer is None or loss is not None or metrics is not None or weighted_metrics is not None:
            trainer = training.make_trainer(self, loss, None, metrics, from_logits, need_optimizer=False,
                                            weighted_metric_names=weighted_metrics)
        data = self._dataset(x, y, sample_weight)
        with self._row_split(trainer, threads, batch_size):
            return training.evaluate(trainer, data, batch_size)

    def save(self, path, force=False):
        """Write the model, with its current weights, as a new graph folder; returns its graph.json path.
        After fit, the graph records the optimizer fit used, with its state, so a later fit continues it."""
        doc = copy.deepcopy(self.doc)
        weight_files, asset_files = {}, {}
        for node in doc["nodes"]:
            for key, ref in node["weights"].items():
                weight_files[ref["file"]] = np.ascontiguousarray(self.weights[node["name"]][key], dtype="<f4")
            for key, ref in node.get("assets", {}).items():
                asset_files[ref["file"]] = self._vocabularies[node["name"]]
        state = self._saved_state
        if self._optimizer is not None:  # what fit trained with, as Keras saves its compiled optimizer
            training_record = doc.setdefault("training", {"loss": None, "loss_config": None, "metrics": None})
            training_record["optimizer"] = {"class_name": type(self._optimizer).__name__,
                                            "config": self._optimizer.get_config()}
            state = (self._optimizer.iterations, self._optimizer.slots) if self._optimizer.iterations else None
        if state is None:
            doc.get("training", {}).pop("optimizer_state", None)
        else:
            slots = []
            for (slot, (node, key)), array in state[1].items():
                slots.append({"node": node, "weight": key, "slot": slot,
                              "value": {"file": f"weights/{len(slots):03d}_optimizer_{slot}.npy",
                                        "shape": list(array.shape), "dtype": "float32", "sha256": ""}})
                weight_files[slots[-1]["value"]["file"]] = np.ascontiguousarray(array, dtype="<f4")
            doc["training"]["optimizer_state"] = {"iterations": int(state[0]), "slots": slots}
        return write_graph(doc, weight_files, asset_files, path, force=force)

    def _attrs_for(self, numerics):
        """{node name: attrs} for predict: the graph's own, or with tanh and sigmoid on TensorFlow's kernels."""
        if numerics not in activations.NUMERICS:
            raise InputDataError(f"numerics must be one of {', '.join(activations.NUMERICS)}, got {numerics!r}")
        if numerics not in self._run_attrs:
            self._run_attrs[numerics] = {node["name"]: _on_tensorflow_kernels(node["attrs"])
                                         for node in self._plan}
        return self._run_attrs[numerics]

    def _run(self, batch, run_attrs, run_weights, pool=None):
        """The graph's outputs for one batch, run with run_weights (node name -> RunWeights); `pool` (a thread
        pool) runs a Bidirectional's backward direction."""
        values, fused = dict(batch), set()
        for node in self._plan:
            name = node["name"]
            if name in fused or name in self._fused_embeddings:
                continue
            mask = values[node["mask"]] if "mask" in node else None
            weights, attrs = run_weights[name], run_attrs[name]
            if name in self._embedded_by:  # embedding + recurrent layer: input projections from a table
                source = self._embedded_by[name]
                values[name] = self._projections.run(node, values[source["inputs"][0]], attrs, weights,
                                                     self.weights[source["name"]], mask, pool)
                continue
            x = _input_of(node, values)
            if node["op"] == "text_vectorization":
                values[name] = text_vectorization(x, attrs, weights, vocabulary_index=self._vocab_index[name])
            elif name in self._pooled_by:  # conv2d + its pool in one pass over the conv's blocks
                pooling = self._pooled_by[name]
                values[pooling["name"]] = conv2d_pooled(x, attrs, weights, OPS[pooling["op"]],
                                                        run_attrs[pooling["name"]])
                fused.add(pooling["name"])
            elif node["op"] == "bidirectional":
                values[name] = OPS[node["op"]](x, attrs, weights, mask, pool=pool)
            else:
                values[name] = OPS[node["op"]](x, attrs, weights, mask)
        return {o["name"]: values[o["name"]] for o in self.outputs}

    def _run_weights(self, node):
        """The weights predict runs a plan node with: its own, or a layer's with the batch_norm folded in."""
        if "folds" not in node:
            return self.weights[node["name"]]
        layer, norm = node["folds"]
        return folded_weights(self._nodes[layer]["attrs"], self.weights[layer], self._nodes[norm]["attrs"],
                              self.weights[norm])


def _input_of(node, values):
    """The node's input array, or the list of them for an op with several (a merge)."""
    if node["op"] in MULTI_INPUT_OPS:
        return [values[source] for source in node["inputs"]]
    return values[node["inputs"][0]]


_ACTIVATION_ATTRS = ("activation", "recurrent_activation", "function")


def _on_tensorflow_kernels(attrs):
    """attrs with each activation that TensorFlow computes its own way renamed to its TensorFlow kernel,
    nested attrs (a Bidirectional's two directions) included."""
    def renamed(key, value):
        if isinstance(value, dict):
            return _on_tensorflow_kernels(value)
        return activations.tensorflow_name(value) if key in _ACTIVATION_ATTRS and isinstance(value, str) else value
    return {key: renamed(key, value) for key, value in attrs.items()}


def _sole_readers(doc):
    """{node name: the one node that reads it} for nodes read by exactly one node (as an input or its mask)
    and not a graph output: the nodes whose output may be fused away into their reader."""
    readers = {}
    for node in doc["nodes"]:
        for source in list(node["inputs"]) + ([node["mask"]] if "mask" in node else []):
            readers.setdefault(source, []).append(node)
    outputs = {o["name"] for o in doc["outputs"]}
    return {name: users[0] for name, users in readers.items() if len(users) == 1 and name not in outputs}


def _poolings_to_fuse(nodes, sole_readers):
    """{conv2d node name: the max/avg pool node that is its only reader}, for conv2d outputs read by
    nothing else (no other node, mask or graph output): those two nodes run as one (conv2d_pooled)."""
    fuse = {}
    for node in nodes:
        user = sole_readers.get(node["name"])
        if (node["op"] == "conv2d" and user is not None and user["op"] in POOLS_PER_SAMPLE
                and user["inputs"] == [node["name"]] and "mask" not in user):
            fuse[node["name"]] = user
    return fuse


def _embeddings_to_fuse(doc, sole_readers):
    """{recurrent node name: embedding node} for each recurrent node whose input is an embedding output
    that nothing else reads: it takes its input projections from a table (runtime/projection.py)."""
    fuse = {}
    for node in doc["nodes"]:
        user = sole_readers.get(node["name"])
        if (node["op"] == "embedding" and user is not None and user["op"] in projection.RECURRENT_OPS
                and user["inputs"] == [node["name"]]):
            fuse[user["name"]] = node
    return fuse


def _coerce(spec, value):
    """Convert one input to the array the graph expects, or raise InputDataError."""
    name, shape = spec["name"], spec["shape"]
    if spec["dtype"] == "string":
        if isinstance(value, str):
            raise InputDataError(f"input {name!r} takes a list of texts; wrap a single text in a list")
        arr = np.asarray(value, dtype=object)
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1 or not all(isinstance(t, str) for t in arr):
            raise InputDataError(f"input {name!r} takes a 1-D list of texts (str)")
        return arr
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise InputDataError(f"input {name!r} must be numeric ({spec['dtype']}), got dtype {arr.dtype}")
    if arr.ndim != len(shape) or any(d is not None and d != a for d, a in zip(shape[1:], arr.shape[1:])):
        expected = "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"
        raise InputDataError(f"input {name!r} must have shape {expected}, got {tuple(arr.shape)}")
    return arr.astype(_NUMPY_DTYPES[spec["dtype"]], copy=False)


def _check_verbose(verbose):
    """Refuse a `verbose` outside the values Keras documents (0, 1, 2 or "auto"; Keras itself checks none)."""
    if isinstance(verbose, bool) or verbose not in (0, 1, 2, "auto"):
        raise InputDataError(f"verbose must be 0, 1, 2 or 'auto', got {verbose!r}")


def _check_threads(threads):
    """Refuse a `threads` argument that is not None or a positive integer."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputDataError(f"threads must be a positive integer, got {threads!r}")
