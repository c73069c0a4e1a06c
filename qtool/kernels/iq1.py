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
    nlev        uint16 [...]       the same lists, each listed point's levels packed 2 bits a coordinate
                                   (Lattice.neighbour_codes: what the neighbour scan reads)

The quantize drivers (common.checked_driver) write (FAILED, super-block) into ``status`` int32[nrows, 2]
(zero on entry) for a row where ggml aborts (GGML_ASSERT: no grid point at a finite distance, or a
non-finite block scale).
"""

from __future__ import annotations

import numpy as np

from qtool.kernels.common import (F32, IQ1_M_LANES, IQ1_S_LANES, checked_driver, each_row, fp16_bits_to_fp32,
                                 fp32_to_fp16_bits, jit, jit_inline, lane_iq1m_splits, lane_iq1s_splits, load_fp16,
                                 load_u16, nearest_packed_point_8d, pick, row_driver, store_fp16, store_u16)
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


@jit_inline
def find_best_neighbour2(neighbours, kmap_entry, levels, nlev, xb, weight, at, scale, xx, L, xrest):
    """ggml iq1_find_best_neighbour2 for the group at xb[at:at+8] (weights weight[at:at+8]): the neighbour
    of an off-grid pattern nearest to it (weighted squared distance of scale*xx[level] - x, first of equals
    wins); L[at:at+8] gets its levels. The list is measured 16 points at a time
    (common.nearest_packed_point_8d over nlev, the lists with each point's levels packed in a uint16:
    Lattice.neighbour_codes; the count read from there too), as C's loop measures it. ggml's whole-grid
    fallback reads xval[i] with the grid index i (sic): here xrest[at + i], the rest of the row (0 past its
    end). Offsets, not slices: a slice of an array is a reference counted in every call."""
    off = -np.int64(kmap_entry) - 1
    jb = nearest_packed_point_8d(nlev, off + 1, np.int64(nlev[off]), xb, weight, at, scale, xx)
    best = _FLT_MAX
    gi = -1 if jb < 0 else np.int32(neighbours[off + 1 + jb])
    if gi < 0:
        for g in range(levels.shape[0]):
            xi = xrest[at + g] if at + g < xrest.shape[0] else F32(0.0)
            d2 = F32(0.0)
            for j in range(8):
                w = weight[at + j]
                q = xx[levels[g, j]]
                diff = scale * q - xi
                d2 += w * diff * diff
            if d2 < best:
                best = d2
                gi = g
    if gi >= 0:
        for i in range(8):
            L[at + i] = levels[gi, i]
    return gi


@jit_inline
def _sort_index(xb, idx, count):
    """idx = the order of xb ascending, equal values in index order: glibc's qsort (a merge sort,
    stable) with iq1_sort_helper, as ggml sorts its (x, index) pairs. Each value's place is counted
    (those below it, and equal ones before it) for all values at once, one value j against the whole
    block a step: count int32[n] is scratch. No branches, no horizontal sums: it vectorizes (with n a
    compile-time constant LLVM unrolls the loops into scalar code instead)."""
    n = xb.shape[0]
    for i in range(n):
        count[i] = 0
    for j in range(n):
        xj = xb[j]
        for i in range(n):
            count[i] += np.int32((xj < xb[i]) | ((xj == xb[i]) & (j < i)))
    for i in range(n):
        idx[count[i]] = i


@jit_inline
def _sigma2(xbl):
    return F32(2.0) * sum_squares(xbl, QK_K) / F32(QK_K)


@jit_inline
def _abs_max(xb, n):
    """C's running MAX(m, fabsf(x)) over the first n values."""
    mx = abs(xb[0])
    for i in range(1, n):
        a = abs(xb[i])
        mx = mx if mx > a else a
    return mx


@jit_inline
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


@jit_inline
def _snap_groups(xb, weight, L, ng, negs, x_p, x_m, scale, levels, kmap, neighbours, nlev, xrest, index):
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
            gi = find_best_neighbour2(neighbours, gi, levels, nlev, xb, weight, 8 * k, scale, xx, L, xrest)
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
    """Per-row scratch of quantize_block_iq1_s: scales, mx float32[8]; weight float32[256]; sx, sw float32[33, 8]
    (the blocks' prefix sums, lane-major); idx int32[8, 32]; L uint8[32]; index int32[4]; shifts int32[8]; found
    float32[4, 8] (the split search's result); count int32[32] (the sort's)."""
    return (np.empty(8, np.float32), np.empty(8, np.float32), np.empty(QK_K, np.float32),
            np.empty((33, IQ1_S_LANES), np.float32), np.empty((33, IQ1_S_LANES), np.float32),
            np.empty((8, 32), np.int32), np.empty(32, np.uint8), np.empty(4, np.int32), np.empty(8, np.int32),
            np.empty((4, IQ1_S_LANES), np.float32), np.empty(32, np.int32))


@jit
def quantize_block_iq1_s(xrest, qw, y, s, levels, kmap, neighbours, nlev, x_p, x_m):
    """ggml quantize_row_iq1_s_impl for one 256-weight super-block: the first 256 weights of xrest (the
    row from this super-block on, which ggml's neighbour fallback reads), qw float32[256] -> y uint8[50];
    scratch s = _scratch_iq1_s(). Returns OK or FAILED.

    ggml tries every split i1 <= i2 of each sorted block into three levels, x_p then x_m at each, keeping a
    strictly better sqx^2/sq2; the eight blocks' searches run side by side (common.lane_iq1s_splits, block ib
    in lane ib), each block then finished in order as C does."""
    scales, mxs, weight, sx, sw, idx, L, index, shifts, found, count = s
    x = xrest[:QK_K]
    for j in range(IQ1_S_BYTES):
        y[j] = 0
    bs = 32
    sigma2 = _sigma2(x)
    for ib in range(QK_K // bs):
        xb = x[bs * ib:bs * ib + bs]
        wb = weight[bs * ib:bs * ib + bs]
        importance(xb, qw[bs * ib:bs * ib + bs], bs, sigma2, F32(0.0), wb)
        mxs[ib] = _abs_max(xb, bs)
        order = idx[ib]
        _sort_index(xb, order, count)
        ax = F32(0.0)
        aw = F32(0.0)
        sx[0, ib] = ax
        sw[0, ib] = aw
        for j in range(bs):
            i = order[j]
            ax += wb[i] * xb[i]
            aw += wb[i]
            sx[j + 1, ib] = ax
            sw[j + 1, ib] = aw
    lane_iq1s_splits(sx, sw, bs, found)
    max_scale = F32(0.0)
    for ib in range(QK_K // bs):
        b1 = np.int32(found[1, ib])
        b2 = np.int32(found[2, ib])
        bshift = np.int32(found[3, ib])
        if mxs[ib] < _EPS_IQ1_S or b1 < 0 or b2 < 0 or bshift == 0:
            scales[ib] = F32(0.0)
            shifts[ib] = 1
            continue
        xb = x[bs * ib:bs * ib + bs]
        scale, flipped = _split_levels(idx[ib], b1, b2, found[0, ib], L, bs)
        if flipped:
            bshift = -bshift
        ok, scale = _snap_groups(xb, weight[bs * ib:bs * ib + bs], L, bs // 8, 0 if bshift == 1 else 15, x_p, x_m,
                                 scale, levels, kmap, neighbours, nlev, xrest[bs * ib:], index)
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
    """Per-row scratch of quantize_block_iq1_m: scales, mx float32[16]; weight float32[256]; idx int32[16, 16];
    pre float32[4*17, 16] (the blocks' per-half prefix sums, lane-major); L uint8[16]; index int32[2]; shifts
    int32[16]; found float32[4, 16] (the split search's result); count int32[16] (the sort's)."""
    return (np.empty(16, np.float32), np.empty(16, np.float32), np.empty(QK_K, np.float32),
            np.empty((16, 16), np.int32),
            np.empty((4 * 17, IQ1_M_LANES), np.float32), np.empty(16, np.uint8), np.empty(2, np.int32),
            np.empty(16, np.int32), np.empty((4, IQ1_M_LANES), np.float32), np.empty(16, np.int32))


@jit
def quantize_block_iq1_m(xrest, qw, y, s, levels, kmap, neighbours, nlev, x_p, x_m):
    """ggml quantize_row_iq1_m_impl for one 256-weight super-block: the first 256 weights of xrest (as in
    quantize_block_iq1_s), qw float32[256] (empty for none) -> y uint8[56]; scratch s = _scratch_iq1_m().
    Returns OK or FAILED. The sixteen blocks' split searches run side by side (common.lane_iq1m_splits, block
    ib in lane ib), each block then finished in order as C does."""
    scales, mxs, weight, idx, pre, L, index, shifts, found, count = s
    x = xrest[:QK_K]
    for j in range(IQ1_M_BYTES):
        y[j] = 0
    bs = 16
    have_w = qw.shape[0] > 0
    sigma2 = _sigma2(x)
    for ib in range(QK_K // bs):
        xb = x[bs * ib:bs * ib + bs]
        wb = weight[bs * ib:bs * ib + bs]
        importance(xb, qw[bs * ib:bs * ib + bs] if have_w else qw, bs, sigma2, F32(0.0), wb)
        mxs[ib] = _abs_max(xb, bs)
        order = idx[ib]
        _sort_index(xb, order, count)
        # per half h of the block (weights 0-7, 8-15): px[h] at rows 17*h + j, pw[h] at rows 17*(2 + h) + j
        # running sums in registers, each half's in C's order (the other half's stands still): picks, not
        # branches, as the halves come in no predictable order
        ax0 = F32(0.0)
        ax1 = F32(0.0)
        aw0 = F32(0.0)
        aw1 = F32(0.0)
        for t in range(4):
            pre[17 * t, ib] = F32(0.0)
        for j in range(bs):
            i = order[j]
            low = i < bs // 2
            wx = wb[i] * xb[i]
            ax0 = pick(low, ax0 + wx, ax0)
            ax1 = pick(low, ax1, ax1 + wx)
            aw0 = pick(low, aw0 + wb[i], aw0)
            aw1 = pick(low, aw1, aw1 + wb[i])
            pre[j + 1, ib] = ax0
            pre[17 + j + 1, ib] = ax1
            pre[34 + j + 1, ib] = aw0
            pre[51 + j + 1, ib] = aw1
    lane_iq1m_splits(pre, bs, found)
    max_scale = F32(0.0)
    for ib in range(QK_K // bs):
        b1 = np.int32(found[1, ib])
        b2 = np.int32(found[2, ib])
        bk = np.int32(found[3, ib])
        if mxs[ib] < _EPS_IQ1_M or b1 < 0 or b2 < 0 or bk < 0:
            scales[ib] = F32(0.0)
            shifts[ib] = 0
            continue
        xb = x[bs * ib:bs * ib + bs]
        scale, flipped = _split_levels(idx[ib], b1, b2, found[0, ib], L, bs)
        if flipped:
            bk = 3 - bk
        # group 0 takes -delta for bk 2, 3; group 1 for bk 1, 3
        ok, scale = _snap_groups(xb, weight[bs * ib:bs * ib + bs], L, 2, (1 if bk >= 2 else 0) | ((bk % 2) << 1), x_p,
                                 x_m, scale, levels, kmap, neighbours, nlev, xrest[bs * ib:], index)
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
# -- (levels, kmap, neighbours, nlev, x_p, x_m) and status int32[nrows, 2] -> out uint8[nrows, n/256*50 or *56]; and
# -- back, data uint8[nrows, nb*50 or nb*56] -> out float32[nrows, nb*256] -------------------------------------

quantize_iq1_s = checked_driver(__name__, "iq1_s", QK_K, IQ1_S_BYTES, quantize_block_iq1_s, _scratch_iq1_s, TAIL=True)
quantize_iq1_m = checked_driver(__name__, "iq1_m", QK_K, IQ1_M_BYTES, quantize_block_iq1_m, _scratch_iq1_m, TAIL=True)
dequantize_iq1_s = row_driver(each_row, __name__, "dequantize_iq1_s", "dequantize_row_iq1_s over all rows.",
                              ROW=dequantize_row_iq1_s)
dequantize_iq1_m = row_driver(each_row, __name__, "dequantize_iq1_m", "dequantize_row_iq1_m over all rows.",
                              ROW=dequantize_row_iq1_m)
