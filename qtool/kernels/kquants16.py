"""Q2_K, Q3_K and Q6_K: 256-weight super-blocks of 16 sub-blocks of 16 weights.

Each type has a quantize driver ``quantize_<type>(rows, weights, out)`` (rows float32 [nrows, n],
weights float32 [n] or zero-length for ggml's reference path, out uint8 [nrows, n/256*type_size])
and a dequantize driver ``dequantize_<type>(data, out)``. With weights the drivers follow ggml's
``quantize_row_<type>_impl``, without them ``quantize_row_<type>_ref``; both give ggml's bytes.

Sub-blocks are numbered s = 0..15 over the 256 weights (weight k is in sub-block k // 16). The
2-bit planes of Q2_K and Q3_K and the 4-bit halves of Q6_K interleave weights 32 apart:

    qs byte 32*h + l  (h = 0,1 halves of 128 weights, l = 0..31)
      bits  7 6 | 5 4 | 3 2 | 1 0
            w+96  w+64  w+32  w        with w = 128*h + l

ggml searches each sub-block's scale on its own, a chain of dependent float32 adds per trial. The
``*_x16`` searches below (and search.make_qkx_quants_lanes, Q2_K's) run the 16 sub-blocks of a
super-block side by side instead: each keeps
its own sums, added in C's order, so every sub-block gets ggml's exact result while the 16
independent chains vectorize (tests pin them to the one-block ports in search.py).
"""

from __future__ import annotations

import numba
import numpy as np

from qtool.kernels.common import (F32, block_drivers, borrowed, each_block, each_block_paths, first_true,
                                 holds_nonfinite, jit, jit_rows, keep_alive, lane_q3_search, lane_qx_search, load_fp16,
                                 nearest_int, requantize, row_driver, store_fp16, store_u16)
from qtool.kernels.kquants32 import largest_scale_min
from qtool.kernels.search import (GROUP_MAX_EPS, make_qkx_quants_lanes, make_qp_quants, make_qx_quants,
                                  qkx_lanes_scratch, qx_lane_quants, signed_absmax)

# C float arithmetic never traps: on finite but huge inputs ggml divides by zero (a scale that
# overflowed to inf gives an inverse of 0) and carries on with inf/NaN; common.jit/jit_rows use numba's
# IEEE "numpy" error model for that reason.

QK_K = 256

# Byte offsets inside one block (ggml-common.h's block_q2_K, block_q3_K, block_q6_K).
#
#   Q2_K  84 bytes:  scales[16] | qs[64] | d (f16) | dmin (f16)
#                    0            16       80        82
#   scales byte s:   bits 7..4 = min index m_s, bits 3..0 = scale index a_s
#   weight = d * a_s * q  -  dmin * m_s,   q in 0..3
_Q2_SCALES, _Q2_QS, _Q2_D, _Q2_DMIN, Q2_K_BYTES = 0, 16, 80, 82, 84
#
#   Q3_K  110 bytes: hmask[32] | qs[64] | scales[12] | d (f16)
#                    0           32       96           108
#   hmask byte i, bit b: high bit of weight 32*b + i; q = (2-bit value) - (bit set ? 0 : 4)
#   scales: sixteen 6-bit values v_s, weight = d * (v_s - 32) * q,   q in -4..3
#     byte s     (s < 8):  bits 3..0 = low nibble of v_s,  bits 7..4 = low nibble of v_(s+8)
#     byte 8 + t (t < 4):  bits 1..0, 3..2, 5..4, 7..6 = high two bits of v_t, v_(t+4), v_(t+8), v_(t+12)
_Q3_HMASK, _Q3_QS, _Q3_SCALES, _Q3_D, Q3_K_BYTES = 0, 32, 96, 108, 110
#
#   Q6_K  210 bytes: ql[128] | qh[64] | scales[16] (int8) | d (f16)
#                    0         128      192                 208
#   per half h of 128 weights (w = 128*h + l, l = 0..31):
#     ql byte 64*h + l:       bits 3..0 = low nibble of w,      bits 7..4 = low nibble of w+64
#     ql byte 64*h + 32 + l:  bits 3..0 = low nibble of w+32,   bits 7..4 = low nibble of w+96
#     qh byte 32*h + l:       bits 1..0, 3..2, 5..4, 7..6 = high two bits of w, w+32, w+64, w+96
#   weight = d * scales[s] * (q - 32),   q in 0..63
_Q6_QL, _Q6_QH, _Q6_SCALES, _Q6_D, Q6_K_BYTES = 0, 128, 192, 208, 210

# -- the sub-block scale search, 16 sub-blocks side by side ------------------------------------------


@jit
def make_qx_quants_x16(nmax, xt, wt, L, scales, S):
    """ggml make_qx_quants(16, nmax, x_j, L_j, 1, w_j) for the 16 sub-blocks j of a super-block at once.

    Same arithmetic as search.make_qx_quants with rmse_type 1, element for element, but laid out
    sub-block-minor: xt[i, j] = x[16*j + i], wt[i, j] = w_j[i] (the importance, or x^2 where ggml
    passes NULL). The trials run in common.lane_qx_search, each sub-block in a vector lane with its own
    float32 sums added in C's order i = 0..15, so the result is the same bit for bit. The quants of the
    winning trial are recomputed from its inverse scale at the end, which gives what C stored when it
    accepted that trial.

    xt, wt float32[16, 16]; L int8[256] (natural order, 0..2*nmax-1); scales float32[16] out.
    Scratch: S float32[2, 16].
    """
    amax = S[0]
    best_iscale = S[1]
    lane_qx_search(xt, wt, 16, nmax, scales, best_iscale, amax)
    for j in range(16):
        if not qx_lane_quants(nmax, xt, j, best_iscale, amax, L, 16 * j):
            scales[j] = F32(0.0)


@jit
def make_q3_quants_x16(nmax, xt, L, scales, S, Lt):
    """ggml make_q3_quants(16, nmax, x_j, L_j, true) for the 16 sub-blocks j of a super-block at once.

    Same arithmetic as search.make_q3_quants with do_rmse, laid out sub-block-minor
    (xt[i, j] = x[16*j + i]): the first fit and the refinement passes run in common.lane_q3_search, each
    sub-block in a vector lane with its own sums in C's order. C stops a sub-block's refinement after a
    pass that changes nothing; running further passes on it changes nothing either (the pass is a pure
    function of the unchanged state), so all sub-blocks run until none changes, at most 5 passes.

    L int8[256] (natural order, 0..2*nmax-1); scales float32[16] out.
    Scratch: S float32[1, 16] (or more rows), Lt int32[16, 16].
    """
    amax = S[0]
    lane_q3_search(xt, Lt, 16, nmax, amax, scales)
    for j in range(16):
        if amax[j] < GROUP_MAX_EPS:  # C returns at once: all quants 0 (not offset), scale 0
            scales[j] = F32(0.0)
            for i in range(16):
                L[16 * j + i] = 0
        else:
            for i in range(16):
                L[16 * j + i] = Lt[i, j] + nmax


# -- shared packing -------------------------------------------------------------------------------


@jit
def _i8(v):
    """A stored byte read as C's int8_t."""
    v = np.int32(v)
    return v - 256 if v >= 128 else v


@jit
def _pack_2bit(L, out, pos):
    """The 2-bit planes of quantize_row_q2_K_ref / q3_K_ref: L[256] (values 0..3) -> out[pos:pos+64]."""
    for h in range(2):
        for l in range(32):
            w = 128 * h + l
            v = np.int32(L[w]) | (np.int32(L[w + 32]) << 2) | (np.int32(L[w + 64]) << 4) | (np.int32(L[w + 96]) << 6)
            out[pos + 32 * h + l] = np.uint8(v & 0xFF)


@jit
def _q3_scale(out, j):
    """The 6-bit scale index v_j of a Q3_K block (0..63)."""
    sc = np.int32(out[_Q3_SCALES + j] & 0xF) if j < 8 else np.int32(out[_Q3_SCALES + j - 8] >> 4)
    hi = (np.int32(out[_Q3_SCALES + 8 + j % 4]) >> (2 * (j // 4))) & 3
    return sc | (hi << 4)


@jit
def _q3_put_scale(out, j, l):
    """OR the 6-bit value l into slot j of a zeroed Q3_K scales[12] (see the diagram above)."""
    if j < 8:
        out[_Q3_SCALES + j] = np.uint8(l & 0xF)
    else:
        out[_Q3_SCALES + j - 8] = np.uint8((np.int32(out[_Q3_SCALES + j - 8]) | ((l & 0xF) << 4)) & 0xFF)
    hi = l >> 4
    k = _Q3_SCALES + 8 + j % 4
    out[k] = np.uint8((np.int32(out[k]) | (hi << (2 * (j // 4)))) & 0xFF)


@jit
def _q3_finish(x, L, out, dd, mm):
    """Tail shared by quantize_row_q3_K_ref and _impl: requantize against the stored scales,
    then split L into hmask and the 2-bit planes. L: int8[256] holding 0..7 on entry.
    Scratch: dd, mm float32[256] (mm is zero)."""
    d_all = load_fp16(out, _Q3_D)
    for j in range(16):
        d = d_all * F32(_q3_scale(out, j) - 32)
        for i in range(16):
            dd[16 * j + i] = d
    requantize(x, dd, mm, L, -4, 3, 4)
    # high bit of weight 32*b + i -> bit b of hmask[i]; what is left is 0..3
    for i in range(32):
        m = np.int32(0)
        for b in range(8):
            v = np.int32(L[32 * b + i])
            high = np.int32(1) if v > 3 else np.int32(0)
            m |= high << b
            L[32 * b + i] = v - 4 * high
        out[_Q3_HMASK + i] = np.uint8(m)
    _pack_2bit(L, out, _Q3_QS)


@jit
def _q6_finish(x, L, scales, max_scale, out, dd, mm):
    """Tail of quantize_row_q6_K_ref / _impl once the sub-block scales are known.
    Scratch: dd, mm float32[256] (mm zero)."""
    iscale = F32(-128.0) / max_scale
    d_all = store_fp16(out, _Q6_D, F32(1.0) / iscale)
    for ib in range(16):
        v = min(127, nearest_int(iscale * scales[ib]))
        out[_Q6_SCALES + ib] = np.uint8(v & 0xFF)
    for j in range(16):
        d = d_all * F32(_i8(out[_Q6_SCALES + j]))
        for i in range(16):
            dd[16 * j + i] = d
    requantize(x, dd, mm, L, -32, 31, 32)
    for h in range(2):
        for l in range(32):
            w = 128 * h + l
            q1 = np.int32(L[w]) & 0xF
            q2 = np.int32(L[w + 32]) & 0xF
            q3 = np.int32(L[w + 64]) & 0xF
            q4 = np.int32(L[w + 96]) & 0xF
            out[_Q6_QL + 64 * h + l] = np.uint8((q1 | (q3 << 4)) & 0xFF)
            out[_Q6_QL + 64 * h + 32 + l] = np.uint8((q2 | (q4 << 4)) & 0xFF)
            hb = ((np.int32(L[w]) >> 4) | ((np.int32(L[w + 32]) >> 4) << 2)
                  | ((np.int32(L[w + 64]) >> 4) << 4) | ((np.int32(L[w + 96]) >> 4) << 6))
            out[_Q6_QH + 32 * h + l] = np.uint8(hb & 0xFF)


# -- Q2_K -----------------------------------------------------------------------------------------


@jit
def _q2_finish(x, L, out):
    """Tail shared by quantize_row_q2_K_ref and _impl: requantize against the stored scales and
    mins, then pack. L: uint8[256]. (Through common.requantize, as Q3_K and Q6_K, it measured a
    few percent slower: the search dominates Q2_K.)"""
    d_all = load_fp16(out, _Q2_D)
    m_all = load_fp16(out, _Q2_DMIN)
    for j in range(16):
        sb = np.int32(out[_Q2_SCALES + j])
        d = d_all * F32(sb & 0xF)
        if d == F32(0.0):
            continue
        dm = m_all * F32(sb >> 4)
        for ii in range(16):
            l = nearest_int((x[16 * j + ii] + dm) / d)
            L[16 * j + ii] = max(0, min(3, l))
    _pack_2bit(L, out, _Q2_QS)


@jit
def _importance_x16(x, qw, sigma2, xt, wt, sw):
    """The _impl paths' importance qw*sqrt(sigma2 + x^2), laid out sub-block-minor as the x16 searches take it
    (xt[i, j] = x[16*j + i], wt likewise), and each sub-block's sum sw[j] in C's order."""
    for j in range(16):
        acc = F32(0.0)
        for i in range(16):
            v = x[16 * j + i]
            w = qw[16 * j + i] * np.sqrt(sigma2 + v * v)
            xt[i, j] = v
            wt[i, j] = w
            acc += w
        sw[j] = acc


@jit
def _q2_store_scales_ref(scales, mins, out):
    """The scale/min quantization of quantize_row_q2_K_ref: 4-bit indices against the largest."""
    q4scale = F32(15.0)
    max_scale, max_min = largest_scale_min(scales, mins)
    if max_scale > F32(0.0):
        iscale = q4scale / max_scale
        for j in range(16):
            out[_Q2_SCALES + j] = np.uint8(nearest_int(iscale * scales[j]) & 0xFF)
        store_fp16(out, _Q2_D, max_scale / q4scale)
    else:
        for j in range(16):
            out[_Q2_SCALES + j] = 0
        store_fp16(out, _Q2_D, F32(0.0))
    if max_min > F32(0.0):
        iscale = q4scale / max_min
        for j in range(16):
            l = nearest_int(iscale * mins[j])
            out[_Q2_SCALES + j] = np.uint8((np.int32(out[_Q2_SCALES + j]) | (l << 4)) & 0xFF)
        store_fp16(out, _Q2_DMIN, max_min / q4scale)
    else:
        store_fp16(out, _Q2_DMIN, F32(0.0))


@jit
def quantize_block_q2_K_ref(x, out, L, scales, mins, sw, Ls, Lm, xt, wt, S, lt):
    """quantize_row_q2_K_ref for one block: x float32[256] -> out uint8[84]; scratch as quantize_block_q2_K_impl
    (sw, Ls, Lm unused)."""
    for j in range(16):
        for i in range(16):
            v = x[16 * j + i]
            xt[i, j] = v
            wt[i, j] = abs(v)
    make_qkx_quants_lanes(16, 3, xt, wt, F32(-0.5), F32(0.1), 15, True, False, L, scales, mins, (S, lt))
    _q2_store_scales_ref(scales, mins, out)
    _q2_finish(x, L, out)


@jit
def quantize_block_q2_K_impl(x, qw, out, L, scales, mins, sw, Ls, Lm, xt, wt, S, lt):
    """quantize_row_q2_K_impl for one block: x, qw float32[256] -> out uint8[84].
    Scratch: L uint8[256], Ls/Lm uint8[16], scales/mins/sw float32[16], xt/wt/lt float32[16, 16],
    S float32[16, 16]."""
    sumx2 = F32(0.0)
    for j in range(QK_K):
        sumx2 += x[j] * x[j]
    _importance_x16(x, qw, sumx2 / F32(QK_K), xt, wt, sw)
    make_qkx_quants_lanes(16, 3, xt, wt, F32(-0.9), F32(0.05), 36, False, True, L, scales, mins, (S, lt))
    dm = make_qp_quants(16, 15, scales, Ls, sw)
    m_block = make_qp_quants(16, 15, mins, Lm, sw)
    store_fp16(out, _Q2_D, dm)
    store_fp16(out, _Q2_DMIN, m_block)
    for j in range(16):
        out[_Q2_SCALES + j] = np.uint8((np.int32(Ls[j]) | (np.int32(Lm[j]) << 4)) & 0xFF)
    _q2_finish(x, L, out)


@jit
def _q2_K_scratch():
    """Per-row scratch of the Q2_K blocks: L uint8[256], scales, mins, sw float32[16], Ls, Lm uint8[16],
    xt, wt float32[16, 16], S, lt: search.qkx_lanes_scratch(16)."""
    S, lt = qkx_lanes_scratch(16)
    return (np.empty(QK_K, np.uint8), np.empty(16, np.float32), np.empty(16, np.float32), np.empty(16, np.float32),
            np.empty(16, np.uint8), np.empty(16, np.uint8), np.empty((16, 16), np.float32),
            np.empty((16, 16), np.float32), S, lt)


@jit
def dequantize_block_q2_K(blk, y):
    """dequantize_row_q2_K for one block: blk uint8[84] -> y float32[256]."""
    d = load_fp16(blk, _Q2_D)
    dmin = load_fp16(blk, _Q2_DMIN)
    for s in range(16):
        sb = np.int32(blk[_Q2_SCALES + s])
        dl = d * F32(sb & 0xF)
        ml = dmin * F32(sb >> 4)
        # sub-block s = 8*h + 2*p + k covers weights 128*h + 32*p + 16*k + (0..15)
        h = s // 8
        p = (s // 2) % 4
        k = s % 2
        for l in range(16):
            q = (np.int32(blk[_Q2_QS + 32 * h + 16 * k + l]) >> (2 * p)) & 3
            y[16 * s + l] = dl * F32(q) - ml


# -- Q3_K -----------------------------------------------------------------------------------------


@jit
def quantize_block_q3_K_ref(x, out, L, scales, xt, S, Lt, dd, mm):
    """quantize_row_q3_K_ref for one block: x float32[256] -> out uint8[110].
    Scratch: L int8[256], scales float32[16], xt float32[16, 16], S float32[4, 16], Lt int32[16, 16],
    dd, mm float32[256] (mm zero)."""
    for j in range(16):
        for i in range(16):
            xt[i, j] = x[16 * j + i]
    make_q3_quants_x16(4, xt, L, scales, S, Lt)
    _, max_scale = signed_absmax(scales, 16)
    for i in range(12):
        out[_Q3_SCALES + i] = 0
    if max_scale != F32(0.0):
        iscale = F32(-32.0) / max_scale
        for j in range(16):
            l = nearest_int(iscale * scales[j])
            l = ((l + 128) & 0xFF) - 128  # C stores it in an int8_t
            l = max(-32, min(31, l)) + 32
            _q3_put_scale(out, j, l)
        store_fp16(out, _Q3_D, F32(1.0) / iscale)
    else:
        store_u16(out, _Q3_D, np.uint16(0))
    _q3_finish(x, L, out, dd, mm)


@jit
def quantize_block_q3_K_impl(x, qw, out, L, scales, sw, Ls, xt, wt, S, dd, mm):
    """quantize_row_q3_K_impl for one block: x, qw float32[256] -> out uint8[110].
    Scratch: L int8[256], Ls int8[16], scales/sw float32[16], xt/wt float32[16, 16],
    S float32[2, 16] (or more rows), dd, mm float32[256] (mm zero)."""
    sumx2 = F32(0.0)
    for j in range(QK_K):
        sumx2 += x[j] * x[j]
    _importance_x16(x, qw, F32(2.0) * sumx2 / F32(QK_K), xt, wt, sw)
    make_qx_quants_x16(4, xt, wt, L, scales, S)
    for i in range(12):
        out[_Q3_SCALES + i] = 0
    d_block = make_qx_quants(16, 32, scales, Ls, 1, sw)
    for j in range(16):
        _q3_put_scale(out, j, np.int32(Ls[j]))
    store_fp16(out, _Q3_D, d_block)
    _q3_finish(x, L, out, dd, mm)


# Q3_K keeps a driver of its own: through each_block_paths (the per-row scratch tuple unpacked at each
# block's call) its _ref path, ~1 us a block, measured 4-5% slower.

@jit_rows
def quantize_q3_K(rows, weights, out):
    """quantize_q3_K over rows float32 [nrows, n] -> out uint8 [nrows, n/256*110];
    weights float32 [n] selects quantize_row_q3_K_impl, zero-length the _ref path. A row holding NaN or Inf is
    left unwritten; returns the first such row, or -1 (as common.each_block_weighted)."""
    nrows, n = rows.shape
    use_w = weights.shape[0] > 0
    nonfinite = np.zeros(nrows, dtype=np.bool_)
    rows, weights, out = borrowed(rows), borrowed(weights), borrowed(out)
    for r in numba.prange(nrows):
        nonfinite[r] = holds_nonfinite(rows[r])
        if nonfinite[r]:
            continue
        owned = (np.empty(QK_K, np.int8), np.empty(16, np.int8), np.empty(16, np.float32), np.empty(16, np.float32),
                 np.empty((16, 16), np.float32), np.empty((16, 16), np.float32), np.empty((4, 16), np.float32),
                 np.empty((16, 16), np.int32), np.empty(QK_K, np.float32), np.zeros(QK_K, np.float32))
        L, Ls, scales, sw, xt, wt, S, Lt, dd, mm = borrowed(owned)  # views without reference counts per call
        for b in range(n // QK_K):
            x = rows[r, QK_K * b:QK_K * (b + 1)]
            blk = out[r, Q3_K_BYTES * b:Q3_K_BYTES * (b + 1)]
            if use_w:
                quantize_block_q3_K_impl(x, weights[QK_K * b:QK_K * (b + 1)], blk, L, scales, sw, Ls, xt, wt, S, dd,
                                         mm)
            else:
                quantize_block_q3_K_ref(x, blk, L, scales, xt, S, Lt, dd, mm)
        keep_alive(owned)
    return first_true(nonfinite)


@jit
def dequantize_block_q3_K(blk, y):
    """dequantize_row_q3_K for one block: blk uint8[110] -> y float32[256]."""
    d_all = load_fp16(blk, _Q3_D)
    for s in range(16):
        dl = d_all * F32(_q3_scale(blk, s) - 32)
        h = s // 8
        p = (s // 2) % 4
        k = s % 2
        for l in range(16):
            i = 16 * k + l
            q = (np.int32(blk[_Q3_QS + 32 * h + i]) >> (2 * p)) & 3
            if (np.int32(blk[_Q3_HMASK + i]) >> (4 * h + p)) & 1 == 0:
                q -= 4
            y[16 * s + l] = dl * F32(q)


# -- Q6_K -----------------------------------------------------------------------------------------


@jit
def _q6_K_scratch():
    """Per-row scratch of quantize_block_q6_K: L int8[256], scales float32[16], xt, wt float32[16, 16],
    S float32[2, 16], dd, mm float32[256] (mm zero)."""
    return (np.empty(QK_K, np.int8), np.empty(16, np.float32), np.empty((16, 16), np.float32),
            np.empty((16, 16), np.float32), np.empty((2, 16), np.float32), np.empty(QK_K, np.float32),
            np.zeros(QK_K, np.float32))


@jit
def quantize_block_q6_K(x, qw, out, s):
    """quantize_row_q6_K_ref (qw empty) or quantize_row_q6_K_impl (qw float32[256]) for one block:
    x float32[256] -> out uint8[210], scratch s = _q6_K_scratch()."""
    L, scales, xt, wt, S, dd, mm = s
    use_w = qw.shape[0] > 0
    for j in range(16):
        for i in range(16):
            v = x[16 * j + i]
            xt[i, j] = v
            wt[i, j] = qw[16 * j + i] if use_w else v * v  # make_qx_quants' rmse_type 1 weight
    make_qx_quants_x16(32, xt, wt, L, scales, S)
    max_abs_scale, max_scale = signed_absmax(scales, 16)
    if max_abs_scale < GROUP_MAX_EPS:
        for i in range(Q6_K_BYTES):
            out[i] = 0
        return
    _q6_finish(x, L, scales, max_scale, out, dd, mm)


@jit
def dequantize_block_q6_K(blk, y):
    """dequantize_row_q6_K for one block: blk uint8[210] -> y float32[256]."""
    d = load_fp16(blk, _Q6_D)
    for h in range(2):
        ql = _Q6_QL + 64 * h
        qh = _Q6_QH + 32 * h
        sc = _Q6_SCALES + 8 * h
        for k in range(2):  # (d * scale) is the same product C forms for each weight
            s0 = d * F32(_i8(blk[sc + k]))
            s1 = d * F32(_i8(blk[sc + k + 2]))
            s2 = d * F32(_i8(blk[sc + k + 4]))
            s3 = d * F32(_i8(blk[sc + k + 6]))
            for l in range(16 * k, 16 * k + 16):
                lo0 = np.int32(blk[ql + l])
                lo1 = np.int32(blk[ql + 32 + l])
                hb = np.int32(blk[qh + l])
                y[128 * h + l] = s0 * F32(((lo0 & 0xF) | ((hb & 3) << 4)) - 32)
                y[128 * h + l + 32] = s1 * F32(((lo1 & 0xF) | (((hb >> 2) & 3) << 4)) - 32)
                y[128 * h + l + 64] = s2 * F32(((lo0 >> 4) | (((hb >> 4) & 3) << 4)) - 32)
                y[128 * h + l + 96] = s3 * F32(((lo1 >> 4) | (((hb >> 6) & 3) << 4)) - 32)


# -- row drivers: rows float32[nrows, n] and weights float32[n] (or [0]: the _ref path)
# -- -> out uint8[nrows, n/256*size], and back --------------------------------------------------------

quantize_q2_K, dequantize_q2_K = block_drivers(__name__, "q2_K", QK_K, Q2_K_BYTES, None, dequantize_block_q2_K,
                                               template=each_block_paths, scratch=_q2_K_scratch,
                                               REF=quantize_block_q2_K_ref, IMPL=quantize_block_q2_K_impl)
dequantize_q3_K = row_driver(each_block, __name__, "dequantize_q3_K", "dequantize_row_q3_K over all rows.",
                             BLOCK=dequantize_block_q3_K, IN=Q3_K_BYTES, OUT=QK_K)
quantize_q6_K, dequantize_q6_K = block_drivers(__name__, "q6_K", QK_K, Q6_K_BYTES, quantize_block_q6_K,
                                               dequantize_block_q6_K, scratch=_q6_K_scratch)
