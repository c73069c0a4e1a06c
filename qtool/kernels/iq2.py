"""IQ2_XXS, IQ2_XS and IQ2_S kernels: 8 weights at a time snapped to a point of an E8-like lattice grid.

Every 8 weights become one index into a grid of 8-vectors whose coordinates take 3 levels
(ggml stores them as bytes 0x08, 0x19, 0x2b; the search works on the odd integers 1, 3, 5), plus
8 sign bits; 16 or 32 weights share a 4-bit scale and each 256-weight super-block a half ``d``:
``x ~ d * (0.5 + s) * 0.25 * grid[g][j] * sign``.

Grids: IQ2_XXS 256 points, IQ2_XS 512, IQ2_S 1024, handed in by the caller (qtool.quantizers.lattice).
The quantizer rounds 8 weights to a level vector ``u`` (8 x 2 bits); ``u`` on the grid is used as is,
otherwise the best of its precomputed nearest grid points (ggml's iq2xs_init_impl, kernels/lattice.py).

The search tables per type: ``kmap`` int32[43692] (u -> grid index, or -(start + 1) into ``neigh``),
``neigh`` uint16[...] (at start: count, then that many grid indices) and ``npos`` uint16[len(neigh) + 16],
the same lists with each listed point's levels packed 2 bits a coordinate (Lattice.neighbour_codes, so
that a list is read from one short run of memory, 16 points at a time); dequantizing takes ``grid``
float32[n, 8], ggml's coordinate bytes.

Each quantize driver takes ``weights`` as float32[n_per_row] or a zero-length array (C's NULL, only
IQ2_S has that path: ggml refuses IQ2_XXS and IQ2_XS without an importance vector) and a ``status``
int32[nrows, 2]: where ggml's search asserts and aborts the process (weighted distances that overflow
to inf/NaN, e.g. IQ2_XS and IQ2_S rows with |x| ~ 1e30) the row gets (code, super-block), else (0, 0).
"""

from __future__ import annotations

import numpy as np

from qtool.kernels.common import (F32, checked_driver, each_row, jit, jit_inline, load_fp16, nearest_packed_point_8d,
                                 row_driver, specialize, store_fp16)
from qtool.kernels.lattice import (SCALE, TRIAL_LANES, best_trial, block_weights, fold_signs, max_of, odd_level,
                                   round_trials, start_trials, sum_squares, sum_trials, sum_wq)
from qtool.kernels.search import make_qp_quants

QK_K = 256
IQ2_XXS_BYTES = 66  # d (f16) + qs u16[32]
IQ2_XS_BYTES = 74  # d (f16) + qs u16[32] + scales[8]
IQ2_S_BYTES = 82  # d (f16) + qs[32] + signs[32] + qh[8] + scales[8]

_KMAP_SIZE = 43692  # ggml's kmap_size: every u with levels in 0..2 is below it (0xAAAA = 43690)
_GROUP_MAX_EPS = np.float32(1e-15)
_GROUP_MAX_EPS_IQ2_S = np.float32(1e-8)
_FLT_MAX = np.float32(np.finfo(np.float32).max)
_KMAXQ = 3
#: the odd coordinates 2*level + 1 of the three levels the searches measure in
_ODD = np.array([1.0, 3.0, 5.0], dtype=np.float32)
_LANES = TRIAL_LANES  # trial scales searched side by side (IQ2_XS, IQ2_S: 19; IQ2_XXS: 13)

#: status codes (ggml aborts on each): no grid neighbour at a finite distance (GGML_ASSERT(grid_index >= 0)),
#: a NaN block scale leaving its levels off the grid ("Oops: found point ... not on grid"), a NaN block
#: scale (GGML_ASSERT(scale >= 0))
OK, NO_NEIGHBOUR, OFF_GRID, BAD_SCALE = 0, 1, 2, 3

#: ggml's ksigns_iq2xs: 7 sign bits and, as bit 7, their parity (so the count of minus signs is even)
KSIGNS_IQ2XS = np.array([s | ((bin(s).count("1") & 1) << 7) for s in range(128)], dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------
# The shared search steps
# ---------------------------------------------------------------------------------------------------


@jit_inline
def _round_group(xval, off, inv, L):
    """Levels clamp(nearest_int(0.5*(inv*x - 1)), 0, 2) of the 8 weights at xval[off:] into L[off:];
    returns their index u (2 bits each, weight 0 lowest)."""
    u = 0
    for i in range(8):
        l = odd_level(inv, xval[off + i], _KMAXQ - 1)
        L[off + i] = l
        u |= l << (2 * i)
    return u


@jit_inline
def _nearest_listed(neigh, start, npos, xval, waux, off, scale):
    """ggml iq2_find_best_neighbour: the position in the list at ``start`` of the grid point nearest
    (waux-weighted) to scale*p ~ xval[off:off+8]; -1 where no distance is below FLT_MAX (inf/NaN
    weights: ggml aborts). The listed points are measured 16 at a time, each distance C's chain of
    float32 operations, the first strictly smallest kept (kernels.common.nearest_packed_point_8d; npos is
    Lattice.neighbour_codes: the lists with each point's levels packed in a uint16, the count at ``start``,
    16 spare entries past the last list)."""
    return nearest_packed_point_8d(npos, start + 1, np.int64(npos[start]), xval, waux, off, scale, _ODD)


@jit_inline
def _snap(xval, off, inv, scale, L, waux, npos, kmap, neigh):
    """Round 8 weights to levels and move them onto the grid; returns (grid index or -1 where ggml
    aborts, was on the grid)."""
    u = _round_group(xval, off, inv, L)
    gi = kmap[u]
    if gi >= 0:
        return np.int64(gi), True
    start = -np.int64(gi) - 1
    jb = _nearest_listed(neigh, start, npos, xval, waux, off, scale)
    if jb < 0:
        return jb, False
    for i in range(8):
        L[off + i] = (np.int64(npos[start + 1 + jb]) >> (2 * i)) & 3
    return np.int64(neigh[start + 1 + jb]), False


@jit_inline
def _step_search(xval, weight, waux, n, denom, nhalf, npos, kmap, neigh, Ls, sv, off):
    """The trial-scale loop of quantize_row_iq2_{xxs,xs,s}_impl, all trials side by side: trial
    s = -nhalf..nhalf (lane s + nhalf of _LANES) rounds the n weights at inv = (5 + 0.1 s)/denom,
    snaps each 8-group onto the grid and sums w*x*q and w*q*q in C's order. Lanes are independent
    until the last loop, which picks the winner in C's trial order.

    Ls int32[n, _LANES] gets every trial's levels, off int32[n/8, _LANES] each group's kmap entry (below 0:
    it was off the grid); sv float32[4, _LANES] scratch. Returns (winning lane or -1, its scale sumqx/sumq2, status)."""
    ns = 2 * nhalf + 1
    start_trials(sv, ns, nhalf, F32(2 * _KMAXQ - 1), F32(0.1), denom)
    tsc = sv[SCALE]
    round_trials(xval, n, sv, Ls, _KMAXQ - 1)
    # every group's grid lookup first, then the scans: the lookups are independent loads from a 170 KB map
    # that mostly miss the cache, and issued together they wait for memory side by side, not one by one
    for k in range(n // 8):
        for s in range(ns):
            u = 0
            for i in range(8):
                u |= Ls[8 * k + i, s] << (2 * i)
            off[k, s] = kmap[u]
    for k in range(n // 8):
        for s in range(ns):
            gi = off[k, s]
            if gi < 0:
                start = -np.int64(gi) - 1
                jb = _nearest_listed(neigh, start, npos, xval, waux, 8 * k, tsc[s])
                if jb < 0:
                    return -1, F32(0.0), NO_NEIGHBOUR
                for i in range(8):
                    Ls[8 * k + i, s] = (np.int32(npos[start + 1 + jb]) >> (2 * i)) & 3
    sum_trials(weight, xval, n, sv, Ls)
    bs, scale = best_trial(sv, ns, F32(0.0))
    return bs, scale, OK


@jit_inline
def _grid_index(L, off, kmap):
    """kmap of the levels L[off:off+8] (C's uint16 u), or -1 off the grid or beyond the map (where
    ggml aborts)."""
    u = 0
    for i in range(8):
        u |= np.int64(L[off + i]) << (2 * i)
    u &= 0xFFFF
    if u >= kmap.shape[0]:
        return -1
    return np.int64(kmap[u])


# ---------------------------------------------------------------------------------------------------
# IQ2_XXS block, 66 bytes; per 32 weights (ib = 0..7) two little-endian uint32 words:
#
#   0       2                                                   66
#   | d f16 | ib0: w0 w1 | ib1: w0 w1 | ...          | ib7: w0 w1 |
#
#   w0 byte k     = grid index of 8-group k (k = 0..3; 256 points)
#   w1 bits 7k..  = 7 sign bits of group k (8th: even parity, ksigns_iq2xs)
#   w1 bits 28-31 = s, the 4-bit scale:  x = d * (0.5 + s) * 0.25 * grid * sign
# ---------------------------------------------------------------------------------------------------


@jit
def _scratch_xxs():
    """Per-row scratch of quantize_block_iq2_xxs: float32[3, 32] (weight, waux, xval); L, Laux int32[32];
    Lqp uint8[32]; signs int32[4]; scales float32[8]; Ls, sv, off (_step_search's)."""
    return (np.empty((3, 32), np.float32), np.zeros(32, np.int32), np.zeros(32, np.int32),
            np.zeros(32, np.uint8), np.zeros(4, np.int32), np.zeros(QK_K // 32, np.float32),
            np.zeros((32, _LANES), np.int32), np.zeros((4, _LANES), np.float32), np.zeros((4, _LANES), np.int32))


@jit
def quantize_block_iq2_xxs(xbl, qwl, y, s, npos, kmap, neigh):
    """ggml quantize_row_iq2_xxs_impl for one super-block: xbl, qwl float32[256] -> y uint8[66];
    scratch s = _scratch_xxs(). Returns a status code."""
    scratch, L, Laux, Lqp, signs, scales, Ls, sv, off = s
    weight = scratch[0]
    waux = scratch[1]
    xval = scratch[2]
    for j in range(IQ2_XXS_BYTES):
        y[j] = 0
    sigma2 = sum_squares(xbl, QK_K) / F32(QK_K)
    max_scale = F32(0.0)
    for ib in range(QK_K // 32):
        xb = xbl[32 * ib:32 * ib + 32]
        block_weights(xb, qwl[32 * ib:32 * ib + 32], 32, sigma2, F32(0.0), weight, waux)
        for k in range(4):
            signs[k] = fold_signs(xb, weight, xval, k, True) & 127
        mx = max_of(xval, 32)
        if mx < _GROUP_MAX_EPS:
            scales[ib] = F32(0.0)
            continue
        scale = make_qp_quants(32, _KMAXQ + 1, xval, Lqp, weight)
        for i in range(32):
            L[i] = np.int8(Lqp[i])  # C reads the uint8 quants back through int8_t
        eff_max = scale * F32(_KMAXQ)
        if eff_max <= F32(0.0):
            scales[ib] = F32(0.0)
            continue
        bs, bscale, st = _step_search(xval, weight, waux, 32, eff_max, 6, npos, kmap, neigh, Ls, sv, off)
        if st != OK:
            return st
        if bs >= 0:
            scale = bscale
            for i in range(32):
                L[i] = Ls[i, bs]
        if scale > F32(0.0):
            inv = F32(1.0) / scale
            for k in range(4):
                if _snap(xval, 8 * k, inv, scale, L, waux, npos, kmap, neigh)[0] < 0:
                    return NO_NEIGHBOUR
            sumqx, sumq2 = sum_wq(weight, xval, L, 32)
            if sumq2 > F32(0.0):
                scale = sumqx / sumq2
        if scale < F32(0.0):
            scale = -scale
            for k in range(4):
                signs[k] = ~signs[k] & 127
        w1 = np.uint32(0)
        for k in range(4):
            gi = _grid_index(L, 8 * k, kmap)
            if gi < 0:
                return OFF_GRID
            y[2 + 8 * ib + k] = np.uint8(gi)
            w1 |= np.uint32(signs[k]) << np.uint32(7 * k)
        if not scale >= F32(0.0):
            return BAD_SCALE
        for b in range(4):
            y[2 + 8 * ib + 4 + b] = np.uint8((w1 >> np.uint32(8 * b)) & np.uint32(0xFF))
        scales[ib] = scale
        max_scale = max_scale if max_scale > scale else scale
    if max_scale == F32(0.0):
        for j in range(IQ2_XXS_BYTES):
            y[j] = 0
        return OK
    d = max_scale / F32(31.0)
    store_fp16(y, 0, d)
    inv = F32(1.0) / d
    for ib in range(QK_K // 32):
        y[2 + 8 * ib + 7] |= np.uint8(odd_level(inv, scales[ib], 15) << 4)
    return OK


@jit
def dequantize_row_iq2_xxs(data, out, grid, ksigns):
    """ggml dequantize_row_iq2_xxs: data uint8[nb*66] -> out float32[nb*256]."""
    for i in range(data.shape[0] // IQ2_XXS_BYTES):
        y = data[IQ2_XXS_BYTES * i:IQ2_XXS_BYTES * (i + 1)]
        o = out[QK_K * i:QK_K * (i + 1)]
        d = load_fp16(y, 0)
        for ib in range(QK_K // 32):
            p = 2 + 8 * ib
            w1 = (np.uint32(y[p + 4]) | (np.uint32(y[p + 5]) << np.uint32(8))
                  | (np.uint32(y[p + 6]) << np.uint32(16)) | (np.uint32(y[p + 7]) << np.uint32(24)))
            db = d * (F32(0.5) + F32(w1 >> np.uint32(28))) * F32(0.25)
            for l in range(4):
                g = np.int64(y[p + l])
                s = ksigns[(w1 >> np.uint32(7 * l)) & np.uint32(127)]
                for j in range(8):
                    sg = F32(-1.0) if (s >> np.uint8(j)) & np.uint8(1) else F32(1.0)
                    o[32 * ib + 8 * l + j] = db * grid[g, j] * sg


# ---------------------------------------------------------------------------------------------------
# IQ2_XS block, 74 bytes; per 16 weights (ib = 0..15) two uint16 and one 4-bit scale:
#
#   0       2                                    66                 74
#   | d f16 | qs u16[32]                         | scales[8]        |
#
#   qs[2*ib + k] = g | signs << 9   (g: 9-bit grid index of 8-group k, 512 points; signs: 7 bits + parity)
#   scales[ib/2] nibble (ib%2) = s (low nibble for even ib):  x = d * (0.5 + s) * 0.25 * grid * sign
#
# IQ2_S block, 82 bytes; per 16 weights (ib = 0..15), i8 = 2*ib + k the 8-group:
#
#   0       2          34            66       74          82
#   | d f16 | qs[32]   | signs[32]   | qh[8]  | scales[8] |
#
#   grid index (10 bits, 1024 points) = qs[i8] | ((qh[i8/4] >> 2*(i8%4)) & 3) << 8;  signs[i8]: 8 bits
#   scales as IQ2_XS; the stored d is 0.9875 * the d the scales were rounded against
# ---------------------------------------------------------------------------------------------------


@jit_inline
def _search16(xb, weight, waux, xval, L, Laux, eps, npos, kmap, neigh, Ls, sv, off):
    """The per-16-weight search shared by quantize_row_iq2_xs_impl and quantize_row_iq2_s_impl, after
    the signs are folded into xval; returns (scale, block not empty, status) (L gets the levels, all 0
    for an empty block)."""
    mx = max_of(xval, 16)
    for i in range(16):
        L[i] = 0
    if mx < eps:
        return F32(0.0), False, OK
    scale = mx / F32(2 * _KMAXQ - 1)
    bs, bscale, st = _step_search(xval, weight, waux, 16, mx, 9, npos, kmap, neigh, Ls, sv, off)
    if st != OK:
        return scale, True, st
    if bs < 0:
        return scale, True, OK
    scale = bscale
    for i in range(16):
        L[i] = Ls[i, bs]
    on0 = off[0, bs] >= 0
    on1 = off[1, bs] >= 0
    if (not on0 or not on1) and scale > F32(0.0):
        inv = F32(1.0) / scale
        if not on0 and _snap(xval, 0, inv, scale, L, waux, npos, kmap, neigh)[0] < 0:
            return scale, True, NO_NEIGHBOUR
        if not on1 and _snap(xval, 8, inv, scale, L, waux, npos, kmap, neigh)[0] < 0:
            return scale, True, NO_NEIGHBOUR
        sumqx, sumq2 = sum_wq(weight, xval, L, 16)
        if sumq2 > F32(0.0):
            scale = sumqx / sumq2
    return scale, True, OK


@jit
def _put_scales(y, at, scales, max_scale):
    """d = max_scale/31; the 16 scales as nibbles nearest_int(0.5*(s/d - 1)) in 0..15 at y[at:at+8]."""
    d = max_scale / F32(31.0)
    inv = F32(1.0) / d
    for ib in range(QK_K // 16):
        l = odd_level(inv, scales[ib], 15)
        if ib % 2 == 0:
            y[at + ib // 2] = np.uint8(l)
        else:
            y[at + ib // 2] |= np.uint8(l << 4)
    return d


@jit
def _scratch16():
    """Per-row scratch of the IQ2_XS and IQ2_S blocks: float32[3, 16] (weight, waux, xval); L, Laux
    int32[16]; scales float32[16]; Ls, sv, off (_step_search's)."""
    return (np.empty((3, 16), np.float32), np.zeros(16, np.int32), np.zeros(16, np.int32),
            np.zeros(QK_K // 16, np.float32), np.zeros((16, _LANES), np.int32), np.zeros((4, _LANES), np.float32),
            np.zeros((2, _LANES), np.int32))


IS_S = False  # bound per type by specialize: IQ2_S (True) or IQ2_XS


def _block_iq2_16(xbl, qwl, y, s, npos, kmap, neigh):
    """ggml quantize_row_iq2_s_impl (IS_S) or quantize_row_iq2_xs_impl for one super-block: xbl float32[256],
    qwl float32[256] (or [0], IQ2_S only) -> y uint8[82] or [74]; scratch s = _scratch16(). Returns a status code.
    IQ2_S: sigma2 twice as large, x^2 + sigma2/4 without qw, the 8 sign bits stored, no parity fold."""
    scratch, L, Laux, scales, Ls, sv, off = s
    weight = scratch[0]
    waux = scratch[1]
    xval = scratch[2]
    for j in range(IQ2_S_BYTES if IS_S else IQ2_XS_BYTES):
        y[j] = 0
    sigma2 = sum_squares(xbl, QK_K)
    if IS_S:
        sigma2 = F32(2.0) * sigma2
    sigma2 = sigma2 / F32(QK_K)
    mask = 255 if IS_S else 127
    max_scale = F32(0.0)
    for ib in range(QK_K // 16):
        xb = xbl[16 * ib:16 * ib + 16]
        block_weights(xb, qwl[16 * ib:16 * ib + 16] if qwl.shape[0] > 0 else qwl, 16, sigma2,
                      F32(0.25) * sigma2 if IS_S else F32(0.0), weight, waux)
        s0 = fold_signs(xb, weight, xval, 0, not IS_S) & mask
        s1 = fold_signs(xb, weight, xval, 1, not IS_S) & mask
        scale, live, st = _search16(xb, weight, waux, xval, L, Laux, _GROUP_MAX_EPS_IQ2_S if IS_S else _GROUP_MAX_EPS,
                                    npos, kmap, neigh, Ls, sv, off)
        if st != OK:
            return st
        if not live:
            scales[ib] = F32(0.0)
            continue
        if scale < F32(0.0):
            scale = -scale
            s0 = ~s0 & mask
            s1 = ~s1 & mask
        for k in range(2):
            gi = _grid_index(L, 8 * k, kmap)
            if gi < 0:
                return OFF_GRID
            if IS_S:
                i8 = 2 * ib + k
                y[2 + i8] = np.uint8(gi & 255)
                y[2 + 64 + i8 // 4] |= np.uint8((gi >> 8) << (2 * (i8 % 4)))
                y[2 + 32 + i8] = np.uint8(s0 if k == 0 else s1)
            else:
                v = gi | ((s0 if k == 0 else s1) << 9)
                y[2 + 4 * ib + 2 * k] = np.uint8(v & 0xFF)
                y[2 + 4 * ib + 2 * k + 1] = np.uint8((v >> 8) & 0xFF)
        if not scale >= F32(0.0):
            return BAD_SCALE
        scales[ib] = scale
        max_scale = max_scale if max_scale > scale else scale
    if max_scale == F32(0.0):
        if not IS_S:  # IQ2_S keeps the indices and signs written above, with d = 0
            for j in range(IQ2_XS_BYTES):
                y[j] = 0
        return OK
    if IS_S:
        d = _put_scales(y, 74, scales, max_scale)
        store_fp16(y, 0, d * F32(0.9875))
    else:
        d = _put_scales(y, 66, scales, max_scale)
        store_fp16(y, 0, d)
    return OK


quantize_block_iq2_xs = specialize(_block_iq2_16, __name__, "quantize_block_iq2_xs", "ggml quantize_row_iq2_xs_impl, "
                                   "one super-block.", jit, IS_S=False)
quantize_block_iq2_s = specialize(_block_iq2_16, __name__, "quantize_block_iq2_s", "ggml quantize_row_iq2_s_impl, "
                                  "one super-block.", jit, IS_S=True)


@jit
def dequantize_row_iq2_16(data, out, grid, ksigns, is_s):
    """ggml dequantize_row_iq2_xs / dequantize_row_iq2_s (is_s): data uint8[nb*74 or nb*82] -> out
    float32[nb*256]."""
    bs = IQ2_S_BYTES if is_s else IQ2_XS_BYTES
    sc_at = 74 if is_s else 66
    for i in range(data.shape[0] // bs):
        y = data[bs * i:bs * (i + 1)]
        o = out[QK_K * i:QK_K * (i + 1)]
        d = load_fp16(y, 0)
        for ib in range(QK_K // 32):
            sc = y[sc_at + ib]
            db0 = d * (F32(0.5) + F32(sc & np.uint8(0xF))) * F32(0.25)
            db1 = d * (F32(0.5) + F32(sc >> np.uint8(4))) * F32(0.25)
            for l in range(4):
                if is_s:
                    qh = np.int64(y[66 + ib])
                    g = np.int64(y[2 + 4 * ib + l]) | ((qh << (8 - 2 * l)) & 0x300)
                    s = y[34 + 4 * ib + l]
                else:
                    v = np.int64(y[2 + 8 * ib + 2 * l]) | (np.int64(y[2 + 8 * ib + 2 * l + 1]) << 8)
                    g = v & 511
                    s = ksigns[v >> 9]
                dl = db0 if l < 2 else db1
                for j in range(8):
                    sg = F32(-1.0) if (s >> np.uint8(j)) & np.uint8(1) else F32(1.0)
                    o[32 * ib + 8 * l + j] = dl * grid[g, j] * sg


# -- row drivers: rows float32[nrows, n], weights float32[n] (IQ2_S also [0]), the tables (npos, kmap, neigh) and
# -- status int32[nrows, 2] -> out uint8[nrows, n/256*66, *74 or *82]; and back, data uint8[nrows, nb*66, nb*74 or
# -- nb*82] -> out float32[nrows, nb*256] ------------------------------------------------------------------------

quantize_iq2_xxs = checked_driver(__name__, "iq2_xxs", QK_K, IQ2_XXS_BYTES, quantize_block_iq2_xxs, _scratch_xxs)
quantize_iq2_xs = checked_driver(__name__, "iq2_xs", QK_K, IQ2_XS_BYTES, quantize_block_iq2_xs, _scratch16)
quantize_iq2_s = checked_driver(__name__, "iq2_s", QK_K, IQ2_S_BYTES, quantize_block_iq2_s, _scratch16)
dequantize_iq2_xxs = row_driver(each_row, __name__, "dequantize_iq2_xxs", "dequantize_row_iq2_xxs over all rows.",
                                ROW=dequantize_row_iq2_xxs)
dequantize_iq2_16 = row_driver(each_row, __name__, "dequantize_iq2_16", "dequantize_row_iq2_16 over all rows.",
                               ROW=dequantize_row_iq2_16)
