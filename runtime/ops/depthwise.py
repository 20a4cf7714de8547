"""depthwise_conv2d (Keras DepthwiseConv2D): each input channel correlated with its own depth_multiplier kernels.

Output channel c * m + j is input channel c correlated with kernel[:, :, c, j] (TensorFlow's channel order).
There is no sum over channels to hand to a GEMM, so the kh*kw taps run as one broadcast multiply-add each over a
strided view of the padded input (a Python loop over taps only); the backward goes through the same views.
"""
import numpy as np

from . import activations
from .conv import _geometry, crop_spatial, pad_spatial, tap_slices


def _taps(shape, attrs):
    """(pads, out, [(p, q, index)]) of a depthwise conv on an input of `shape`."""
    pads, out = _geometry(shape, attrs["kernel_size"], attrs["strides"], attrs["dilation_rate"], attrs["padding"])
    return pads, out, list(tap_slices(attrs["kernel_size"], attrs["strides"], attrs["dilation_rate"], out))


def _linear(x, attrs, weights):
    """z = depthwise(x) + bias: (B, Ho, Wo, C * m)."""
    kernel = weights["kernel"]
    channels, multiplier = kernel.shape[2:]
    pads, out, taps = _taps(x.shape, attrs)
    xp = pad_spatial(x, pads)
    z = np.zeros((len(x),) + out + (channels, multiplier), np.result_type(x, kernel))
    for p, q, index in taps:
        z += xp[index][..., None] * kernel[p, q]  # (B, Ho, Wo, C, 1) * (C, m)
    z = z.reshape(z.shape[:3] + (channels * multiplier,))
    if attrs["use_bias"]:
        z += weights["bias"]
    return z


def depthwise_conv2d(x, attrs, weights, mask=None):
    """NHWC depthwise correlation: x (B, H, W, C), kernel (kh, kw, C, m) -> (B, Ho, Wo, C * m), then the activation."""
    return activations.apply(attrs["activation"], _linear(x, attrs, weights))


def depthwise_conv2d_train(x, attrs, weights, mask, ctx):
    """depthwise_conv2d forward keeping x, the pre-activation z and y."""
    z = _linear(x, attrs, weights)
    y = activations.apply(attrs["activation"], z)
    return y, {"x": x, "z": z, "y": y}


def depthwise_conv2d_backward(dy, cache, attrs, weights, skip_activation=False, need_dx=True):
    """dx (None unless need_dx), dkernel, dbias of depthwise_conv2d, tap by tap."""
    x, kernel = cache["x"], weights["kernel"]
    dz = dy if skip_activation else activations.backward(attrs["activation"], cache["z"], cache["y"], dy)
    channels, multiplier = kernel.shape[2:]
    dz5 = dz.reshape(dz.shape[:3] + (channels, multiplier))
    pads, _, taps = _taps(x.shape, attrs)
    xp = pad_spatial(x, pads)
    dkernel = np.empty_like(kernel)
    dxp = np.zeros(xp.shape, np.result_type(dz, kernel)) if need_dx else None
    for p, q, index in taps:
        dkernel[p, q] = np.einsum("bhwc,bhwcm->cm", xp[index], dz5)
        if need_dx:
            dxp[index] += (dz5 * kernel[p, q]).sum(axis=-1)  # over the multiplier: (B, Ho, Wo, C)
    grads = {"kernel": dkernel}
    if attrs["use_bias"]:
        grads["bias"] = dz.sum(axis=(0, 1, 2))
    return (crop_spatial(dxp, pads) if need_dx else None), grads
