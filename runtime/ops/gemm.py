"""Matrix products cut into the GEMMs OpenBLAS multiplies fastest.

OpenBLAS's SkylakeX kernels (what its runtime dispatch picks on AVX-512 CPUs, the AMD EPYC here included)
have a "small matrix" path for M N K <= 100^3 that skips packing the operands and zeroing the output:
measured on one core of a 2-core AMD EPYC, OpenBLAS 0.3.31, the conv GEMMs of the benchmark CNN ran at
106-114 GFLOP/s as products of at most 100^3 / (K N) rows, against 78-98 as one product each (im2col
(37888, 27) @ (27, 32): 81 -> 110; Winograd's (512, 32) @ (32, 64): 89 -> 110; (256, 64) @ (64, 128): 97
-> 113), down to parts of 4 rows ((64, 256) @ (256, 512): 83 -> 107). The cliff is exactly at 100^3:
(976, 32) @ (32, 32) 106 GFLOP/s, (992, 32) @ (32, 32) 81. Cores without that path lose by the cut
(Haswell and Zen kernels, forced on the same machine: 0.7-1.0x), so it is made only where OpenBLAS
reports the SkylakeX core, and only while it runs one thread (small products are never threaded; with
more threads one large product uses them). The parts are one NumPy call over a (..., parts, rows, K) view;
their values are the same bit for bit as the whole product's here (each output element sums the same K
terms in the same order either way).
"""
import functools

import numpy as np

from kconvert.runtime import parallel

SMALL_MNK = 100 ** 3   # OpenBLAS's SkylakeX small-matrix path takes M N K up to this
MIN_ROWS = 4           # the fewest rows per part measured faster than one product
_SMALL_PATH_CORES = ("skylakex",)  # OpenBLAS core names (lower case) measured with that path


@functools.cache
def _small_path_core():
    """True when the process's OpenBLAS runs a core whose kernels have the small-matrix path."""
    blas = parallel._openblas()
    return blas is not None and blas.corename().lower() in _SMALL_PATH_CORES


def part_rows(inner, cols):
    """Rows per part for products (M, inner) @ (inner, cols), or None to leave them whole: where the small
    path is missing, OpenBLAS runs more than one thread, or parts would be under MIN_ROWS rows."""
    rows = SMALL_MNK // max(1, inner * cols)
    if rows < MIN_ROWS or not _small_path_core() or parallel._openblas().threads() != 1:
        return None
    return rows


def _even_parts(length, most):
    """(size, main): `length` cut into the fewest parts of at most `most`, made even: parts of `size`, the first
    `main` of length in whole parts, a shorter remainder after them."""
    size = -(-length // -(-length // most))
    return size, length // size * size


def matmul_calls(a, b, out, rows):
    """[(a', b', out')]: matmul calls that set out = a @ b, for a (..., M, K) and out (..., M, N) each C-contiguous
    in their last two axes, and b (K, N) or (..., K, N); with rows (from part_rows) the M axis is cut into
    parts of at most that many rows, as one call over (..., parts, rows, K) and one for a remainder."""
    m = a.shape[-2]
    if rows is None or m <= rows:
        return [(a, b, out)]
    rows, main = _even_parts(m, rows)
    lead = a.shape[:-2]
    calls = [(a[..., :main, :].reshape(lead + (main // rows, rows, a.shape[-1])), b[..., None, :, :],
              out[..., :main, :].reshape(lead + (main // rows, rows, out.shape[-1])))]
    if main < m:
        calls.append((a[..., main:, :], b, out[..., main:, :]))
    return calls


def column_calls(a, b, out, cols):
    """[(a', b', out')]: matmul calls that set out = a @ b for a (M, K), b (K, N) and out (M, N), b and out with
    unit stride along N (rows may lie further apart: views of larger buffers); with cols (part_rows(K, M): the
    parts are those of the transposed product) the N axis is cut into parts of at most that many columns, as one
    call over (parts, K, cols) views and one for a remainder."""
    n = b.shape[1]
    if cols is None or n <= cols:
        return [(a, b, out)]
    cols, main = _even_parts(n, cols)

    def split(t):  # (R, main) -> (parts, R, cols): each part a (R, cols) block of rows N apart
        return t[:, :main].reshape(t.shape[0], main // cols, cols).swapaxes(0, 1)

    calls = [(a, split(b), split(out))]
    if main < n:
        calls.append((a, b[:, main:], out[:, main:]))
    return calls


def run(calls):
    """Make the matmul calls of matmul_calls or column_calls."""
    for a, b, out in calls:
        np.matmul(a, b, out=out)


def matmul(a, b, out, rows):
    """out = a @ b through matmul_calls (see there); returns out."""
    run(matmul_calls(a, b, out, rows))
    return out
