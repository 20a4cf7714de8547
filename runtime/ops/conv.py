"""conv2d and the 2-D pools, sharing one windowing helper (shifted-window accumulation).

Each kernel tap (p, q) contributes a strided slice of the padded input, so memory stays at the
size of the output and there is no Python loop over pixels or samples — only over the kh*kw taps.
"""
import numpy as np

from kconvert.schema.shapes import same_padding, window_output_size

from . import activations


def _pad_amounts(h, w, kernel, strides, dilation, padding):
    if padding != "same":
        return (0, 0), (0, 0)
    return same_padding(h, kernel[0], strides[0], dilation[0]), same_padding(w, kernel[1], strides[1], dilation[1])


def window_taps(x, kernel, strides, dilation, padding, pad_value=0.0):
    """Yield (p, q, view) for each kernel tap; view is (B, out_h, out_w, C), a strided slice of padded x."""
    _, h, w, _ = x.shape
    (top, bottom), (left, right) = _pad_amounts(h, w, kernel, strides, dilation, padding)
    if top or bottom or left or right:
        x = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=pad_value)
    out_h = window_output_size(h, kernel[0], strides[0], dilation[0], padding)
    out_w = window_output_size(w, kernel[1], strides[1], dilation[1], padding)
    sh, sw = strides
    dh, dw = dilation
    for p in range(kernel[0]):
        for q in range(kernel[1]):
            r0, c0 = p * dh, q * dw
            yield p, q, x[:, r0:r0 + (out_h - 1) * sh + 1:sh, c0:c0 + (out_w - 1) * sw + 1:sw, :]


def conv2d(x, attrs, weights, mask=None):
    """NHWC cross-correlation: x (B, H, W, Cin), kernel (kh, kw, Cin, F) -> (B, Ho, Wo, F)."""
    kernel = weights["kernel"]
    y = None
    for p, q, view in window_taps(x, attrs["kernel_size"], attrs["strides"], attrs["dilation_rate"], attrs["padding"]):
        contrib = view @ kernel[p, q]  # (B, Ho, Wo, Cin) @ (Cin, F)
        y = contrib if y is None else y + contrib
    if attrs["use_bias"]:
        y = y + weights["bias"]
    return activations.apply(attrs["activation"], y)


def max_pool2d(x, attrs, weights, mask=None):
    """Max over windows; padded cells are -inf so they never win."""
    y = None
    for _, _, view in window_taps(x, attrs["pool_size"], attrs["strides"], (1, 1), attrs["padding"], -np.inf):
        y = view.copy() if y is None else np.maximum(y, view)
    return y


def avg_pool2d(x, attrs, weights, mask=None):
    """Mean over windows, dividing by the number of real (unpadded) cells as TensorFlow does."""
    y = None
    for _, _, view in window_taps(x, attrs["pool_size"], attrs["strides"], (1, 1), attrs["padding"]):
        y = view.astype(np.float32, copy=True) if y is None else y + view
    if attrs["padding"] == "same":
        ones = np.ones((1,) + x.shape[1:3] + (1,), dtype=np.float32)
        count = sum(v for _, _, v in window_taps(ones, attrs["pool_size"], attrs["strides"], (1, 1), "same"))
        return y / count
    return y / np.float32(attrs["pool_size"][0] * attrs["pool_size"][1])


def global_avg_pool2d(x, attrs, weights, mask=None):
    """Mean over H and W."""
    return np.mean(x, axis=(1, 2), keepdims=attrs["keepdims"], dtype=np.float32)


def global_max_pool2d(x, attrs, weights, mask=None):
    """Max over H and W."""
    return np.max(x, axis=(1, 2), keepdims=attrs["keepdims"])
