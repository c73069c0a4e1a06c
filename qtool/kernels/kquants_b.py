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
"""

from __future__ import annotations

import numba
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from qtool.kernels.common import F32, load_fp16, nearest_int, store_fp16, store_u16
from qtool.kernels.search import (
    GROUP_MAX_EPS,
    make_q3_quants,
    make_qkx2_quants,
    make_qkx3_quants,
    make_qp_quants,
    make_qx_quants,
)

# C float arithmetic never traps: on finite but huge inputs ggml divides by zero (a scale that
# overflowed to inf gives an inverse of 0) and carries on with inf/NaN. numba's default "python"
# error model raises ZeroDivisionError there instead, so these kernels use the IEEE "numpy" model.
jit = numba.njit(cache=True, nogil=True, error_model="numpy")
jit_rows = numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")

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
#   hmask byte i, bit b: high bit of weight 32*b + i (set means q >= 0, clear means q - 4)
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

for _t, _b in ((GGMLQuantizationType.Q2_K, Q2_K_BYTES), (GGMLQuantizationType.Q3_K, Q3_K_BYTES),
               (GGMLQuantizationType.Q6_K, Q6_K_BYTES)):
    assert GGML_QUANT_SIZES[_t] == (QK_K, _b), (_t, GGML_QUANT_SIZES[_t])


# -- the sub-block scale search, 16 sub-blocks side by side ------------------------------------------


@jit
def make_qx_quants_x16(nmax, xt, wt, L, scales, S, wxt):
    """ggml make_qx_quants(16, nmax, x_j, L_j, 1, w_j) for the 16 sub-blocks j of a super-block at once.

    Same arithmetic as search.make_qx_quants with rmse_type 1, element for element, but laid out
    sub-block-minor: xt[i, j] = x[16*j + i], wt[i, j] = w_j[i] (the importance, or x^2 where ggml
    passes NULL). Each sub-block keeps its own float32 sums, added in the C order i = 0..15, so
    the result is the same bit for bit; the 16 independent sums vectorize, which the one-block
    search (a chain of dependent adds) cannot. The quants of the winning trial are recomputed
    from its inverse scale at the end, which gives what C stored when it accepted that trial.

    xt, wt float32[16, 16]; L int8[256] (natural order, 0..2*nmax-1); scales float32[16] out.
    Scratch: S float32[7, 16], wxt float32[16, 16].
    """
    vmax = S[0]
    amax = S[1]
    iscale = S[2]
    best_iscale = S[3]
    best = S[4]
    sumlx = S[5]
    suml2 = S[6]
    lo = np.int32(-nmax)
    hi = np.int32(nmax - 1)
    for j in range(16):
        vmax[j] = F32(0.0)
        amax[j] = F32(0.0)
    for i in range(16):
        for j in range(16):
            v = xt[i, j]
            ax = abs(v)
            if ax > amax[j]:
                amax[j] = ax
                vmax[j] = v
            wxt[i, j] = wt[i, j] * v  # C's w*x[i]*l is (w*x[i])*l
    for j in range(16):
        iscale[j] = F32(-nmax) / vmax[j]
        sumlx[j] = F32(0.0)
        suml2[j] = F32(0.0)
    for i in range(16):
        for j in range(16):
            l = nearest_int(iscale[j] * xt[i, j])
            l = lo if l < lo else (hi if l > hi else l)
            fl = F32(l)
            sumlx[j] += wxt[i, j] * fl
            suml2[j] += wt[i, j] * fl * fl
    for j in range(16):
        sc = sumlx[j] / suml2[j] if suml2[j] != F32(0.0) else F32(0.0)
        scales[j] = sc
        best[j] = sc * sumlx[j]
        best_iscale[j] = iscale[j]
    for step in range(-9, 10):
        if step == 0:
            continue
        num = -(F32(nmax) + F32(0.1) * F32(step))
        for j in range(16):
            iscale[j] = num / vmax[j]
            sumlx[j] = F32(0.0)
            suml2[j] = F32(0.0)
        for i in range(16):
            for j in range(16):
                l = nearest_int(iscale[j] * xt[i, j])
                l = lo if l < lo else (hi if l > hi else l)
                fl = F32(l)
                sumlx[j] += wxt[i, j] * fl
                suml2[j] += wt[i, j] * fl * fl
        for j in range(16):
            if suml2[j] > F32(0.0) and sumlx[j] * sumlx[j] > best[j] * suml2[j]:
                sc = sumlx[j] / suml2[j]
                scales[j] = sc
                best[j] = sc * sumlx[j]
                best_iscale[j] = iscale[j]
    for j in range(16):
        if amax[j] < GROUP_MAX_EPS:  # C returns at once: all quants 0, scale 0
            scales[j] = F32(0.0)
            for i in range(16):
                L[16 * j + i] = 0
        else:
            for i in range(16):
                l = nearest_int(best_iscale[j] * xt[i, j])
                L[16 * j + i] = nmax + (lo if l < lo else (hi if l > hi else l))


# -- shared packing -------------------------------------------------------------------------------


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
def _q3_finish(x, L, out):
    """Tail shared by quantize_row_q3_K_ref and _impl: requantize against the stored scales,
    then split L into hmask and the 2-bit planes. L: int8[256] holding 0..7 on entry."""
    d_all = load_fp16(out, _Q3_D)
    for j in range(16):
        sc = _q3_scale(out, j) - 32
        d = d_all * F32(sc)
        if d == F32(0.0):
            continue
        for ii in range(16):
            l = nearest_int(x[16 * j + ii] / d)
            l = max(-4, min(3, l))
            L[16 * j + ii] = l + 4
    for i in range(32):
        out[_Q3_HMASK + i] = 0
    for j in range(QK_K):
        if L[j] > 3:
            out[_Q3_HMASK + j % 32] |= np.uint8(1 << (j // 32))
            L[j] -= 4
    _pack_2bit(L, out, _Q3_QS)


@jit
def _q6_finish(x, L, scales, max_scale, out):
    """Tail of quantize_row_q6_K_ref / _impl once the sub-block scales are known."""
    iscale = F32(-128.0) / max_scale
    d_all = store_fp16(out, _Q6_D, F32(1.0) / iscale)
    for ib in range(16):
        v = min(127, nearest_int(iscale * scales[ib]))
        out[_Q6_SCALES + ib] = np.uint8(v & 0xFF)
    for j in range(16):
        sc = np.int32(out[_Q6_SCALES + j])
        if sc >= 128:
            sc -= 256
        d = d_all * F32(sc)
        if d == F32(0.0):
            continue
        for ii in range(16):
            l = nearest_int(x[16 * j + ii] / d)
            l = max(-32, min(31, l))
            L[16 * j + ii] = l + 32
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
    mins, then pack. L: uint8[256]."""
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
def quantize_block_q2_K_ref(x, out, L, Laux, weights, scales, mins):
    """quantize_row_q2_K_ref for one block: x float32[256] -> out uint8[84].
    Scratch: L uint8[256], Laux uint8[16], weights/scales/mins float32[16]."""
    q4scale = F32(15.0)
    max_scale = F32(0.0)
    max_min = F32(0.0)
    for j in range(16):
        xs = x[16 * j:16 * j + 16]
        for l in range(16):
            weights[l] = abs(xs[l])
        s, m = make_qkx2_quants(16, 3, xs, weights, L[16 * j:16 * j + 16], Laux,
                                F32(-0.5), F32(0.1), 15, True)
        scales[j] = s
        mins[j] = m
        if s > max_scale:
            max_scale = s
        if m > max_min:
            max_min = m
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
    _q2_finish(x, L, out)


@jit
def quantize_block_q2_K_impl(x, qw, out, L, Laux, weight, scales, mins, sw, Ls, Lm):
    """quantize_row_q2_K_impl for one block: x, qw float32[256] -> out uint8[84].
    Scratch: L uint8[256], Laux/Ls/Lm uint8[16], weight/scales/mins/sw float32[16]."""
    sumx2 = F32(0.0)
    for j in range(QK_K):
        sumx2 += x[j] * x[j]
    sigma2 = sumx2 / F32(QK_K)
    for j in range(16):
        xs = x[16 * j:16 * j + 16]
        for l in range(16):
            weight[l] = qw[16 * j + l] * np.sqrt(sigma2 + xs[l] * xs[l])
        acc = F32(0.0)
        for l in range(16):
            acc += weight[l]
        sw[j] = acc
        s, m = make_qkx3_quants(16, 3, xs, weight, L[16 * j:16 * j + 16], Laux,
                                F32(-0.9), F32(0.05), 36, False)
        scales[j] = s
        mins[j] = m
    dm = make_qp_quants(16, 15, scales, Ls, sw)
    mm = make_qp_quants(16, 15, mins, Lm, sw)
    store_fp16(out, _Q2_D, dm)
    store_fp16(out, _Q2_DMIN, mm)
    for j in range(16):
        out[_Q2_SCALES + j] = np.uint8((np.int32(Ls[j]) | (np.int32(Lm[j]) << 4)) & 0xFF)
    _q2_finish(x, L, out)


@jit_rows
def quantize_q2_K(rows, weights, out):
    """quantize_q2_K over rows float32 [nrows, n] -> out uint8 [nrows, n/256*84];
    weights float32 [n] selects quantize_row_q2_K_impl, zero-length the _ref path."""
    nrows, n = rows.shape
    nb = n // QK_K
    use_w = weights.shape[0] > 0
    for r in numba.prange(nrows):
        L = np.empty(QK_K, np.uint8)
        Laux = np.empty(16, np.uint8)
        Ls = np.empty(16, np.uint8)
        Lm = np.empty(16, np.uint8)
        wbuf = np.empty(16, np.float32)
        scales = np.empty(16, np.float32)
        mins = np.empty(16, np.float32)
        sw = np.empty(16, np.float32)
        for b in range(nb):
            x = rows[r, QK_K * b:QK_K * (b + 1)]
            blk = out[r, Q2_K_BYTES * b:Q2_K_BYTES * (b + 1)]
            if use_w:
                quantize_block_q2_K_impl(x, weights[QK_K * b:QK_K * (b + 1)], blk, L, Laux, wbuf,
                                         scales, mins, sw, Ls, Lm)
            else:
                quantize_block_q2_K_ref(x, blk, L, Laux, wbuf, scales, mins)


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


@jit_rows
def dequantize_q2_K(data, out):
    """dequantize_row_q2_K over data uint8 [nrows, nb*84] -> out float32 [nrows, nb*256]."""
    nrows = data.shape[0]
    nb = data.shape[1] // Q2_K_BYTES
    for r in numba.prange(nrows):
        for b in range(nb):
            dequantize_block_q2_K(data[r, Q2_K_BYTES * b:Q2_K_BYTES * (b + 1)], out[r, QK_K * b:QK_K * (b + 1)])


# -- Q3_K -----------------------------------------------------------------------------------------


@jit
def quantize_block_q3_K_ref(x, out, L, scales):
    """quantize_row_q3_K_ref for one block: x float32[256] -> out uint8[110].
    Scratch: L int8[256], scales float32[16]."""
    max_scale = F32(0.0)
    amax = F32(0.0)
    for j in range(16):
        s = make_q3_quants(16, 4, x[16 * j:16 * j + 16], L[16 * j:16 * j + 16], True)
        scales[j] = s
        a = abs(s)
        if a > amax:
            amax = a
            max_scale = s
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
    _q3_finish(x, L, out)


@jit
def quantize_block_q3_K_impl(x, qw, out, L, scales, sw, Ls, xt, wt, S, wxt):
    """quantize_row_q3_K_impl for one block: x, qw float32[256] -> out uint8[110].
    Scratch: L int8[256], Ls int8[16], scales/sw float32[16], xt/wt/wxt float32[16, 16],
    S float32[7, 16]."""
    sumx2 = F32(0.0)
    for j in range(QK_K):
        sumx2 += x[j] * x[j]
    sigma2 = F32(2.0) * sumx2 / F32(QK_K)
    for j in range(16):
        sumw = F32(0.0)
        for i in range(16):
            v = x[16 * j + i]
            w = qw[16 * j + i] * np.sqrt(sigma2 + v * v)
            xt[i, j] = v
            wt[i, j] = w
            sumw += w
        sw[j] = sumw
    make_qx_quants_x16(4, xt, wt, L, scales, S, wxt)
    for i in range(12):
        out[_Q3_SCALES + i] = 0
    d_block = make_qx_quants(16, 32, scales, Ls, 1, sw)
    for j in range(16):
        _q3_put_scale(out, j, np.int32(Ls[j]))
    store_fp16(out, _Q3_D, d_block)
    _q3_finish(x, L, out)


@jit_rows
def quantize_q3_K(rows, weights, out):
    """quantize_q3_K over rows float32 [nrows, n] -> out uint8 [nrows, n/256*110];
    weights float32 [n] selects quantize_row_q3_K_impl, zero-length the _ref path."""
    nrows, n = rows.shape
    nb = n // QK_K
    use_w = weights.shape[0] > 0
    for r in numba.prange(nrows):
        L = np.empty(QK_K, np.int8)
        Ls = np.empty(16, np.int8)
        scales = np.empty(16, np.float32)
        sw = np.empty(16, np.float32)
        xt = np.empty((16, 16), np.float32)
        wt = np.empty((16, 16), np.float32)
        wxt = np.empty((16, 16), np.float32)
        S = np.empty((7, 16), np.float32)
        for b in range(nb):
            x = rows[r, QK_K * b:QK_K * (b + 1)]
            blk = out[r, Q3_K_BYTES * b:Q3_K_BYTES * (b + 1)]
            if use_w:
                quantize_block_q3_K_impl(x, weights[QK_K * b:QK_K * (b + 1)], blk, L, scales, sw, Ls,
                                         xt, wt, S, wxt)
            else:
                quantize_block_q3_K_ref(x, blk, L, scales)


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


@jit_rows
def dequantize_q3_K(data, out):
    """dequantize_row_q3_K over data uint8 [nrows, nb*110] -> out float32 [nrows, nb*256]."""
    nrows = data.shape[0]
    nb = data.shape[1] // Q3_K_BYTES
    for r in numba.prange(nrows):
        for b in range(nb):
            dequantize_block_q3_K(data[r, Q3_K_BYTES * b:Q3_K_BYTES * (b + 1)], out[r, QK_K * b:QK_K * (b + 1)])


# -- Q6_K -----------------------------------------------------------------------------------------


@jit
def quantize_block_q6_K(x, qw, out, L, scales, xt, wt, S, wxt):
    """quantize_row_q6_K_ref (qw empty) or quantize_row_q6_K_impl (qw float32[256]) for one block:
    x float32[256] -> out uint8[210].
    Scratch: L int8[256], scales float32[16], xt/wt/wxt float32[16, 16], S float32[7, 16]."""
    use_w = qw.shape[0] > 0
    for j in range(16):
        for i in range(16):
            v = x[16 * j + i]
            xt[i, j] = v
            wt[i, j] = qw[16 * j + i] if use_w else v * v  # make_qx_quants' rmse_type 1 weight
    make_qx_quants_x16(32, xt, wt, L, scales, S, wxt)
    max_scale = F32(0.0)
    max_abs_scale = F32(0.0)
    for ib in range(16):
        a = abs(scales[ib])
        if a > max_abs_scale:
            max_abs_scale = a
            max_scale = scales[ib]
    if max_abs_scale < GROUP_MAX_EPS:
        for i in range(Q6_K_BYTES):
            out[i] = 0
        return
    _q6_finish(x, L, scales, max_scale, out)


@jit_rows
def quantize_q6_K(rows, weights, out):
    """quantize_q6_K over rows float32 [nrows, n] -> out uint8 [nrows, n/256*210];
    weights float32 [n] selects quantize_row_q6_K_impl, zero-length the _ref path."""
    nrows, n = rows.shape
    nb = n // QK_K
    use_w = weights.shape[0] > 0
    for r in numba.prange(nrows):
        L = np.empty(QK_K, np.int8)
        scales = np.empty(16, np.float32)
        xt = np.empty((16, 16), np.float32)
        wt = np.empty((16, 16), np.float32)
        wxt = np.empty((16, 16), np.float32)
        S = np.empty((7, 16), np.float32)
        for b in range(nb):
            x = rows[r, QK_K * b:QK_K * (b + 1)]
            blk = out[r, Q6_K_BYTES * b:Q6_K_BYTES * (b + 1)]
            qw = weights[QK_K * b:QK_K * (b + 1)] if use_w else weights
            quantize_block_q6_K(x, qw, blk, L, scales, xt, wt, S, wxt)


@jit
def dequantize_block_q6_K(blk, y):
    """dequantize_row_q6_K for one block: blk uint8[210] -> y float32[256]."""
    d = load_fp16(blk, _Q6_D)
    for h in range(2):
        for l in range(32):
            lo0 = np.int32(blk[_Q6_QL + 64 * h + l])
            lo1 = np.int32(blk[_Q6_QL + 64 * h + 32 + l])
            hb = np.int32(blk[_Q6_QH + 32 * h + l])
            qs = ((lo0 & 0xF) | ((hb & 3) << 4),
                  (lo1 & 0xF) | (((hb >> 2) & 3) << 4),
                  (lo0 >> 4) | (((hb >> 4) & 3) << 4),
                  (lo1 >> 4) | (((hb >> 6) & 3) << 4))
            for p in range(4):
                w = 128 * h + 32 * p + l
                sc = np.int32(blk[_Q6_SCALES + w // 16])
                if sc >= 128:
                    sc -= 256
                y[w] = d * F32(sc) * F32(qs[p] - 32)


@jit_rows
def dequantize_q6_K(data, out):
    """dequantize_row_q6_K over data uint8 [nrows, nb*210] -> out float32 [nrows, nb*256]."""
    nrows = data.shape[0]
    nb = data.shape[1] // Q6_K_BYTES
    for r in numba.prange(nrows):
        for b in range(nb):
            dequantize_block_q6_K(data[r, Q6_K_BYTES * b:Q6_K_BYTES * (b + 1)], out[r, QK_K * b:QK_K * (b + 1)])
