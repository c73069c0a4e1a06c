"""IQ4_NL and IQ4_XS kernels: 4-bit indices into ggml's 16-entry non-linear codebook.

Both types store, per 32 weights, 4-bit indices q into the codebook ``kvalues_iq4nl`` (int8 values in
[-127, 113]) and reconstruct ``x ~ scale * kvalues[q]``. IQ4_NL keeps one half-precision scale per
32-weight block; IQ4_XS groups 8 such blocks into a 256-weight super-block with one half-precision
``d`` and a signed 6-bit scale per 32 weights: ``x ~ d * (ls - 32) * kvalues[q]``.

Each quantize entry point takes ``weights`` as a float32 importance vector of n_per_row values, or a
zero-length array for none (C's NULL); it hands the parallel driver the codebook as float32
(``KVALUES_IQ4NL_F32``). Every comparison and product ggml does against ``(float)kvalues[i]`` is exact
in float32, so the float32 copy of the table changes no result.
"""

from __future__ import annotations

import numpy as np

from qtool.kernels.common import F32, block_drivers, jit, load_fp16, load_u16, nearest_int, store_fp16, store_u16
from qtool.kernels.search import GROUP_MAX_EPS, signed_absmax

QK4_NL = 32
QK_K = 256
IQ4_NL_BYTES = 18  # d (f16) + qs[16]
IQ4_XS_BYTES = 136  # d (f16) + scales_h (u16) + scales_l[4] + qs[128]

#: ggml's kvalues_iq4nl (ggml-common.h): the IQ4 codebook, ascending.
KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)
#: the same values as float32, the form the kernels take
KVALUES_IQ4NL_F32 = KVALUES_IQ4NL.astype(np.float32)

#: the scale search's half-width: ggml's quantize_iq4_nl / quantize_iq4_xs pass ntry = 7
_NTRY = 7

# Byte offsets inside an IQ4_XS and an IQ4_NL block.
_XS_D, _XS_SCALES_H, _XS_SCALES_L, _XS_QS = 0, 2, 4, 8
_NL_D, _NL_QS = 0, 2


@jit
def best_index_iq4(values, x):
    """ggml best_index_int8(16, values, x): the codebook index nearest to x (ties to the upper one).

    ggml bisects with ``x < values[mid]``; as the table ascends, it ends on the pair
    values[i] <= x < values[i + 1] (i = 14 when no entry exceeds x, NaN included). That pair is
    found here by selects, so loops over x vectorize. The early returns of the C (x <= values[0],
    x >= values[15]) are the answer the closing comparison gives at the ends, inf included.
    """
    i = 0
    lo = values[0]
    hi = values[15]
    for k in range(1, 15):
        if not (x < values[k]):
            i = k
            lo = values[k]
    for k in range(14, 0, -1):
        if x < values[k]:
            hi = values[k]
    return i if x - lo < hi - x else i + 1


@jit
def nearest_value_iq4(values, x):
    """values[best_index_iq4(values, x)], without the index (the same selects)."""
    lo = values[0]
    hi = values[15]
    for k in range(1, 15):
        if not (x < values[k]):
            lo = values[k]
    for k in range(14, 0, -1):
        if x < values[k]:
            hi = values[k]
    return lo if x - lo < hi - x else hi


@jit
def _block_scale(xb, qw, sigma2, values, weight, Lb, qv):
    """The per-32-weight scale search of quantize_row_iq4_nl_impl (ntry = 7): x, qw float32[32]
    (qw empty for none) -> the block's scale; Lb uint8[32] gets the first pass's indices; weight and
    qv float32[32] are scratch."""
    n = xb.shape[0]
    if qw.shape[0] > 0:
        for j in range(n):
            weight[j] = qw[j] * np.sqrt(sigma2 + xb[j] * xb[j])
    else:
        for j in range(n):
            weight[j] = xb[j] * xb[j]
    amax, mx = signed_absmax(xb, n)
    if amax < GROUP_MAX_EPS:
        return F32(0.0)
    v0 = values[0]
    d = -mx / v0
    inv = F32(1.0) / d
    sumqx = F32(0.0)
    sumq2 = F32(0.0)
    for j in range(n):
        l = best_index_iq4(values, inv * xb[j])
        Lb[j] = l
        q = values[l]
        wq = weight[j] * q
        sumqx += wq * xb[j]
        sumq2 += wq * q
    d = sumqx / sumq2 if sumq2 > F32(0.0) else F32(0.0)
    best = d * sumqx
    for itry in range(-_NTRY, _NTRY + 1):
        inv = (F32(itry) + v0) / mx
        for j in range(n):  # selects only, no table gather: this loop vectorizes
            qv[j] = nearest_value_iq4(values, inv * xb[j])
        sumqx = F32(0.0)
        sumq2 = F32(0.0)
        for j in range(n):
            q = qv[j]
            wq = weight[j] * q
            sumqx += wq * xb[j]
            sumq2 += wq * q
        if sumq2 > F32(0.0) and sumqx * sumqx > best * sumq2:
            d = sumqx / sumq2
            best = d * sumqx
    return d


@jit
def _sigma2(x):
    """sum(x^2) * 2/n in float32, in ggml's order."""
    s = F32(0.0)
    for j in range(x.shape[0]):
        s += x[j] * x[j]
    return s * (F32(2.0) / F32(x.shape[0]))


@jit
def _pack_nibbles(L, n, qs, pos):
    """Per 32 of the n indices L[0:n]: byte j holds L[j] (low nibble) and L[16 + j] (high nibble)."""
    for i in range(n // 32):
        for j in range(16):
            qs[pos + 16 * i + j] = L[32 * i + j] | (L[32 * i + 16 + j] << np.uint8(4))


# ---------------------------------------------------------------------------------------------------
# IQ4_NL block, 18 bytes:
#
#   0       2                     18
#   | d f16 | qs[16]              |        qs[j] = q[j] | q[16 + j] << 4   (j = 0..15)
# ---------------------------------------------------------------------------------------------------


@jit
def _scratch():
    """Per-row scratch of the IQ4 block functions: weight, qv float32[32], L uint8[256], scales float32[8]."""
    return (np.empty(32, np.float32), np.empty(32, np.float32), np.empty(QK_K, np.uint8),
            np.empty(QK_K // 32, np.float32))


@jit
def quantize_block_iq4_nl(x, qw, y, s, values):
    """ggml quantize_row_iq4_nl_impl(QK4_NL, 32, ..., ntry=7): x, qw float32[32] -> y uint8[18];
    scratch s = _scratch()."""
    weight, qv, L, _ = s
    sigma2 = _sigma2(x)
    scale = _block_scale(x, qw, sigma2, values, weight, L, qv)
    store_fp16(y, _NL_D, scale)
    inv = F32(1.0) / scale if scale != F32(0.0) else F32(0.0)
    for j in range(QK4_NL):
        L[j] = best_index_iq4(values, inv * x[j])
    _pack_nibbles(L, QK4_NL, y, _NL_QS)


@jit
def dequantize_block_iq4_nl(y, o, values):
    """ggml dequantize_row_iq4_nl for one block: y uint8[18] -> o float32[32]."""
    d = load_fp16(y, _NL_D)
    for j in range(16):
        b = y[_NL_QS + j]
        o[j] = d * values[b & np.uint8(0xF)]
        o[j + 16] = d * values[b >> np.uint8(4)]


# ggml's quantize_iq4_nl: rows float32[nrows, n], weights float32[n] or [0] -> out uint8[nrows, n/32*18];
# dequantize_row_iq4_nl back
quantize_iq4_nl, dequantize_iq4_nl = block_drivers(__name__, "iq4_nl", QK4_NL, IQ4_NL_BYTES, quantize_block_iq4_nl,
                                                   dequantize_block_iq4_nl, scratch=_scratch,
                                                   tables=(KVALUES_IQ4NL_F32,))


# ---------------------------------------------------------------------------------------------------
# IQ4_XS block, 136 bytes; ls[b] (b = 0..7) is the 6-bit biased scale of 32-weight block b:
#
#   0       2              4             8                       136
#   | d f16 | scales_h u16 | scales_l[4] | qs[128]               |
#
#   scales_h bits 2b+1..2b      = ls[b] >> 4
#   scales_l[b/2] nibble (b%2)  = ls[b] & 0xF          (low nibble for even b)
#   qs[16*b + j] = q[32*b + j] | q[32*b + 16 + j] << 4      (j = 0..15)
#
#   x = d * (ls[b] - 32) * kvalues[q]
# ---------------------------------------------------------------------------------------------------


@jit
def quantize_block_iq4_xs(x, qw, y, s, values):
    """ggml quantize_row_iq4_nl_impl(QK_K, 32, ..., ntry=7): x, qw float32[256] -> y uint8[136];
    scratch s = _scratch()."""
    weight, qv, L, scales = s
    sigma2 = _sigma2(x)
    for ib in range(QK_K // 32):
        qwb = qw[32 * ib:32 * ib + 32] if qw.shape[0] > 0 else qw
        scales[ib] = _block_scale(x[32 * ib:32 * ib + 32], qwb, sigma2, values, weight, L[32 * ib:32 * ib + 32], qv)
    _, max_scale = signed_absmax(scales, QK_K // 32)
    d = -max_scale / F32(32.0)
    store_fp16(y, _XS_D, d)
    inv = F32(1.0) / d if d != F32(0.0) else F32(0.0)
    scales_h = np.uint16(0)
    for ib in range(QK_K // 32):
        l = max(-32, min(31, nearest_int(inv * scales[ib])))
        dl = d * F32(l)
        idl = F32(1.0) / dl if dl != F32(0.0) else F32(0.0)
        for j in range(32 * ib, 32 * ib + 32):
            L[j] = best_index_iq4(values, idl * x[j])
        l += 32
        lo = np.uint8(l & 0xF)
        if ib % 2 == 0:
            y[_XS_SCALES_L + ib // 2] = lo
        else:
            y[_XS_SCALES_L + ib // 2] |= lo << np.uint8(4)
        scales_h |= np.uint16((l >> 4) << (2 * ib))
    store_u16(y, _XS_SCALES_H, scales_h)
    _pack_nibbles(L, QK_K, y, _XS_QS)


@jit
def dequantize_block_iq4_xs(y, o, values):
    """ggml dequantize_row_iq4_xs for one super-block: y uint8[136] -> o float32[256]."""
    d = load_fp16(y, _XS_D)
    scales_h = np.int32(load_u16(y, _XS_SCALES_H))
    for ib in range(QK_K // 32):
        lo = (np.int32(y[_XS_SCALES_L + ib // 2]) >> (4 * (ib % 2))) & 0xF
        ls = lo | (((scales_h >> (2 * ib)) & 3) << 4)
        dl = d * F32(ls - 32)
        for j in range(16):
            b = y[_XS_QS + 16 * ib + j]
            o[32 * ib + j] = dl * values[b & np.uint8(0xF)]
            o[32 * ib + j + 16] = dl * values[b >> np.uint8(4)]


# ggml's quantize_iq4_xs: rows float32[nrows, n], weights float32[n] or [0] -> out uint8[nrows, n/256*136];
# dequantize_row_iq4_xs back
quantize_iq4_xs, dequantize_iq4_xs = block_drivers(__name__, "iq4_xs", QK_K, IQ4_XS_BYTES, quantize_block_iq4_xs,
                                                   dequantize_block_iq4_xs, scratch=_scratch,
                                                   tables=(KVALUES_IQ4NL_F32,))
