"""simple_rnn, lstm, gru and bidirectional: one shared time loop (forward and BPTT) over the cells of cells.py.

The input projection x @ kernel + bias is one matrix product for all time steps; only the
recurrent product h @ recurrent_kernel runs inside the loop over time. Training caches one small
record per step, so memory grows linearly with batch and sequence length, and applies Keras's
dropout / recurrent_dropout masks. Inference on padding masks, and the training of Keras-default
LSTMs, take the faster length-sorted paths (infer_recurrent here with lstm_fused's and gru_fast's
steppers, lstm_fused's training step).
"""
from typing import NamedTuple

import numpy as np

from kconvert.schema.shapes import RECURRENT_GATES

from . import gru_fast, lstm_fused
from .cells import CELLS, Recurrence, dropout_masks, masked_product, masked_product_backward, split_bias


class Projected(NamedTuple):
    """A recurrent input x = embeddings[ids] whose input projection was computed for every id at once
    (runtime/projection.py): x @ kernel + bias is table[ids]."""

    ids: np.ndarray         # (B, T) integer ids, range-checked
    embeddings: np.ndarray  # (vocabulary, F): x itself, for the general path's masks
    table: np.ndarray       # (vocabulary, G*units) or (G, vocabulary, units): the layout of the op's stepper


def run_recurrent(op, x, attrs, weights, mask=None, cache=None, input_masks=None, recurrent_masks=None):
    """Run recurrent op `op` over x (B, T, F); returns (B, T, units) or (B, units) as Keras does.

    If `cache` is a dict, it is filled with what recurrent_backward needs. input_masks (K, B, 1, F) and
    recurrent_masks (K, B, units) are training dropout masks (K = 1, or one per gate).
    """
    step, n_states = CELLS[op].step, CELLS[op].states
    batch, steps, _ = x.shape
    units = attrs["units"]
    input_bias, recurrent_bias = split_bias(op, attrs, weights)
    recurrence = Recurrence(weights["recurrent_kernel"], recurrent_masks, recurrent_bias)
    xw = masked_product(x, weights["kernel"], input_masks)  # (B, T, G*units) for all steps at once
    if input_bias is not None:
        xw = xw + input_bias
    state = tuple(np.zeros((batch, units), xw.dtype) for _ in range(n_states))
    zeros = np.zeros((batch, units), xw.dtype)
    prev_out = zeros
    seq = np.empty((batch, steps, units), xw.dtype) if attrs["return_sequences"] else None
    order = list(range(steps - 1, -1, -1) if attrs["go_backwards"] else range(steps))
    records = [] if cache is not None else None
    for i, t in enumerate(order):
        new_state, rec = step(xw[:, t], state, attrs, recurrence)
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
        cache.update(x=x, records=records, order=order, masked=mask is not None, input_masks=input_masks,
                     recurrence=recurrence)
    return seq if seq is not None else prev_out


def recurrent_backward(op, dy, cache, attrs, weights):
    """BPTT through run_recurrent: returns (dx, {kernel, recurrent_kernel, bias gradients})."""
    step_backward, n_states = CELLS[op].backward, CELLS[op].states
    x, records, order, recurrence = cache["x"], cache["records"], cache["order"], cache["recurrence"]
    batch, steps, _ = x.shape
    units = attrs["units"]
    dtype = records[0]["state"][0].dtype if records else x.dtype
    dxw = np.zeros((batch, steps, weights["kernel"].shape[1]), dtype)
    step_grads = {}  # the Recurrence's weight gradients, summed over steps
    d_state = tuple(np.zeros((batch, units), dtype) for _ in range(n_states))
    d_carry = np.zeros((batch, units), dtype)  # gradient reaching an output through a later masked step
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
        dxw[:, t], d_prev, grads = step_backward(d_new, rec["state"], rec, attrs, recurrence)
        for key, g in grads.items():
            step_grads[key] = step_grads[key] + g if key in step_grads else g
        d_state = d_prev if d_pass is None else tuple(a + b for a, b in zip(d_prev, d_pass))
    dx, d_kernel = masked_product_backward(x, weights["kernel"], cache["input_masks"], dxw)
    grads = {"kernel": d_kernel,
             "recurrent_kernel": step_grads.get("recurrent_kernel", np.zeros_like(recurrence.kernel))}
    if attrs["use_bias"]:
        d_input_bias = dxw.sum(axis=(0, 1))
        if recurrence.bias is None:
            grads["bias"] = d_input_bias
        else:  # a GRU's (2, 3 * units) bias: input row, recurrent row
            grads["bias"] = np.stack([d_input_bias, step_grads.get("recurrent_bias", np.zeros_like(recurrence.bias))])
    return dx, grads


def simple_rnn(x, attrs, weights, mask=None):
    """Elman RNN over (B, T, F)."""
    return infer_recurrent("simple_rnn", x, attrs, weights, mask)


def lstm(x, attrs, weights, mask=None):
    """LSTM (gate order i, f, c, o) over (B, T, F)."""
    return infer_recurrent("lstm", x, attrs, weights, mask)


def gru(x, attrs, weights, mask=None):
    """GRU (gate order z, r, h; reset_after as Keras's) over (B, T, F)."""
    return infer_recurrent("gru", x, attrs, weights, mask)


def infer_recurrent(op, x, attrs, weights, mask=None, projected=None):
    """Inference: the same outputs as run_recurrent, computed on the rows a step actually updates.

    With no mask, or a padding mask (every row post-padded, or every row pre-padded), the rows are
    sorted by length so that the rows live at any step are a prefix: each step then works on h[:n]
    in place, and steps where no row is live cost nothing. A masked row keeps its state, exactly as
    np.where would keep it. Any other mask takes run_recurrent's general path. With `projected` (a
    Projected; x is then None) the input projections are gathered from its table.
    """
    if projected is not None:
        batch, steps = projected.ids.shape
    else:
        batch, steps, _ = x.shape
    plan = lstm_fused.schedule(batch, steps, attrs["go_backwards"], mask)
    if plan is None or op not in _STEPPERS:
        if projected is not None:
            x = projected.embeddings[projected.ids]
        return run_recurrent(op, x, attrs, weights, mask)
    counts, offsets = plan.counts, plan.offsets
    dtype = np.result_type(x if projected is None else projected.table, weights["kernel"])
    kernel, bias, advance, h = _STEPPERS[op](weights, attrs, batch, dtype)
    # Input projections of the live (step, row) pairs only, grouped by step: step i reads rows
    # offsets[i]:offsets[i+1] of xw. Padded positions are never projected.
    rows, times = lstm_fused.live_pairs(plan)
    # xw is (live pairs, G*units), or gate-major (G, live pairs, units) where the stepper wants it so
    if projected is not None:
        xw = projected.table[..., projected.ids[rows, times], :].astype(dtype, copy=False)
    else:
        xw = np.matmul(x[rows, times].astype(dtype, copy=False), kernel)
        if bias is not None:
            xw += bias
    zero_out = attrs["zero_output_for_mask"] and mask is not None
    seq = np.zeros((steps, batch, attrs["units"]), dtype) if attrs["return_sequences"] else None
    with np.errstate(over="ignore"):  # exp overflowing to inf inside a sigmoid gives its exact limit 0
        for i in range(steps):
            n = counts[i]
            if n:
                advance(xw[..., offsets[i]:offsets[i + 1], :], n)
            if seq is not None:
                lstm_fused.step_output(seq, i, h, n, zero_out)
    return lstm_fused.layer_output(plan, seq, h, zero_out)


def _simple_rnn_projection(weights, attrs):
    """(kernel, bias or None) of the input projection x @ kernel + bias."""
    return weights["kernel"], weights["bias"] if attrs["use_bias"] else None


def _simple_rnn_stepper(weights, attrs, batch, dtype):
    """(kernel, bias, advance, h) for infer_recurrent; advance(xw_rows, n) updates h[:n] in place."""
    units, recurrent_kernel = attrs["units"], weights["recurrent_kernel"]
    activation = lstm_fused.activation_into(attrs["activation"])
    h, a_all = np.zeros((batch, units), dtype), np.empty((batch, units), dtype)

    def advance(xw_rows, n):
        a, hn = a_all[:n], h[:n]
        np.matmul(hn, recurrent_kernel, out=a)
        a += xw_rows
        activation(a, hn)
    return (*_simple_rnn_projection(weights, attrs), advance, h)


_STEPPERS = {"simple_rnn": _simple_rnn_stepper, "lstm": lstm_fused.stepper, "gru": gru_fast.stepper}
_PROJECTIONS = {"simple_rnn": _simple_rnn_projection, "lstm": lstm_fused.input_projection,
                "gru": gru_fast.input_projection}
PROJECTED_OPS = frozenset(_STEPPERS)  # the ops infer_recurrent runs from a Projected


def projection_table(op, embeddings, attrs, weights):
    """embeddings @ kernel + bias in the layout op's stepper uses ((vocabulary, G*units), or gate-major
    (G, vocabulary, units)): a Projected's table."""
    kernel, bias = _PROJECTIONS[op](weights, attrs)
    table = np.matmul(embeddings, kernel)
    if bias is not None:
        table += bias
    return table


def train_recurrent(op, x, attrs, weights, mask, ctx):
    """Training forward of one recurrent layer: (y, cache for backward_recurrent).

    With ctx.training, Keras's dropout and recurrent_dropout apply: one mask per batch reused at every step,
    one per gate for an LSTM or GRU with recurrent dropout (Keras's implementation 1), else one. An LSTM with
    Keras's default activations, no recurrent dropout and no mask other than padding trains on the fused
    path (lstm_fused); everything else on run_recurrent's general loop.
    """
    batch, steps, features = x.shape
    rng = ctx.rng if ctx is not None and ctx.training else None
    dtype = np.result_type(x, weights["kernel"])
    count = RECURRENT_GATES[op] if attrs.get("recurrent_dropout", 0) else 1  # Keras's implementation 1: per gate
    input_masks = dropout_masks(rng, count, (batch, 1, features), attrs.get("dropout", 0), dtype)
    recurrent_masks = dropout_masks(rng, count, (batch, attrs["units"]), attrs.get("recurrent_dropout", 0), dtype)
    if op == "lstm" and lstm_fused.trains_fused(attrs, recurrent_masks):
        plan = lstm_fused.schedule(batch, steps, attrs["go_backwards"], mask)
        if plan is not None:
            y, cache = lstm_fused.train_forward(x, attrs, weights, plan, None if input_masks is None else input_masks[0])
            return y, {"fused": cache}
    cache = {}
    return run_recurrent(op, x, attrs, weights, mask, cache, input_masks, recurrent_masks), cache


def backward_recurrent(op, dy, cache, attrs, weights):
    """BPTT for train_recurrent's cache: (dx, {kernel, recurrent_kernel, bias gradients})."""
    if "fused" in cache:
        return lstm_fused.train_backward(dy, cache["fused"], attrs)
    return recurrent_backward(op, dy, cache, attrs, weights)


def _recurrent_train(op):
    def forward(x, attrs, weights, mask, ctx):
        return train_recurrent(op, x, attrs, weights, mask, ctx)

    def backward(dy, cache, attrs, weights):
        return backward_recurrent(op, dy, cache, attrs, weights)
    forward.__doc__ = f"{op} training forward with a BPTT cache (dropout in training)."
    backward.__doc__ = f"{op} BPTT."
    return forward, backward


simple_rnn_train, simple_rnn_backward = _recurrent_train("simple_rnn")
lstm_train, lstm_backward = _recurrent_train("lstm")
gru_train, gru_backward = _recurrent_train("gru")


def direction_weights(weights, prefix):
    """The weights of one direction ("forward" or "backward") of a bidirectional node, prefix removed."""
    return {k[len(prefix) + 1:]: v for k, v in weights.items() if k.startswith(prefix + "_")}


def bidirectional(x, attrs, weights, mask=None, projected=None, pool=None):
    """The recurrent op on x forward and backward, backward re-flipped in time, then merged. `projected`:
    {"forward": Projected, "backward": Projected} in place of x (None then); with `pool` (an executor) the
    backward direction runs on one of its threads while this one runs the forward direction."""
    return bidirectional_train(x, attrs, weights, mask, None, projected, pool)[0]


def bidirectional_train(x, attrs, weights, mask, ctx, projected=None, pool=None):
    """Bidirectional forward; caches both directions when training (projected, pool: inference only)."""
    layer, fw, bw = attrs["layer"], direction_weights(weights, "forward"), direction_weights(weights, "backward")
    if ctx is None:
        caches = (None, None)
        projected = projected or {}
        backward = (layer, x, attrs["backward"], bw, mask, projected.get("backward"))
        running = pool.submit(infer_recurrent, *backward) if pool is not None else None
        fwd = infer_recurrent(layer, x, attrs["forward"], fw, mask, projected.get("forward"))
        bwd = running.result() if running is not None else infer_recurrent(*backward)
    else:
        fwd, cache_fwd = train_recurrent(layer, x, attrs["forward"], fw, mask, ctx)
        bwd, cache_bwd = train_recurrent(layer, x, attrs["backward"], bw, mask, ctx)
        caches = (cache_fwd, cache_bwd)
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
        dxi, g = backward_recurrent(attrs["layer"], np.ascontiguousarray(d), c, attrs[prefix],
                                    direction_weights(weights, prefix))
        dx = dx + dxi
        grads.update({f"{prefix}_{k}": v for k, v in g.items()})
    return dx, grads
