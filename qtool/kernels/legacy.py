"""Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0: ggml's 32-weight legacy blocks, quantized and dequantized.

Block layouts (little-endian, ggml-common.h), 32 weights per block::

    Q4_0  18 B  | d f16 | qs[16]         |
    Q4_1  20 B  | d f16 | m f16 | qs[16] |
    Q5_0  22 B  | d f16 | qh[4] | qs[16] |
    Q5_1  24 B  | d f16 | m f16 | qh[4] | qs[16] |
    Q8_0  34 B  | d f16 | qs[32] (int8)  |

Nibbles: weight j of the first half sits in the low nibble of qs[j], weight j + 16 in the high one::

    qs[j] = | q[j+16] & 0xF  (bits 7..4) | q[j] & 0xF  (bits 3..0) |

Q5 fifth bits: qh[0..3] read as one little-endian uint32, bit j = bit 4 of q[j], j = 0..31.

Weights: ``w = (q - 8) * d`` (Q4_0), ``(q - 16) * d`` (Q5_0), ``q * d + m`` (Q4_1, Q5_1), ``q * d`` (Q8_0);
dequantized bit for bit, NaN payloads of corrupt scales included.

Two quantize paths, as ggml's quantize_q4_0 & co. choose them: without an importance vector (a
zero-length array here) the ``quantize_row_*_ref`` round-to-nearest; with one, the ``_impl``
weighted search (make_qx_quants for Q4_0/Q5_0, make_qkx3_quants for Q4_1/Q5_1). Q8_0 has only the
first. Every quantize driver returns the first row holding NaN or Inf (or -1), which the block scans of
the first path see at no cost (their largest magnitude, their order keys); the second path tests each row
before its search and leaves such a row unwritten (quantize() refuses the tensor either way).

The casts follow the C exactly as the reference build compiles them (cvttss2si / cvttps2dq): a float
becomes an int32 by truncation toward zero, NaN and out-of-range values become INT32_MIN, and an
``(int8_t)`` or ``(uint8_t)`` cast keeps the low byte of that. This only matters for degenerate
blocks (a scale whose reciprocal overflows, a range that overflows float32), which ggml quantizes
to garbage that we reproduce.
"""

from __future__ import annotations

import numba
import numpy as np

from qtool.kernels.common import (OUT, SCRATCH, F32, abs_max_bits, bits_f32, block_drivers, each_block,
                                 each_row_finite, f32_bits, first_true, first_with_abs_bits, float_at,
                                 holds_nonfinite, jit, jit_inline, lane_qx_search, largest_abs_of, load_fp16,
                                 order_key_range, pick, row_driver, specialize, store_fp16)
from qtool.kernels.search import SUB_LANES, make_qkx_quants_lanes, qkx_lanes_scratch, qx_lane_quants

QK = 32
_FLT_MAX = np.float32(np.finfo(np.float32).max)
_I32_MIN = np.int32(-2147483648)

#: "no importance vector" for the kernels (C's NULL)
NO_WEIGHTS = np.empty(0, dtype=np.float32)


# -- C casts -------------------------------------------------------------------------------------

@jit
def c_int(v):
    """C's (int) cast of a float32 on x86 (cvttss2si): truncation; NaN and out-of-range give INT32_MIN."""
    if v >= F32(-2147483648.0) and v < F32(2147483648.0):
        return np.int32(v)
    return _I32_MIN


@jit_inline
def c_int_roundf(v):
    """(int)roundf(v): round half away from zero, then the cvttss2si cast of c_int (NaN and out-of-range give
    INT32_MIN). Without branches, so that a loop of it vectorizes."""
    ok = (v >= F32(-2147483648.0)) & (v < F32(2147483648.0))
    inside = pick(ok, v, F32(0.0))
    i = np.int32(inside)
    frac = inside - F32(i)  # exact: |v| < 2^24 keeps F32(i) exact, and a larger v is an integer
    i = np.int32(i + np.int32(frac >= F32(0.5)) - np.int32(frac <= F32(-0.5)))
    return pick(ok, i, _I32_MIN)


# -- block statistics ----------------------------------------------------------------------------
# Block functions take the block's own slices (xb float32[32], yb uint8[type_size]): indices that
# start at zero let LLVM drop numba's negative-index wraparound and vectorize the loops.

@jit_inline
def _inverse(d):
    """``d ? 1.0f/d : 0.0f``."""
    if d != F32(0.0):
        return F32(1.0) / d
    return F32(0.0)


@jit
def _row_sigma2(x):
    """sum(x*x)/n over a whole row, accumulated in order in float32 (the _impl functions' sigma2)."""
    s = F32(0.0)
    for j in range(x.shape[0]):
        s += x[j] * x[j]
    return s / F32(x.shape[0])


@jit
def _block_weights(xb, qwb, sigma2, weight):
    """weight[j] = qwb[j] * sqrtf(sigma2 + xb[j]^2), the _impl functions' per-weight importance."""
    for j in range(QK):
        v = xb[j]
        weight[j] = qwb[j] * np.sqrt(sigma2 + v * v)


# -- packing -------------------------------------------------------------------------------------

@jit
def _store_u32(yb, p, v):
    for k in range(4):
        yb[p + k] = np.uint8((v >> np.uint32(8 * k)) & np.uint32(0xFF))


@jit
def _pack_q4(L, qs):
    """qs[j] = L[j] | L[j+16] << 4, j < 16 (L holds 4-bit codes)."""
    for j in range(16):
        qs[j] = np.uint8((np.int32(L[j]) | (np.int32(L[j + 16]) << 4)) & 0xFF)


@jit
def _pack_q5(a, b, j, qs):
    """Codes a = q[j], b = q[j+16] (uint32): their low nibbles into qs[j]; returns their qh bits."""
    qs[j] = np.uint8((a & np.uint32(0x0F)) | ((b & np.uint32(0x0F)) << np.uint32(4)))
    return (((a & np.uint32(0x10)) >> np.uint32(4)) << np.uint32(j)) | \
        (((b & np.uint32(0x10)) >> np.uint32(4)) << np.uint32(j + 16))


@jit
def _pack_q5_codes(L, yb, pqh, pqs):
    """Low nibbles of the 5-bit codes L[0..31] to qs at yb[pqs:], their bit 4 to the uint32 qh at yb[pqh:]."""
    qs = yb[pqs:pqs + 16]
    qh = np.uint32(0)
    for j in range(16):
        qh |= _pack_q5(np.uint32(np.uint8(L[j])), np.uint32(np.uint8(L[j + 16])), j, qs)
    _store_u32(yb, pqh, qh)


# -- row quantizers, reference (no importance) path ----------------------------------------------
# One function per row, indexing the row's arrays at block offsets: no per-block slices (each slice
# is a reference-counted array, whose NRT incref/decref cost more than the block's arithmetic) and
# no per-block calls (the helpers below are inlined by Numba, so LLVM sees one loop nest). The 16
# byte-wide steps of each block then vectorize: the casts are written branch-free with selects.

@jit_inline
def _code(v, hi):
    """MIN(hi, (int8_t)v) read back as the uint8 the C stores, in an int32; c_int's cast without a branch."""
    ok = (v >= F32(-2147483648.0)) & (v < F32(2147483648.0))
    i = pick(ok, np.int32(pick(ok, v, F32(0.0))), _I32_MIN)
    q = np.int32(np.int8(i))
    return pick(q < np.int32(hi), q, np.int32(hi)) & np.int32(0xFF)


@jit_inline
def _code_u8(v):
    """(uint8_t)v as the C compiles it: the low byte of c_int(v), branch-free."""
    ok = (v >= F32(-2147483648.0)) & (v < F32(2147483648.0))
    return pick(ok, np.int32(pick(ok, v, F32(0.0))), _I32_MIN) & np.int32(0xFF)


@jit_inline
def _put_u32(y, p, v):
    y[p] = np.uint8(v & np.uint32(0xFF))
    y[p + 1] = np.uint8((v >> np.uint32(8)) & np.uint32(0xFF))
    y[p + 2] = np.uint8((v >> np.uint32(16)) & np.uint32(0xFF))
    y[p + 3] = np.uint8(v >> np.uint32(24))


# The C scans a block in order and keeps the first value that ties (``if (amax < fabsf(v))``,
# ``if (v < min)``): the first element equal to the extreme, which matters for -x/+x and -0/+0. Here
# each element gets an int64 key, its float32 bits made ordered (magnitude bits for absmax; the
# sign-magnitude bits as a signed integer for min/max, -0 and +0 both 0) shifted left by 5, with the
# element's index in the low 5 bits, arranged so that the earlier index wins a tie. One integer
# max or min over the 32 keys (a reduction LLVM vectorizes, which it may not do for floats without
# fast-math) then names the element the C keeps. NaN never wins, as no comparison in the C is true
# for it, and the C's starting values (0, FLT_MAX, -FLT_MAX) are kept where nothing beats them.

_ABS_BITS = np.uint32(0x7FFFFFFF)
_INF_KEY = np.int64(0x7F800000)
_FLT_MAX_KEY = np.int64(0x7F7FFFFF)


@jit_inline
def _absmax_at(x, o):
    """The value of largest magnitude in x[o:o+32], the first one on ties (0 when all are zero): the largest
    magnitude's bit pattern by one vector reduction, then the first value holding it. A block holding a NaN,
    which C's comparisons never take, is scanned in order (_absmax_scan). Second: whether the block holds NaN
    or Inf."""
    m = abs_max_bits(x, o, QK)
    nonfinite = m >= np.uint32(0x7F800000)
    if m > np.uint32(0x7F800000):
        return _absmax_scan(x, o), nonfinite
    return pick(m == np.uint32(0), F32(0.0), x[o + first_with_abs_bits(x, o, QK, m)]), nonfinite


@jit_inline
def _absmax_scan(x, o):
    """_absmax_at by one pass of position-tagged keys, a NaN's counted as 0."""
    best = np.int64(0)
    for j in range(QK):
        a = np.int64(f32_bits(x[o + j]) & _ABS_BITS)
        a = a if a <= _INF_KEY else np.int64(0)  # NaN
        k = (a << 5) | np.int64(31 - j)
        best = k if k > best else best
    if (best >> 5) == 0:
        return F32(0.0)
    return x[o + 31 - (best & 31)]


@jit_inline
def _order_key(v):
    """float32 -> int64 in the float order, -0 == +0 (NaN: greater than +inf in magnitude)."""
    bits = f32_bits(v)
    a = np.int64(bits & _ABS_BITS)
    return -a if (bits >> np.uint32(31)) != np.uint32(0) else a


@jit_inline
def _min_max_nan_at(x, o):
    """_min_max_scan for a block where a NaN won the plain key scan: NaN keys masked out."""
    kmin = np.int64(0x7FFFFFFFFFFFFFFF)
    kmax = np.int64(-0x7FFFFFFFFFFFFFFF)
    for j in range(QK):
        v = x[o + j]
        k = _order_key(v)
        nan = v != v
        k1 = ((_INF_KEY + 1) if nan else k) << 5 | np.int64(j)
        k2 = ((-_INF_KEY - 1) if nan else k) << 5 | np.int64(31 - j)
        kmin = k1 if k1 < kmin else kmin
        kmax = k2 if k2 > kmax else kmax
    mn = _FLT_MAX if (kmin >> 5) > _FLT_MAX_KEY else x[o + (kmin & 31)]
    mx = -_FLT_MAX if (kmax >> 5) < -_FLT_MAX_KEY else x[o + 31 - (kmax & 31)]
    return mn, mx


@jit_inline
def _key_value(k):
    """The float32 whose order key (common.order_key_range) is k, for a key other than 0."""
    return bits_f32(pick(k < np.int32(0), np.uint32(np.uint32(-k) | np.uint32(0x80000000)), np.uint32(k)))


@jit_inline
def _min_max_at(x, o):
    """(min, max) of x[o:o+32] as the C finds them from (FLT_MAX, -FLT_MAX): the block's smallest and largest
    order keys, one vector reduction each. Equal keys are equal floats except 0, -0 and +0 alike, where the C
    keeps the first zero it meets; a NaN's key lies beyond +-inf. A block whose smallest or largest key is 0
    or a NaN's is scanned again in order (_min_max_scan). Third: whether the block holds NaN or Inf."""
    kmin, kmax = order_key_range(x, o, QK)
    nonfinite = (kmin <= np.int32(-_INF_KEY)) | (kmax >= np.int32(_INF_KEY))
    if (kmin < np.int32(-_INF_KEY)) | (kmax > np.int32(_INF_KEY)) | (kmin == np.int32(0)) | (kmax == np.int32(0)):
        mn, mx = _min_max_scan(x, o)
        return mn, mx, nonfinite
    mn = pick(kmin > np.int32(_FLT_MAX_KEY), _FLT_MAX, _key_value(kmin))
    mx = pick(kmax < np.int32(-_FLT_MAX_KEY), -_FLT_MAX, _key_value(kmax))
    return mn, mx, nonfinite


@jit_inline
def _min_max_scan(x, o):
    """(min, max) of x[o:o+32] as the C finds them from (FLT_MAX, -FLT_MAX): first element on ties.

    The keys of a NaN lie beyond those of +-inf, so a NaN can only spoil the scan by winning it (a
    negative NaN the min, a positive NaN the max), which its key shows: then the block is scanned
    again with NaN masked out. A +NaN losing the min or a -NaN losing the max changes nothing."""
    kmin = np.int64(0x7FFFFFFFFFFFFFFF)
    kmax = np.int64(-0x7FFFFFFFFFFFFFFF)
    for j in range(QK):
        k = _order_key(x[o + j]) << 5
        k1 = k | np.int64(j)
        k2 = k | np.int64(31 - j)
        kmin = k1 if k1 < kmin else kmin
        kmax = k2 if k2 > kmax else kmax
    if (kmin >> 5) < -_INF_KEY or (kmax >> 5) > _INF_KEY:
        return _min_max_nan_at(x, o)
    mn = _FLT_MAX if (kmin >> 5) > _FLT_MAX_KEY else x[o + (kmin & 31)]
    mx = -_FLT_MAX if (kmax >> 5) < -_FLT_MAX_KEY else x[o + 31 - (kmax & 31)]
    return mn, mx


NMAX = QH = CODE = None  # bound per row function by specialize


def _absmax_row(x, y, mm):
    """quantize_row_q4_0_ref (NMAX 8) / q5_0_ref (NMAX 16, QH: fifth bits in qh): x float32[n] -> y;
    mm float32[2, n/32] scratch (two passes, as _min_max_row). Returns whether the row holds NaN or Inf."""
    nb = x.shape[0] // QK
    amax = mm[0]
    nonfinite = False
    for ib in range(nb):
        amax[ib], block_nonfinite = _absmax_at(x, ib * QK)
        nonfinite |= block_nonfinite
    for ib in range(nb):
        o = ib * QK
        p = ib * (22 if QH else 18)
        d = amax[ib] / F32(-NMAX)
        idv = _inverse(d)
        store_fp16(y, p, d)
        qh = np.uint32(0)
        for j in range(16):
            a = _code(x[o + j] * idv + F32(NMAX + 0.5), 2 * NMAX - 1)
            b = _code(x[o + 16 + j] * idv + F32(NMAX + 0.5), 2 * NMAX - 1)
            if QH:
                y[p + 6 + j] = np.uint8((a & np.int32(0x0F)) | ((b & np.int32(0x0F)) << 4))
                qh |= (np.uint32((a >> 4) & 1) << np.uint32(j)) | (np.uint32((b >> 4) & 1) << np.uint32(j + 16))
            else:
                y[p + 2 + j] = np.uint8(a | (b << 4))  # the C ORs the uint8 codes: no mask
        if QH:
            _put_u32(y, p + 2, qh)
    return nonfinite


def _min_max_row(x, y, mm):
    """quantize_row_q4_1_ref (NMAX 15) / q5_1_ref (NMAX 31, QH: fifth bits in qh), codes cast by CODE:
    x float32[n] -> y; mm float32[2, n/32] scratch (mins, maxs).

    Two passes: every block's min and max first (independent reductions the CPU overlaps), then
    the scales and codes, on a row that the first pass has brought into cache. Returns whether the row holds
    NaN or Inf."""
    nb = x.shape[0] // QK
    mins = mm[0]
    maxs = mm[1]
    nonfinite = False
    for ib in range(nb):
        mins[ib], maxs[ib], block_nonfinite = _min_max_at(x, ib * QK)
        nonfinite |= block_nonfinite
    for ib in range(nb):
        o = ib * QK
        p = ib * (24 if QH else 20)
        mn = mins[ib]
        d = (maxs[ib] - mn) / F32(NMAX)
        idv = _inverse(d)
        store_fp16(y, p, d)
        store_fp16(y, p + 2, mn)
        qh = np.uint32(0)
        for j in range(16):
            a = CODE((x[o + j] - mn) * idv + F32(0.5))
            b = CODE((x[o + 16 + j] - mn) * idv + F32(0.5))
            if QH:
                y[p + 8 + j] = np.uint8((a & np.int32(0x0F)) | ((b & np.int32(0x0F)) << 4))
                qh |= (np.uint32((a >> 4) & 1) << np.uint32(j)) | (np.uint32((b >> 4) & 1) << np.uint32(j + 16))
            else:
                y[p + 4 + j] = np.uint8(a | (b << 4))
        if QH:
            _put_u32(y, p + 4, qh)
    return nonfinite


@jit_inline
def _code_15(v):
    """MIN(15, (int8_t)v) as quantize_row_q4_1_ref stores it."""
    return _code(v, 15)


q4_0_row_ref = specialize(_absmax_row, __name__, "q4_0_row_ref", "quantize_row_q4_0_ref over one row.", jit,
                          NMAX=8, QH=False)
q5_0_row_ref = specialize(_absmax_row, __name__, "q5_0_row_ref", "quantize_row_q5_0_ref over one row.", jit,
                          NMAX=16, QH=True)
q4_1_row_ref = specialize(_min_max_row, __name__, "q4_1_row_ref", "quantize_row_q4_1_ref over one row.", jit,
                          NMAX=15, QH=False, CODE=_code_15)
q5_1_row_ref = specialize(_min_max_row, __name__, "q5_1_row_ref", "quantize_row_q5_1_ref over one row.", jit,
                          NMAX=31, QH=True, CODE=_code_u8)


@jit
def q8_0_row(x, y):
    """quantize_row_q8_0_ref over one row: x float32[n], or bfloat16 words uint16[n] (their values, exactly as
    widened) -> y uint8[n/32*34]; returns whether the row holds NaN or Inf. Every step inlined and without
    branches (the largest |x| one vector reduction, the codes' rounding selects), so that a block's 32 codes
    are a few vector instructions: ~2x the same steps through calls and branches."""
    nonfinite = False
    for ib in range(x.shape[0] // QK):
        m = abs_max_bits(x, ib * QK, QK)
        nonfinite |= m >= np.uint32(0x7F800000)
        d = largest_abs_of(m, x, ib * QK, QK) / F32(127.0)
        store_fp16(y, 34 * ib, d)
        inv = _inverse(d)
        for j in range(QK):
            y[34 * ib + 2 + j] = np.uint8(c_int_roundf(float_at(x, ib * QK + j) * inv) & np.int32(0xFF))
    return nonfinite


# -- row quantizers, importance-weighted path ----------------------------------------------------
# sigma2: the row's; s: per-row scratch. Each runs its blocks' search sixteen blocks at a time side by side.

@jit
def _fill_lanes(x, qw, sigma2, first, weight, xt, wt):
    """Blocks first, first + 1, ... of the row x into the columns of xt (float32[32, SUB_LANES]) and their
    importance qw*sqrtf(sigma2 + x^2) into wt, a block per lane; past the row's last block the lanes repeat it.
    weight: float32[32] scratch."""
    nb = x.shape[0] // QK
    for lane in range(SUB_LANES):
        ib = min(first + lane, nb - 1)
        xb = x[ib * QK:(ib + 1) * QK]
        _block_weights(xb, qw[ib * QK:(ib + 1) * QK], sigma2, weight)
        for j in range(QK):
            xt[j, lane] = xb[j]
            wt[j, lane] = weight[j]


@jit
def _qx_lanes_scratch():
    """Per-row scratch of _qx_row_impl: xt, wt float32[32, SUB_LANES]; weight float32[32]; L int8[32]; found
    float32[3, SUB_LANES] (scale, inverse scale, largest |x| of each lane)."""
    return (np.empty((QK, SUB_LANES), np.float32), np.empty((QK, SUB_LANES), np.float32), np.empty(QK, np.float32),
            np.empty(QK, np.int8), np.empty((3, SUB_LANES), np.float32))


def _qx_row_impl(x, qw, sigma2, y, s):
    """quantize_row_q4_0_impl (NMAX 8) / q5_0_impl (NMAX 16, QH) with quant_weights over one row: x float32[n]
    -> y uint8[n/32 * (18 or 22)]; s = _qx_lanes_scratch(). Each block's make_qx_quants(32, NMAX, x, L, 1, w)
    runs SUB_LANES blocks at a time side by side (common.lane_qx_search, block per lane, as Q6_K's sub-blocks);
    a last group of fewer blocks fills its spare lanes with its last block."""
    xt, wt, weight, L, found = s
    scales = found[0]
    inverse = found[1]
    amax = found[2]
    nb = x.shape[0] // QK
    for first in range(0, nb, SUB_LANES):
        _fill_lanes(x, qw, sigma2, first, weight, xt, wt)
        lane_qx_search(xt, wt, QK, NMAX, scales, inverse, amax)
        for lane in range(min(SUB_LANES, nb - first)):
            yb = y[(first + lane) * OUT:(first + lane + 1) * OUT]
            searched = qx_lane_quants(NMAX, xt, lane, inverse, amax, L, 0)
            store_fp16(yb, 0, scales[lane] if searched else F32(0.0))
            if QH:
                _pack_q5_codes(L, yb, 2, 6)
            else:
                _pack_q4(L, yb[2:18])


@jit
def _qkx_lanes_scratch():
    """Per-row scratch of _qkx_row_impl: xt, wt float32[32, SUB_LANES]; weight float32[32]; L uint8[32*SUB_LANES];
    scales, mins float32[SUB_LANES]; the lane search's own."""
    return (np.empty((QK, SUB_LANES), np.float32), np.empty((QK, SUB_LANES), np.float32), np.empty(QK, np.float32),
            np.empty(QK * SUB_LANES, np.uint8), np.empty(SUB_LANES, np.float32), np.empty(SUB_LANES, np.float32),
            qkx_lanes_scratch(QK))


def _qkx_row_impl(x, qw, sigma2, y, s):
    """quantize_row_q4_1_impl (NMAX 15) / q5_1_impl (NMAX 31, QH) with quant_weights over one row: x float32[n]
    -> y uint8[n/32 * (20 or 24)]; s = _qkx_lanes_scratch(). Each block's make_qkx3_quants(32, NMAX, ..., -0.9,
    0.05, 36) runs SUB_LANES blocks at a time side by side (search.make_qkx_quants_lanes, block per lane, as
    Q4_K's and Q5_K's sub-blocks); a last group of fewer blocks fills its spare lanes with its last block."""
    xt, wt, weight, L, scales, mins, lanes = s
    nb = x.shape[0] // QK
    for first in range(0, nb, SUB_LANES):
        _fill_lanes(x, qw, sigma2, first, weight, xt, wt)
        make_qkx_quants_lanes(QK, NMAX, xt, wt, F32(-0.9), F32(0.05), 36, False, True, L, scales, mins, lanes)
        for lane in range(min(SUB_LANES, nb - first)):
            yb = y[(first + lane) * OUT:(first + lane + 1) * OUT]
            codes = L[lane * QK:(lane + 1) * QK]
            store_fp16(yb, 0, scales[lane])
            store_fp16(yb, 2, -mins[lane])
            if QH:
                _pack_q5_codes(codes, yb, 4, 8)
            else:
                _pack_q4(codes, yb[4:20])


q4_0_row_impl = specialize(_qx_row_impl, __name__, "q4_0_row_impl", "quantize_row_q4_0_impl over one row.", jit,
                           NMAX=8, QH=False, OUT=18)
q5_0_row_impl = specialize(_qx_row_impl, __name__, "q5_0_row_impl", "quantize_row_q5_0_impl over one row.", jit,
                           NMAX=16, QH=True, OUT=22)
q4_1_row_impl = specialize(_qkx_row_impl, __name__, "q4_1_row_impl", "quantize_row_q4_1_impl over one row.", jit,
                           NMAX=15, QH=False, OUT=20)
q5_1_row_impl = specialize(_qkx_row_impl, __name__, "q5_1_row_impl", "quantize_row_q5_1_impl over one row.", jit,
                           NMAX=31, QH=True, OUT=24)


# -- quantize drivers: rows float32 [nrows, n], qw float32 [n] or [0], out uint8 [nrows, n/32*size] --

REF = IMPL = None  # bound per driver by block_drivers, as SCRATCH and OUT


def _rows_by_row(rows, qw, out):
    """One type's quantize over all rows: without an importance vector REF(x, y, mm) per row (mm float32[2, n/32]
    scratch), which quantizes the row as ggml does whatever it holds and says whether it holds NaN or Inf; with
    one IMPL(x, qw, sigma2, y, s) per row, s = SCRATCH() per row, for rows without NaN and Inf (a row holding
    one is found first and left unwritten). Returns the first row holding NaN or Inf, or -1."""
    nrows, n = rows.shape
    nonfinite = np.zeros(nrows, dtype=np.bool_)
    if qw.shape[0] == 0:
        for r in numba.prange(nrows):
            nonfinite[r] = REF(rows[r], out[r], np.empty((2, n // QK), dtype=np.float32))
    else:
        for r in numba.prange(nrows):
            nonfinite[r] = holds_nonfinite(rows[r])
            if not nonfinite[r]:
                IMPL(rows[r], qw, _row_sigma2(rows[r]), out[r], SCRATCH())
    return first_true(nonfinite)


# -- dequantizers: data uint8 [nrows, nb*size] -> out float32 [nrows, nb*32] ---------------------

@jit
def _qh_bit(qh, j):
    """Bit 4 of code j from the little-endian uint32 qh (uint8[4])."""
    return np.int32((qh[j >> 3] >> np.uint8(j & 7)) & np.uint8(1)) << 4


@jit
def _nan_first_add(p, m):
    """p + m as ggml's build computes ``x*d + m`` (addss with the product first) when both are NaN:
    x86 returns the first operand's NaN, quieted. LLVM may swap the operands of an add, so the NaN
    case is spelled out (as bits, which no optimizer folds back into the add)."""
    if p != p:
        return bits_f32(f32_bits(p) | np.uint32(0x00400000))
    return p + m


@jit
def q4_0_block_dequant(yb, xb):
    """dequantize_row_q4_0 for one block: yb uint8[18] -> xb float32[32]."""
    d = load_fp16(yb, 0)
    for j in range(16):
        b = np.int32(yb[2 + j])
        xb[j] = F32((b & 0x0F) - 8) * d
        xb[j + 16] = F32((b >> 4) - 8) * d


@jit
def q4_1_block_dequant(yb, xb):
    """dequantize_row_q4_1 for one block: yb uint8[20] -> xb float32[32]."""
    d = load_fp16(yb, 0)
    m = load_fp16(yb, 2)
    if m != m:
        for j in range(16):
            b = np.int32(yb[4 + j])
            xb[j] = _nan_first_add(F32(b & 0x0F) * d, m)
            xb[j + 16] = _nan_first_add(F32(b >> 4) * d, m)
        return
    for j in range(16):
        b = np.int32(yb[4 + j])
        xb[j] = F32(b & 0x0F) * d + m
        xb[j + 16] = F32(b >> 4) * d + m


@jit
def q5_0_block_dequant(yb, xb):
    """dequantize_row_q5_0 for one block: yb uint8[22] -> xb float32[32]."""
    d = load_fp16(yb, 0)
    qh = yb[2:6]
    for j in range(16):
        b = np.int32(yb[6 + j])
        xb[j] = F32(((b & 0x0F) | _qh_bit(qh, j)) - 16) * d
        xb[j + 16] = F32(((b >> 4) | _qh_bit(qh, j + 16)) - 16) * d


@jit
def q5_1_block_dequant(yb, xb):
    """dequantize_row_q5_1 for one block: yb uint8[24] -> xb float32[32]."""
    d = load_fp16(yb, 0)
    m = load_fp16(yb, 2)
    qh = yb[4:8]
    if m != m:
        for j in range(16):
            b = np.int32(yb[8 + j])
            xb[j] = _nan_first_add(F32((b & 0x0F) | _qh_bit(qh, j)) * d, m)
            xb[j + 16] = _nan_first_add(F32((b >> 4) | _qh_bit(qh, j + 16)) * d, m)
        return
    for j in range(16):
        b = np.int32(yb[8 + j])
        xb[j] = F32((b & 0x0F) | _qh_bit(qh, j)) * d + m
        xb[j + 16] = F32((b >> 4) | _qh_bit(qh, j + 16)) * d + m


@jit
def q8_0_block_dequant(yb, xb):
    """dequantize_row_q8_0 for one block: yb uint8[34] -> xb float32[32]."""
    d = load_fp16(yb, 0)
    for j in range(QK):
        xb[j] = F32(np.int8(yb[2 + j])) * d


# -- drivers: rows float32 [nrows, n], qw float32 [n] or [0] -> out uint8 [nrows, n/32*size] and back --

quantize_q4_0, dequantize_q4_0 = block_drivers(__name__, "q4_0", QK, 18, None, q4_0_block_dequant,
                                               template=_rows_by_row, REF=q4_0_row_ref, IMPL=q4_0_row_impl,
                                               scratch=_qx_lanes_scratch)
quantize_q4_1, dequantize_q4_1 = block_drivers(__name__, "q4_1", QK, 20, None, q4_1_block_dequant,
                                               template=_rows_by_row, REF=q4_1_row_ref, IMPL=q4_1_row_impl,
                                               scratch=_qkx_lanes_scratch)
quantize_q5_0, dequantize_q5_0 = block_drivers(__name__, "q5_0", QK, 22, None, q5_0_block_dequant,
                                               template=_rows_by_row, REF=q5_0_row_ref, IMPL=q5_0_row_impl,
                                               scratch=_qx_lanes_scratch)
quantize_q5_1, dequantize_q5_1 = block_drivers(__name__, "q5_1", QK, 24, None, q5_1_block_dequant,
                                               template=_rows_by_row, REF=q5_1_row_ref, IMPL=q5_1_row_impl,
                                               scratch=_qkx_lanes_scratch)
# ggml's quantize_q8_0 ignores the importance vector
quantize_q8_0 = row_driver(each_row_finite, __name__, "quantize_q8_0",
                           "ggml's quantize_q8_0 over all rows (float32, or bfloat16 words as uint16); returns the "
                           "first row holding NaN or Inf, or -1.",
                           ROW=q8_0_row)
dequantize_q8_0 = row_driver(each_block, __name__, "dequantize_q8_0", "ggml's dequantize_row_q8_0 over all rows.",
                             BLOCK=q8_0_block_dequant, IN=34, OUT=QK)
