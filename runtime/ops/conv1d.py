"""conv1d and the 1-D pools over (batch, steps, channels): the 2-D ops of conv.py on a height-1 image.

Shapes: x (B, T, C) is viewed as (B, 1, T, C) and a kernel (k, Cin, F) as (1, k, Cin, F); causal padding
is (k - 1) * dilation zeros before the first step, then a valid conv. The masked global average leaves
padding out of the mean, as Keras's GlobalAveragePooling1D does.
"""
import numpy as np

from . import conv


def _conv_attrs(attrs):
    """conv2d attrs of a conv1d (causal becomes valid on the left-padded input)."""
    padding = "valid" if attrs["padding"] == "causal" else attrs["padding"]
    return dict(attrs, kernel_size=[1, attrs["kernel_size"]], strides=[1, attrs["strides"]],
                dilation_rate=[1, attrs["dilation_rate"]], padding=padding)


def _causal_steps(attrs):
    """Zeros a causal conv1d puts before the first step (0 for other paddings)."""
    return (attrs["kernel_size"] - 1) * attrs["dilation_rate"] if attrs["padding"] == "causal" else 0


def _image(x, attrs):
    """(B, 1, T + causal padding, C) view or copy of x (B, T, C)."""
    left = _causal_steps(attrs)
    if left:
        x = np.pad(x, ((0, 0), (left, 0), (0, 0)))
    return x[:, None]


def _conv_weights(weights):
    return {k: (v[None] if k == "kernel" else v) for k, v in weights.items()}


def conv1d(x, attrs, weights, mask=None):
    """x (B, T, Cin), kernel (k, Cin, F) -> (B, T', F)."""
    return conv.conv2d(_image(x, attrs), _conv_attrs(attrs), _conv_weights(weights))[:, 0]


def conv1d_train(x, attrs, weights, mask, ctx):
    """conv1d forward keeping conv2d's cache, and z and y in conv1d's shape (a loss may read them)."""
    y, cache = conv.conv2d_train(_image(x, attrs), _conv_attrs(attrs), _conv_weights(weights), None, ctx)
    return y[:, 0], {"conv": cache, "z": cache["z"][:, 0], "y": y[:, 0]}


def conv1d_backward(dy, cache, attrs, weights, skip_activation=False, need_dx=True):
    """dx (None unless need_dx), dkernel, dbias of conv1d."""
    dx, grads = conv.conv2d_backward(dy[:, None], cache["conv"], _conv_attrs(attrs), _conv_weights(weights),
                                     skip_activation=skip_activation, need_dx=need_dx)
    grads["kernel"] = grads["kernel"][0]
    if dx is not None:
        dx = dx[:, 0, _causal_steps(attrs):]
    return dx, grads


def _pool_attrs(attrs):
    return {"pool_size": [1, attrs["pool_size"]], "strides": [1, attrs["strides"]], "padding": attrs["padding"]}


def max_pool1d(x, attrs, weights, mask=None):
    """Max over windows along steps."""
    return conv.max_pool2d(x[:, None], _pool_attrs(attrs), weights)[:, 0]


def max_pool1d_backward(dy, cache, attrs, weights):
    """Route each output's gradient to the first step holding its window's maximum."""
    cache2 = {"x": cache["x"][:, None], "y": cache["y"][:, None]}
    return conv.max_pool2d_backward(dy[:, None], cache2, _pool_attrs(attrs), weights)[0][:, 0], {}


def avg_pool1d(x, attrs, weights, mask=None):
    """Mean over windows along steps (real steps only at padded edges)."""
    return conv.avg_pool2d(x[:, None], _pool_attrs(attrs), weights)[:, 0]


def avg_pool1d_backward(dy, cache, attrs, weights):
    """Spread each output's gradient evenly over its window's real steps."""
    return conv.avg_pool2d_backward(dy[:, None], {"x": cache["x"][:, None]}, _pool_attrs(attrs), weights)[0][:, 0], {}


def _pooled_1d(y, attrs):
    """A 2-D global pool's output on the height-1 image in 1-D shape: (B, 1, 1, C) -> (B, 1, C) with keepdims."""
    return y[:, 0] if attrs["keepdims"] else y


def _pooled_2d(dy, attrs):
    """A 1-D global pool's output gradient in the 2-D pool's shape: (B, 1, C) -> (B, 1, 1, C) with keepdims."""
    return dy[:, None] if attrs["keepdims"] else dy


def global_avg_pool1d(x, attrs, weights, mask=None):
    """Mean over steps; under a mask, sum over real steps / their count (NaN for a row without any, as Keras)."""
    if mask is None:
        return _pooled_1d(conv.global_avg_pool2d(x[:, None], attrs, weights), attrs)
    real = mask[..., None]  # (B, T, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.where(real, x, 0).sum(axis=1, keepdims=attrs["keepdims"])
                / real.sum(axis=1, keepdims=attrs["keepdims"], dtype=x.dtype))


def global_avg_pool1d_train(x, attrs, weights, mask, ctx):
    """global_avg_pool1d forward keeping x and the mask."""
    return global_avg_pool1d(x, attrs, weights, mask), {"x": x, "mask": mask}


def global_avg_pool1d_backward(dy, cache, attrs, weights):
    """dy / count to every (real) step."""
    x, mask = cache["x"], cache["mask"]
    if mask is None:
        return conv.global_avg_pool2d_backward(_pooled_2d(dy, attrs), {"x": x[:, None]}, attrs, weights)[0][:, 0], {}
    dy = dy if attrs["keepdims"] else dy[:, None, :]  # (B, 1, C)
    real = mask[..., None].astype(x.dtype)  # (B, T, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return real * (dy / real.sum(axis=1, keepdims=True)), {}


def global_max_pool1d(x, attrs, weights, mask=None):
    """Max over steps."""
    return _pooled_1d(conv.global_max_pool2d(x[:, None], attrs, weights), attrs)


def global_max_pool1d_backward(dy, cache, attrs, weights):
    """Split the gradient evenly among the steps equal to the maximum (TensorFlow's reduce_max gradient)."""
    dx, _ = conv.global_max_pool2d_backward(_pooled_2d(dy, attrs), {"x": cache["x"][:, None]}, attrs, weights)
    return dx[:, 0], {}
