"""Dense and the elementwise / reshaping ops: inference forward, training forward (with cache), backward.

Training API shared by every op module: `<op>_train(x, attrs, weights, mask, ctx) -> (y, cache)` and
`<op>_backward(dy, cache, attrs, weights) -> (dx, {weight name: gradient})`; ops that end in an
activation also take `skip_activation=True`, so a loss computed from logits can start below it.
"""
import numpy as np

from . import activations


def dense(x, attrs, weights, mask=None):
    """y = activation(x @ kernel + bias) on the last axis; x (B, ..., in) -> (B, ..., units)."""
    return dense_train(x, attrs, weights, mask, None)[0]


def dense_train(x, attrs, weights, mask, ctx):
    """Dense forward keeping x, the pre-activation z and y."""
    z = x @ weights["kernel"]
    if attrs["use_bias"]:
        z = z + weights["bias"]
    y = activations.apply(attrs["activation"], z)
    return y, {"x": x, "z": z, "y": y}


def dense_backward(dy, cache, attrs, weights, skip_activation=False, need_dx=True):
    """dx (None unless need_dx), dkernel, dbias of dense."""
    dz = dy if skip_activation else activations.backward(attrs["activation"], cache["z"], cache["y"], dy)
    x2 = cache["x"].reshape(-1, cache["x"].shape[-1])  # (B*..., in)
    dz2 = dz.reshape(-1, dz.shape[-1])                  # (B*..., units)
    grads = {"kernel": x2.T @ dz2}
    if attrs["use_bias"]:
        grads["bias"] = dz2.sum(axis=0)
    return (dz @ weights["kernel"].T if need_dx else None), grads


def activation(x, attrs, weights, mask=None):
    """Elementwise activation by catalogue name."""
    return activations.apply(attrs["function"], x)


def activation_train(x, attrs, weights, mask, ctx):
    """Activation forward keeping z = x and y."""
    y = activation(x, attrs, weights)
    return y, {"z": x, "y": y}


def activation_backward(dy, cache, attrs, weights, skip_activation=False):
    """Gradient through the activation function."""
    if skip_activation:
        return dy, {}
    return activations.backward(attrs["function"], cache["z"], cache["y"], dy), {}


def relu(x, attrs, weights, mask=None):
    """Generalised ReLU with threshold, max_value and negative slope (Keras ReLU layer)."""
    threshold, slope, max_value = attrs["threshold"], attrs["negative_slope"], attrs["max_value"]
    y = np.where(x > threshold, x, 0) if threshold != 0 else np.maximum(x, 0)
    if max_value is not None:
        y = np.minimum(y, max_value)
    if slope != 0:
        y = y - slope * np.maximum(threshold - x, 0)
    return y.astype(x.dtype, copy=False)


def relu_backward(dy, cache, attrs, weights):
    """Gradient of the generalised ReLU (derivative 0 at the kinks, as TensorFlow takes it)."""
    x = cache["x"]
    threshold, slope, max_value = attrs["threshold"], attrs["negative_slope"], attrs["max_value"]
    passing = x > threshold if threshold != 0 else x > 0
    if max_value is not None:
        passing &= x < max_value
    grad = passing.astype(x.dtype)
    if slope != 0:
        grad = grad + slope * (x < threshold)
    return dy * grad, {}


def leaky_relu(x, attrs, weights, mask=None):
    """x if x > 0 else negative_slope * x."""
    return np.where(x > 0, x, x * x.dtype.type(attrs["negative_slope"]))


def leaky_relu_backward(dy, cache, attrs, weights):
    """Gradient of leaky_relu."""
    return dy * np.where(cache["x"] > 0, 1, attrs["negative_slope"]).astype(dy.dtype), {}


def softmax(x, attrs, weights, mask=None):
    """Softmax over one non-batch axis."""
    return activations.softmax(x, axis=attrs["axis"]).astype(x.dtype, copy=False)


def softmax_train(x, attrs, weights, mask, ctx):
    """Softmax forward keeping y (and x, the logits)."""
    y = softmax(x, attrs, weights)
    return y, {"x": x, "z": x, "y": y}


def softmax_backward(dy, cache, attrs, weights, skip_activation=False):
    """Softmax Jacobian-vector product on its axis."""
    if skip_activation:
        return dy, {}
    y = cache["y"]
    return y * (dy - np.sum(dy * y, axis=attrs["axis"], keepdims=True)), {}


def rescaling(x, attrs, weights, mask=None):
    """x * scale + offset (lists broadcast over the last axis)."""
    scale = np.asarray(attrs["scale"], dtype=x.dtype)
    return (x * scale + np.asarray(attrs["offset"], dtype=x.dtype)).astype(x.dtype, copy=False)


def rescaling_backward(dy, cache, attrs, weights):
    """dx = dy * scale."""
    return dy * np.asarray(attrs["scale"], dtype=dy.dtype), {}


def dropout(x, attrs, weights, mask=None):
    """Identity at inference time."""
    return x


def dropout_train(x, attrs, weights, mask, ctx):
    """Inverted dropout: keep with probability 1 - rate and scale by 1 / (1 - rate)."""
    rate = attrs["rate"]
    if not ctx.training or rate == 0:
        return x, {"keep": None}
    # TF's dropout scales by 1 / (1 - rate) computed in float64, then cast (one rounding, not two).
    keep = (ctx.rng.random(x.shape) >= rate).astype(x.dtype) * x.dtype.type(1.0 / (1.0 - rate))
    return x * keep, {"keep": keep}


def dropout_backward(dy, cache, attrs, weights):
    """Gradient through the same dropout mask."""
    return (dy if cache["keep"] is None else dy * cache["keep"]), {}


def flatten(x, attrs, weights, mask=None):
    """Row-major reshape to (B, n)."""
    return x.reshape(x.shape[0], int(np.prod(x.shape[1:])))  # not -1: that cannot be inferred for B = 0


def flatten_backward(dy, cache, attrs, weights):
    """Reshape the gradient back to the input shape."""
    return dy.reshape(cache["x"].shape), {}


def not_equal(x, attrs, weights, mask=None):
    """Elementwise x != value, as bool (the padding mask of token ids)."""
    return x != attrs["value"]


def no_gradient(dy, cache, attrs, weights):
    """Ops whose input is not differentiable (ids, masks, strings)."""
    return None, {}
