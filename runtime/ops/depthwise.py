"""depthwise_conv2d (Keras DepthwiseConv2D): each input channel correlated with its own depth_multiplier kernels;
separable_conv2d (Keras SeparableConv2D): that, then a 1x1 conv mixing the channels.

Output channel c * m + j is input channel c correlated with kernel[:, :, c, j] (TensorFlow's channel order).
There is no sum over channels to hand to a GEMM, so the kh*kw taps run as one multiply and one add each over a
strided view of the padded input, block by block of samples (a Python loop over taps and multipliers only); the
backward goes through the same views and blocks, the kernel gradient's sums as one GEMV per tap.
"""
import numpy as np

from . import activations
from .conv import _geometry, crop_spatial, pad_spatial, tap_slices


def _taps(shape, attrs):
    """(pads, out, [(p, q, index)]) of a depthwise conv on an input of `shape`."""
    pads, out = _geometry(shape, attrs["kernel_size"], attrs["strides"], attrs["dilation_rate"], attrs["padding"])
    return pads, out, list(tap_slices(attrs["kernel_size"], attrs["strides"], attrs["dilation_rate"], out))


# Bytes of one block's output (at least one sample): each tap's multiply and add then run on arrays in cache.
# 64 images of 56x56x64, one thread: 170 ms in whole-batch passes, 80 in blocks (0.125-2 MB alike), 54 with
# the tiled rows below; TensorFlow's call on two threads took 17-20 ms.
_BLOCK_BYTES = 1 << 20


def _tiled_kernel(kernel, out, rows):
    """kernel (kh, kw, C, m) as (kh, kw, m, Wo * C) tiled along whole output rows if `rows`, else (kh, kw, m, C)."""
    return np.ascontiguousarray(np.moveaxis(np.tile(kernel, (1, 1, out[1], 1)) if rows else kernel, 3, 2))


def _linear(x, attrs, weights):
    """z = depthwise(x) + bias: (B, Ho, Wo, C * m), block by block of samples."""
    kernel = weights["kernel"]
    channels, multiplier = kernel.shape[2:]
    pads, out, taps = _taps(x.shape, attrs)
    dtype = np.result_type(x, kernel)
    # Multiplier-major, so each pass runs along the channels: (m, B, Ho, Wo, C); the output interleaves them.
    z = np.empty((multiplier, len(x)) + out + (channels,), dtype)
    per = max(1, _BLOCK_BYTES // max(1, z[:, :1].nbytes))
    product = np.empty((min(per, len(x)),) + out + (channels,), dtype)
    # With unit column stride a tap's view has contiguous rows of Wo * C values: multiplied by the kernel's channel
    # values tiled Wo times, each pass runs along whole rows (4.4 -> 10 G values/s) instead of C at a time.
    rows = attrs["strides"][1] == 1
    shape = (out[0], out[1] * channels) if rows else out + (channels,)
    scale = _tiled_kernel(kernel, out, rows)  # (kh, kw, m, Wo * C) or (kh, kw, m, C)
    for start in range(0, len(x), per):
        xp = pad_spatial(x[start:start + per], pads)
        n = len(xp)
        for j in range(multiplier):
            zb, tb = z[j, start:start + n].reshape((n,) + shape), product[:n].reshape((n,) + shape)
            for i, (p, q, index) in enumerate(taps):
                np.multiply(xp[index].reshape((n,) + shape), scale[p, q, j], out=zb if i == 0 else tb)
                if i:
                    zb += tb
    z = z[0] if multiplier == 1 else np.moveaxis(z, 0, -1).reshape((len(x),) + out + (channels * multiplier,))
    if attrs["use_bias"]:
        activations.BiasRelu(weights["bias"], False, z.dtype)(z)  # z += bias, on vectorised chunks
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
    """dx (None unless need_dx), dkernel, dbias of depthwise_conv2d: tap by tap over blocks of samples, as forward."""
    x, kernel = cache["x"], weights["kernel"]
    dz = dy if skip_activation else activations.backward(attrs["activation"], cache["z"], cache["y"], dy)
    channels, multiplier = kernel.shape[2:]
    pads, out, taps = _taps(x.shape, attrs)
    dtype = np.result_type(x, dz, kernel)
    rows = attrs["strides"][1] == 1  # then a tap's view has whole rows of Wo * C values (see _linear)
    shape = (out[0], out[1] * channels) if rows else out + (channels,)
    scale = _tiled_kernel(kernel, out, rows)  # (kh, kw, m, width)
    # dz multiplier-major, (m, B, Ho, Wo, C), so each pass runs along the channels as in _linear
    dzm = dz[None] if multiplier == 1 else np.moveaxis(dz.reshape(dz.shape[:3] + (channels, multiplier)), -1, 0)
    per = max(1, _BLOCK_BYTES // max(1, int(np.prod(out)) * channels * np.dtype(dtype).itemsize))
    product = np.empty((min(per, len(x)),) + shape, dtype)
    ones = np.ones(len(product) * int(np.prod(shape[:-1])), dtype)  # sums over samples and rows as one GEMV
    sums = np.zeros((len(taps), multiplier, shape[-1]), dtype)     # per tap and multiplier, (Wo * C) or (C)
    dx = np.empty(x.shape, dtype) if need_dx else None
    for start in range(0, len(x), per):
        xp = pad_spatial(x[start:start + per], pads)
        n = len(xp)
        dxp = np.zeros(xp.shape, dtype) if need_dx else None
        tb = product[:n]
        flat = tb.reshape(-1, shape[-1])
        for j in range(multiplier):
            g = np.ascontiguousarray(dzm[j, start:start + n]).reshape((n,) + shape)
            for i, (p, q, index) in enumerate(taps):
                np.multiply(xp[index].reshape((n,) + shape), g, out=tb)
                sums[i, j] += ones[:len(flat)] @ flat
                if need_dx:
                    np.multiply(g, scale[p, q, j], out=tb)
                    dxp[index] += tb.reshape(dxp[index].shape)
        if need_dx:
            dx[start:start + n] = crop_spatial(dxp, pads)
    if rows:
        sums = sums.reshape(len(taps), multiplier, out[1], channels).sum(axis=2)
    # (taps, m, C) -> (kh, kw, C, m); taps run p-major, as the kernel's first two axes
    dkernel = np.moveaxis(sums, 1, 2).reshape(kernel.shape).astype(kernel.dtype, copy=False)
    grads = {"kernel": dkernel}
    if attrs["use_bias"]:
        grads["bias"] = dz.sum(axis=(0, 1, 2))
    return dx, grads


def _separable(x, attrs, weights):
    """(d, z): the depthwise part d (B, Ho, Wo, C * m) and z = d @ pointwise + bias (B, Ho, Wo, F)."""
    d = _linear(x, dict(attrs, use_bias=False), {"kernel": weights["depthwise_kernel"]})
    pointwise = weights["pointwise_kernel"]
    p2 = pointwise.reshape(pointwise.shape[2:])  # (C * m, F)
    z = (d.reshape(-1, p2.shape[0]) @ p2).reshape(d.shape[:3] + p2.shape[1:])  # one GEMM over every pixel
    if attrs["use_bias"]:
        activations.BiasRelu(weights["bias"], False, z.dtype)(z)  # z += bias, on vectorised chunks
    return d, z


def separable_conv2d(x, attrs, weights, mask=None):
    """Keras SeparableConv2D: depthwise_conv2d without bias, then a 1x1 conv (pointwise_kernel), bias, activation."""
    return activations.apply(attrs["activation"], _separable(x, attrs, weights)[1])


def separable_conv2d_train(x, attrs, weights, mask, ctx):
    """separable_conv2d forward keeping x, the depthwise output d, the pre-activation z and y."""
    d, z = _separable(x, attrs, weights)
    y = activations.apply(attrs["activation"], z)
    return y, {"x": x, "d": d, "z": z, "y": y}


def separable_conv2d_backward(dy, cache, attrs, weights, skip_activation=False, need_dx=True):
    """dx (None unless need_dx), d depthwise_kernel, d pointwise_kernel, dbias of separable_conv2d."""
    dz = dy if skip_activation else activations.backward(attrs["activation"], cache["z"], cache["y"], dy)
    pointwise = weights["pointwise_kernel"]
    p2 = pointwise.reshape(pointwise.shape[2:])  # (C * m, F)
    d = cache["d"]
    grads = {"pointwise_kernel": (d.reshape(-1, p2.shape[0]).T @ dz.reshape(-1, p2.shape[1])).reshape(pointwise.shape)}
    if attrs["use_bias"]:
        grads["bias"] = dz.sum(axis=(0, 1, 2))
    dd = (dz.reshape(-1, p2.shape[1]) @ p2.T).reshape(d.shape)  # the gradient reaching the depthwise output
    dx, depthwise_grads = depthwise_conv2d_backward(dd, {"x": cache["x"]}, dict(attrs, use_bias=False),
                                                    {"kernel": weights["depthwise_kernel"]}, skip_activation=True,
                                                    need_dx=need_dx)
    return dx, {"depthwise_kernel": depthwise_grads["kernel"], **grads}
