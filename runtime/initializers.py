"""Fresh weights for a graph's architecture with Keras's default initializers (seeded NumPy draws).

glorot_uniform for kernels and embeddings-free layers, orthogonal for recurrent kernels, zeros for
biases (LSTM forget gates at 1: unit_forget_bias), uniform(-0.05, 0.05) for embeddings, ones and zeros
for batch and layer normalization (gamma and moving variance 1, beta and moving mean 0). The
distributions are Keras's; the random streams are NumPy's, so values differ from a Keras run.
"""
import numpy as np

from kconvert.schema.shapes import RECURRENT_GATES


def glorot_uniform(rng, shape):
    """U(-limit, limit), limit = sqrt(6 / (fan_in + fan_out)), fans as Keras computes them."""
    if len(shape) == 2:
        fan_in, fan_out = shape
    else:  # conv kernels (kh, kw, in, out)
        receptive = int(np.prod(shape[:-2]))
        fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape).astype(np.float32)


def orthogonal(rng, shape, gain=1.0):
    """keras.initializers.Orthogonal: QR of a normal matrix, signs fixed by diag(R)."""
    rows, cols = int(np.prod(shape[:-1])), shape[-1]
    a = rng.normal(0.0, 1.0, (max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return (gain * q).reshape(shape).astype(np.float32)


def _recurrent(rng, op, attrs, shapes, prefix=""):
    out = {f"{prefix}kernel": glorot_uniform(rng, shapes[f"{prefix}kernel"]),
           f"{prefix}recurrent_kernel": orthogonal(rng, shapes[f"{prefix}recurrent_kernel"])}
    if attrs["use_bias"]:
        bias = np.zeros(shapes[f"{prefix}bias"], np.float32)
        if op == "lstm":
            units = attrs["units"]
            bias[units:2 * units] = 1.0  # unit_forget_bias
        out[f"{prefix}bias"] = bias
    return out


def initial_weights(node, shapes, rng):
    """Keras-default initial values for one node's weights, given their shapes."""
    op, attrs = node["op"], node["attrs"]
    if op in RECURRENT_GATES:
        return _recurrent(rng, op, attrs, shapes)
    if op == "bidirectional":
        return {**_recurrent(rng, attrs["layer"], attrs["forward"], shapes, "forward_"),
                **_recurrent(rng, attrs["layer"], attrs["backward"], shapes, "backward_")}
    if op in ("batch_norm", "layer_norm"):  # gamma and moving_variance ones, beta and moving_mean zeros
        return {name: np.full(shape, name in ("gamma", "moving_variance"), np.float32)
                for name, shape in shapes.items()}
    out = {}
    for name, shape in shapes.items():
        if name == "embeddings":
            out[name] = rng.uniform(-0.05, 0.05, shape).astype(np.float32)
        elif name == "bias":
            out[name] = np.zeros(shape, np.float32)
        else:
            out[name] = glorot_uniform(rng, shape)
    return out
