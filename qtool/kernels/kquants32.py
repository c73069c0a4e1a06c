"""Q4_K and Q5_K (8 sub-blocks of 32 weights) and Q8_K kernels: 256-weight super-blocks (ggml's QK_K).

Q4_K and Q5_K split a super-block into 8 sub-blocks of 32 weights, each with its own 6-bit scale and
6-bit min, themselves scaled by two half-precision factors ``d`` and ``dmin``:
``x ~ d*sc[j]*q - dmin*m[j]``. Q8_K (the dot-product partner of the k-quants) is a float32 scale,
256 signed bytes and 16 partial sums.

Each quantize driver takes ``weights`` as a float32 importance vector of n_per_row values, or a
zero-length array for none: without one ggml takes the ``quantize_row_*_ref`` path, with one the
``quantize_row_*_impl`` path.
"""

from __future__ import annotations

import numpy as np

from qtool.kernels.common import (F32, bits_f32, block_drivers, each_block_pair_paths, f32_bits, jit, load_fp16,
                                 nearest_int, specialize, store_fp16)
from qtool.kernels.search import SUB_LANES, make_qkx_quants_lanes, make_qp_quants, qkx_lanes_scratch

QK_K = 256
Q4_K_BYTES = 144  # d, dmin (f16) + scales[12] + qs[128]
Q5_K_BYTES = 176  # d, dmin (f16) + scales[12] + qh[32] + qs[128]
Q8_K_BYTES = 292  # d (f32) + qs[256] (int8) + bsums[16] (int16)

# Byte offsets inside a Q4_K / Q5_K block.
_D, _DMIN, _SCALES = 0, 2, 4
_Q4_QS = 16
_Q5_QH, _Q5_QS = 16, 48


# ---------------------------------------------------------------------------------------------------
# The 12-byte scales field shared by Q4_K and Q5_K: eight 6-bit scales sc[0..7] and mins m[0..7].
#
#   byte     7 6 | 5 4 3 2 1 0
#   0..3     sc[4..7] hi2 | sc[0..3]
#   4..7      m[4..7] hi2 |  m[0..3]
#
#   byte     7 6 5 4   | 3 2 1 0
#   8..11    m[4..7] lo4 | sc[4..7] lo4
# ---------------------------------------------------------------------------------------------------


@jit
def pack_scales_mins_k4(Ls, Lm, y):
    """The scales packing of quantize_row_q4_K/q5_K: Ls, Lm uint8[8] (each <= 63) -> y[4:16]."""
    for j in range(8):
        ls = np.int64(Ls[j])
        lm = np.int64(Lm[j])
        if j < 4:
            y[_SCALES + j] = ls
            y[_SCALES + j + 4] = lm
        else:
            y[_SCALES + j + 4] = ((ls & 0xF) | ((lm & 0xF) << 4)) & 0xFF
            y[_SCALES + j - 4] |= ((ls >> 4) << 6) & 0xFF
            y[_SCALES + j] |= ((lm >> 4) << 6) & 0xFF


@jit
def get_scale_min_k4(j, y):
    """ggml get_scale_min_k4: the 6-bit (scale, min) of sub-block j from a block's scales field."""
    if j < 4:
        sc = y[_SCALES + j] & np.uint8(63)
        m = y[_SCALES + j + 4] & np.uint8(63)
    else:
        sc = (y[_SCALES + j + 4] & np.uint8(0xF)) | ((y[_SCALES + j - 4] >> np.uint8(6)) << np.uint8(4))
        m = (y[_SCALES + j + 4] >> np.uint8(4)) | ((y[_SCALES + j] >> np.uint8(6)) << np.uint8(4))
    return sc, m


@jit
def _requantize_k4(x, y, L, nmax):
    """Final pass shared by Q4_K/Q5_K: re-round every weight against the stored (fp16) factors.

    A sub-block whose effective scale is zero keeps the quants its search produced.
    """
    d_all = load_fp16(y, _D)
    dmin_all = load_fp16(y, _DMIN)
    for j in range(8):
        sc, m = get_scale_min_k4(j, y)
        d = d_all * F32(sc)
        if d == F32(0.0):
            continue
        dm = dmin_all * F32(m)
        for ii in range(32):
            l = nearest_int((x[32 * j + ii] + dm) / d)
            L[32 * j + ii] = max(0, min(nmax, l))


@jit
def largest_scale_min(scales, mins):
    """(max_scale, max_min) of the k-quants' _ref paths: the largest sub-block scale and min, from 0."""
    max_scale = F32(0.0)
    max_min = F32(0.0)
    for j in range(scales.shape[0]):
        if scales[j] > max_scale:
            max_scale = scales[j]
        if mins[j] > max_min:
            max_min = mins[j]
    return max_scale, max_min


@jit
def _ref_pack_factors(scales, mins, y, Ls, Lm):
    """quantize_row_q4_K_ref/q5_K_ref: quantize the 8 scales and mins to 6 bits against their maxima."""
    max_scale, max_min = largest_scale_min(scales, mins)
    inv_scale = F32(63.0) / max_scale if max_scale > F32(0.0) else F32(0.0)
    inv_min = F32(63.0) / max_min if max_min > F32(0.0) else F32(0.0)
    for j in range(8):
        ls = nearest_int(inv_scale * scales[j]) & 0xFF  # C stores the int in a uint8_t
        lm = nearest_int(inv_min * mins[j]) & 0xFF
        Ls[j] = min(63, ls)
        Lm[j] = min(63, lm)
    pack_scales_mins_k4(Ls, Lm, y)
    store_fp16(y, _D, max_scale / F32(63.0))
    store_fp16(y, _DMIN, max_min / F32(63.0))


@jit
def _impl_pack_factors(scales, mins, sw, y, Ls, Lm):
    """quantize_row_q4_K_impl/q5_K_impl: scales and mins to 6 bits with make_qp_quants."""
    d_block = make_qp_quants(8, 63, scales, Ls, sw)
    m_block = make_qp_quants(8, 63, mins, Lm, sw)
    for j in range(8):
        Ls[j] = min(np.uint8(63), Ls[j])
        Lm[j] = min(np.uint8(63), Lm[j])
    pack_scales_mins_k4(Ls, Lm, y)
    store_fp16(y, _D, d_block)
    store_fp16(y, _DMIN, m_block)


# ---------------------------------------------------------------------------------------------------
# Q4_K block, 144 bytes:
#
#   0      2        4            16                           144
#   | d f16 | dmin f16 | scales[12] | qs[128]                   |
#
#   qs[32*c + l] = q[64*c + l] | q[64*c + 32 + l] << 4      (c = 0..3, l = 0..31)
# ---------------------------------------------------------------------------------------------------


@jit
def _pack_q4_K(L, y):
    for c in range(4):
        for l in range(32):
            y[_Q4_QS + 32 * c + l] = L[64 * c + l] | (L[64 * c + 32 + l] << np.uint8(4))


@jit
def _dequantize_block_k4(y, o, qs, qh):
    """ggml dequantize_row_q4_K (qh < 0) or dequantize_row_q5_K (fifth bits at y[qh:qh+32]) for one
    super-block: codes at y[qs:qs+128] -> o float32[256]."""
    d = load_fp16(y, _D)
    dmin = load_fp16(y, _DMIN)
    for c in range(4):
        sc, m = get_scale_min_k4(2 * c, y)
        d1 = d * F32(sc)
        m1 = dmin * F32(m)
        sc, m = get_scale_min_k4(2 * c + 1, y)
        d2 = d * F32(sc)
        m2 = dmin * F32(m)
        for l in range(32):
            q = y[qs + 32 * c + l]
            lo = np.int32(q & np.uint8(0xF))
            hi = np.int32(q >> np.uint8(4))
            if qh >= 0:
                h = np.int32(y[qh + l]) >> (2 * c)
                lo += (h & 1) << 4
                hi += ((h >> 1) & 1) << 4
            o[64 * c + l] = d1 * F32(lo) - m1
            o[64 * c + 32 + l] = d2 * F32(hi) - m2


@jit
def dequantize_block_q4_K(y, o):
    """ggml dequantize_row_q4_K for one super-block: y uint8[144] -> o float32[256]."""
    _dequantize_block_k4(y, o, _Q4_QS, -1)


# ---------------------------------------------------------------------------------------------------
# Q5_K block, 176 bytes:
#
#   0      2        4            16          48                       176
#   | d f16 | dmin f16 | scales[12] | qh[32]    | qs[128]                |
#
#   for chunk c = 0..3 of 64 weights, l = 0..31:
#     qs[32*c + l]   = q[64*c + l] & 15  |  (q[64*c + 32 + l] & 15) << 4
#     qh[l] bit 2c   = q[64*c + l] >> 4
#     qh[l] bit 2c+1 = q[64*c + 32 + l] >> 4
# ---------------------------------------------------------------------------------------------------


@jit
def _pack_q5_K(L, y):
    for j in range(32):
        y[_Q5_QH + j] = 0
    m1 = 1
    m2 = 2
    for c in range(4):
        for j in range(32):
            l1 = np.int64(L[64 * c + j])
            if l1 > 15:
                l1 -= 16
                y[_Q5_QH + j] |= m1
            l2 = np.int64(L[64 * c + 32 + j])
            if l2 > 15:
                l2 -= 16
                y[_Q5_QH + j] |= m2
            y[_Q5_QS + 32 * c + j] = (l1 | (l2 << 4)) & 0xFF
        m1 <<= 2
        m2 <<= 2


NMAX = RMIN = NSTEP = PACK = None  # bound per type by specialize


# Two super-blocks at a time: their 16 sub-blocks' searches side by side (search.make_qkx_quants_lanes), then
# each super-block's scales, requantization and packing as above. A row's last super-block, where the row
# has an odd count, goes alone, its sub-blocks searched twice over (the second copy's results unused).

@jit
def _k4_pair_scratch():
    """Per-row scratch of the paired Q4_K/Q5_K blocks: L uint8[512] (both super-blocks' quants), xt, wt
    float32[32, 16] (the sub-blocks lane by lane), scales, mins, sw float32[16], Ls, Lm uint8[8], the lane
    search's scratch."""
    return (np.zeros(2 * QK_K, np.uint8), np.zeros((32, SUB_LANES), np.float32), np.zeros((32, SUB_LANES), np.float32),
            np.zeros(SUB_LANES, np.float32), np.zeros(SUB_LANES, np.float32), np.zeros(SUB_LANES, np.float32),
            np.zeros(8, np.uint8), np.zeros(8, np.uint8), qkx_lanes_scratch(32))


def _pair_k4_ref(x, y, L, xt, wt, scales, mins, sw, Ls, Lm, scratch):
    """ggml quantize_row_q4_K_ref / q5_K_ref for one or two super-blocks x float32[256 or 512] -> y uint8[one or
    two blocks]; scratch _k4_pair_scratch() (sw unused)."""
    nsb = x.shape[0] // QK_K
    nbytes = y.shape[0] // nsb
    for b in range(SUB_LANES):
        j = b if nsb == 2 else b % 8
        xs = x[32 * j:32 * j + 32]
        sum_x2 = F32(0.0)
        for l in range(32):
            sum_x2 += xs[l] * xs[l]
        av_x = np.sqrt(sum_x2 / F32(32.0))
        for l in range(32):
            xt[l, b] = xs[l]
            wt[l, b] = av_x + abs(xs[l])
    make_qkx_quants_lanes(32, NMAX, xt, wt, F32(RMIN), F32(0.1), NSTEP, False, False, L, scales, mins,
                          scratch)
    for s in range(nsb):
        ys = y[nbytes * s:nbytes * (s + 1)]
        for k in range(12):
            ys[_SCALES + k] = 0
        _ref_pack_factors(scales[8 * s:8 * s + 8], mins[8 * s:8 * s + 8], ys, Ls, Lm)
        Lsb = L[QK_K * s:QK_K * (s + 1)]
        _requantize_k4(x[QK_K * s:QK_K * (s + 1)], ys, Lsb, NMAX)
        PACK(Lsb, ys)


def _pair_k4_impl(x, qw, y, L, xt, wt, scales, mins, sw, Ls, Lm, scratch):
    """ggml quantize_row_q4_K_impl / q5_K_impl for one or two super-blocks: x, qw float32[256 or 512] -> y
    uint8[one or two blocks]; scratch _k4_pair_scratch()."""
    nsb = x.shape[0] // QK_K
    nbytes = y.shape[0] // nsb
    use_w = qw.shape[0] > 0
    sigma2 = F32(0.0)
    for b in range(SUB_LANES):
        s = b // 8 if nsb == 2 else 0
        j = b % 8
        if j == 0:
            sum_x2 = F32(0.0)
            for l in range(QK_K):
                sum_x2 += x[QK_K * s + l] * x[QK_K * s + l]
            sigma2 = F32(2.0) * sum_x2 / F32(256.0)
        av_x = np.sqrt(sigma2)
        at = QK_K * s + 32 * j
        sumw = F32(0.0)
        for l in range(32):
            xl = x[at + l]
            w = qw[at + l] * np.sqrt(sigma2 + xl * xl) if use_w else av_x + abs(xl)
            xt[l, b] = xl
            wt[l, b] = w
            sumw += w
        sw[b] = sumw
    make_qkx_quants_lanes(32, NMAX, xt, wt, F32(-0.9), F32(0.05), 36, False, True, L, scales, mins,
                          scratch)
    for s in range(nsb):
        ys = y[nbytes * s:nbytes * (s + 1)]
        for k in range(12):
            ys[_SCALES + k] = 0
        _impl_pack_factors(scales[8 * s:8 * s + 8], mins[8 * s:8 * s + 8], sw[8 * s:8 * s + 8], ys, Ls, Lm)
        Lsb = L[QK_K * s:QK_K * (s + 1)]
        _requantize_k4(x[QK_K * s:QK_K * (s + 1)], ys, Lsb, NMAX)
        PACK(Lsb, ys)


quantize_pair_q4_K_ref = specialize(_pair_k4_ref, __name__, "quantize_pair_q4_K_ref", "ggml quantize_row_q4_K_ref, "
                                    "one or two super-blocks.", jit, NMAX=15, RMIN=-1.0, NSTEP=20, PACK=_pack_q4_K)
quantize_pair_q5_K_ref = specialize(_pair_k4_ref, __name__, "quantize_pair_q5_K_ref", "ggml quantize_row_q5_K_ref, "
                                    "one or two super-blocks.", jit, NMAX=31, RMIN=-0.5, NSTEP=15, PACK=_pack_q5_K)
quantize_pair_q4_K_impl = specialize(_pair_k4_impl, __name__, "quantize_pair_q4_K_impl", "ggml "
                                     "quantize_row_q4_K_impl, one or two super-blocks.", jit, NMAX=15, PACK=_pack_q4_K)
quantize_pair_q5_K_impl = specialize(_pair_k4_impl, __name__, "quantize_pair_q5_K_impl", "ggml "
                                     "quantize_row_q5_K_impl, one or two super-blocks.", jit, NMAX=31, PACK=_pack_q5_K)


@jit
def dequantize_block_q5_K(y, o):
    """ggml dequantize_row_q5_K for one super-block: y uint8[176] -> o float32[256]."""
    _dequantize_block_k4(y, o, _Q5_QS, _Q5_QH)


# ---------------------------------------------------------------------------------------------------
# Q8_K block, 292 bytes:
#
#   0          4                            260                      292
#   | d f32     | qs[256] int8               | bsums[16] int16         |
#
#   bsums[j] = sum of qs[16*j .. 16*j+15]
# ---------------------------------------------------------------------------------------------------

_Q8_QS, _Q8_BSUMS = 4, 260


@jit
def _store_f32(y, pos, f):
    b = f32_bits(f)
    for k in range(4):
        y[pos + k] = np.uint8((b >> np.uint32(8 * k)) & np.uint32(0xFF))


@jit
def _load_f32(y, pos):
    b = np.uint32(0)
    for k in range(4):
        b |= np.uint32(y[pos + k]) << np.uint32(8 * k)
    return bits_f32(b)


@jit
def quantize_block_q8_K(x, y):
    """ggml quantize_row_q8_K_ref for one super-block: x float32[256] (finite) -> y uint8[292]."""
    # ggml keeps the first element of largest |x| (strict >). For finite floats that is the first j
    # with |x[j]| == max |x|, and |x| orders like its bit pattern with the sign bit cleared: an
    # integer max, which vectorizes.
    top = np.uint32(0)
    for j in range(QK_K):
        top = max(top, f32_bits(x[j]) & np.uint32(0x7FFFFFFF))
    if top == np.uint32(0):
        # ggml leaves bsums untouched here; qtool writes zeros (what a zeroed buffer holds)
        for k in range(Q8_K_BYTES):
            y[k] = 0
        return
    j = 0
    while (f32_bits(x[j]) & np.uint32(0x7FFFFFFF)) != top:
        j += 1
    iscale = F32(-127.0) / x[j]
    for j in range(QK_K):
        t = iscale * x[j] + F32(12582912.0)  # nearest_int, in int32 so that it vectorizes
        v = np.int32(np.int32(f32_bits(t) & np.uint32(0x007FFFFF)) - np.int32(0x00400000))
        y[_Q8_QS + j] = np.uint8(min(np.int32(127), v) & np.int32(0xFF))
    for j in range(16):
        s = np.int32(0)
        for ii in range(16):
            s += np.int32(np.int8(y[_Q8_QS + 16 * j + ii]))
        y[_Q8_BSUMS + 2 * j] = np.uint8(s & np.int32(0xFF))
        y[_Q8_BSUMS + 2 * j + 1] = np.uint8((s >> np.int32(8)) & np.int32(0xFF))
    _store_f32(y, 0, F32(1.0) / iscale)


@jit
def dequantize_block_q8_K(y, o):
    """ggml dequantize_row_q8_K for one super-block: y uint8[292] -> o float32[256]."""
    d = _load_f32(y, 0)
    for j in range(QK_K):
        o[j] = d * F32(np.int8(y[_Q8_QS + j]))


# -- row drivers: rows float32[nrows, n] and weights float32[n] (or [0]: the _ref path)
# -- -> out uint8[nrows, n/256*size], and back --------------------------------------------------------

quantize_q4_K, dequantize_q4_K = block_drivers(__name__, "q4_K", QK_K, Q4_K_BYTES, None, dequantize_block_q4_K,
                                               template=each_block_pair_paths, scratch=_k4_pair_scratch,
                                               REF=quantize_pair_q4_K_ref, IMPL=quantize_pair_q4_K_impl)
quantize_q5_K, dequantize_q5_K = block_drivers(__name__, "q5_K", QK_K, Q5_K_BYTES, None, dequantize_block_q5_K,
                                               template=each_block_pair_paths, scratch=_k4_pair_scratch,
                                               REF=quantize_pair_q5_K_ref, IMPL=quantize_pair_q5_K_impl)
# quantize_row_q8_K_ref: no importance-weighted path
quantize_q8_K, dequantize_q8_K = block_drivers(__name__, "q8_K", QK_K, Q8_K_BYTES, quantize_block_q8_K,
                                               dequantize_block_q8_K)
