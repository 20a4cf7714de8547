"""simple_rnn, lstm and bidirectional: one shared time loop (forward and BPTT), cells that differ only in the step.

The input projection x @ kernel + bias is one matrix product for all time steps; only the
recurrent product h @ recurrent_kernel runs inside the loop over time. Training caches one small
record per step, so memory grows linearly with batch and sequence length.
"""
import numpy as np

from . import activations


def _simple_rnn_step(z, state, weights, attrs):
    (h,) = state
    a = z + h @ weights["recurrent_kernel"]
    h_new = activations.apply(attrs["activation"], a)
    return (h_new,), {"a": a, "h_new": h_new}


def _simple_rnn_step_backward(d_state, state, rec, weights, attrs):
    (dh,) = d_state
    da = activations.backward(attrs["activation"], rec["a"], rec["h_new"], dh)
    return da, (da @ weights["recurrent_kernel"].T,)


def _lstm_step(z, state, weights, attrs):
    h, c = state
    u = attrs["units"]
    z = z + h @ weights["recurrent_kernel"]  # (B, 4u), gate order i, f, c, o
    ra, a = attrs["recurrent_activation"], attrs["activation"]
    i = activations.apply(ra, z[:, :u])
    f = activations.apply(ra, z[:, u:2 * u])
    g = activations.apply(a, z[:, 2 * u:3 * u])
    o = activations.apply(ra, z[:, 3 * u:])
    c_new = f * c + i * g
    tanh_c = activations.apply(a, c_new)
    return (o * tanh_c, c_new), {"z": z, "i": i, "f": f, "g": g, "o": o, "c_new": c_new, "tanh_c": tanh_c}


def _lstm_step_backward(d_state, state, rec, weights, attrs):
    dh, dc = d_state
    _, c = state
    u = attrs["units"]
    ra, a = attrs["recurrent_activation"], attrs["activation"]
    z = rec["z"]
    dc = dc + activations.backward(a, rec["c_new"], rec["tanh_c"], dh * rec["o"])
    dz = np.concatenate([
        activations.backward(ra, z[:, :u], rec["i"], dc * rec["g"]),
        activations.backward(ra, z[:, u:2 * u], rec["f"], dc * c),
        activations.backward(a, z[:, 2 * u:3 * u], rec["g"], dc * rec["i"]),
        activations.backward(ra, z[:, 3 * u:], rec["o"], dh * rec["tanh_c"]),
    ], axis=1)
    return dz, (dz @ weights["recurrent_kernel"].T, dc * rec["f"])


CELLS = {"simple_rnn": (_simple_rnn_step, _simple_rnn_step_backward, 1),
         "lstm": (_lstm_step, _lstm_step_backward, 2)}


def run_recurrent(op, x, attrs, weights, mask=None, cache=None):
    """Run recurrent op `op` over x (B, T, F); returns (B, T, units) or (B, units) as Keras does.

    If `cache` is a dict, it is filled with what recurrent_backward needs.
    """
    step, _, n_states = CELLS[op]
    batch, steps, _ = x.shape
    units = attrs["units"]
    xw = x @ weights["kernel"]  # (B, T, G*units) for all steps at once
    if attrs["use_bias"]:
        xw = xw + weights["bias"]
    state = tuple(np.zeros((batch, units), x.dtype) for _ in range(n_states))
    zeros = np.zeros((batch, units), x.dtype)
    prev_out = zeros
    seq = np.empty((batch, steps, units), x.dtype) if attrs["return_sequences"] else None
    order = list(range(steps - 1, -1, -1) if attrs["go_backwards"] else range(steps))
    records = [] if cache is not None else None
    for i, t in enumerate(order):
        new_state, rec = step(xw[:, t], state, weights, attrs)
        out = new_state[0]
        if mask is not None:
            keep = mask[:, t, None]  # (B, 1): masked rows keep state and repeat (or zero) output
            out = np.where(keep, out, zeros if attrs["zero_output_for_mask"] else prev_out)
            if records is not None:
                rec["keep"] = keep
            new_state = tuple(np.where(keep, s, s_old) for s, s_old in zip(new_state, state))
        if records is not None:
            rec["state"] = state
            records.append(rec)
        state, prev_out = new_state, out
        if seq is not None:
            seq[:, i] = out  # processing order, as Keras returns go_backwards sequences
    if cache is not None:
        cache.update(x=x, records=records, order=order, masked=mask is not None)
    return seq if seq is not None else prev_out


def recurrent_backward(op, dy, cache, attrs, weights):
    """BPTT through run_recurrent: returns (dx, {kernel, recurrent_kernel, bias gradients})."""
    _, step_backward, n_states = CELLS[op]
    x, records, order = cache["x"], cache["records"], cache["order"]
    batch, steps, _ = x.shape
    units = attrs["units"]
    dxw = np.zeros((batch, steps, weights["kernel"].shape[1]), x.dtype)
    d_rec = np.zeros_like(weights["recurrent_kernel"])
    d_state = tuple(np.zeros((batch, units), x.dtype) for _ in range(n_states))
    d_carry = np.zeros((batch, units), x.dtype)  # gradient reaching an output through a later masked step
    zero_out = attrs["zero_output_for_mask"]
    for i in range(steps - 1, -1, -1):
        rec, t = records[i], order[i]
        d_out = d_carry + (dy[:, i] if attrs["return_sequences"] else (dy if i == steps - 1 else 0))
        if cache["masked"]:
            keep = rec["keep"]
            d_new = (np.where(keep, d_out + d_state[0], 0),) + tuple(np.where(keep, d, 0) for d in d_state[1:])
            d_pass = tuple(np.where(keep, 0, d) for d in d_state)  # masked rows hand the state gradient back
            d_carry = np.where(keep, 0, d_out) if not zero_out else np.zeros_like(d_out)
        else:
            d_new = (d_out + d_state[0],) + d_state[1:]
            d_pass = None
            d_carry = np.zeros_like(d_out)
        dz, d_prev = step_backward(d_new, rec["state"], rec, weights, attrs)
        d_rec += rec["state"][0].T @ dz
        dxw[:, t] = dz
        d_state = d_prev if d_pass is None else tuple(a + b for a, b in zip(d_prev, d_pass))
    grads = {"kernel": x.reshape(-1, x.shape[2]).T @ dxw.reshape(-1, dxw.shape[2]), "recurrent_kernel": d_rec}
    if attrs["use_bias"]:
        grads["bias"] = dxw.sum(axis=(0, 1))
    return dxw @ weights["kernel"].T, grads


def simple_rnn(x, attrs, weights, mask=None):
    """Elman RNN over (B, T, F)."""
    return infer_recurrent("simple_rnn", x, attrs, weights, mask)


def lstm(x, attrs, weights, mask=None):
    """LSTM (gate order i, f, c, o) over (B, T, F)."""
    return infer_recurrent("lstm", x, attrs, weights, mask)


def padded_lengths(mask):
    """Lengths (B,) if every row of mask (B, T) is post-padded (True then False) or every row pre-padded
    (False then True), with 'post' or 'pre'; None for any other mask."""
    lengths = mask.sum(axis=1)
    steps = np.arange(mask.shape[1])
    if np.array_equal(mask, steps < lengths[:, None]):
        return lengths, "post"
    if np.array_equal(mask, steps >= mask.shape[1] - lengths[:, None]):
        return lengths, "pre"
    return None


def infer_recurrent(op, x, attrs, weights, mask=None):
    """Inference: the same outputs as run_recurrent, computed on the rows a step actually updates.

    With no mask, or a padding mask (every row post-padded, or every row pre-padded), the rows are
    sorted by length so that the rows live at any step are a prefix: each step then works on h[:n]
    in place, and steps where no row is live cost nothing. A masked row keeps its state, exactly as
    np.where would keep it. Any other mask takes run_recurrent's general path.
    """
    batch, steps, _ = x.shape
    padding = padded_lengths(mask) if mask is not None else (np.full(batch, steps), "post")
    if padding is None or op not in _STEPPERS:
        return run_recurrent(op, x, attrs, weights, mask)
    lengths, side = padding
    order = np.argsort(-lengths, kind="stable")            # longest first: live rows form a prefix
    times = np.arange(steps - 1, -1, -1) if attrs["go_backwards"] else np.arange(steps)
    sorted_lengths = lengths[order]
    # live[i, r]: sorted row r is updated at processing step i (each row of `live` is a prefix)
    if side == "post":
        live = times[:, None] < sorted_lengths[None, :]
    else:
        live = times[:, None] >= steps - sorted_lengths[None, :]
    counts = live.sum(axis=1).tolist()
    offsets = np.concatenate([[0], np.cumsum(counts)]).tolist()
    dtype = np.result_type(x, weights["kernel"])
    kernel, bias, advance, h = _STEPPERS[op](weights, attrs, batch, dtype)
    # Input projections of the live (step, row) pairs only, grouped by step: step i reads rows
    # offsets[i]:offsets[i+1] of xw. Padded positions are never projected.
    step_index, row_index = np.nonzero(live)
    xw = x[order[row_index], times[step_index]].astype(dtype, copy=False) @ kernel  # (live pairs, G*units)
    if bias is not None:
        xw += bias
    zero_out = attrs["zero_output_for_mask"] and mask is not None
    seq = np.zeros((steps, batch, attrs["units"]), dtype) if attrs["return_sequences"] else None
    with np.errstate(over="ignore"):  # exp overflowing to inf inside a sigmoid gives its exact limit 0
        for i in range(steps):
            n = counts[i]
            if n:
                advance(xw[offsets[i]:offsets[i + 1]], n)
            if seq is not None:
                if zero_out:
                    seq[i, :n] = h[:n]
                else:  # a masked row repeats its previous output, which is its kept state
                    seq[i] = h
    inverse = np.argsort(order, kind="stable")
    if seq is not None:
        return seq.transpose(1, 0, 2)[inverse]
    last = h
    if zero_out:
        last = np.where(live[-1][:, None], last, 0)
    return last[inverse]


def _activation_into(name):
    """f(src, out): out = activation(src), in place when out is src (fast paths for the defaults)."""
    if name == "tanh":
        return lambda src, out: np.tanh(src, out=out)
    if name == "sigmoid":
        def sigmoid_into(src, out):
            np.negative(src, out=out)
            np.exp(out, out=out)
            out += 1
            np.reciprocal(out, out=out)
        return sigmoid_into
    if name == "linear":
        return lambda src, out: np.copyto(out, src)
    return lambda src, out: np.copyto(out, activations.apply(name, src))


def _simple_rnn_stepper(weights, attrs, batch, dtype):
    """(kernel, bias, advance, h) for infer_recurrent; advance(xw_rows, n) updates h[:n] in place."""
    units, recurrent_kernel = attrs["units"], weights["recurrent_kernel"]
    activation = _activation_into(attrs["activation"])
    h, a_all = np.zeros((batch, units), dtype), np.empty((batch, units), dtype)

    def advance(xw_rows, n):
        a, hn = a_all[:n], h[:n]
        np.matmul(hn, recurrent_kernel, out=a)
        a += xw_rows
        activation(a, hn)
    return weights["kernel"], weights["bias"] if attrs["use_bias"] else None, advance, h


def _lstm_stepper(weights, attrs, batch, dtype):
    """(kernel, bias, advance, h) for infer_recurrent; advance(xw_rows, n) updates h[:n], c[:n] in place.

    The gate columns are reordered i, f, o, c so the three recurrent-activation gates are one slice.
    With the sigmoid recurrent activation those columns of the weights are negated, so the step
    computes -z directly and sigmoid(z) = 1 / (1 + exp(-z)) needs no negation pass (negation is
    exact in floating point, so the result is bit-identical).
    """
    u = attrs["units"]
    perm = np.concatenate([np.arange(2 * u), np.arange(3 * u, 4 * u), np.arange(2 * u, 3 * u)])
    kernel, recurrent_kernel = weights["kernel"][:, perm], weights["recurrent_kernel"][:, perm]  # fresh copies
    bias = weights["bias"][perm] if attrs["use_bias"] else None
    negated = attrs["recurrent_activation"] == "sigmoid"
    if negated:
        for w in (kernel, recurrent_kernel, bias):
            if w is not None:
                np.negative(w[..., :3 * u], out=w[..., :3 * u])
    gate_activation = _activation_into(attrs["recurrent_activation"])
    activation = _activation_into(attrs["activation"])
    h, c = np.zeros((batch, u), dtype), np.zeros((batch, u), dtype)
    z_all, t_all = np.empty((batch, 4 * u), dtype), np.empty((batch, u), dtype)
    views = {}  # n -> the views a step on the first n rows uses (slicing costs as much as a tiny ufunc)

    def views_of(n):
        z = z_all[:n]
        gates = z[:, :3 * u]
        views[n] = v = (z, h[:n], c[:n], t_all[:n], gates, z[:, 3 * u:], gates[:, :u], gates[:, u:2 * u],
                        gates[:, 2 * u:])
        return v

    def advance(xw_rows, n):
        z, hn, cn, t, gates, g, i, f, o = views.get(n) or views_of(n)
        np.matmul(hn, recurrent_kernel, out=z)  # (n, 4u)
        z += xw_rows
        if negated:  # gates hold -z: sigmoid = 1 / (1 + exp(-z))
            np.exp(gates, out=gates)
            gates += 1
            np.reciprocal(gates, out=gates)
        else:
            gate_activation(gates, gates)
        activation(g, g)
        cn *= f
        g *= i
        cn += g
        activation(cn, t)
        np.multiply(o, t, out=hn)
    return kernel, bias, advance, h


_STEPPERS = {"simple_rnn": _simple_rnn_stepper, "lstm": _lstm_stepper}


def _recurrent_train(op):
    def forward(x, attrs, weights, mask, ctx):
        cache = {}
        return run_recurrent(op, x, attrs, weights, mask, cache), cache

    def backward(dy, cache, attrs, weights):
        return recurrent_backward(op, dy, cache, attrs, weights)
    forward.__doc__ = f"{op} forward with a BPTT cache."
    backward.__doc__ = f"{op} BPTT."
    return forward, backward


simple_rnn_train, simple_rnn_backward = _recurrent_train("simple_rnn")
lstm_train, lstm_backward = _recurrent_train("lstm")


def _direction_weights(weights, prefix):
    return {k[len(prefix) + 1:]: v for k, v in weights.items() if k.startswith(prefix + "_")}


def bidirectional(x, attrs, weights, mask=None):
    """The recurrent op on x forward and backward, backward re-flipped in time, then merged."""
    return bidirectional_train(x, attrs, weights, mask, None)[0]


def bidirectional_train(x, attrs, weights, mask, ctx):
    """Bidirectional forward; caches both directions when training."""
    caches = ({}, {}) if ctx is not None else (None, None)
    if ctx is None:
        fwd = infer_recurrent(attrs["layer"], x, attrs["forward"], _direction_weights(weights, "forward"), mask)
        bwd = infer_recurrent(attrs["layer"], x, attrs["backward"], _direction_weights(weights, "backward"), mask)
    else:
        fwd = run_recurrent(attrs["layer"], x, attrs["forward"], _direction_weights(weights, "forward"), mask, caches[0])
        bwd = run_recurrent(attrs["layer"], x, attrs["backward"], _direction_weights(weights, "backward"), mask, caches[1])
    if attrs["forward"]["return_sequences"]:
        bwd = bwd[:, ::-1]
    mode = attrs["merge_mode"]
    if mode == "concat":
        y = np.concatenate([fwd, bwd], axis=-1)
    elif mode == "sum":
        y = fwd + bwd
    elif mode == "mul":
        y = fwd * bwd
    else:
        y = (fwd + bwd) / 2
    return y, {"caches": caches, "fwd": fwd, "bwd": bwd}


def bidirectional_backward(dy, cache, attrs, weights):
    """Split the merged gradient, flip the backward half back, and run BPTT on both directions."""
    fwd, bwd, mode = cache["fwd"], cache["bwd"], attrs["merge_mode"]
    if mode == "concat":
        d_fwd, d_bwd = dy[..., :fwd.shape[-1]], dy[..., fwd.shape[-1]:]
    elif mode == "sum":
        d_fwd, d_bwd = dy, dy
    elif mode == "mul":
        d_fwd, d_bwd = dy * bwd, dy * fwd
    else:
        d_fwd = d_bwd = dy / 2
    if attrs["forward"]["return_sequences"]:
        d_bwd = d_bwd[:, ::-1]
    grads = {}
    dx = 0
    for prefix, d, c in (("forward", d_fwd, cache["caches"][0]), ("backward", d_bwd, cache["caches"][1])):
        dxi, g = recurrent_backward(attrs["layer"], np.ascontiguousarray(d), c, attrs[prefix],
                                    _direction_weights(weights, prefix))
        dx = dx + dxi
        grads.update({f"{prefix}_{k}": v for k, v in g.items()})
    return dx, grads
