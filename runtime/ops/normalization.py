"""batch_norm: Keras's BatchNormalization, in inference and in training (batch statistics, moving averages);
layer_norm: Keras's LayerNormalization (per-sample statistics; the same in training and inference).

The normalization follows tf.nn.batch_normalization's order of float32 operations, which Keras 3 calls:
inv = rsqrt(variance + epsilon) * gamma, y = x * inv + (beta - mean * inv). In training the batch's mean
and biased variance (tf.nn.moments; under a sequence mask Keras 3's masked moments) take the moving
statistics' place, and the forward's cache carries the moving statistics' next values under "state",
which the trainer writes back after the step (ops stay stateless). A node whose moving statistics are
frozen (Keras: trainable = False) is run with ctx.training False by the model: Keras 3 and TF 2 run such
a layer in inference mode during fit. When fit splits a batch's rows over threads, ctx.row_total adds each
slice's partial sums up across the slices (runtime/row_split.py), forward and backward, so every slice
uses the whole batch's statistics; weight gradients stay each slice's own, which the split sums.
"""
import numpy as np

_MASK_EPSILON = 1e-7  # keras.config.epsilon(), added to the count of real steps in Keras 3's masked moments


def _layout(x, attrs):
    """(the features axis as a non-negative index, the reduction axes, the shape that broadcasts (features,))."""
    axis = attrs["axis"] % x.ndim
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    return axis, tuple(a for a in range(x.ndim) if a != axis), tuple(shape)


def _normalize(x, mean, variance, attrs, weights, shape):
    """(y, inv_std, inv): y = x * inv + (beta - mean * inv), inv = rsqrt(variance + epsilon) * gamma."""
    dtype = x.dtype.type
    inv_std = (dtype(1) / np.sqrt(variance + dtype(attrs["epsilon"]))).astype(x.dtype, copy=False)
    inv = inv_std * weights["gamma"] if attrs["scale"] else inv_std
    shift = -mean * inv
    if attrs["center"]:
        shift = weights["beta"] + shift
    return x * inv.reshape(shape) + shift.reshape(shape), inv_std, inv


def batch_norm(x, attrs, weights, mask=None):
    """Inference: normalize x along attrs['axis'] with the moving statistics; x (B, ...) -> same shape."""
    _, _, shape = _layout(x, attrs)
    return _normalize(x, weights["moving_mean"], weights["moving_variance"], attrs, weights, shape)[0]


def _whole(total, *partials):
    """The partial sums (each (F,)) over the whole batch: as they are, or added up across row slices."""
    if total is None:
        return partials
    return tuple(np.split(total(np.concatenate(partials)), len(partials)))


def _moments(x, mask, axis, axes, shape, total):
    """(mean, variance, weights m, denominator): the batch's moments over `axes`, the sums divided by the
    denominator (F,), the value count, or under a mask the real steps' count + 1e-7 (m: mask (B, T, 1))."""
    if mask is None:
        m = None
        count = np.full(x.shape[axis], x.size // max(x.shape[axis], 1), x.dtype)  # exact below 2**24
        sums, denominator = _whole(total, x.sum(axis=axes), count)
        mean = sums / denominator
        centred = x - mean.reshape(shape)
    else:
        m = mask[..., None].astype(x.dtype)  # (B, T, 1): broadcasts over the last axis of the (B, T, F) input
        sums, weights = _whole(total, (m * x).sum(axis=axes), np.broadcast_to(m, x.shape).sum(axis=axes))
        denominator = weights + x.dtype.type(_MASK_EPSILON)
        mean = sums / denominator
        centred = m * (x - mean.reshape(shape))
    return mean, _whole(total, (centred * centred).sum(axis=axes))[0] / denominator, m, denominator


def batch_norm_train(x, attrs, weights, mask, ctx):
    """Training forward: batch statistics and the moving statistics' next values (ctx.training), else inference."""
    axis, axes, shape = _layout(x, attrs)
    if not ctx.training:
        mean, variance = weights["moving_mean"], weights["moving_variance"]
        y, inv_std, inv = _normalize(x, mean, variance, attrs, weights, shape)
        return y, {"x": x, "mean": mean, "inv_std": inv_std, "inv": inv, "batch": False}
    total = getattr(ctx, "row_total", None)  # set when fit splits the batch's rows over threads
    mean, variance, m, denominator = _moments(x, mask, axis, axes, shape, total)
    y, inv_std, inv = _normalize(x, mean, variance, attrs, weights, shape)
    momentum = x.dtype.type(attrs["momentum"])
    rest = x.dtype.type(1.0 - attrs["momentum"])  # Keras: (1.0 - momentum) in double, then cast
    variance_update = variance
    if attrs["unbiased_moving_variance"]:  # tf-keras's FusedBatchNormV3 averages in Bessel's correction
        variance_update = variance * (denominator / np.maximum(denominator - 1, 1))
    state = {"moving_mean": weights["moving_mean"] * momentum + mean * rest,
             "moving_variance": weights["moving_variance"] * momentum + variance_update * rest}
    return y, {"x": x, "mean": mean, "inv_std": inv_std, "inv": inv, "batch": True, "m": m,
               "denominator": denominator, "state": state, "total": total}


def batch_norm_backward(dy, cache, attrs, weights):
    """dx, dgamma, dbeta of batch_norm; with batch statistics dx also flows through the mean and variance."""
    x, inv_std, inv = cache["x"], cache["inv_std"], cache["inv"]
    _, axes, shape = _layout(x, attrs)
    centred = x - cache["mean"].reshape(shape)
    dy_sum = dy.sum(axis=axes)                 # (F,), this slice's rows only when the batch is split
    dy_centred = (dy * centred).sum(axis=axes)  # (F,)
    grads = {}
    if attrs["scale"]:
        grads["gamma"] = dy_centred * inv_std
    if attrs["center"]:
        grads["beta"] = dy_sum
    dx = dy * inv.reshape(shape)
    if cache["batch"]:  # the statistics are the whole batch's, and so are the sums they take dy through
        dy_sum, dy_centred = _whole(cache["total"], dy_sum, dy_centred)
    # y = centred * inv + beta, inv = gamma * (variance + epsilon)^-1/2: d variance from inv, d mean direct.
    gamma = weights["gamma"] if attrs["scale"] else 1
    dvariance = dy_centred * gamma * (-0.5 * inv_std ** 3)  # (F,)
    dmean = -dy_sum * inv
    if not cache["batch"]:  # the moving statistics were used: their gradients (no optimizer applies them)
        return dx, {**grads, "moving_mean": dmean, "moving_variance": dvariance}
    grads.update(moving_mean=np.zeros_like(dmean), moving_variance=np.zeros_like(dvariance))
    m, denominator = cache["m"], cache["denominator"]
    if m is None:  # mean = sum(x) / n, variance = sum(centred^2) / n (tf.nn.moments stops the mean's gradient there)
        dx = dx + (dvariance * 2 / denominator).reshape(shape) * centred + (dmean / denominator).reshape(shape)
        return dx, grads
    masked_centred = _whole(cache["total"], (m * centred).sum(axis=axes))[0]
    dmean = dmean + dvariance * (-2 * masked_centred) / denominator  # Keras 3 keeps this path
    dx = dx + m * ((dvariance * 2 / denominator).reshape(shape) * centred + (dmean / denominator).reshape(shape))
    return dx, grads


def _layer_axes(x, attrs):
    """(the normalized axes, sorted and non-negative; the shape gamma and beta broadcast to)."""
    axes = tuple(sorted(a % x.ndim for a in attrs["axis"]))
    return axes, tuple(x.shape[a] if a in axes else 1 for a in range(x.ndim))


def _layer_norm(x, attrs, weights):
    """(y, x - mean, inv_std) of layer_norm; the statistics are (B, ..., 1, ...)."""
    axes, shape = _layer_axes(x, attrs)
    mean = x.mean(axis=axes, keepdims=True)
    centred = x - mean
    inv_std = x.dtype.type(1) / np.sqrt((centred * centred).mean(axis=axes, keepdims=True)
                                        + x.dtype.type(attrs["epsilon"]))
    inv = inv_std * weights["gamma"].reshape(shape) if attrs["scale"] else inv_std
    shift = -mean * inv
    if attrs["center"]:
        shift = shift + weights["beta"].reshape(shape)
    return x * inv + shift, centred, inv_std


def layer_norm(x, attrs, weights, mask=None):
    """Normalize each sample over attrs['axis'] (Keras 3's layer_normalization); x (B, ...) -> same shape."""
    return _layer_norm(x, attrs, weights)[0]


def layer_norm_train(x, attrs, weights, mask, ctx):
    """layer_norm forward keeping x's normalized values and the inverse standard deviations."""
    y, centred, inv_std = _layer_norm(x, attrs, weights)
    return y, {"normalized": centred * inv_std, "inv_std": inv_std}


def layer_norm_backward(dy, cache, attrs, weights):
    """dx, dgamma, dbeta of layer_norm: dx = inv_std * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma."""
    xhat, inv_std = cache["normalized"], cache["inv_std"]
    axes, shape = _layer_axes(xhat, attrs)
    rest = tuple(a for a in range(xhat.ndim) if a not in axes)  # batch and other axes: gamma's gradient sums them
    grads = {}
    if attrs["scale"]:
        grads["gamma"] = (dy * xhat).sum(axis=rest).reshape(weights["gamma"].shape)
    if attrs["center"]:
        grads["beta"] = dy.sum(axis=rest).reshape(weights["beta"].shape)
    g = dy * weights["gamma"].reshape(shape) if attrs["scale"] else dy
    dx = inv_std * (g - g.mean(axis=axes, keepdims=True) - xhat * (g * xhat).mean(axis=axes, keepdims=True))
    return dx, grads
