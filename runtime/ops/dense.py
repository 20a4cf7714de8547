"""Dense (fully connected) op and the elementwise ops that share its simplicity."""
import numpy as np

from . import activations


def dense(x, attrs, weights, mask=None):
    """y = activation(x @ kernel + bias) on the last axis; x (B, ..., in) -> (B, ..., units)."""
    y = x @ weights["kernel"]
    if attrs["use_bias"]:
        y = y + weights["bias"]
    return activations.apply(attrs["activation"], y)


def activation(x, attrs, weights, mask=None):
    """Elementwise activation by catalogue name."""
    return activations.apply(attrs["function"], x)


def relu(x, attrs, weights, mask=None):
    """Generalised ReLU with threshold, max_value and negative slope (Keras ReLU layer)."""
    threshold, slope, max_value = attrs["threshold"], attrs["negative_slope"], attrs["max_value"]
    y = np.where(x > threshold, x, np.float32(0)) if threshold != 0 else np.maximum(x, 0)
    if max_value is not None:
        y = np.minimum(y, np.float32(max_value))
    if slope != 0:
        y = y - np.float32(slope) * np.maximum(np.float32(threshold) - x, 0)
    return y.astype(np.float32, copy=False)


def leaky_relu(x, attrs, weights, mask=None):
    """x if x > 0 else negative_slope * x."""
    return np.where(x > 0, x, x * np.float32(attrs["negative_slope"]))


def softmax(x, attrs, weights, mask=None):
    """Softmax over one non-batch axis."""
    return activations.softmax(x, axis=attrs["axis"]).astype(np.float32, copy=False)


def rescaling(x, attrs, weights, mask=None):
    """x * scale + offset (lists broadcast over the last axis)."""
    scale = np.asarray(attrs["scale"], dtype=np.float32)
    offset = np.asarray(attrs["offset"], dtype=np.float32)
    return (x * scale + offset).astype(np.float32, copy=False)


def dropout(x, attrs, weights, mask=None):
    """Identity at inference time."""
    return x


def flatten(x, attrs, weights, mask=None):
    """Row-major reshape to (B, n)."""
    return x.reshape(x.shape[0], -1)


def not_equal(x, attrs, weights, mask=None):
    """Elementwise x != value, as bool (the padding mask of token ids)."""
    return x != attrs["value"]
