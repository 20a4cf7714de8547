"""TensorFlow's CPU float32 tanh and sigmoid, bit for bit: the kernels behind numerics="tensorflow".

TensorFlow computes tanh and sigmoid with Eigen's own approximations, not the C library's: tanh is a
[9/8] rational function of the clamped input, sigmoid a range-reduced exp polynomial followed by
e / (1 + e). Both are up to ~6 ulp off the exact value where NumPy's are within ~1.5, and a recurrent
layer compounds that difference over its steps (an LSTM over 64 steps: up to 1e-5 in its softmax
output). Running these instead makes the runtime's float32 rounding follow Keras's.

Written for the official x86-64 TensorFlow wheels, whose Eigen is built with AVX and without FMA:
every multiply-add below rounds twice, and elementwise kernels run on 8-float packets, with the last
(size % 8) values of a tensor on Eigen's scalar path (the same tanh; sigmoid as exp(x) / (1 + exp(x))
with the C library's expf). TensorFlow flushes denormal results to zero; so do these.
tests/test_tf_numerics.py checks them against the installed TensorFlow on millions of points.
"""
import numpy as np

_F32 = np.float32
_PACKET = 8  # floats per AVX register: Eigen's packet size in the x86-64 wheels
_TINY = np.finfo(np.float32).tiny

# Eigen's ptanh_float (non-FMA build): the clamp where the rational function reaches exactly 1, and the
# odd numerator / even denominator coefficients in x^2, highest degree first.
_TANH_CLAMP = _F32(7.90738964080810547)
_TANH_NUM = [_F32(c) for c in (1.394553628e-8, 2.102733560e-5, 3.520756727e-3, 1.340216100e-1)]
_TANH_DEN = [_F32(c) for c in (8.015776984e-7, 3.326951409e-4, 2.597254514e-2, 4.673548340e-1, 1.0)]

# Eigen's scalar_logistic_op<float>::packetOp: exp(x / 2) by Cephes-style range reduction and a degree-5
# polynomial, squared.
_EXP_HI, _EXP_LO = _F32(16.6355324), _F32(-104.0)
_LOG2E, _LN2_HI, _LN2_LO = _F32(1.44269504088896341), _F32(-0.693359375), _F32(2.12194440e-4)
_P2, _P3 = _F32(0.49999141693115234375), _F32(0.16666877269744873046875)
_P4, _P5 = _F32(4.1898667812347412109375e-2), _F32(8.33471305668354034423828125e-3)


def _flush_denormals(y):
    """Zero (keeping the sign) every result below float32's smallest normal number, as TensorFlow's
    flush-to-zero mode does."""
    np.putmask(y, np.abs(y) < _TINY, y * _F32(0))
    return y


def tanh(x):
    """tanh(x) as TensorFlow's CPU kernel computes it (float32)."""
    x = np.clip(np.asarray(x, dtype=_F32), -_TANH_CLAMP, _TANH_CLAMP)
    x2 = x * x
    p = np.full_like(x, _TANH_NUM[0])
    for c in _TANH_NUM[1:]:
        p *= x2
        p += c
    q = np.full_like(x, _TANH_DEN[0])
    for c in _TANH_DEN[1:]:
        q *= x2
        q += c
    p *= x2 * x  # x + x^3 * p: the numerator's constant term is 1
    p += x
    p /= q
    return _flush_denormals(p)


def _sigmoid_packets(x):
    """Eigen's vectorised logistic on float32 x (any shape)."""
    zero = x < _EXP_LO
    h = np.minimum(x, _EXP_HI) * _F32(0.5)
    m = np.floor(h * _LOG2E + _F32(0.5))
    r = m * _LN2_HI + h
    r += m * _LN2_LO
    r2 = r * r
    p_even = r2 * _P4 + _P2
    p = r2 * _P5 + _P3
    p *= r
    p += p_even
    p *= r2
    p += r + _F32(1)
    # 2^m by building the float's exponent bits; Eigen clamps the biased exponent to [0, 255]
    scale = (np.clip(m + _F32(127), 0, 255).astype(np.int32) << 23).view(_F32)
    p *= scale
    p *= p  # exp(x) = exp(x / 2)^2
    y = p / (p + _F32(1))
    np.putmask(y, zero, _F32(0))
    return y


def sigmoid(x):
    """sigmoid(x) as TensorFlow's CPU kernel computes it for a tensor of x's shape (float32)."""
    x = np.asarray(x, dtype=_F32)
    with np.errstate(all="ignore"):  # inf and NaN inputs pass through the reduction as in Eigen
        y = _sigmoid_packets(x)
        tail = x.size % _PACKET
        if tail:  # Eigen's scalar path: expf(min(x, hi)) / (1 + expf(...)); glibc's expf is correctly rounded
            y = np.ascontiguousarray(y)  # the tail is the last values in row-major order (y may follow x's layout)
            flat = y.reshape(-1)
            e = np.exp(np.minimum(x.reshape(-1)[-tail:], _EXP_HI).astype(np.float64)).astype(_F32)
            e = _flush_denormals(e)
            flat[-tail:] = e / (e + _F32(1))
    return _flush_denormals(y)
