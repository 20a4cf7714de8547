"""GRU inference on recurrent.infer_recurrent's live rows: gates gate-major (3, rows, units), steps in place.

The same arithmetic as Keras's GRUCell (and cells._gru_step) in the same order, on contiguous per-gate
blocks: z = ra(x_z + h @ U_z + b_z), r likewise, hh = a(x_h + r * (h @ U_h + b_h)) with reset_after or
a(x_h + (r * h) @ U_h) without, h = z * h + (1 - z) * hh.
"""
import numpy as np

from .cells import split_bias
from .lstm_fused import activation_into, gate_major, gate_major_projection


def input_projection(weights, attrs):
    """(kernel (3, F, u), input bias (3, 1, u) or None): xs @ kernel + bias is (3, pairs, u), gates z, r, h."""
    u = attrs["units"]
    input_bias, _ = split_bias("gru", attrs, weights)
    return gate_major_projection(weights["kernel"], input_bias, u)


def stepper(weights, attrs, batch, dtype):
    """(kernel, bias, advance, h) for infer_recurrent; advance(xw_rows (3, n, u), n) updates h[:n] in place."""
    u, reset_after = attrs["units"], attrs["reset_after"]
    kernel, bias = input_projection(weights, attrs)
    recurrent_kernel = gate_major(weights["recurrent_kernel"], u)  # (3, u, u): h @ it broadcasts to (3, n, u)
    _, recurrent_bias = split_bias("gru", attrs, weights)
    if recurrent_bias is not None:
        recurrent_bias = gate_major(recurrent_bias[None], u)  # (3, 1, u)
    gate_activation = activation_into(attrs["recurrent_activation"])
    activation = activation_into(attrs["activation"])
    h = np.zeros((batch, u), dtype)
    hu_all, scratch_all = np.empty(3 * batch * u, dtype), np.empty((batch, u), dtype)

    def advance(xw_rows, n):
        hu, hn, scratch = hu_all[:3 * n * u].reshape(3, n, u), h[:n], scratch_all[:n]
        z, r, candidate = hu[0], hu[1], hu[2]
        if reset_after:
            np.matmul(hn, recurrent_kernel, out=hu)
            if recurrent_bias is not None:
                hu += recurrent_bias
        else:
            np.matmul(hn, recurrent_kernel[:2], out=hu[:2])
        hu[:2] += xw_rows[:2]
        gate_activation(z, z)  # one call per gate, as Keras makes them
        gate_activation(r, r)
        if reset_after:
            candidate *= r
        else:
            np.multiply(r, hn, out=scratch)
            np.matmul(scratch, recurrent_kernel[2], out=candidate)
        candidate += xw_rows[2]
        activation(candidate, candidate)
        hn *= z  # h = z * h + (1 - z) * hh
        np.subtract(1, z, out=scratch)
        scratch *= candidate
        hn += scratch
    return kernel, bias, advance, h
