"""Ops that move values without computing new ones: reshape, permute, zero_padding2d, cropping2d,
up_sampling2d (nearest). Each backward moves the gradient back the same way (up-sampling sums it over
the copies of a cell)."""
import numpy as np

from .conv import crop_spatial, pad_spatial


def reshape(x, attrs, weights, mask=None):
    """Row-major reshape of each sample: (B, ...) -> (B, *target_shape), a -1 taking the size that is left
    (worked out from one sample's size, so a batch of 0 rows reshapes too)."""
    target = list(attrs["target_shape"])
    if -1 in target:
        known = int(np.prod([s for s in target if s != -1]))
        target[target.index(-1)] = int(np.prod(x.shape[1:])) // max(known, 1)
    return x.reshape((len(x), *target))


def reshape_backward(dy, cache, attrs, weights):
    """The gradient in the input's shape."""
    return dy.reshape(cache["x"].shape), {}


def permute(x, attrs, weights, mask=None):
    """Transpose the non-batch axes: output axis i + 1 is input axis dims[i]."""
    return np.ascontiguousarray(np.transpose(x, (0, *attrs["dims"])))


def permute_backward(dy, cache, attrs, weights):
    """The inverse transpose."""
    return np.ascontiguousarray(np.transpose(dy, np.argsort((0, *attrs["dims"])))), {}


def zero_padding2d(x, attrs, weights, mask=None):
    """Zeros around height and width of (B, H, W, C)."""
    return pad_spatial(x, attrs["padding"])


def zero_padding2d_backward(dy, cache, attrs, weights):
    """The gradient of the unpadded cells."""
    return crop_spatial(dy, attrs["padding"]), {}


def cropping2d(x, attrs, weights, mask=None):
    """(B, H, W, C) with rows and columns cut off each side."""
    return crop_spatial(x, attrs["cropping"])


def cropping2d_backward(dy, cache, attrs, weights):
    """The gradient placed back in the input's shape, zeros where cells were cut off."""
    return pad_spatial(dy, attrs["cropping"]), {}


def up_sampling2d(x, attrs, weights, mask=None):
    """Nearest up-sampling: each row repeated size[0] times, each column size[1] times."""
    sh, sw = attrs["size"]
    return np.repeat(np.repeat(x, sh, axis=1), sw, axis=2)


def up_sampling2d_backward(dy, cache, attrs, weights):
    """Each cell's gradient: the sum over its size[0] x size[1] copies."""
    sh, sw = attrs["size"]
    b, h, w, c = cache["x"].shape
    return dy.reshape(b, h, sh, w, sw, c).sum(axis=(2, 4)), {}
