"""Metrics: accuracy as Keras 3 chooses it from the shapes, and macro-F1 (computed here, no scikit-learn)."""
import numpy as np

from kconvert.schema import InputDataError

SUPPORTED = ("accuracy", "macro_f1")


def _real(values, mask):
    """The entries of values (shape mask.shape + trailing) at real steps, flattened; all of them without a mask."""
    return values.ravel() if mask is None else values[mask].ravel()


def predicted_and_true(loss, y_true, output, mask=None):
    """Class predictions and true classes for classification losses (only real steps under a sequence mask)."""
    if loss == "binary_crossentropy":
        return _real(output > 0.5, mask).astype(np.int64), _real(np.asarray(y_true), mask).astype(np.int64)
    pred = np.argmax(output, axis=-1)
    y = np.asarray(y_true)
    if loss == "categorical_crossentropy":
        y = np.argmax(y, axis=-1)
    elif y.ndim == output.ndim:
        y = y[..., 0]
    return _real(pred, mask), _real(y, mask).astype(np.int64)


def accuracy_hits(y_true, output):
    """Per position (output.shape[:-1]), whether Keras 3's 'accuracy' counts a hit: binary, sparse or
    categorical accuracy chosen from the shapes (keras/src/trainers/compile_utils.py get_metric)."""
    y = np.asarray(y_true)
    if output.shape[-1] == 1:  # BinaryAccuracy(threshold=0.5): y_true compared exactly with 0 / 1
        return (output[..., 0] > 0.5).astype(y.dtype) == y.reshape(output.shape[:-1])
    if y.ndim < output.ndim or y.shape[-1] == 1:  # SparseCategoricalAccuracy
        return np.argmax(output, axis=-1) == y.reshape(output.shape[:-1])
    return np.argmax(y, axis=-1) == np.argmax(output, axis=-1)  # CategoricalAccuracy


def count_hits(hits, mask=None, weights=None):
    """(correct, total) of accuracy_hits, real steps only under a mask. Without weights it counts as Keras's
    compiled `metrics` do; with weights (one per row, or per position for a per-step output) it returns the
    weighted sums, as its `weighted_metrics` do."""
    if weights is not None:  # Keras: sum(w * hit) / sum(w), the mask zeroing padded positions' weights
        w = np.asarray(weights, np.float64)
        w = np.broadcast_to(w.reshape(w.shape + (1,) * (hits.ndim - w.ndim)), hits.shape)
        return float(np.sum(_real(hits * w, mask))), float(np.sum(_real(w, mask)))
    hits = _real(hits, mask)
    return int(hits.sum()), hits.size


def macro_f1(y_true, y_pred, classes=None):
    """Unweighted mean of per-class F1 over `classes` (default: every class seen in either array)."""
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if classes is None:
        classes = np.union1d(y_true, y_pred)
    scores = []
    for c in classes:
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


WEIGHTED = ("accuracy",)


def check(names, loss, weighted=()):
    """Validate metric names (and weighted metric names) for a loss."""
    for name in weighted:
        if name not in WEIGHTED:
            raise InputDataError(f"unsupported weighted metric {name!r}; supported: {', '.join(WEIGHTED)}")
    for name in names:
        if name not in SUPPORTED:
            raise InputDataError(f"unsupported metric {name!r}; supported: {', '.join(SUPPORTED)}")
        if name == "macro_f1" and loss == "mean_squared_error":
            raise InputDataError("macro_f1 needs a classification loss")
