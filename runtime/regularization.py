"""The graph's training records as Keras 3's fit applies them: frozen weights, regularizers, constraints.

Keras adds l1 * sum(|w|) + l2 * sum(w^2) per regularized trainable weight and, per regularized layer
output y, (l1 * sum(|y|) + l2 * sum(y^2)) / batch size to the loss it reports and differentiates
(keras/src/layers/layer.py, trainers/trainer.py); after every optimizer step it projects each
constrained trainable weight (optimizers/base_optimizer.py). Gradients follow TensorFlow's order of
float32 operations: Abs's gradient is sign(x) * upstream, Square's is upstream * (x * 2).
"""
import numpy as np

from kconvert.schema import InputDataError
from kconvert.schema.catalogue import state_weights

from .ops.embedding import IndexedRows

_F = np.float32
_EPSILON = _F(1e-7)  # keras.config.epsilon()
_ONE = _F(1)


def frozen_weights(node):
    """Names of the node's weights that fit must not update."""
    return set((node.get("training") or {}).get("non_trainable", ()))


def runs_frozen(node):
    """Whether the node has state (batch_norm's moving statistics) that its training record freezes: it then
    runs in inference mode in training too, as Keras runs a BatchNormalization with trainable = False."""
    state = state_weights(node["op"])
    return bool(state) and state <= frozen_weights(node)


def penalty(x, l1, l2, upstream=_ONE):
    """(l1 * sum|x| + l2 * sum x^2, its gradient times `upstream`) in x's dtype, in the order of Keras's L1L2."""
    loss, grad = x.dtype.type(0), None
    if l1:
        loss = loss + _F(l1) * np.abs(x).sum()
        grad = np.sign(x) * (upstream * _F(l1))
    if l2:
        loss = loss + _F(l2) * (x * x).sum()
        g2 = (upstream * _F(l2)) * (x * 2)
        grad = g2 if grad is None else grad + g2
    return loss, grad


def _norms(w, axis):
    return np.sqrt(np.sum(w * w, axis=tuple(axis), keepdims=True, dtype=_F))


def _project(w, spec):
    """Keras's constraint `spec['kind']` applied to w (float32, as keras/src/constraints computes it)."""
    kind = spec["kind"]
    if kind == "non_neg":
        return np.maximum(w, _F(0))
    norms = _norms(w, spec["axis"])
    if kind == "unit_norm":
        return w / (_EPSILON + norms)
    if kind == "max_norm":
        desired = np.clip(norms, _F(0), _F(spec["max_value"]))
    else:  # min_max_norm
        rate = spec["rate"]
        desired = _F(rate) * np.clip(norms, _F(spec["min_value"]), _F(spec["max_value"])) + _F(1 - rate) * norms
    return w * (desired / (_EPSILON + norms))


class Penalties:
    """One model's frozen weights, regularizers and constraints, read from its nodes' training records."""

    def __init__(self, doc):
        self.weight_regs, self.activity, self.constraints = {}, {}, {}
        for node in doc["nodes"]:
            name, record = node["name"], node.get("training") or {}
            if record.get("unsupported"):
                raise InputDataError(
                    f"node {name!r} was saved with {'; '.join(record['unsupported'])}, which fit cannot reproduce; "
                    "remove it from the Keras model and convert again to train this graph (inference is unaffected)")
            frozen = frozen_weights(node)
            for weight, reg in record.get("regularizers", {}).items():
                if weight not in frozen and (reg["l1"] or reg["l2"]):  # an all-zero one adds nothing
                    self.weight_regs[(name, weight)] = (reg["l1"], reg["l2"])
            for weight, spec in record.get("constraints", {}).items():
                if weight not in frozen:
                    self.constraints[(name, weight)] = spec
            activity = record.get("activity_regularizer", {"l1": 0, "l2": 0})
            if activity["l1"] or activity["l2"]:
                self.activity[name] = (activity["l1"], activity["l2"])

    def weight_terms(self, params):
        """(sum of the weight regularizers' losses, {(node, weight): gradient})."""
        total, grads = _F(0), {}
        for key, (l1, l2) in self.weight_regs.items():
            loss, grads[key] = penalty(params[key], l1, l2)
            total = _F(total + loss)
        return total, grads

    def activity_terms(self, values):
        """(sum of the activity regularizers' losses, {tensor: gradient}) for one batch's node outputs."""
        total, grads = _F(0), {}
        for name, (l1, l2) in self.activity.items():
            y = values[name]
            batch = _F(len(y))
            loss, grad = penalty(y, l1, l2, upstream=_F(1) / batch if batch else _F(0))
            total = _F(total + (loss / batch if batch else _F(0)))  # Keras: divide_no_nan(loss, batch size)
            grads[name] = grad
        return total, grads

    def add_weight_gradients(self, grads, reg_grads):
        """Data gradients plus regularizer gradients (an Embedding's IndexedRows become dense, as in TF)."""
        for key, g in reg_grads.items():
            data = grads[key]
            grads[key] = (data.dense() if isinstance(data, IndexedRows) else data) + g
        return grads

    def constrain(self, params):
        """Project every constrained trainable weight in place, after an optimizer step."""
        for key, spec in self.constraints.items():
            params[key][...] = _project(params[key], spec)
