"""Keras's merge layers: add, subtract, multiply, average, maximum, minimum, concatenate.

Each takes a list of input arrays (xs) and combines them in input order, as Keras's _merge_function
does (((x0 + x1) + x2) ...); backward returns one input gradient per input (a list). Maximum and minimum
send a tie's gradient to the earlier input, as TensorFlow's Maximum / Minimum gradients do (x >= y, x <= y).
"""
import functools

import numpy as np


def add(xs, attrs, weights, mask=None):
    """((x0 + x1) + x2) + ..."""
    return functools.reduce(np.add, xs)


def subtract(xs, attrs, weights, mask=None):
    """x0 - x1."""
    return xs[0] - xs[1]


def multiply(xs, attrs, weights, mask=None):
    """((x0 * x1) * x2) * ..."""
    return functools.reduce(np.multiply, xs)


def average(xs, attrs, weights, mask=None):
    """The sum in input order over the number of inputs."""
    return add(xs, attrs, weights) / xs[0].dtype.type(len(xs))


def maximum(xs, attrs, weights, mask=None):
    """Pairwise maximum in input order."""
    return functools.reduce(np.maximum, xs)


def minimum(xs, attrs, weights, mask=None):
    """Pairwise minimum in input order."""
    return functools.reduce(np.minimum, xs)


def concatenate(xs, attrs, weights, mask=None):
    """The inputs joined along attrs['axis']."""
    return np.concatenate(xs, axis=attrs["axis"])


def merge_train(forward):
    """The training forward of a merge: its output, with the inputs kept."""
    def train(xs, attrs, weights, mask, ctx):
        return forward(xs, attrs, weights), {"xs": xs}
    train.__doc__ = forward.__doc__
    return train


def add_backward(dy, cache, attrs, weights):
    """dy to every input."""
    return [dy] * len(cache["xs"]), {}


def subtract_backward(dy, cache, attrs, weights):
    """dy, -dy."""
    return [dy, -dy], {}


def multiply_backward(dy, cache, attrs, weights):
    """dy times the product of the other inputs, for each input."""
    xs = cache["xs"]
    return [dy * functools.reduce(np.multiply, xs[:i] + xs[i + 1:]) for i in range(len(xs))], {}


def average_backward(dy, cache, attrs, weights):
    """dy / n to every input."""
    share = dy / dy.dtype.type(len(cache["xs"]))
    return [share] * len(cache["xs"]), {}


def _extreme_backward(dy, xs, keeps):
    """Gradients of a pairwise reduction: dy goes to the input whose value the running result holds at the end;
    at each step the running value stays where keeps(running, x) (TensorFlow: the first operand wins ties)."""
    owner, running = np.zeros(dy.shape, np.intp), xs[0]  # owner: index of the input the running value came from
    for i in range(1, len(xs)):
        kept = keeps(running, xs[i])
        owner = np.where(kept, owner, i)
        running = np.where(kept, running, xs[i])
    return [dy * (owner == i) for i in range(len(xs))], {}


def maximum_backward(dy, cache, attrs, weights):
    """dy to the input holding the maximum (the earlier one on ties)."""
    return _extreme_backward(dy, cache["xs"], np.greater_equal)


def minimum_backward(dy, cache, attrs, weights):
    """dy to the input holding the minimum (the earlier one on ties)."""
    return _extreme_backward(dy, cache["xs"], np.less_equal)


def concatenate_backward(dy, cache, attrs, weights):
    """dy split back along attrs['axis'] at the inputs' sizes."""
    sizes = np.cumsum([x.shape[attrs["axis"]] for x in cache["xs"]])[:-1]
    return np.split(dy, sizes, axis=attrs["axis"]), {}
