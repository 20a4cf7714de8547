"""Losses with Keras 3's exact definitions, reductions and clipping; each returns (loss, gradient).

Reduction is Keras's "sum_over_batch_size": the per-sample losses (one per row, or per row and
time step for sequence outputs) are summed and divided by their count. Like Keras, when the model's
output is a softmax or sigmoid activation, cross-entropies are computed from its logits (Keras keeps
them as `_keras_logits`), without clipping; otherwise probabilities are clipped to [1e-7, 1 - 1e-7].
"""
import numpy as np

from kconvert.schema import InputDataError

EPSILON = 1e-7  # keras.config.epsilon()

ALIASES = {
    "sparse_categorical_crossentropy": "sparse_categorical_crossentropy",
    "SparseCategoricalCrossentropy": "sparse_categorical_crossentropy",
    "categorical_crossentropy": "categorical_crossentropy",
    "CategoricalCrossentropy": "categorical_crossentropy",
    "binary_crossentropy": "binary_crossentropy",
    "BinaryCrossentropy": "binary_crossentropy",
    "mean_squared_error": "mean_squared_error",
    "MeanSquaredError": "mean_squared_error",
    "mse": "mean_squared_error",
}
CROSS_ENTROPIES = ("sparse_categorical_crossentropy", "categorical_crossentropy", "binary_crossentropy")


def canonical_name(name):
    """The loss's canonical name, or InputDataError listing the supported ones."""
    if name not in ALIASES:
        raise InputDataError(f"unsupported loss {name!r}; supported: {', '.join(sorted(set(ALIASES.values())))}")
    return ALIASES[name]


def _log_softmax(z):
    shifted = z - np.max(z, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def _softmax(z):
    e = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def _sigmoid(z):
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def _sparse_targets(y_true, output):
    y = np.asarray(y_true)
    if y.ndim == output.ndim and y.shape[-1] == 1:
        y = y[..., 0]
    if y.shape != output.shape[:-1]:
        raise InputDataError(f"sparse labels must have shape {output.shape[:-1]}, got {y.shape}")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= output.shape[-1]):
        raise InputDataError(f"labels must be in [0, {output.shape[-1]}), got {int(y.min())}..{int(y.max())}")
    return np.eye(output.shape[-1], dtype=output.dtype)[y]


def step_weights(mask, dtype):
    """Keras's apply_mask for a mean reduction: real steps weigh total / real, padded ones 0."""
    total, real = dtype.type(mask.size), dtype.type(np.count_nonzero(mask))
    return np.where(mask, total / real if real else dtype.type(0), dtype.type(0)).astype(dtype)


def _weighted(per_sample, grad, weights):
    if weights is None:
        return per_sample, grad
    return per_sample * weights, grad * weights[..., None]


def _loss_weights(sample_weight, mask, shape, dtype):
    """Keras's per-position loss weights: the sample weights times the mask's."""
    weights = None
    if sample_weight is not None:
        weights = np.asarray(sample_weight, dtype=dtype)
        if weights.shape != tuple(shape):
            raise InputDataError(f"sample_weight of shape {weights.shape} does not fit a loss of shape {tuple(shape)}: "
                                 "give one weight per row, or per row and step for a per-step output (as Keras)")
    if mask is not None:
        weights = step_weights(mask, dtype) if weights is None else weights * step_weights(mask, dtype)
    return weights


def compute(name, y_true, output, logits=None, from_logits=False, mask=None, sample_weight=None,
            label_smoothing=0.0):
    """Return (scalar loss, d loss / d output, or / d logits when logits were used, used_logits). `mask`
    (the output's sequence mask, shape output.shape[:-1]) makes it the mean over real steps, and
    `sample_weight` (shape output.shape[:-1]) weighs each position's loss, as Keras's sum-over-batch-size
    reduction does: sum(loss * weight) / positions. `label_smoothing` softens categorical / binary targets
    as Keras's losses do."""
    name = canonical_name(name)
    dtype = output.dtype
    weights = _loss_weights(sample_weight, mask, output.shape[:-1], dtype)
    if name == "sparse_categorical_crossentropy":
        target = _sparse_targets(y_true, output)
    else:
        target = np.asarray(y_true, dtype=dtype)
        if target.ndim == output.ndim - 1 and output.shape[-1] == 1:
            target = target[..., None]  # Keras's squeeze_or_expand_to_same_rank: labels (n,) for an (n, 1) output
        if target.shape != output.shape:
            raise InputDataError(f"{name} needs targets of shape {output.shape}, got {target.shape}")
        if label_smoothing and name == "categorical_crossentropy":  # Keras's order of float32 operations
            classes = dtype.type(target.shape[-1])
            target = target * dtype.type(1.0 - label_smoothing) + dtype.type(label_smoothing) / classes
        elif label_smoothing and name == "binary_crossentropy":
            target = target * dtype.type(1.0 - label_smoothing) + dtype.type(0.5 * label_smoothing)
    use_logits = name in CROSS_ENTROPIES and (logits is not None or from_logits)
    z = (logits if logits is not None else output) if use_logits else None
    if name == "mean_squared_error":
        diff = output - target
        per_sample, grad = _weighted(np.mean(diff * diff, axis=-1), 2 * diff, weights)
        count = per_sample.size
        return float(per_sample.sum() / count), (grad / (diff.shape[-1] * count)).astype(dtype), False
    if name == "binary_crossentropy":
        count = int(np.prod(output.shape[:-1]))
        if use_logits:  # tf.nn.sigmoid_cross_entropy_with_logits
            elementwise = np.maximum(z, 0) - z * target + np.log1p(np.exp(-np.abs(z)))
            grad = _sigmoid(z) - target
        else:
            p = np.clip(output, EPSILON, 1 - EPSILON)
            elementwise = -(target * np.log(p) + (1 - target) * np.log(1 - p))
            inside = (output >= EPSILON) & (output <= 1 - EPSILON)  # clip passes gradient only inside
            grad = (-(target / p) + (1 - target) / (1 - p)) * inside
        per_sample, grad = _weighted(np.mean(elementwise, axis=-1), grad, weights)
        return float(per_sample.sum() / count), (grad / (output.shape[-1] * count)).astype(dtype), use_logits
    count = int(np.prod(output.shape[:-1]))
    if use_logits:  # softmax cross-entropy from logits; TensorFlow's gradient is softmax - labels
        per_sample, grad = _weighted(-np.sum(target * _log_softmax(z), axis=-1), _softmax(z) - target, weights)
        return float(per_sample.sum() / count), (grad / count).astype(dtype), True
    if name == "sparse_categorical_crossentropy":
        # clip, log, then sparse softmax cross-entropy of the logs: -log(p_y / sum p)
        p = np.clip(output, EPSILON, 1 - EPSILON)
        inside = (output >= EPSILON) & (output <= 1 - EPSILON)
        total = np.sum(p, axis=-1, keepdims=True)
        per_sample = np.log(total[..., 0]) - np.log(np.sum(p * target, axis=-1))
        grad = (1 / total - target / p) * inside
    else:
        # normalise, clip, -sum(t * log p)
        total = np.sum(output, axis=-1, keepdims=True)
        q = output / total
        p = np.clip(q, EPSILON, 1 - EPSILON)
        inside = (q >= EPSILON) & (q <= 1 - EPSILON)
        per_sample = -np.sum(target * np.log(p), axis=-1)
        dq = -target / p * inside
        grad = (dq - np.sum(dq * q, axis=-1, keepdims=True)) / total  # through q = output / sum(output)
    per_sample, grad = _weighted(per_sample, grad, weights)
    return float(per_sample.sum() / count), (grad / count).astype(dtype), False
