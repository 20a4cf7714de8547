"""Metrics: accuracy as Keras chooses it for the loss, and macro-F1 (computed here, no scikit-learn)."""
import numpy as np

from kconvert.schema import InputDataError

SUPPORTED = ("accuracy", "macro_f1")


def predicted_and_true(loss, y_true, output):
    """Class predictions and true classes for classification losses."""
    if loss == "binary_crossentropy":
        return (output > 0.5).astype(np.int64).ravel(), np.asarray(y_true).astype(np.int64).ravel()
    pred = np.argmax(output, axis=-1)
    y = np.asarray(y_true)
    if loss == "categorical_crossentropy":
        y = np.argmax(y, axis=-1)
    elif y.ndim == output.ndim:
        y = y[..., 0]
    return pred.ravel(), y.astype(np.int64).ravel()


def accuracy_counts(loss, y_true, output):
    """(correct, total) the way Keras's 'accuracy' counts for this loss."""
    if loss == "mean_squared_error":
        equal = np.asarray(y_true, dtype=output.dtype) == output
        return int(equal.sum()), equal.size
    pred, y = predicted_and_true(loss, y_true, output)
    return int((pred == y).sum()), y.size


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


def check(names, loss):
    """Validate metric names for a loss."""
    for name in names:
        if name not in SUPPORTED:
            raise InputDataError(f"unsupported metric {name!r}; supported: {', '.join(SUPPORTED)}")
        if name == "macro_f1" and loss == "mean_squared_error":
            raise InputDataError("macro_f1 needs a classification loss")
