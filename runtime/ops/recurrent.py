"""simple_rnn, lstm and bidirectional: one shared time loop, cells that differ only in the step.

The input projection x @ kernel + bias is one matrix product for all time steps; only the
recurrent product h @ recurrent_kernel runs inside the loop over time.
"""
import numpy as np

from . import activations


def _simple_rnn_step(z, state, weights, attrs):
    (h,) = state
    h = activations.apply(attrs["activation"], z + h @ weights["recurrent_kernel"])
    return (h,), h


def _lstm_step(z, state, weights, attrs):
    h, c = state
    u = attrs["units"]
    z = z + h @ weights["recurrent_kernel"]  # (B, 4u), gate order i, f, c, o
    ra, a = attrs["recurrent_activation"], attrs["activation"]
    i = activations.apply(ra, z[:, :u])
    f = activations.apply(ra, z[:, u:2 * u])
    g = activations.apply(a, z[:, 2 * u:3 * u])
    o = activations.apply(ra, z[:, 3 * u:])
    c = f * c + i * g
    h = o * activations.apply(a, c)
    return (h, c), h


CELLS = {"simple_rnn": (_simple_rnn_step, 1), "lstm": (_lstm_step, 2)}


def run_recurrent(op, x, attrs, weights, mask=None):
    """Run recurrent op `op` over x (B, T, F); returns (B, T, units) or (B, units) as Keras does."""
    step, n_states = CELLS[op]
    batch, steps, _ = x.shape
    units = attrs["units"]
    xw = x @ weights["kernel"]  # (B, T, G*units) for all steps at once
    if attrs["use_bias"]:
        xw = xw + weights["bias"]
    state = tuple(np.zeros((batch, units), np.float32) for _ in range(n_states))
    prev_out = np.zeros((batch, units), np.float32)
    zeros = prev_out
    seq = np.empty((batch, steps, units), np.float32) if attrs["return_sequences"] else None
    order = range(steps - 1, -1, -1) if attrs["go_backwards"] else range(steps)
    for i, t in enumerate(order):
        new_state, out = step(xw[:, t], state, weights, attrs)
        if mask is not None:
            keep = mask[:, t, None]  # (B, 1): masked rows keep state and repeat (or zero) output
            out = np.where(keep, out, zeros if attrs["zero_output_for_mask"] else prev_out)
            new_state = tuple(np.where(keep, s, s_old) for s, s_old in zip(new_state, state))
        state, prev_out = new_state, out
        if seq is not None:
            seq[:, i] = out  # processing order, as Keras returns go_backwards sequences
    return seq if seq is not None else prev_out


def simple_rnn(x, attrs, weights, mask=None):
    """Elman RNN over (B, T, F)."""
    return run_recurrent("simple_rnn", x, attrs, weights, mask)


def lstm(x, attrs, weights, mask=None):
    """LSTM (gate order i, f, c, o) over (B, T, F)."""
    return run_recurrent("lstm", x, attrs, weights, mask)


def _direction_weights(weights, prefix):
    return {k[len(prefix) + 1:]: v for k, v in weights.items() if k.startswith(prefix + "_")}


def bidirectional(x, attrs, weights, mask=None):
    """The recurrent op on x forward and backward, backward re-flipped in time, then merged."""
    fwd = run_recurrent(attrs["layer"], x, attrs["forward"], _direction_weights(weights, "forward"), mask)
    bwd = run_recurrent(attrs["layer"], x, attrs["backward"], _direction_weights(weights, "backward"), mask)
    if attrs["forward"]["return_sequences"]:
        bwd = bwd[:, ::-1]
    mode = attrs["merge_mode"]
    if mode == "concat":
        return np.concatenate([fwd, bwd], axis=-1)
    if mode == "sum":
        return fwd + bwd
    if mode == "mul":
        return fwd * bwd
    return (fwd + bwd) / np.float32(2)
