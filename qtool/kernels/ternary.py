"""TQ1_0 and TQ2_0: ggml's ternary 256-weight blocks (BitNet b1.58, TriLMs), quantized and dequantized.

Every weight becomes a trit t in {0, 1, 2} standing for t - 1 in {-1, 0, +1}, times one half-precision
scale d per block: ``w = (t - 1) * d``. The scale is the block's largest magnitude, and a weight's trit
is ``lroundf(x / amax) + 1``, so it is +-1 from |x| >= amax / 2 on.

Block layouts (little-endian, ggml-common.h)::

    TQ1_0  54 B  | qs[48] | qh[4] | d f16 |     1.6875 bits per weight
    TQ2_0  66 B  | qs[64] | d f16 |             2.0625 bits per weight

TQ2_0: four 2-bit trits per byte. Byte c of chunk k (c = 0..31, k = 0..1) holds weights
128k + c + 32n, n = 0..3, weight n in bits 2n+1..2n::

    qs[32k + c] = | t[128k+c+96] | t[128k+c+64] | t[128k+c+32] | t[128k+c] |
                    bits 7..6      bits 5..4      bits 3..2      bits 1..0

TQ1_0: five trits per byte as a base-3 fraction. The trits of a group read as a base-3 number
``q = t0*81 + t1*27 + t2*9 + t3*3 + t4`` (the first trit most significant; q <= 242) are stored as
``ceil(q * 256 / 243)``, so that ``(byte * 3^n mod 256) * 3 >> 8`` gives back trit n::

    qs[c],      c = 0..31   trits of weights c + 32n,          n = 0..4   (weights   0..159)
    qs[32 + c], c = 0..15   trits of weights 160 + c + 16n,    n = 0..4   (weights 160..239)
    qh[c],      c = 0..3    trits of weights 240 + c + 4n,     n = 0..3,  a zero fifth trit
                                                                          (weights 240..255)

Rounding: ggml rounds ``x * id`` with lroundf, ``id = 1/amax``. That product is at most 1 + 2^-23 in
magnitude except where 1/amax overflows to inf (amax below 2^-128: all-subnormal blocks); there the
product is inf or NaN, lroundf returns LONG_MIN, whose low 32 bits are 0, and every trit is 1 (weight
0), which a zero ``id`` gives too. With |x * id| < 1.5 round-half-away-from-zero is two comparisons
against +-0.5, which vectorizes where a call to lroundf would not.
"""

from __future__ import annotations

import numpy as np

from qtool.kernels.common import F32, block_drivers, jit, load_fp16, store_fp16

QK_K = 256
TQ1_0_BYTES = 54
TQ2_0_BYTES = 66


@jit
def _inverse_scale(xb):
    """(amax, id) of a block xb float32[256]: its largest |x| and ggml's ``amax ? 1/amax : 0``, with an
    infinite reciprocal replaced by 0 (both give every weight the trit 1; see the module docstring)."""
    amax = F32(0.0)
    for j in range(QK_K):
        amax = max(amax, abs(xb[j]))
    if amax == F32(0.0):
        return amax, F32(0.0)
    inv = F32(1.0) / amax
    if np.isinf(inv):
        inv = F32(0.0)
    return amax, inv


@jit
def _trit(v):
    """lroundf(v) + 1 for |v| < 1.5: 0, 1 or 2 (NaN gives 1, as lroundf's LONG_MIN cast to int does)."""
    return np.int32(1) + np.int32(v >= F32(0.5)) - np.int32(v <= F32(-0.5))


@jit
def _base3_byte(q):
    """ceil(q * 256 / 243): a base-3 number q <= 242 as the byte TQ1_0 stores."""
    return np.uint8((q * np.int32(256) + np.int32(242)) // np.int32(243))


@jit
def tq1_0_block(xb, yb):
    """quantize_row_tq1_0_ref for one block: xb float32[256] -> yb uint8[54]."""
    amax, inv = _inverse_scale(xb)
    for c in range(32):
        q = np.int32(0)
        for n in range(5):
            q = q * np.int32(3) + _trit(xb[c + 32 * n] * inv)
        yb[c] = _base3_byte(q)
    for c in range(16):
        q = np.int32(0)
        for n in range(5):
            q = q * np.int32(3) + _trit(xb[160 + c + 16 * n] * inv)
        yb[32 + c] = _base3_byte(q)
    for c in range(4):
        q = np.int32(0)
        for n in range(4):
            q = q * np.int32(3) + _trit(xb[240 + c + 4 * n] * inv)
        yb[48 + c] = _base3_byte(q * np.int32(3))
    store_fp16(yb, 52, amax)


@jit
def tq2_0_block(xb, yb):
    """quantize_row_tq2_0_ref for one block: xb float32[256] -> yb uint8[66]."""
    amax, inv = _inverse_scale(xb)
    for k in range(2):
        for c in range(32):
            q = np.int32(0)
            for n in range(4):
                q |= _trit(xb[128 * k + c + 32 * n] * inv) << np.int32(2 * n)
            yb[32 * k + c] = np.uint8(q)
    store_fp16(yb, 64, amax)


@jit
def _unpack_trit(b, pow3):
    """Trit n of a TQ1_0 byte b (int32), pow3 = 3^n, as -1, 0 or +1: the top base-3 digit of
    (b * 3^n mod 256), minus 1."""
    q = (b * pow3) & np.int32(0xFF)
    return ((q * np.int32(3)) >> np.int32(8)) - np.int32(1)


@jit
def tq1_0_block_dequant(yb, y):
    """dequantize_row_tq1_0 for one block: yb uint8[54] -> y float32[256].

    One byte at a time, all its trits (ggml walks trit by trit); every weight is the same
    ``(float)(t - 1) * d``, so the order changes nothing but the speed (2x ggml's order in Numba).
    """
    d = load_fp16(yb, 52)
    _unpack_bytes(yb, 0, 32, 5, y, 0, d)
    _unpack_bytes(yb, 32, 16, 5, y, 160, d)
    _unpack_bytes(yb, 48, 4, 4, y, 240, d)


@jit
def _unpack_bytes(yb, src, nbytes, ntrits, y, dst, d):
    """The TQ1_0 bytes yb[src:src+nbytes], ntrits each: trit n of byte c is weight dst + nbytes*n + c."""
    for c in range(nbytes):
        b = np.int32(yb[src + c])
        pow3 = np.int32(1)
        for n in range(ntrits):
            y[dst + nbytes * n + c] = F32(_unpack_trit(b, pow3)) * d
            pow3 *= np.int32(3)


@jit
def tq2_0_block_dequant(yb, y):
    """dequantize_row_tq2_0 for one block: yb uint8[66] -> y float32[256] (the code 3 reads as +2).

    One byte at a time, its four weights written 32 apart (3x ggml's field-by-field order in Numba).
    """
    d = load_fp16(yb, 64)
    for k in range(2):
        for c in range(32):
            b = np.int32(yb[32 * k + c])
            for n in range(4):
                t = (b >> np.int32(2 * n)) & np.int32(3)
                y[128 * k + 32 * n + c] = F32(t - np.int32(1)) * d


# -- row drivers: rows float32[nrows, n] -> out uint8[nrows, n/256*size], and back ----------------

quantize_tq1_0, dequantize_tq1_0 = block_drivers(__name__, "tq1_0", QK_K, TQ1_0_BYTES, tq1_0_block, tq1_0_block_dequant)
quantize_tq2_0, dequantize_tq2_0 = block_drivers(__name__, "tq2_0", QK_K, TQ2_0_BYTES, tq2_0_block, tq2_0_block_dequant)
