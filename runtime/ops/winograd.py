"""Winograd F(2x2, 3x3): conv2d with a 3x3 kernel, stride 1 and no dilation in 2.25x fewer multiplications.

Each 2x2 output tile Y comes from the 4x4 input tile d under it (tiles overlap by 2): Y = A^T [U * (B^T d B)] A
with U = G g G^T per (input, output) channel pair (Lavin & Gray, "Fast Algorithms for Convolutional Neural
Networks", 2016). The 16 products U * V summed over input channels are 16 GEMMs of (tiles, Cin) @ (Cin, F), the
im2col GEMM's (pixels, 9 Cin) @ (9 Cin, F) work divided by 2.25. B and A hold only 0 and +-1, so B^T d B is
additions of whole strided slices of a block of samples: 3 + 3 vectorised calls, over whole padded rows (down)
and whole half rows (across: the block keeps even and odd columns apart). A^T m A is one more GEMM, (4, 16) @
(16, tiles * F) with kron(A^T, A^T), which reads the products m once where the 4 + 4 additions it replaced read
them 2.5 times: per block 0.38-0.55x their time on one core (0.58-0.85x with OpenBLAS's Haswell kernels forced),
predict 0.90-0.96x on 2 threads (gemm.column_calls cuts it into parts for the small-matrix path). Each block size's
views are made once, so a block's Python work is its NumPy calls: with two threads on the GIL, fewer and shorter
holds mean fewer waits (voluntary context switches per 512-image predict 870-1150 -> 600-680). The GEMMs go
through gemm.matmul_calls (parts sized for OpenBLAS's small-matrix path) and the transforms run with NumPy's
ufunc buffer at UFUNC_BUFFER elements, so that their strided operands are used in place. For a max-pool
2x2 / 2 right after the conv, the pooled value is the max of a tile's four outputs, so the full-size output is
never formed; with relu and a bias that max, relu and bias are one reduction (over the four outputs and a row
of -bias) and one addition.

The results differ from im2col's by float32 rounding only, and are closer to the exact (float64) values
(tests/test_winograd.py). A block whose input is not all finite is computed by im2col instead: the transforms
subtract inputs, which turns an infinity into NaN where Keras gives +-inf (a pooled block is checked in its
output, which such an input always leaves holding NaN or the direct conv's infinities; see conv_blocks).
Training uses the same path for conv2d's forward pass and its stride-1 input gradient (a 3x3 conv of the padded
output gradient).

Measured on a 2-core AMD EPYC (AVX-512), 2 threads, 256 images: the benchmark CNN's five convs with Cin >= 32
took 93-97 ms against im2col's 122, and its whole predict of 512 images 246 against 290 ms (the CNN with
BatchNormalization 255 against 321). On few channels the transforms cost more than the multiplications save
(MIN_DEPTH).
"""
import math

import numpy as np

from . import gemm

# Winograd runs when the harmonic mean of the input and output depths, 2 Cin F / (Cin + F), is at least this:
# per tile it saves GEMM work in proportion to Cin * F and adds transforms in proportion to Cin + F. Measured
# against im2col (2 threads, 256 images, medians of 9): 16 -> 16 channels 0.74-0.85x, 16 -> 32 0.84-0.93x,
# 24 -> 32 0.88-1.05x, 32 -> 32 0.91-1.09x (1.00-1.09x with a 2x2 max-pool after it), 32 -> 64 0.99-1.16x,
# 48 -> 48 1.02-1.20x, 64 -> 64 and up 1.05-1.58x.
MIN_DEPTH = 32
# Fewest output tiles (2x2 pixels each) per call that run as Winograd. Transforming the kernel costs about what
# ~100 tiles save (0.26 ms for 128 -> 128 channels): one image of 8x8 or 16x16 maps ran 1.2-1.9x slower than
# im2col, 16 images of 8x8 (256 tiles) 1.3-1.6x faster; at 128-256 tiles it went either way. A single image of
# up to 32x32 pixels stays on im2col, so batch-1 latency is unchanged.
MIN_TILES = 512
# Bytes of one block's transformed input (16, tiles, Cin); 1-2 MB measured best of 0.5-4.
_BLOCK_BYTES = 1 << 20
# NumPy's ufunc buffer size (elements) while a block's transforms run. Their operands are views whose rows of
# 256-1088 floats do not merge into one stride; at the default 8192, NumPy >= 2.3's iterator copies such operands
# through its buffers to make 8192-element chunks (it stays in place only when (1 + buffered operands) * row >
# buffer size). At 256 every transform of the benchmark CNN runs in place: predict 0.89-0.90x the time on 1 and
# 2 threads (128-1024 measured alike), outputs bit-identical. Set per block inside np.errstate, which restores
# it (the setting is local to the thread's context), so callers never see it.
UFUNC_BUFFER = 256

# U = G g G^T, rows of G: g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2; kron(G, G) maps the 9 taps to 16.
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
_KERNEL_TRANSFORM = np.kron(_G, _G)  # (16, 9), float64
# Y = A^T m A, rows of A^T: m0 + m1 + m2, m1 - m2 - m3; kron(A^T, A^T) maps a tile's 16 products (index 4 i + j)
# to its 4 outputs (index 2 a + b). Its entries are 0 and +-1, so the GEMM's products are exact and its sums
# round as additions do.
_A_T = np.array([[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]])
_OUTPUT_TRANSFORM = np.kron(_A_T, _A_T)  # (4, 16)


def applies(attrs, shape, filters, out):
    """True when a conv2d with these attrs and `filters` outputs on an input of shape (B, H, W, Cin), output size
    out = (Ho, Wo), runs as Winograd."""
    tiles = shape[0] * -(-out[0] // 2) * -(-out[1] // 2)
    return (tuple(attrs["kernel_size"]) == (3, 3) and tuple(attrs["strides"]) == (1, 1)
            and tuple(attrs["dilation_rate"]) == (1, 1) and tiles >= MIN_TILES
            and 2 * shape[3] * filters >= MIN_DEPTH * (shape[3] + filters))


def fuses_pool(pool_attrs, out):
    """True when a max-pool with these attrs after an output of size out = (Ho, Wo) takes each output tile's max."""
    return (tuple(pool_attrs["pool_size"]) == (2, 2) and tuple(pool_attrs["strides"]) == (2, 2)
            and out[0] % 2 == 0 and out[1] % 2 == 0)


def transformed_kernel(kernel):
    """(3, 3, Cin, F) kernel -> U (16, Cin, F), computed in float64 and rounded once to the kernel's dtype."""
    channels, filters = kernel.shape[2:]
    u = _KERNEL_TRANSFORM @ kernel.reshape(9, channels * filters).astype(np.float64)
    return u.reshape(16, channels, filters).astype(kernel.dtype)


def _b_calls(lo, hi, axis, dst):
    """(ufunc, a, b, out) calls that set dst[k] = (B^T s)[k], k = 0..3, where s0, s1 are lo's two halves along
    `axis` and s2, s3 are hi's: s0 - s2 and s1 - s3 in one call (lo - hi), s1 + s2, s2 - s1."""
    s1, s2 = np.moveaxis(lo, axis, 0)[1], np.moveaxis(hi, axis, 0)[0]
    return [(np.subtract, lo, hi, np.moveaxis(dst[0::3], 0, axis)),
            (np.add, s1, s2, dst[1]), (np.subtract, s2, s1, dst[2])]


def _column_fills(shape, pads, th, tw):
    """[(index into the padded block, column slice of the input)] copying an input block (n, H, W, C) into the
    padded block (n, 2 th + 2, 2, tw + 1, C), which holds padded column 2q + s at [:, :, s, q]: one per parity s."""
    (top, _), (left, _) = pads
    rows, cols = min(shape[1], 2 * th + 2 - top), min(shape[2], 2 * tw + 2 - left)
    fills = []
    for parity in (0, 1):
        first = left + (parity - left) % 2  # the first padded column of this parity that holds input
        count, q = len(range(first - left, cols, 2)), (first - parity) // 2
        if count:
            index = (slice(None), slice(top, top + rows), parity, slice(q, q + count))
            fills.append((index, (slice(None), slice(0, rows), slice(first - left, cols, 2))))
    return fills


def _block_calls(n, th, tw, u, rows, padded, row_sums, v, m, y, a_t):
    """The calls of one block of n samples, on views of the buffers made once per block size: (transforms in,
    matmul calls m = V U (gemm.matmul_calls, parts of `rows`), matmul calls y = kron(A^T, A^T) m (gemm.column_calls;
    a_t is _OUTPUT_TRANSFORM in the block's dtype), y's (2 a, 2 b, tiles * F) view)."""
    channels, filters = u.shape[1:]
    # Padded rows 2r + i of tile row r, i = 0..3: the halves of (n, th + 1, 2, row), whole padded rows each.
    pairs = padded[:n].reshape(n, th + 1, 2, -1)
    calls = _b_calls(pairs[:, :th], pairs[:, 1:], 2, row_sums[:, :n].reshape(4, n, th, -1))
    # Columns 2c + j likewise: even (s = 0) and odd (s = 1) columns q = c and c + 1, runs of tw C floats.
    sums = row_sums[:, :n]  # (4 i, n, th, 2 s, tw + 1, C)
    vb = v[:, :, :n]        # (4 i, 4 j, n, th, tw, C)
    calls += _b_calls(sums[:, :, :, :, :tw], sums[:, :, :, :, 1:], 3, vb.swapaxes(0, 1))
    tiles = n * th * tw
    products = gemm.matmul_calls(vb.reshape(16, tiles, channels), u, m[:, :tiles], rows)
    size = tiles * filters
    yb = y[:4, :size]
    outputs = gemm.column_calls(a_t, m[:, :tiles].reshape(16, size), yb, gemm.part_rows(16, 4))
    return calls, products, outputs, yb.reshape(2, 2, size)


def conv_blocks(x, pads, out, u, z, exact, pooled=False, epilogue=None):
    """Yield (start, stop, zb): the bias-free 3x3 correlation of samples start:stop of x (B, H, W, Cin) with the
    kernel whose transformed_kernel is u (16, Cin, F), zero-padded by pads ((top, bottom), (left, right)):
    (n, Ho, Wo, F), or with pooled (fuses_pool true) each output tile's max, (n, Ho / 2, Wo / 2, F), with
    epilogue (an activations.BiasRelu) applied to it when given.
    zb is z[start:stop] when z is given, else a scratch array reused from block to block. A block whose input
    holds an infinity or NaN takes exact(start, stop), the same correlation computed directly: the transforms'
    differences would turn an infinity into NaN (inf - inf). A pooled block is checked in its output instead,
    a quarter of the size or less. That finds every such block: an infinite input d reaches an output pixel
    through terms A^T A B^T B U (coefficients 0 or +-1; U rounded from float64 keeps each term's sign) that sum
    to the pixel's kernel weight for d, so the pixel is +-inf with the direct conv's sign, or NaN (terms of both
    signs, inf * 0, a NaN input), never finite. A tile's max then holds NaN or +inf, kept by the floor and bias,
    or only the -infs of the direct conv, which its max drops too. (The output GEMM's zero coefficients make NaN
    of an infinite product in the tile's other outputs as well, which only sends the block to exact too. A finite
    input whose transforms overflow is found when that leaves +inf or NaN.)"""
    channels, filters = x.shape[3], u.shape[2]
    th, tw = -(-out[0] // 2), -(-out[1] // 2)  # tiles down and across; an odd size gets a cropped last tile
    rows = gemm.part_rows(channels, filters)
    per = max(1, min(len(x), _BLOCK_BYTES // (16 * th * tw * channels * x.itemsize)))
    # Tile (r, c) reads padded rows 2r..2r+3 and columns 2c..2c+3: 2 th + 2 rows, 2 tw + 2 columns. Beyond the
    # conv's own padding these are zeros whose outputs are cropped. Borders are written once per call. Even and
    # odd columns are kept apart (column 2q + s at [:, :, s, q]), so that the column transform reads runs of
    # tw C floats instead of C: 135 -> 89 us per block of 2 x 32 x 32 x 32, for 7 -> 15 us more in the copy.
    padded = np.zeros((per, 2 * th + 2, 2, tw + 1, channels), x.dtype)
    fills = _column_fills(x.shape, pads, th, tw)
    row_sums = np.empty((4, per, th, 2, tw + 1, channels), x.dtype)  # B^T applied down each tile's 4 rows
    v = np.empty((4, 4, per, th, tw, channels), x.dtype)              # B^T d B: (row i, column j, tiles, Cin)
    m = np.empty((16, per * th * tw, filters), x.dtype)               # U * V summed over Cin
    # A^T m A: output (a, b) of each tile at y[2 a + b]; for a pooled output with relu, a fifth row holds the
    # floor -bias, tiled like `bias` (see _pool_epilogue)
    size = per * th * tw * filters
    floor, bias = _pool_epilogue(epilogue, filters, size, x.dtype) if pooled else (None, None)
    y = np.empty((4 if floor is None else 5, size), x.dtype)
    if floor is not None:
        y[4] = floor
    crop = (2 * th, 2 * tw) != tuple(out)
    a_t = _OUTPUT_TRANSFORM.astype(x.dtype)
    ones = np.ones(max(padded.size, size), x.dtype)  # for all_finite's dot product
    # z, or one block's scratch output (the first block is the largest)
    scratch = None if z is not None else np.empty((per,) + ((th, tw) if pooled else tuple(out)) + (filters,), x.dtype)
    plans = {}  # block size -> its calls on views made once: at most two sizes, each block's Python work is the calls
    for start in range(0, len(x), per):
        stop = min(start + per, len(x))
        n = stop - start
        xp, xb = padded[:n], x[start:stop]
        for index, columns in fills:
            xp[index] = xb[columns]
        zb = _destination(z, scratch, start, stop)
        # An infinity or NaN (or an overflowing sum) is rare, so checked per block: here in the input, or after
        # the block's calls in a pooled output
        if not (pooled or all_finite(xp, ones)):
            yield start, stop, _exact_block(exact, start, stop, zb, pooled, epilogue)
            continue
        if n not in plans:
            calls_in, products, outputs, yb = _block_calls(n, th, tw, u, rows, padded, row_sums, v, m, y, a_t)
            if pooled:  # the rows to take the max over (the floor included) and the tiled bias, or None
                used = yb.shape[-1]
                result = y[:, :used], (bias[:used] if bias is not None else None)
            else:  # (a, b, n, r, c, F) -> (n, r, a, c, b, F): output pixel (2r + a, 2c + b)
                result = yb.reshape(2, 2, n, th, tw, filters).transpose(2, 3, 0, 4, 1, 5)
            plans[n] = calls_in, products, outputs, result
        calls_in, products, outputs, result = plans[n]
        # errstate restores the caller's buffer size on exit; a pooled block's non-finite values are found in its
        # output, so its transforms may meet them (inf - inf) without a warning
        with np.errstate(over="ignore", invalid="ignore"):
            np.setbufsize(UFUNC_BUFFER)
            for ufunc, a, b, dst in calls_in:
                ufunc(a, b, out=dst)
            gemm.run(products)
            gemm.run(outputs)
            if pooled:  # (a, b, n, r, c, F) -> zb (n, r, c, F): max(max over (a, b), -bias) + bias
                flat = zb.reshape(-1)
                np.maximum.reduce(result[0], axis=0, out=flat)
                if result[1] is not None:
                    np.add(flat, result[1], out=flat)
            elif crop:  # an odd output size: the last tile's second row or column is cut off
                zb[...] = result.reshape(n, 2 * th, 2 * tw, filters)[:, :out[0], :out[1]]
            else:
                zb.reshape(n, th, 2, tw, 2, filters)[...] = result
        if pooled and not all_finite(zb, ones):
            zb = _exact_block(exact, start, stop, zb, pooled, epilogue)
        yield start, stop, zb


def _exact_block(exact, start, stop, zb, pooled, epilogue):
    """zb set to the block's output computed directly by exact(start, stop) (pooled and epilogue as in
    conv_blocks); returns zb."""
    full = exact(start, stop)
    if pooled:
        n, th, tw, filters = zb.shape
        np.max(full.reshape(n, th, 2, tw, 2, filters), axis=(2, 4), out=zb)  # fuses_pool: even output sizes
        if epilogue is not None:
            epilogue(zb)
    else:
        zb[...] = full
    return zb


def _pool_epilogue(epilogue, filters, size, dtype):
    """(floor, bias) of a pooled output's epilogue, each tiled to `size` or None: relu(max + b) is computed as
    max(max, -b) + b (the same values: where max < -b, -b + b is 0 exactly), so that the max over a tile's
    four outputs and relu's floor are one reduction and the bias one addition."""
    bias = getattr(epilogue, "bias", None)
    relu = epilogue is not None and epilogue.relu
    tiled = np.tile(np.asarray(bias, dtype), size // filters) if bias is not None else None
    floor = (-tiled if tiled is not None else np.zeros(size, dtype)) if relu else None
    return floor, tiled


def all_finite(block, ones):
    """False if C-contiguous `block` holds an infinity or NaN (or finite values whose sum overflows): a dot product
    with ones propagates them as a sum does, and runs 2x faster than np.sum's pairwise loop (13.6 -> 6.3 us on a
    block of 2 x 34 x 34 x 32 float32)."""
    flat = block.reshape(-1)
    return math.isfinite(np.dot(flat, ones[:flat.size]))


def _destination(z, scratch, start, stop):
    """Where samples start:stop's output goes: z[start:stop], or the scratch block when there is no z."""
    return z[start:stop] if z is not None else scratch[:stop - start]
