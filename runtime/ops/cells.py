"""The step of each recurrent cell (simple_rnn, lstm, gru) and its backward, for recurrent.py's general loop.

A step gets xw_t = x_t @ kernel + input bias (B, G*units) and the states before it, multiplies the
previous h by its Recurrence itself (a GRU without reset_after multiplies r * h, not h), and returns the
new states and a record for its backward. The backward returns dxw_t, the gradients of the states before
the step (h's through the recurrent product included) and of the Recurrence's weights.
"""
from typing import NamedTuple

import numpy as np

from . import activations


class Recurrence(NamedTuple):
    """What a step multiplies the previous h by."""

    kernel: np.ndarray  # (units, G*units): the recurrent kernel
    masks: object       # None, or (K, B, units) training recurrent-dropout masks (K = 1, or one per gate)
    bias: object        # None, or (G*units,): a GRU's recurrent bias (reset_after), added to h @ kernel


def dropout_masks(rng, count, shape, rate, dtype):
    """`count` inverted-dropout masks of `shape` ((count,) + shape, values 0 or 1 / (1 - rate)), or None.

    Keras draws a recurrent layer's masks once per batch and applies the same mask at every step.
    """
    if rng is None or rate == 0:
        return None
    keep = rng.random((count,) + tuple(shape)) >= rate
    return keep.astype(dtype) * dtype.type(1.0 / (1.0 - rate))  # TF: the scale in float64, then cast


def masked_product(a, w, masks):
    """a @ w where the k-th of len(masks) equal column blocks of w sees a * masks[k] (Keras's per-gate dropout)."""
    if masks is None:
        return a @ w
    if len(masks) == 1:
        return (a * masks[0]) @ w
    blocks = np.split(w, len(masks), axis=1)
    return np.concatenate([(a * m) @ b for m, b in zip(masks, blocks)], axis=-1)


def masked_product_backward(a, w, masks, d):
    """(da, dw) for d = gradient of masked_product(a, w, masks); a (..., n), d (..., columns of w)."""
    def flat(v):
        return v.reshape(-1, v.shape[-1])
    if masks is None:
        return d @ w.T, flat(a).T @ flat(d)
    blocks_w, blocks_d = np.split(w, len(masks), axis=1), np.split(d, len(masks), axis=-1)
    da = sum((dk @ wk.T) * m for m, wk, dk in zip(masks, blocks_w, blocks_d))
    dw = np.concatenate([flat(a * m).T @ flat(dk) for m, dk in zip(masks, blocks_d)], axis=1)
    return da, dw


def _through_recurrent_product(dz, state, rec, d_rest):
    """Backward of a step whose pre-activation is z = xw_t + h @ recurrent_kernel: (dxw_t, d states, grads)."""
    dh_prev, d_kernel = masked_product_backward(state[0], rec.kernel, rec.masks, dz)
    return dz, (dh_prev,) + d_rest, {"recurrent_kernel": d_kernel}


def _simple_rnn_step(xw, state, attrs, rec):
    z = xw + masked_product(state[0], rec.kernel, rec.masks)
    h_new = activations.apply(attrs["activation"], z)
    return (h_new,), {"a": z, "h_new": h_new}


def _simple_rnn_step_backward(d_state, state, record, attrs, rec):
    (dh,) = d_state
    dz = activations.backward(attrs["activation"], record["a"], record["h_new"], dh)
    return _through_recurrent_product(dz, state, rec, ())


def _lstm_step(xw, state, attrs, rec):
    h, c = state
    u = attrs["units"]  # gate order i, f, c, o
    z = xw + masked_product(h, rec.kernel, rec.masks)
    ra, a = attrs["recurrent_activation"], attrs["activation"]
    i = activations.apply(ra, z[:, :u])
    f = activations.apply(ra, z[:, u:2 * u])
    g = activations.apply(a, z[:, 2 * u:3 * u])
    o = activations.apply(ra, z[:, 3 * u:])
    c_new = f * c + i * g
    tanh_c = activations.apply(a, c_new)
    return (o * tanh_c, c_new), {"z": z, "i": i, "f": f, "g": g, "o": o, "c_new": c_new, "tanh_c": tanh_c}


def _lstm_step_backward(d_state, state, record, attrs, rec):
    dh, dc = d_state
    _, c = state
    u = attrs["units"]
    ra, a = attrs["recurrent_activation"], attrs["activation"]
    z = record["z"]
    dc = dc + activations.backward(a, record["c_new"], record["tanh_c"], dh * record["o"])
    dz = np.concatenate([
        activations.backward(ra, z[:, :u], record["i"], dc * record["g"]),
        activations.backward(ra, z[:, u:2 * u], record["f"], dc * c),
        activations.backward(a, z[:, 2 * u:3 * u], record["g"], dc * record["i"]),
        activations.backward(ra, z[:, 3 * u:], record["o"], dh * record["tanh_c"]),
    ], axis=1)
    return _through_recurrent_product(dz, state, rec, (dc * record["f"],))


def _gru_step(xw, state, attrs, rec):
    """Keras's GRUCell, gate order z, r, h: h_new = z * h + (1 - z) * hh."""
    (h,) = state
    u = attrs["units"]
    ra, a = attrs["recurrent_activation"], attrs["activation"]
    masks = rec.masks
    record = {}
    if attrs["reset_after"]:  # hu = h @ recurrent_kernel + recurrent bias; the reset gate scales hu's h block
        hu = masked_product(h, rec.kernel, masks)
        if rec.bias is not None:
            hu = hu + rec.bias
    else:  # the reset gate scales h before the h block's product
        hu = masked_product(h, rec.kernel[:, :2 * u], None if masks is None else masks[:2])
        record["h_h"] = h if masks is None else h * masks[-1]
    pre_z, pre_r = xw[:, :u] + hu[:, :u], xw[:, u:2 * u] + hu[:, u:2 * u]
    z, r = activations.apply(ra, pre_z), activations.apply(ra, pre_r)
    if attrs["reset_after"]:
        record["hu_h"] = hu[:, 2 * u:]
        pre_h = xw[:, 2 * u:] + r * record["hu_h"]
    else:
        record["q"] = r * record["h_h"]
        pre_h = xw[:, 2 * u:] + record["q"] @ rec.kernel[:, 2 * u:]
    hh = activations.apply(a, pre_h)
    h_new = z * h + (1 - z) * hh
    record.update(pre_z=pre_z, pre_r=pre_r, pre_h=pre_h, z=z, r=r, hh=hh)
    return (h_new,), record


def _gru_step_backward(d_state, state, record, attrs, rec):
    (dh,) = d_state
    (h,) = state
    u = attrs["units"]
    ra, a = attrs["recurrent_activation"], attrs["activation"]
    z, r, hh = record["z"], record["r"], record["hh"]
    d_pre_h = activations.backward(a, record["pre_h"], hh, dh * (1 - z))
    grads = {}
    if attrs["reset_after"]:
        dr = d_pre_h * record["hu_h"]
        d_hu_h = d_pre_h * r
    else:
        recurrent_h = rec.kernel[:, 2 * u:]
        dq = d_pre_h @ recurrent_h.T
        d_recurrent_h = record["q"].T @ d_pre_h
        dr = dq * record["h_h"]
        d_h_h = dq * r
    d_pre_z = activations.backward(ra, record["pre_z"], z, dh * (h - hh))
    d_pre_r = activations.backward(ra, record["pre_r"], r, dr)
    dxw = np.concatenate([d_pre_z, d_pre_r, d_pre_h], axis=1)
    if attrs["reset_after"]:
        d_hu = np.concatenate([d_pre_z, d_pre_r, d_hu_h], axis=1)
        dh_prev, grads["recurrent_kernel"] = masked_product_backward(h, rec.kernel, rec.masks, d_hu)
        if rec.bias is not None:
            grads["recurrent_bias"] = d_hu.sum(axis=0)
    else:
        masks = rec.masks
        zr_masks = None if masks is None else masks[:2]
        d_hu = np.concatenate([d_pre_z, d_pre_r], axis=1)
        dh_prev, d_recurrent_zr = masked_product_backward(h, rec.kernel[:, :2 * u], zr_masks, d_hu)
        dh_prev = dh_prev + (d_h_h if masks is None else d_h_h * masks[-1])
        grads["recurrent_kernel"] = np.concatenate([d_recurrent_zr, d_recurrent_h], axis=1)
    return dxw, (dh_prev + dh * z,), grads


class Cell(NamedTuple):
    """A recurrent op's step: step(xw_t, states, attrs, Recurrence) -> (new states, record);
    backward(d new states, states, record, attrs, Recurrence) -> (dxw_t, d states, {weight gradients})."""

    step: object
    backward: object
    states: int  # h, or h and c


CELLS = {"simple_rnn": Cell(_simple_rnn_step, _simple_rnn_step_backward, 1),
         "lstm": Cell(_lstm_step, _lstm_step_backward, 2),
         "gru": Cell(_gru_step, _gru_step_backward, 1)}


def split_bias(op, attrs, weights):
    """(input bias or None, recurrent bias or None): a GRU with reset_after keeps both in bias (2, 3 * units)."""
    if not attrs["use_bias"]:
        return None, None
    if op == "gru" and attrs["reset_after"]:
        return weights["bias"][0], weights["bias"][1]
    return weights["bias"], None
