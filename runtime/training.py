"""fit / evaluate for runtime Models: Keras's training loop, History and EarlyStopping, in NumPy."""
import math
import time
from types import SimpleNamespace

import numpy as np

from kconvert.schema import InputDataError

from . import losses, metrics, optimizers, row_split
from .ops import LOGIT_OPS, TRAIN_OPS, activations
from .regularization import Penalties


class History:
    """What Model.fit returns: `.history` maps loss, each metric and their val_ twins to per-epoch lists."""

    def __init__(self):
        self.history, self.epoch = {}, []

    def append(self, epoch, logs):
        """Record one epoch's logs."""
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)


class EarlyStopping:
    """keras.callbacks.EarlyStopping: stop when `monitor` stops improving; optionally restore the best weights."""

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, mode="auto", restore_best_weights=False,
                 start_from_epoch=0):
        if mode not in ("auto", "min", "max"):
            raise InputDataError(f"EarlyStopping mode must be auto, min or max, got {mode!r}")
        maximize = mode == "max" or (mode == "auto" and ("acc" in monitor or "f1" in monitor))
        self.monitor, self.patience, self.start_from_epoch = monitor, patience, start_from_epoch
        self.restore_best_weights, self.maximize = restore_best_weights, maximize
        self.min_delta = -abs(min_delta) if maximize else abs(min_delta)

    def on_train_begin(self):
        """Reset the state, so one instance can serve several fits."""
        self.wait, self.stopped_epoch, self.best, self.best_weights, self.best_epoch = 0, 0, None, None, 0

    def _improved(self, value, reference):
        if reference is None:
            return True
        return value - self.min_delta > reference if self.maximize else value - self.min_delta < reference

    def on_epoch_end(self, epoch, logs, model):
        """Return True when training should stop (Keras's rule, including its `epoch > 0`)."""
        current = logs.get(self.monitor)
        if current is None:
            raise InputDataError(f"EarlyStopping monitors {self.monitor!r}, which is not among {sorted(logs)}")
        if epoch < self.start_from_epoch:
            return False
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights, self.best_epoch = model.get_weights(), epoch
        self.wait += 1
        if self._improved(current, self.best):
            self.best, self.best_epoch, self.wait = current, epoch, 0
            if self.restore_best_weights:
                self.best_weights = model.get_weights()
            return False
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            return True
        return False

    def on_train_end(self, model):
        """Restore the best weights if asked to."""
        if self.restore_best_weights and self.best_weights is not None:
            model.set_weights(self.best_weights)


class Trainer:
    """Forward with caches, loss, backward through the graph, optimizer step."""

    def __init__(self, model, loss, optimizer, metric_names, from_logits=False, label_smoothing=0.0,
                 weighted_metric_names=()):
        if len(model.outputs) != 1:
            raise InputDataError("training needs a model with exactly one output")
        self.model = model
        self.loss = losses.canonical_name(loss)
        self.optimizer = optimizer
        self.metric_names = list(metric_names)
        self.weighted_metric_names = list(weighted_metric_names)
        metrics.check(self.metric_names, self.loss, self.weighted_metric_names)
        self.from_logits = from_logits
        self.label_smoothing = label_smoothing
        self.output = model.outputs[0]["name"]
        self.output_mask = model.outputs[0].get("mask")  # Keras weights a masked output's loss by its mask
        node = model.node(self.output)
        key = LOGIT_OPS.get(node["op"]) if node is not None else None
        softmax_like = node is not None and (node["op"] == "softmax" or (key and node["attrs"][key] in ("softmax", "sigmoid")))
        # Keras computes cross-entropies from the logits of a final softmax/sigmoid (its _keras_logits).
        self.logit_node = node["name"] if softmax_like and self.loss in losses.CROSS_ENTROPIES else None
        self.penalties = Penalties(model.doc)
        # Weights are updated in place (fit, set_weights, reinitialize), so these arrays stay the model's.
        self.params = model._trainable_params()
        self.row_split = None  # a row_split.RowSplit while Model.fit / evaluate hold a thread pool
        # What the loss reads of a forward pass, put back together from row slices: tensors and node caches.
        self._loss_tensors = {self.output, *self.penalties.activity, *([self.output_mask] if self.output_mask else [])}
        self._loss_caches = {self.output} | ({self.logit_node} if self.logit_node else set())

    def _loss(self, values, caches, y, sample_weight=None):
        """(Keras's total loss: the loss plus activity and weight penalties, the output's gradient, used_logits,
        {tensor: activity gradient}, {(node, weight): regularizer gradient})."""
        logits = caches[self.logit_node]["z"] if self.logit_node else None
        loss, grad, used_logits = losses.compute(self.loss, y, values[self.output], logits=logits,
                                                 from_logits=self.from_logits, mask=self.mask_of(values),
                                                 sample_weight=sample_weight, label_smoothing=self.label_smoothing)
        if not (self.penalties.activity or self.penalties.weight_regs):
            return loss, grad, used_logits, {}, {}
        activity_loss, activity_grads = self.penalties.activity_terms(values)
        weight_loss, weight_grads = self.penalties.weight_terms(self.params)
        total = float(np.float32(np.float32(loss) + activity_loss + weight_loss))
        return total, grad, used_logits, activity_grads, weight_grads

    def _through_output_activation(self, dy, caches):
        """dy (w.r.t. the output) as a gradient w.r.t. the logits, when the loss's gradient is taken there."""
        node, cache = self.model.node(self.output), caches[self.output]
        if node["op"] == "softmax":
            return TRAIN_OPS["softmax"][1](dy, cache, node["attrs"], {})[0]
        return activations.backward(node["attrs"][LOGIT_OPS[node["op"]]], cache["z"], cache["y"], dy)

    def _forward(self, batch, ctx):
        """(values, caches, split): the batch's forward pass, whole (split None) or over row slices on the
        pool, whose outputs, and what the loss reads of them, are put back together for the loss."""
        split = self.row_split.forward(batch, ctx) if self.row_split is not None else None
        if split is None:
            return (*self.model._forward_train(batch, ctx), None)
        return (*row_split.merge(split[1], self._loss_tensors, self._loss_caches), split)

    def gradients(self, values, caches, y, sample_weight=None, split=None):
        """(Keras's total loss, {(node, weight): gradient} for every trainable weight) of one forward pass
        (of row slices, with `split` from _forward)."""
        loss, grad, used_logits, activity_grads, weight_grads = self._loss(values, caches, y, sample_weight)
        output_grads = dict(activity_grads)
        output_extra = output_grads.pop(self.output, None)
        if output_extra is not None:  # an activity regularizer on the output itself
            grad = grad + (self._through_output_activation(output_extra, caches) if used_logits else output_extra)
        output_grads[self.output] = grad
        skip = self.logit_node if used_logits else None
        if split is None:
            grads = self.model._backward(output_grads, caches, skip_activation=skip)
        else:
            grads = self.row_split.backward(split, output_grads, skip)
        grads = self.penalties.add_weight_gradients(grads, weight_grads)
        return loss, {k: grads[k] for k in self.params}

    def mask_of(self, values):
        """The output's sequence mask in this forward pass, or None."""
        return values[self.output_mask] if self.output_mask else None

    def train_step(self, batch, y, rng, sample_weight=None):
        """One optimizer step on one batch; returns (loss, output, output mask) as computed before the update."""
        values, caches, split = self._forward(batch, SimpleNamespace(training=True, rng=rng))
        loss, grads = self.gradients(values, caches, y, sample_weight, split)
        # The state's next values (batch_norm's moving statistics), the same in every slice of a split step.
        self.model._update_state(caches if split is None else split[1][0][1])
        self.optimizer.apply(grads, self.params)
        self.penalties.constrain(self.params)
        return loss, values[self.output], self.mask_of(values)

    def evaluate_batch(self, batch, y, sample_weight=None):
        """(loss, output, output mask) of one batch in inference mode, penalties included as Keras's evaluate
        reports them."""
        values, caches, _ = self._forward(batch, SimpleNamespace(training=False, rng=None))
        return self._loss(values, caches, y, sample_weight)[0], values[self.output], self.mask_of(values)


class _EpochLog:
    """Keras-style running loss (weighted by batch size) and epoch metrics."""

    def __init__(self, trainer):
        self.trainer, self.loss_sum, self.count, self.correct, self.seen = trainer, 0.0, 0, 0, 0
        self.weighted_correct, self.weight = 0.0, 0.0
        self.pred, self.true = [], []

    def add(self, loss, y, output, mask=None, sample_weight=None):
        """Account one batch's loss (weighted by its size, as Keras's loss tracker does) and predictions
        (real steps only under a mask; metrics ignore sample weights, as Keras's compiled `metrics` do;
        weighted metrics use them, as its `weighted_metrics` do: without any, every weight is 1)."""
        n = len(output)
        self.loss_sum += loss * n
        self.count += n
        names, weighted = self.trainer.metric_names, self.trainer.weighted_metric_names
        if "accuracy" in names or "accuracy" in weighted:
            hits = metrics.accuracy_hits(y, output)  # once for both lists
            if "accuracy" in names:
                c, t = metrics.count_hits(hits, mask)
                self.correct, self.seen = self.correct + c, self.seen + t
            if "accuracy" in weighted:
                c, t = metrics.count_hits(hits, mask, np.ones(n) if sample_weight is None else sample_weight)
                self.weighted_correct, self.weight = self.weighted_correct + c, self.weight + t
        if "macro_f1" in names:
            p, t = metrics.predicted_and_true(self.trainer.loss, y, output, mask)
            self.pred.append(p)
            self.true.append(t)

    def logs(self, prefix=""):
        """The epoch's loss and metrics so far, with an optional key prefix."""
        out = {f"{prefix}loss": self.loss_sum / max(self.count, 1)}
        for name in self.trainer.metric_names:
            if name == "accuracy":
                out[f"{prefix}accuracy"] = self.correct / self.seen if self.seen else 0.0
            elif name == "macro_f1":
                out[f"{prefix}macro_f1"] = metrics.macro_f1(np.concatenate(self.true), np.concatenate(self.pred))
        for name in self.trainer.weighted_metric_names:  # Keras's names: 'weighted_' only where a metric has it
            key = f"weighted_{name}" if name in self.trainer.metric_names else name
            out[f"{prefix}{key}"] = self.weighted_correct / self.weight if self.weight else 0.0
        return out


def _slice(feed, index):
    return {k: v[index] for k, v in feed.items()}


def row_classes(y):
    """Each row's class index, as Keras's class_weight_to_sample_weights reads labels: (n,) or (n, 1)
    rounded, one-hot (n, classes) by argmax."""
    y = np.asarray(y)
    if y.ndim > 2 or y.dtype.kind not in "biuf":
        raise InputDataError(f"class weights need numeric labels of shape (n,), (n, 1) or (n, classes), got {y.shape}")
    if y.ndim == 2:
        y = np.argmax(y, axis=-1) if y.shape[-1] != 1 else y[:, 0]
    return np.round(y).astype(np.int64)


def class_weight_to_sample_weight(y, class_weight):
    """Keras's class_weight_to_sample_weights: each row weighs class_weight[its class] (1.0 if absent);
    one-hot labels count by argmax."""
    if not isinstance(class_weight, dict) or not all(
            isinstance(k, (int, np.integer)) and isinstance(v, (int, float, np.number)) and np.isfinite(v)
            for k, v in class_weight.items()):
        raise InputDataError("class_weight must map class indices to finite weights, e.g. {0: 1.0, 1: 3.5}")
    classes, row_class = np.unique(row_classes(y), return_inverse=True)
    table = np.array([float(class_weight.get(int(c), 1.0)) for c in classes], np.float32)  # one entry per class
    return table[row_class]


def _rows(data, index):
    feed, y, _, weights = data
    return _slice(feed, index), y[index], None if weights is None else weights[index]


def evaluate(trainer, data, batch_size):
    """Loss and metrics over a dataset (feed, y, count, sample weights) in inference mode, batch-size weighted
    as Keras averages."""
    log = _EpochLog(trainer)
    for start in range(0, data[2], batch_size):
        batch, y, weights = _rows(data, np.arange(start, min(start + batch_size, data[2])))
        loss, output, mask = trainer.evaluate_batch(batch, y, weights)
        log.add(loss, y, output, mask, weights)
    return log.logs()


class EpochLines:
    """fit(verbose=1 or 2): Keras's verbose=2 line after each epoch, e.g.
    'Epoch 1/5' then '16/16 - 1s - 63ms/step - loss: 0.3251 - accuracy: 0.9102'."""

    def __init__(self, epochs):
        self.epochs, self.steps, self.start = epochs, 0, 0.0

    def on_epoch_begin(self, epoch, steps):
        """Note the step count and the time."""
        self.steps, self.start = steps, time.perf_counter()

    def on_epoch_end(self, epoch, logs):
        """Print the epoch's line (stdout, as Keras does)."""
        seconds = time.perf_counter() - self.start
        values = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
        print(f"Epoch {epoch + 1}/{self.epochs}\n{self.steps}/{self.steps} - {seconds:.0f}s - "
              f"{1000 * seconds / max(self.steps, 1):.0f}ms/step - {values}", flush=True)


def fit(trainer, data, epochs, batch_size, validation, shuffle, seed, early_stopping, callbacks):
    """Keras's fit loop over data = (feed, y, count, sample weights or None); `validation` likewise, or None."""
    history = History()
    rng = np.random.default_rng(seed)
    stopper = early_stopping
    if stopper is not None:
        stopper.on_train_begin()
    count = data[2]
    steps = math.ceil(count / batch_size)
    for epoch in range(epochs):
        for cb in callbacks:
            getattr(cb, "on_epoch_begin", lambda *a: None)(epoch, steps)
        order = rng.permutation(count) if shuffle else np.arange(count)
        log = _EpochLog(trainer)
        for step in range(steps):
            batch, y, weights = _rows(data, order[step * batch_size:(step + 1) * batch_size])
            loss, output, mask = trainer.train_step(batch, y, rng, weights)
            if not np.isfinite(loss):
                raise InputDataError(f"the loss became {loss} at epoch {epoch + 1}, step {step + 1}; "
                                     "lower the learning rate or check the data")
            log.add(loss, y, output, mask, weights)
            for cb in callbacks:
                getattr(cb, "on_batch_end", lambda *a: None)(step, log.logs())
        logs = log.logs()
        if validation is not None:
            logs.update({f"val_{k}": v for k, v in evaluate(trainer, validation, batch_size).items()})
        history.append(epoch, logs)
        for cb in callbacks:
            getattr(cb, "on_epoch_end", lambda *a: None)(epoch, logs)
        if stopper is not None and stopper.on_epoch_end(epoch, logs, trainer.model):
            break
    if stopper is not None:
        stopper.on_train_end(trainer.model)
    return history


def make_trainer(model, loss, optimizer, metric_names, from_logits, need_optimizer=True, weighted_metric_names=None):
    """Resolve loss, optimizer, metrics and weighted metrics from arguments or the graph's training record."""
    record = model.doc.get("training") or {}
    label_smoothing = 0.0
    if loss is None:
        loss = record.get("loss")
        config = record.get("loss_config") or {}
        from_logits = from_logits or bool(config.get("from_logits"))
        label_smoothing = _loss_options(loss, config)
    if loss is None:
        raise InputDataError("no loss given and the graph records none: pass loss='sparse_categorical_crossentropy' "
                             "(or another supported loss)")
    if metric_names is None:
        metric_names = [m for m in (record.get("metrics") or []) if m in metrics.SUPPORTED]
    elif isinstance(metric_names, str):
        metric_names = [metric_names]
    if weighted_metric_names is None:
        weighted_metric_names = [m for m in (record.get("weighted_metrics") or []) if m in metrics.WEIGHTED]
    elif isinstance(weighted_metric_names, str):
        weighted_metric_names = [weighted_metric_names]
    if optimizer is None:
        optimizer = record.get("optimizer")
    if optimizer is None and need_optimizer:
        raise InputDataError("no optimizer given and the graph records none: pass optimizer='adam' (or sgd, rmsprop, adamw)")
    if optimizer is not None and not isinstance(optimizer, optimizers.Optimizer):
        optimizer = optimizers.get(optimizer)
    return Trainer(model, loss, optimizer, metric_names, from_logits, label_smoothing, weighted_metric_names)


def _loss_options(loss, config):
    """The compiled loss's label_smoothing; options that would change training otherwise are refused by name."""
    refused = {"reduction": (None, "sum_over_batch_size", "auto"), "ignore_class": (None,), "axis": (None, -1)}
    for key, fine in refused.items():
        if config.get(key) not in fine:
            raise InputDataError(f"the graph's loss {loss} was compiled with {key}={config[key]!r}, which fit does not "
                                 "support; pass loss='<name>' to train with Keras's default options instead")
    smoothing = config.get("label_smoothing") or 0.0
    if not isinstance(smoothing, (int, float)) or not 0 <= smoothing <= 1:
        raise InputDataError(f"the graph's loss {loss} has label_smoothing={smoothing!r}; expected a number in [0, 1]")
    return float(smoothing)
