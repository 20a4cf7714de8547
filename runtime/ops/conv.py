"""conv2d and the 2-D pools, sharing one windowing helper (shifted-window accumulation).

Each kernel tap (p, q) contributes a strided slice of the padded input, so memory stays at the
size of the output and there is no Python loop over pixels or samples — only over the kh*kw taps.
The backward passes scatter through the same slices.
"""
import numpy as np

from kconvert.schema.shapes import same_padding, window_output_size

from . import activations


def _geometry(shape, kernel, strides, dilation, padding):
    """Padding ((top, bottom), (left, right)) and output size (out_h, out_w) of a window op."""
    _, h, w, _ = shape
    if padding == "same":
        pads = (same_padding(h, kernel[0], strides[0], dilation[0]), same_padding(w, kernel[1], strides[1], dilation[1]))
    else:
        pads = ((0, 0), (0, 0))
    out = (window_output_size(h, kernel[0], strides[0], dilation[0], padding),
           window_output_size(w, kernel[1], strides[1], dilation[1], padding))
    return pads, out


def tap_slices(kernel, strides, dilation, out):
    """Yield (p, q, index) for each kernel tap; index selects its (B, out_h, out_w, C) slice of the padded input."""
    (sh, sw), (dh, dw) = strides, dilation
    for p in range(kernel[0]):
        for q in range(kernel[1]):
            r0, c0 = p * dh, q * dw
            yield p, q, (slice(None), slice(r0, r0 + (out[0] - 1) * sh + 1, sh), slice(c0, c0 + (out[1] - 1) * sw + 1, sw))


def _pad(x, pads, value=0.0):
    (top, bottom), (left, right) = pads
    if top or bottom or left or right:
        return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=value)
    return x


def _unpad(dx_padded, pads, shape):
    (top, _), (left, _) = pads
    return dx_padded[:, top:top + shape[1], left:left + shape[2], :]


def window_taps(x, kernel, strides, dilation, padding, pad_value=0.0):
    """Yield (p, q, view) for each kernel tap; view is (B, out_h, out_w, C), a strided slice of padded x."""
    pads, out = _geometry(x.shape, kernel, strides, dilation, padding)
    xp = _pad(x, pads, pad_value)
    for p, q, index in tap_slices(kernel, strides, dilation, out):
        yield p, q, xp[index]


def conv2d(x, attrs, weights, mask=None):
    """NHWC cross-correlation: x (B, H, W, Cin), kernel (kh, kw, Cin, F) -> (B, Ho, Wo, F)."""
    return conv2d_train(x, attrs, weights, mask, None)[0]


def conv2d_train(x, attrs, weights, mask, ctx):
    """conv2d forward keeping x, the pre-activation z and y."""
    kernel = weights["kernel"]
    z = None
    for p, q, view in window_taps(x, attrs["kernel_size"], attrs["strides"], attrs["dilation_rate"], attrs["padding"]):
        contrib = view @ kernel[p, q]  # (B, Ho, Wo, Cin) @ (Cin, F)
        z = contrib if z is None else z + contrib
    if attrs["use_bias"]:
        z = z + weights["bias"]
    y = activations.apply(attrs["activation"], z)
    return y, {"x": x, "z": z, "y": y}


def conv2d_backward(dy, cache, attrs, weights, skip_activation=False):
    """dx, dkernel, dbias of conv2d, scattering through the same tap slices."""
    x, kernel = cache["x"], weights["kernel"]
    dz = dy if skip_activation else activations.backward(attrs["activation"], cache["z"], cache["y"], dy)
    pads, out = _geometry(x.shape, attrs["kernel_size"], attrs["strides"], attrs["dilation_rate"], attrs["padding"])
    xp = _pad(x, pads)
    dxp = np.zeros_like(xp)
    dkernel = np.zeros_like(kernel)
    dz2 = dz.reshape(-1, dz.shape[-1])  # (B*Ho*Wo, F)
    for p, q, index in tap_slices(attrs["kernel_size"], attrs["strides"], attrs["dilation_rate"], out):
        view = xp[index]
        dkernel[p, q] = view.reshape(-1, view.shape[-1]).T @ dz2  # (Cin, F)
        dxp[index] += dz @ kernel[p, q].T
    grads = {"kernel": dkernel}
    if attrs["use_bias"]:
        grads["bias"] = dz2.sum(axis=0)
    return _unpad(dxp, pads, x.shape), grads


def max_pool2d(x, attrs, weights, mask=None):
    """Max over windows; padded cells are -inf so they never win."""
    y = None
    for _, _, view in window_taps(x, attrs["pool_size"], attrs["strides"], (1, 1), attrs["padding"], -np.inf):
        y = view.copy() if y is None else np.maximum(y, view)
    return y


def max_pool2d_backward(dy, cache, attrs, weights):
    """Route each output's gradient to the first cell (row-major) holding the window's maximum."""
    x, y = cache["x"], cache["y"]
    pads, out = _geometry(x.shape, attrs["pool_size"], attrs["strides"], (1, 1), attrs["padding"])
    xp = _pad(x, pads, -np.inf)
    dxp = np.zeros_like(xp)
    unclaimed = np.ones(y.shape, dtype=bool)
    for _, _, index in tap_slices(attrs["pool_size"], attrs["strides"], (1, 1), out):
        winner = unclaimed & (xp[index] == y)
        dxp[index] += np.where(winner, dy, 0)
        unclaimed &= ~winner
    return _unpad(dxp, pads, x.shape), {}


def _window_count(shape, attrs, dtype):
    """Number of real (unpadded) cells in each window, (1, Ho, Wo, 1)."""
    ones = np.ones((1,) + shape[1:3] + (1,), dtype=dtype)
    return sum(v for _, _, v in window_taps(ones, attrs["pool_size"], attrs["strides"], (1, 1), attrs["padding"]))


def avg_pool2d(x, attrs, weights, mask=None):
    """Mean over windows, dividing by the number of real (unpadded) cells as TensorFlow does."""
    y = None
    for _, _, view in window_taps(x, attrs["pool_size"], attrs["strides"], (1, 1), attrs["padding"]):
        y = view.astype(x.dtype, copy=True) if y is None else y + view
    return y / _window_count(x.shape, attrs, x.dtype)


def avg_pool2d_backward(dy, cache, attrs, weights):
    """Spread each output's gradient evenly over its window's real cells."""
    x = cache["x"]
    pads, out = _geometry(x.shape, attrs["pool_size"], attrs["strides"], (1, 1), attrs["padding"])
    share = dy / _window_count(x.shape, attrs, dy.dtype)
    dxp = np.zeros_like(_pad(x, pads))
    for _, _, index in tap_slices(attrs["pool_size"], attrs["strides"], (1, 1), out):
        dxp[index] += share
    return _unpad(dxp, pads, x.shape), {}


def global_avg_pool2d(x, attrs, weights, mask=None):
    """Mean over H and W."""
    return np.mean(x, axis=(1, 2), keepdims=attrs["keepdims"], dtype=x.dtype)


def global_avg_pool2d_backward(dy, cache, attrs, weights):
    """dy / (H * W) broadcast over the window."""
    x = cache["x"]
    dy = dy if attrs["keepdims"] else dy[:, None, None, :]
    return np.broadcast_to(dy / (x.shape[1] * x.shape[2]), x.shape).copy(), {}


def global_max_pool2d(x, attrs, weights, mask=None):
    """Max over H and W."""
    return np.max(x, axis=(1, 2), keepdims=attrs["keepdims"])


def global_max_pool2d_backward(dy, cache, attrs, weights):
    """Split the gradient evenly among the cells equal to the maximum (TensorFlow's reduce_max gradient)."""
    x = cache["x"]
    top = np.max(x, axis=(1, 2), keepdims=True)
    winners = (x == top).astype(x.dtype)
    dy = dy if attrs["keepdims"] else dy[:, None, None, :]
    return winners * dy / winners.sum(axis=(1, 2), keepdims=True), {}
