"""IQ1_S and IQ1_M kernels: groups of 8 weights snapped to a 2048-point ternary lattice.

Each 8-weight group stores an 11-bit index into ggml's ``iq1s_grid`` (every coordinate in {-1, 0, 1})
and is reconstructed as ``x ~ dl * (grid[j] + delta)``, ``delta = +-IQ1S_DELTA`` (0.125) per group
sign bit, ``dl = d * (2*s + 1)`` with a 3-bit block scale s. IQ1_S shares one scale and one delta
sign per 32 weights; IQ1_M has one scale per 16 weights and one delta sign per 8.

The quantizers search every split of the sorted block into three levels, then snap each group of
8 to the lattice: a group whose level pattern is a grid point keeps it, any other takes the best of
its precomputed neighbours (the grid points in the three nearest distance shells), as
``iq2xs_init_impl`` builds them. The caller hands in the tables (qtool.quantizers.lattice):

    levels      uint8 [2048, 8]    level 0..2 of each coordinate (grid value = level - 1)
    values      float32 [2048, 8]  the same as float32 -1/0/1 (for dequantization)
    kmap        int32 [43692]      pattern u = sum(level_j << 2j) -> grid index, or -(offset + 1)
    neighbours  uint16 [...]       at offset: count n, then n grid indices in (distance, index) order

The quantize drivers (common.checked_driver) write (FAILED, super-block) into ``status`` int32[nrows, 2]
(zero on entry) for a row where ggml aborts (GGML_ASSERT: no grid point at a finite distance, or a
non-finite block scale).
"""

from __future__ import annotations

import numpy as np

from qtool.kernels.common import (F32, checked_driver, each_row, fp16_bits_to_fp32, fp32_to_fp16_bits, jit, load_fp16,
                                 load_u16, row_driver, store_fp16, store_u16)
from qtool.kernels.lattice import importance, odd_level, sum_squares

QK_K = 256
IQ1_S_BYTES = 50  # d (f16) + qs[32] + qh u16[8]
IQ1_M_BYTES = 56  # qs[32] + qh[16] + scales[8]

_DELTA = np.float32(0.125)  # IQ1S_DELTA == IQ1M_DELTA
#: the three levels with a positive and with a negative delta: x_p = level - 1 + delta, x_m = level - 1 - delta
X_P = np.array([-1 + 0.125, 0.125, 1 + 0.125], dtype=np.float32)
X_M = np.array([-1 - 0.125, -0.125, 1 - 0.125], dtype=np.float32)
_EPS_IQ1_S = np.float32(1e-12)  # GROUP_MAX_EPS_IQ1_S
_EPS_IQ1_M = np.float32(1e-7)  # GROUP_MAX_EPS_IQ1_M
_FLT_MAX = np.float32(3.4028234663852886e38)
#: status codes
OK, FAILED = 0, 1


@jit
def find_best_neighbour2(neighbours, kmap_entry, levels, xval, weight, scale, xx, L, xfall):
    """ggml iq1_find_best_neighbour2: the neighbour of an off-grid pattern nearest to xval (weighted
    squared distance of scale*xx[level] - x, first of equals wins); L uint8[8] gets its levels.
    xfall is the rest of the row from this group on: ggml's whole-grid fallback reads xval[i] with the
    grid index i (sic), so it is given those same floats (0 past the row's end)."""
    off = -kmap_entry - 1
    n = np.int32(neighbours[off])
    best = _FLT_MAX
    gi = -1
    for jj in range(1, n + 1):
        g = np.int32(neighbours[off + jj])
        d2 = F32(0.0)
        for i in range(8):
            q = xx[levels[g, i]]
            w = weight[i]
            diff = scale * q - xval[i]
            d2 += w * diff * diff
        if d2 < best:
            best = d2
            gi = g
    if gi < 0:
        for g in range(levels.shape[0]):
            xi = xfall[g] if g < xfall.shape[0] else F32(0.0)
            d2 = F32(0.0)
            for j in range(8):
                w = weight[j]
                q = xx[levels[g, j]]
                diff = scale * q - xi
                d2 += w * diff * diff
            if d2 < best:
                best = d2
                gi = g
    if gi >= 0:
        for i in range(8):
            L[i] = levels[gi, i]
    return gi


@jit
def _sort_index(xb, idx):
    """idx = the order of xb ascending, equal values in index order: glibc's qsort (a merge sort,
    stable) with iq1_sort_helper, as ggml sorts its (x, index) pairs. Each value's place is counted
    (those below it, and equal ones before it), which vectorizes and has no unpredictable branches."""
    n = xb.shape[0]
    for i in range(n):
        xi = xb[i]
        c = 0
        for j in range(n):
            c += np.int32((xb[j] < xi) | ((xb[j] == xi) & (j < i)))
        idx[c] = i


@jit
def _sigma2(xbl):
    return F32(2.0) * sum_squares(xbl, QK_K) / F32(QK_K)


@jit
def _abs_max(xb, n):
    """C's running MAX(m, fabsf(x)) over the first n values."""
    mx = abs(xb[0])
    for i in range(1, n):
        a = abs(xb[i])
        mx = mx if mx > a else a
    return mx


@jit
def _split_levels(idx, b1, b2, scale, L, n):
    """The levels of the best split: L = 0 below sorted place b1, 1 below b2, else 2 (idx: the sort order);
    a negative scale flips them (L -> 2 - L) and itself. Returns (scale, whether it flipped)."""
    for j in range(n):
        L[idx[j]] = 0 if j < b1 else (1 if j < b2 else 2)
    if scale < F32(0.0):
        for j in range(n):
            L[j] = 2 - L[j]
        return -scale, True
    return scale, False


@jit
def _snap_groups(xb, weight, L, ng, negs, x_p, x_m, scale, levels, kmap, neighbours, xrest, index):
    """Each of the ng 8-groups of the block's levels L onto the grid: its own pattern where that is a
    grid point, else ggml's best neighbour at scale (iq1_find_best_neighbour2) with the group's levels
    x_m if bit k of negs is set, else x_p; index gets the grid indices. Where a group moved, the scale
    is refit over the block as ggml refits it. Returns (False where ggml aborts, scale)."""
    on_grid = True
    for k in range(ng):
        xx = x_m if (negs >> k) & 1 else x_p
        u = 0
        for j in range(8):
            u |= np.int32(L[8 * k + j]) << (2 * j)
        gi = kmap[u]
        if gi < 0:
            on_grid = False
            gi = find_best_neighbour2(neighbours, gi, levels, xb[8 * k:8 * k + 8], weight[8 * k:8 * k + 8],
                                      scale, xx, L[8 * k:8 * k + 8], xrest[8 * k:])
            if gi < 0:
                return False, scale
        index[k] = gi
    if not on_grid:
        sqx = F32(0.0)
        sq2 = F32(0.0)
        for k in range(ng):
            xx = x_m if (negs >> k) & 1 else x_p
            g = index[k]
            for j in range(8):
                w = weight[8 * k + j]
                q = xx[levels[g, j]]
                sqx += w * q * xb[8 * k + j]
                sq2 += w * q * q
        if sqx > F32(0.0) and sq2 > F32(0.0):
            scale = sqx / sq2
    return True, scale


# ---------------------------------------------------------------------------------------------------
# IQ1_S block, 50 bytes (8 blocks of 32 weights, 4 groups of 8 each):
#
#   0       2                     34                      50
#   | d f16 | qs[32]              | qh u16[8]             |
#
#   grid index of group k of block b = qs[4b + k] | ((qh[b] >> 3k) & 7) << 8
#   qh[b] bits 12..14 = s (block scale), bit 15 = delta sign (1: -delta)
#   x = d * (2s + 1) * (grid[j] +- 0.125)
# ---------------------------------------------------------------------------------------------------


@jit
def _scratch_iq1_s():
    """Per-row scratch of quantize_block_iq1_s: scales, weight, sumx, sumw (prefix sums), idx, L, index,
    shifts, cand float32[4, 33], flag int32[33]."""
    return (np.empty(8, np.float32), np.empty(32, np.float32), np.empty(33, np.float32), np.empty(33, np.float32),
            np.empty(32, np.int32), np.empty(32, np.uint8), np.empty(4, np.int32), np.empty(8, np.int32),
            np.empty((4, 33), np.float32), np.empty(33, np.int32))


@jit
def quantize_block_iq1_s(xrest, qw, y, s, levels, kmap, neighbours, x_p, x_m):
    """ggml quantize_row_iq1_s_impl for one 256-weight super-block: the first 256 weights of xrest (the
    row from this super-block on, which ggml's neighbour fallback reads), qw float32[256] -> y uint8[50];
    scratch s = _scratch_iq1_s(). Returns OK or FAILED."""
    scales, weight, sumx, sumw, idx, L, index, shifts, cand, flag = s
    x = xrest[:QK_K]
    for j in range(IQ1_S_BYTES):
        y[j] = 0
    bs = 32
    max_scale = F32(0.0)
    sigma2 = _sigma2(x)
    for ib in range(QK_K // bs):
        xb = x[bs * ib:bs * ib + bs]
        importance(xb, qw[bs * ib:bs * ib + bs], bs, sigma2, F32(0.0), weight)
        mx = _abs_max(xb, bs)
        if mx < _EPS_IQ1_S:
            scales[ib] = F32(0.0)
            shifts[ib] = 1
            continue
        _sort_index(xb, idx)
        sumx[0] = F32(0.0)
        sumw[0] = F32(0.0)
        for j in range(bs):
            i = idx[j]
            sumx[j + 1] = sumx[j] + weight[i] * xb[i]
            sumw[j + 1] = sumw[j] + weight[i]
        best = -_FLT_MAX
        scale = mx
        b1 = -1
        b2 = -1
        bshift = 0
        # ggml tries every split i1 <= i2 of the sorted block, x_p then x_m at each, keeping a strictly
        # better sqx^2/sq2. For each i1 all splits are computed side by side (the same float32 ops),
        # each flagged if it beats the best so far; ggml's in-order scan starts at the first flagged
        # one: the best does not change before it, so skipping the others is exact.
        sp = cand[0]
        qp = cand[1]
        sm = cand[2]
        qm = cand[3]
        for i1 in range(bs + 1):
            a0 = sumx[i1] - sumx[0]
            w0 = sumw[i1] - sumw[0]
            for i2 in range(bs + 1):
                a1 = sumx[i2] - sumx[i1]
                a2 = sumx[bs] - sumx[i2]
                w1 = sumw[i2] - sumw[i1]
                w2 = sumw[bs] - sumw[i2]
                cx = a0 * x_p[0] + a1 * x_p[1] + a2 * x_p[2]
                c2 = w0 * x_p[0] * x_p[0] + w1 * x_p[1] * x_p[1] + w2 * x_p[2] * x_p[2]
                dx = a0 * x_m[0] + a1 * x_m[1] + a2 * x_m[2]
                d2 = w0 * x_m[0] * x_m[0] + w1 * x_m[1] * x_m[1] + w2 * x_m[2] * x_m[2]
                sp[i2] = cx
                qp[i2] = c2
                sm[i2] = dx
                qm[i2] = d2
                flag[i2] = ((c2 > F32(0.0)) & (cx * cx > best * c2)) | ((d2 > F32(0.0)) & (dx * dx > best * d2))
            first = bs + 1
            for i2 in range(i1, bs + 1):
                if flag[i2]:
                    first = i2
                    break
            for i2 in range(first, bs + 1):
                sqx = sp[i2]
                sq2 = qp[i2]
                if sq2 > F32(0.0) and sqx * sqx > best * sq2:
                    scale = sqx / sq2
                    best = scale * sqx
                    b1 = i1
                    b2 = i2
                    bshift = 1
                sqx = sm[i2]
                sq2 = qm[i2]
                if sq2 > F32(0.0) and sqx * sqx > best * sq2:
                    scale = sqx / sq2
                    best = scale * sqx
                    b1 = i1
                    b2 = i2
                    bshift = -1
        if b1 < 0 or b2 < 0 or bshift == 0:
            scales[ib] = F32(0.0)
            shifts[ib] = 1
            continue
        scale, flipped = _split_levels(idx, b1, b2, scale, L, bs)
        if flipped:
            bshift = -bshift
        ok, scale = _snap_groups(xb, weight, L, bs // 8, 0 if bshift == 1 else 15, x_p, x_m, scale, levels, kmap,
                                 neighbours, xrest[bs * ib:], index)
        if not ok:
            return FAILED
        h = 0
        for k in range(bs // 8):
            y[2 + 4 * ib + k] = np.uint8(index[k] & 255)
            h |= (index[k] >> 8) << (3 * k)
        store_u16(y, 34 + 2 * ib, np.uint16(h))
        if not (scale >= F32(0.0)):
            return FAILED
        scales[ib] = scale
        shifts[ib] = bshift
        max_scale = max_scale if max_scale > scale else scale
    if max_scale == F32(0.0):
        return OK
    d = max_scale / F32(15.0)
    store_fp16(y, 0, d * F32(1.125))
    inv = F32(1.0) / d
    for ib in range(QK_K // bs):
        l = odd_level(inv, scales[ib], 7)
        if shifts[ib] == -1:
            l |= 8
        h = np.int32(load_u16(y, 34 + 2 * ib)) | (l << 12)
        store_u16(y, 34 + 2 * ib, np.uint16(h & 0xFFFF))
    return OK


@jit
def dequantize_row_iq1_s(data, out, values):
    """ggml dequantize_row_iq1_s: data uint8[nb*50] -> out float32[nb*256]."""
    for i in range(data.shape[0] // IQ1_S_BYTES):
        y = data[IQ1_S_BYTES * i:IQ1_S_BYTES * (i + 1)]
        o = out[QK_K * i:QK_K * (i + 1)]
        d = load_fp16(y, 0)
        for ib in range(8):
            qh = np.int32(load_u16(y, 34 + 2 * ib))
            dl = d * F32(2 * ((qh >> 12) & 7) + 1)
            delta = -_DELTA if qh & 0x8000 else _DELTA
            for l in range(4):
                g = np.int32(y[2 + 4 * ib + l]) | (((qh >> (3 * l)) & 7) << 8)
                for j in range(8):
                    o[32 * ib + 8 * l + j] = dl * (values[g, j] + delta)


# ---------------------------------------------------------------------------------------------------
# IQ1_M block, 56 bytes (16 blocks of 16 weights, 2 groups of 8 each); no separate d:
#
#   0                     32              48                56
#   | qs[32]              | qh[16]        | sc u16[4]       |
#
#   grid index of group k of block b = qs[2b + k] | ((qh[b] >> 4k) & 7) << 8
#   qh[b] bit 3 / bit 7   = delta sign of group 0 / group 1 (1: -delta)
#   sc[b/4] bits 3(b%4)..3(b%4)+2 = s (block scale); bits 12..15 of sc[0..3] = the 4 nibbles of d (f16)
#   x = d * (2s + 1) * (grid[j] +- 0.125)
# ---------------------------------------------------------------------------------------------------

@jit
def _scratch_iq1_m():
    """Per-row scratch of quantize_block_iq1_m: scales, weight, idx, px, pw float32[2, 17] (the per-half
    prefix sums), L, index, shifts, cand float32[8, 17], flag int32[17]."""
    return (np.empty(16, np.float32), np.empty(16, np.float32), np.empty(16, np.int32), np.empty((2, 17), np.float32),
            np.empty((2, 17), np.float32), np.empty(16, np.uint8), np.empty(2, np.int32), np.empty(16, np.int32),
            np.empty((8, 17), np.float32), np.empty(17, np.int32))


@jit
def quantize_block_iq1_m(xrest, qw, y, s, levels, kmap, neighbours, x_p, x_m):
    """ggml quantize_row_iq1_m_impl for one 256-weight super-block: the first 256 weights of xrest (as in
    quantize_block_iq1_s), qw float32[256] (empty for none) -> y uint8[56]; scratch s = _scratch_iq1_m().
    Returns OK or FAILED."""
    scales, weight, idx, px, pw, L, index, shifts, cand, flag = s
    x = xrest[:QK_K]
    for j in range(IQ1_M_BYTES):
        y[j] = 0
    bs = 16
    have_w = qw.shape[0] > 0
    max_scale = F32(0.0)
    sigma2 = _sigma2(x)
    p2 = x_p[2]
    m2 = x_m[2]
    cp1 = x_p[0] * x_p[0] - x_p[1] * x_p[1]
    cp2 = x_p[1] * x_p[1] - x_p[2] * x_p[2]
    cm1 = x_m[0] * x_m[0] - x_m[1] * x_m[1]
    cm2 = x_m[1] * x_m[1] - x_m[2] * x_m[2]
    for ib in range(QK_K // bs):
        xb = x[bs * ib:bs * ib + bs]
        importance(xb, qw[bs * ib:bs * ib + bs] if have_w else qw, bs, sigma2, F32(0.0), weight)
        mx = _abs_max(xb, bs)
        if mx < _EPS_IQ1_M:
            scales[ib] = F32(0.0)
            shifts[ib] = 0
            continue
        _sort_index(xb, idx)
        px[0, 0] = F32(0.0)
        px[1, 0] = F32(0.0)
        pw[0, 0] = F32(0.0)
        pw[1, 0] = F32(0.0)
        for j in range(bs):
            i = idx[j]
            h = 0 if i < bs // 2 else 1
            px[h, j + 1] = px[h, j] + weight[i] * xb[i]
            px[1 - h, j + 1] = px[1 - h, j]
            pw[h, j + 1] = pw[h, j] + weight[i]
            pw[1 - h, j + 1] = pw[1 - h, j]
        tx0 = px[0, bs]
        tx1 = px[1, bs]
        tw0 = pw[0, bs]
        tw1 = pw[1, bs]
        best = -_FLT_MAX
        scale = mx
        b1 = -1
        b2 = -1
        bk = -1
        # as in IQ1_S: every split side by side, ggml's in-order scan (k = 0..3 at each i2) from the
        # first that beats the best so far
        for i1 in range(bs + 1):
            for i2 in range(bs + 1):
                sx0 = px[0, i1] + px[0, i2]
                sx1 = px[1, i1] + px[1, i2]
                qxp0 = tx0 * p2 - sx0
                qxm0 = tx0 * m2 - sx0
                qxp1 = tx1 * p2 - sx1
                qxm1 = tx1 * m2 - sx1
                q2p0 = tw0 * p2 * p2 + pw[0, i1] * cp1 + pw[0, i2] * cp2
                q2m0 = tw0 * m2 * m2 + pw[0, i1] * cm1 + pw[0, i2] * cm2
                q2p1 = tw1 * p2 * p2 + pw[1, i1] * cp1 + pw[1, i2] * cp2
                q2m1 = tw1 * m2 * m2 + pw[1, i1] * cm1 + pw[1, i2] * cm2
                cand[0, i2] = qxp0 + qxp1
                cand[1, i2] = q2p0 + q2p1
                cand[2, i2] = qxp0 + qxm1
                cand[3, i2] = q2p0 + q2m1
                cand[4, i2] = qxm0 + qxp1
                cand[5, i2] = q2m0 + q2p1
                cand[6, i2] = qxm0 + qxm1
                cand[7, i2] = q2m0 + q2m1
                f = np.int32(0)
                for k in range(4):
                    f |= np.int32((cand[2 * k + 1, i2] > F32(0.0))
                                  & (cand[2 * k, i2] * cand[2 * k, i2] > best * cand[2 * k + 1, i2]))
                flag[i2] = f
            first = bs + 1
            for i2 in range(i1, bs + 1):
                if flag[i2]:
                    first = i2
                    break
            for i2 in range(first, bs + 1):
                for k in range(4):
                    sqx = cand[2 * k, i2]
                    sq2 = cand[2 * k + 1, i2]
                    if sq2 > F32(0.0) and sqx * sqx > best * sq2:
                        scale = sqx / sq2
                        best = scale * sqx
                        b1 = i1
                        b2 = i2
                        bk = k
        if b1 < 0 or b2 < 0 or bk < 0:
            scales[ib] = F32(0.0)
            shifts[ib] = 0
            continue
        scale, flipped = _split_levels(idx, b1, b2, scale, L, bs)
        if flipped:
            bk = 3 - bk
        # group 0 takes -delta for bk 2, 3; group 1 for bk 1, 3
        ok, scale = _snap_groups(xb, weight, L, 2, (1 if bk >= 2 else 0) | ((bk % 2) << 1), x_p, x_m, scale, levels,
                                 kmap, neighbours, xrest[bs * ib:], index)
        if not ok:
            return FAILED
        y[2 * ib] = np.uint8(index[0] & 255)
        y[2 * ib + 1] = np.uint8(index[1] & 255)
        y[32 + ib] = np.uint8((index[0] >> 8) | ((index[1] >> 8) << 4))
        if not (scale >= F32(0.0)):
            return FAILED
        scales[ib] = scale
        shifts[ib] = bk
        max_scale = max_scale if max_scale > scale else scale
    if max_scale == F32(0.0):
        return OK
    d = max_scale / F32(15.0)
    inv = F32(1.0) / d
    sqx = F32(0.0)
    sq2 = F32(0.0)
    sc0 = 0
    sc1 = 0
    sc2 = 0
    sc3 = 0
    for ib in range(QK_K // bs):
        l = odd_level(inv, scales[ib], 7)
        bits = l << (3 * (ib % 4))
        if ib // 4 == 0:
            sc0 |= bits
        elif ib // 4 == 1:
            sc1 |= bits
        elif ib // 4 == 2:
            sc2 |= bits
        else:
            sc3 |= bits
        sh = shifts[ib]
        mask = 0x00 if sh == 0 else (0x80 if sh == 1 else (0x08 if sh == 2 else 0x88))
        qh = np.int32(y[32 + ib]) | mask
        y[32 + ib] = np.uint8(qh)
        xb = x[bs * ib:bs * ib + bs]
        importance(xb, qw[bs * ib:bs * ib + bs] if have_w else qw, bs, sigma2, F32(0.0), weight)
        fl = F32(2 * l + 1)
        for k in range(2):
            if k == 0:
                xx = x_p if sh < 2 else x_m
            else:
                xx = x_p if sh % 2 == 0 else x_m
            g = np.int32(y[2 * ib + k]) + ((qh << (8 - 4 * k)) & 0x700)
            for j in range(8):
                w = weight[8 * k + j]
                q = xx[levels[g, j]] * fl
                sqx += w * q * xb[8 * k + j]
                sq2 += w * q * q
    if sq2 > F32(0.0):
        d = sqx / sq2
    s = np.int32(fp32_to_fp16_bits(d * F32(1.1125)))
    sc0 |= (s & 0x000F) << 12
    sc1 |= (s & 0x00F0) << 8
    sc2 |= (s & 0x0F00) << 4
    sc3 |= s & 0xF000
    store_u16(y, 48, np.uint16(sc0 & 0xFFFF))
    store_u16(y, 50, np.uint16(sc1 & 0xFFFF))
    store_u16(y, 52, np.uint16(sc2 & 0xFFFF))
    store_u16(y, 54, np.uint16(sc3 & 0xFFFF))
    return OK


@jit
def dequantize_row_iq1_m(data, out, values):
    """ggml dequantize_row_iq1_m: data uint8[nb*56] -> out float32[nb*256]."""
    for i in range(data.shape[0] // IQ1_M_BYTES):
        y = data[IQ1_M_BYTES * i:IQ1_M_BYTES * (i + 1)]
        o = out[QK_K * i:QK_K * (i + 1)]
        sc0 = np.int32(load_u16(y, 48))
        sc1 = np.int32(load_u16(y, 50))
        sc2 = np.int32(load_u16(y, 52))
        sc3 = np.int32(load_u16(y, 54))
        u = (sc0 >> 12) | ((sc1 >> 8) & 0x00F0) | ((sc2 >> 4) & 0x0F00) | (sc3 & 0xF000)
        d = fp16_bits_to_fp32(np.uint16(u))
        for ib in range(8):
            sc = np.int32(load_u16(y, 48 + 2 * (ib // 2)))
            dl1 = d * F32(2 * ((sc >> (6 * (ib % 2))) & 7) + 1)
            dl2 = d * F32(2 * ((sc >> (6 * (ib % 2) + 3)) & 7) + 1)
            qh0 = np.int32(y[32 + 2 * ib])
            qh1 = np.int32(y[32 + 2 * ib + 1])
            for l in range(4):
                qh = qh0 if l < 2 else qh1
                g = np.int32(y[4 * ib + l]) | ((qh << (8 - 4 * (l % 2))) & 0x700)
                neg = (qh & (0x08 if l % 2 == 0 else 0x80)) != 0
                delta = -_DELTA if neg else _DELTA
                dl = dl1 if l < 2 else dl2
                for j in range(8):
                    o[32 * ib + 8 * l + j] = dl * (values[g, j] + delta)


# -- row drivers: rows float32[nrows, n], weights float32[n] (IQ1_M also [0]: ggml's x^2 path), the tables
# -- (levels, kmap, neighbours, x_p, x_m) and status int32[nrows, 2] -> out uint8[nrows, n/256*50 or *56]; and
# -- back, data uint8[nrows, nb*50 or nb*56] -> out float32[nrows, nb*256] -------------------------------------

quantize_iq1_s = checked_driver(__name__, "iq1_s", QK_K, IQ1_S_BYTES, quantize_block_iq1_s, _scratch_iq1_s, TAIL=True)
quantize_iq1_m = checked_driver(__name__, "iq1_m", QK_K, IQ1_M_BYTES, quantize_block_iq1_m, _scratch_iq1_m, TAIL=True)
dequantize_iq1_s = row_driver(each_row, __name__, "dequantize_iq1_s", "dequantize_row_iq1_s over all rows.",
                              ROW=dequantize_row_iq1_s)
dequantize_iq1_m = row_driver(each_row, __name__, "dequantize_iq1_m", "dequantize_row_iq1_m over all rows.",
                              ROW=dequantize_row_iq1_m)
