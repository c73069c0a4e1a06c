"""IQ3_XXS and IQ3_S kernels: 4-weight groups snapped to a 3-bit-per-coordinate lattice.

Both types split a 256-weight super-block into 32-weight blocks and each block into eight groups of
four magnitudes. A group stores one index into a grid of 4-vectors whose coordinates are odd levels
``2l + 1`` (l = 0..7); signs travel separately. IQ3_XXS uses 256 grid points (index: one byte) and
8 of every 8 signs with even parity (7 stored, the 8th implied); IQ3_S uses 512 points (a 9th index
bit in ``qh``) and all 8 signs. Each block has a 4-bit scale against the super-block's half ``d``.

The quantizer (ggml's quantize_row_iq3_xxs_impl / quantize_row_iq3_s_impl) searches a range of
trial scales; a group that rounds to a point off the grid is replaced by the best of its precomputed
neighbours (``iq3xs_init_impl``): the grid points at the two (IQ3_XXS) or three (IQ3_S) smallest
distinct squared distances, ordered by (distance, grid index).

The tables come from the caller (qtool.quantizers.lattice): ``kmap`` int32[4096] and ``neigh``
uint16[...] (kernels/lattice.py), and ``npos`` float32[4, len(neigh) + 16], each listed grid point's odd
coordinates 2l + 1 at its list entry; dequantizing takes ggml's stored coordinates.

Each quantize driver takes ``weights`` as a float32 importance vector of n_per_row values, or a
zero-length array for none (C's NULL), and ``status`` int32[nrows, 2]: a row where ggml's search asserts
and aborts the process (weights or distances that overflow to inf/NaN, e.g. |x| ~ 1e30) gets (code,
super-block), every other (OK, 0).
"""

from __future__ import annotations

import numpy as np

from qtool.kernels.common import F32, checked_driver, each_row, jit, load_fp16, nearest_listed_8, row_driver, store_fp16
from qtool.kernels.lattice import (SCALE, TRIAL_LANES, best_trial, block_weights, max_of, odd_level,
                                   round_trials, start_trials, sum_squares, sum_trials, sum_wq)

QK_K = 256
IQ3_XXS_BYTES = 98  # d (f16) + qs[64] + scales_and_signs[32]
IQ3_S_BYTES = 110  # d (f16) + qs[64] + qh[8] + signs[32] + scales[4]

_FLT_MAX = F32(3.4028234663852886e38)
#: ggml's GROUP_MAX_EPS_IQ3_XXS: an IQ3_XXS block whose largest |x| is below this gets scale 0
_EPS_XXS = F32(1e-8)
#: ggml's fudge factors on the stored super-block scale
_FUDGE_XXS = F32(1.0125)
_FUDGE_S = F32(1.033)
_KMAX = 8
_LANES = TRIAL_LANES  # trial scales searched side by side (IQ3_XXS: 31, IQ3_S: 19)

#: status codes per row (ggml aborts on both): no grid neighbour at a finite distance
#: (GGML_ASSERT(grid_index >= 0)), a NaN block scale (GGML_ASSERT(scale >= 0))
OK, NO_NEIGHBOUR, BAD_SCALE = 0, 1, 2
#: ggml's ksigns_iq2xs: 7 sign bits plus an 8th that makes the parity even
KSIGNS = np.array([i | ((bin(i).count("1") & 1) << 7) for i in range(128)], dtype=np.uint8)


@jit
def _nearest_listed(neigh, start, npos, xval, waux, off, scale):
    """ggml iq3_find_best_neighbour: the position in the list at ``start`` of the grid point nearest
    to xval[off:off+4] under weights waux; -1 where no distance is below FLT_MAX (ggml aborts).
    npos: the lists' odd coordinates, coordinate-major. (The lists are short, 5-7 points on average:
    a plain loop beats computing them side by side.)"""
    n = np.int64(neigh[start])
    b = start + 1
    x0, x1, x2, x3 = xval[off], xval[off + 1], xval[off + 2], xval[off + 3]
    w0, w1, w2, w3 = waux[off], waux[off + 1], waux[off + 2], waux[off + 3]
    best_d2 = _FLT_MAX
    jb = np.int64(-1)
    for j in range(n):
        diff = scale * npos[0, b + j] - x0
        t = F32(0.0) + w0 * diff * diff
        diff = scale * npos[1, b + j] - x1
        t += w1 * diff * diff
        diff = scale * npos[2, b + j] - x2
        t += w2 * diff * diff
        diff = scale * npos[3, b + j] - x3
        t += w3 * diff * diff
        if t < best_d2:
            best_d2 = t
            jb = j
    return jb


@jit
def _nearest_listed_run(neigh, start, npos, xval, waux, off, tsc, a, e, jb):
    """_nearest_listed for the trials a..e-1 (scales tsc[a:e]), whose groups at ``off`` round to the same
    off-grid levels and so scan the same list at ``start``: jb[t - a] gets trial t's position, or -1.
    Eight trials are scanned at once (kernels.common.nearest_listed_8), each distance in C's order; tsc
    and jb have room for the eighth lane past e."""
    n = np.int64(neigh[start])
    for c in range(a, e, 8):
        nearest_listed_8(npos, start + 1, n, xval, waux, off, tsc, c, jb, c - a)


@jit
def _code(L, off):
    """The 12-bit map key of the 4 levels at L[off:off+4]."""
    u = 0
    for i in range(4):
        u |= np.int32(L[off + i]) << (3 * i)
    return u


@jit
def _round_group(xval, off, inv, L):
    """Levels of xval[off:off+4] at inverse scale inv: clamp(nearest_int(0.5*(inv*x - 1)), 0, 7)."""
    for i in range(4):
        L[off + i] = np.int8(odd_level(inv, xval[off + i], _KMAX - 1))


@jit
def _block_search(xval, weight, waux, vmax, nstep, refit_all, on_grid_init, npos, kmap, neigh,
                  L, Laux, on_grid, Ls, sv, off, tscp, jbs, codes):
    """The per-32-weight scale search shared by quantize_row_iq3_xxs_impl (nstep 15, refit only the
    off-grid groups, groups start on-grid) and quantize_row_iq3_s_impl (nstep 9, refit all, start
    off-grid). L int8[32] gets the levels; returns (scale, status).

    The trials s = -nstep..nstep run side by side (lane s + nstep of _LANES): each rounds the 32
    weights at inv = (15 + 0.2 s)/vmax, snaps each 4-group onto the grid and sums w*x*q and w*q*q in
    C's order; the last loop picks the winner in C's trial order. A group's trials that round to the
    same off-grid levels (runs of neighbouring trials, ~6-7 on average) scan their neighbour list
    together. Scratch: Ls int32[32, _LANES] (each trial's levels), sv float32[4, _LANES], off bool[8,
    _LANES] (group off the grid), tscp float32[_LANES + 8] (the trial scales, padded for whole groups
    of eight lanes), jbs int32[_LANES + 8] (a run's list positions) and codes int32[_LANES] (a group's map
    key per trial)."""
    for i in range(32):
        L[i] = 0
    scale = vmax / F32(2 * _KMAX - 1)
    ns = 2 * nstep + 1
    start_trials(sv, ns, nstep, F32(2 * _KMAX - 1), F32(0.2), vmax)
    tsc = sv[SCALE]
    round_trials(xval, 32, sv, Ls, _KMAX - 1)
    for t in range(tscp.shape[0]):
        tscp[t] = tsc[min(t, _LANES - 1)]
    for k in range(8):
        r0 = Ls[4 * k]
        r1 = Ls[4 * k + 1]
        r2 = Ls[4 * k + 2]
        r3 = Ls[4 * k + 3]
        for t in range(_LANES):
            codes[t] = r0[t] | (r1[t] << 3) | (r2[t] << 6) | (r3[t] << 9)
        s = 0
        while s < ns:
            u = codes[s]
            m = kmap[u]
            if m >= 0:
                off[k, s] = False
                s += 1
                continue
            e = s + 1
            while e < ns and codes[e] == u:
                e += 1
            start = -np.int64(m) - 1
            _nearest_listed_run(neigh, start, npos, xval, waux, 4 * k, tscp, s, e, jbs)
            held = -1  # the run's trials mostly find the same point: its levels converted once
            l0 = l1 = l2 = l3 = np.int32(0)
            for t in range(s, e):
                off[k, t] = True
                jb = jbs[t - s]
                if jb < 0:
                    return scale, NO_NEIGHBOUR
                if jb != held:
                    held = jb
                    c = start + 1 + jb
                    l0 = (np.int32(npos[0, c]) - np.int32(1)) >> np.int32(1)  # coordinates are odd, >= 1
                    l1 = (np.int32(npos[1, c]) - np.int32(1)) >> np.int32(1)
                    l2 = (np.int32(npos[2, c]) - np.int32(1)) >> np.int32(1)
                    l3 = (np.int32(npos[3, c]) - np.int32(1)) >> np.int32(1)
                Ls[4 * k, t] = l0
                Ls[4 * k + 1, t] = l1
                Ls[4 * k + 2, t] = l2
                Ls[4 * k + 3, t] = l3
            s = e
    sum_trials(weight, xval, 32, sv, Ls)
    bs, scale = best_trial(sv, ns, scale)
    if bs >= 0:
        for i in range(32):
            L[i] = np.int8(Ls[i, bs])
        for k in range(8):
            on_grid[k] = not off[k, bs]
    else:
        for k in range(8):
            on_grid[k] = on_grid_init
    n_off = 0
    for k in range(8):
        if not on_grid[k]:
            n_off += 1
    if n_off > 0 and scale > F32(0.0):
        inv1 = F32(1.0) / scale
        for k in range(8):
            if on_grid[k] and not refit_all:
                continue
            _round_group(xval, 4 * k, inv1, Laux)  # Laux is free here: only its 4 levels are used
            m = kmap[_code(Laux, 4 * k)]
            if m < 0:
                start = -np.int64(m) - 1
                jb = _nearest_listed(neigh, start, npos, xval, waux, 4 * k, scale)
                if jb < 0:
                    return scale, NO_NEIGHBOUR
                for i in range(4):
                    L[4 * k + i] = np.int8((np.int32(npos[i, start + 1 + jb]) - 1) // 2)
            else:  # on the grid: the grid point's levels are the rounded ones
                for i in range(4):
                    L[4 * k + i] = Laux[4 * k + i]
        sumqx, sumq2 = sum_wq(weight, xval, L, 32)
        if sumq2 > F32(0.0):
            scale = sumqx / sumq2
    return scale, OK


@jit
def _scratch():
    """Per-row scratch of the IQ3 blocks: weight, waux, xval float32[32]; L, Laux int8[32]; on_grid bool[8];
    Ls, sv, off (_block_search's); signs int32[4]; scales float32[8]; tscp, jbs, codes (_block_search's)."""
    return (np.empty(32, np.float32), np.empty(32, np.float32), np.empty(32, np.float32),
            np.empty(32, np.int8), np.empty(32, np.int8), np.empty(8, np.bool_),
            np.empty((32, _LANES), np.int32), np.empty((4, _LANES), np.float32), np.empty((8, _LANES), np.bool_),
            np.empty(4, np.int32), np.empty(8, np.float32),
            np.empty(_LANES + 8, np.float32), np.empty(_LANES + 8, np.int32), np.empty(_LANES, np.int32))


@jit
def quantize_block_iq3_xxs(x, qw, y, s, npos, kmap, neigh):
    """ggml quantize_row_iq3_xxs_impl for one super-block: x, qw float32[256] -> y uint8[98].
    s: the row's scratch, _scratch(). Returns a status code."""
    weight, waux, xval, L, Laux, on_grid, Ls, sv, off, signs, scales, tscp, jbs, codes = s
    for j in range(IQ3_XXS_BYTES):
        y[j] = 0
    max_scale = F32(0.0)
    sigma2 = F32(2.0) * sum_squares(x, QK_K) / F32(QK_K)
    for ib in range(8):
        xb = x[32 * ib:32 * ib + 32]
        block_weights(xb, qw[32 * ib:32 * ib + 32] if qw.shape[0] > 0 else qw, 32, sigma2, F32(0.0), weight, waux)
        for k in range(4):  # as lattice.fold_signs with the parity fold, inline: through the call IQ3 ran ~3% slower
            nflip = 0
            sg = 0
            for i in range(8):
                v = xb[8 * k + i]
                if v >= F32(0.0):
                    xval[8 * k + i] = v
                else:
                    xval[8 * k + i] = -v
                    nflip += 1
                    sg |= 1 << i
            if nflip % 2:
                imin = 0
                vmin = weight[8 * k] * xb[8 * k] * xb[8 * k]
                for i in range(1, 8):
                    ax = weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i]
                    if ax < vmin:
                        vmin = ax
                        imin = i
                xval[8 * k + imin] = -xval[8 * k + imin]
                sg ^= 1 << imin
            signs[k] = sg & 127
        vmax = max_of(xval, 32)
        if vmax < _EPS_XXS:
            scales[ib] = F32(0.0)
            continue
        scale, status = _block_search(xval, weight, waux, vmax, 15, False, True, npos, kmap, neigh,
                                      L, Laux, on_grid, Ls, sv, off, tscp, jbs, codes)
        if status != OK:
            return status
        if scale < F32(0.0):
            scale = -scale
            for k in range(4):
                signs[k] = (~signs[k]) & 127
        for k in range(8):
            y[2 + 8 * ib + k] = np.uint8(kmap[_code(L, 4 * k)])
        word = np.uint32(signs[0] | (signs[1] << 7) | (signs[2] << 14) | (signs[3] << 21))
        for j in range(4):
            y[66 + 4 * ib + j] = np.uint8((word >> np.uint32(8 * j)) & np.uint32(0xFF))
        if not (scale >= F32(0.0)):
            return BAD_SCALE
        scales[ib] = scale
        max_scale = max_scale if max_scale > scale else scale
    if max_scale == F32(0.0):
        for j in range(2, IQ3_XXS_BYTES):
            y[j] = 0
        return OK
    d = max_scale / F32(31.0)
    store_fp16(y, 0, d * _FUDGE_XXS)
    inv = F32(1.0) / d
    for ib in range(8):
        y[66 + 4 * ib + 3] |= np.uint8(odd_level(inv, scales[ib], 15) << 4)
    return OK


# ---------------------------------------------------------------------------------------------------
# IQ3_S block, 110 bytes:
#
#   0       2         66       74          106        110
#   | d f16 | qs[64]  | qh[8]  | signs[32] | scales[4] |
#
#   grid index of group g (g = 0..63) = qs[g] | (qh[g/8] bit g%8) << 8
#   signs: one bit per weight, 8 weights per byte;  scales[b/2] nibble b%2 = ls of block b
#   x = d * (1 + 2*ls) * grid_s[q][i] * sign
#
#   ggml advances qs and signs only past blocks it quantizes: after an all-zero block the next
#   block's indices and signs land where the zero block's would have gone (qh is indexed by block).
# ---------------------------------------------------------------------------------------------------


@jit
def quantize_block_iq3_s(x, qw, y, s, npos, kmap, neigh):
    """ggml quantize_row_iq3_s_impl (block size 32) for one super-block: x, qw float32[256] -> y uint8[110].
    s: the row's scratch, _scratch(). Returns a status code."""
    weight, waux, xval, L, Laux, on_grid, Ls, sv, off, signs, scales, tscp, jbs, codes = s
    for j in range(IQ3_S_BYTES):
        y[j] = 0
    qs = 2
    sp = 74
    max_scale = F32(0.0)
    sigma2 = F32(2.0) * sum_squares(x, QK_K) / F32(QK_K)
    for ib in range(8):
        xb = x[32 * ib:32 * ib + 32]
        block_weights(xb, qw[32 * ib:32 * ib + 32] if qw.shape[0] > 0 else qw, 32, sigma2, F32(0.0), weight, waux)
        for k in range(4):  # as lattice.fold_signs without the parity fold, inline (see IQ3_XXS)
            sg = 0
            for i in range(8):
                v = xb[8 * k + i]
                if v >= F32(0.0):
                    xval[8 * k + i] = v
                else:
                    xval[8 * k + i] = -v
                    sg |= 1 << i
            signs[k] = sg
        vmax = max_of(xval, 32)
        if vmax == F32(0.0):
            scales[ib] = F32(0.0)
            continue
        scale, status = _block_search(xval, weight, waux, vmax, 9, True, False, npos, kmap, neigh,
                                      L, Laux, on_grid, Ls, sv, off, tscp, jbs, codes)
        if status != OK:
            return status
        if scale < F32(0.0):
            scale = -scale
            for k in range(4):
                signs[k] = (~signs[k]) & 255
        for k in range(8):
            gi = kmap[_code(L, 4 * k)]
            y[qs + k] = np.uint8(gi & 255)
            y[66 + ib] |= np.uint8((gi >> 8) << k)
        qs += 8
        for k in range(4):
            y[sp + k] = np.uint8(signs[k])
        sp += 4
        if not (scale >= F32(0.0)):
            return BAD_SCALE
        scales[ib] = scale
        max_scale = max_scale if max_scale > scale else scale
    if max_scale == F32(0.0):
        return OK
    d = max_scale / F32(31.0)
    store_fp16(y, 0, d * _FUDGE_S)
    inv = F32(1.0) / d
    for ib in range(0, 8, 2):
        y[106 + ib // 2] = np.uint8(odd_level(inv, scales[ib], 15) | (odd_level(inv, scales[ib + 1], 15) << 4))
    return OK


@jit
def _signed(v, neg):
    """v * (neg ? -1 : 1) as ggml writes it (a multiply, not a negation)."""
    return v * (F32(-1.0) if neg else F32(1.0))


@jit
def dequantize_row_iq3_xxs(data, out, grid, ksigns):
    """ggml dequantize_row_iq3_xxs: data uint8[nb*98] -> out float32[nb*256]."""
    for i in range(data.shape[0] // IQ3_XXS_BYTES):
        y = data[IQ3_XXS_BYTES * i:IQ3_XXS_BYTES * (i + 1)]
        o = out[QK_K * i:QK_K * (i + 1)]
        d = load_fp16(y, 0)
        for ib in range(8):
            p = 66 + 4 * ib
            aux = (np.uint32(y[p]) | (np.uint32(y[p + 1]) << np.uint32(8)) | (np.uint32(y[p + 2]) << np.uint32(16))
                   | (np.uint32(y[p + 3]) << np.uint32(24)))
            db = d * (F32(0.5) + F32(aux >> np.uint32(28))) * F32(0.5)
            for l in range(4):
                sg = ksigns[(aux >> np.uint32(7 * l)) & np.uint32(127)]
                g1 = y[2 + 8 * ib + 2 * l]
                g2 = y[2 + 8 * ib + 2 * l + 1]
                base = 32 * ib + 8 * l
                for j in range(4):
                    o[base + j] = _signed(db * grid[g1, j], (sg >> j) & 1)
                    o[base + 4 + j] = _signed(db * grid[g2, j], (sg >> (j + 4)) & 1)


@jit
def dequantize_row_iq3_s(data, out, grid):
    """ggml dequantize_row_iq3_s: data uint8[nb*110] -> out float32[nb*256]."""
    for i in range(data.shape[0] // IQ3_S_BYTES):
        y = data[IQ3_S_BYTES * i:IQ3_S_BYTES * (i + 1)]
        o = out[QK_K * i:QK_K * (i + 1)]
        d = load_fp16(y, 0)
        for ib in range(8):
            sc = np.int32(y[106 + ib // 2])
            ls = (sc >> (4 * (ib % 2))) & 0xF
            db = d * F32(1 + 2 * ls)
            qh = np.int32(y[66 + ib])
            for l in range(4):
                g1 = np.int32(y[2 + 8 * ib + 2 * l]) | ((qh << (8 - 2 * l)) & 256)
                g2 = np.int32(y[2 + 8 * ib + 2 * l + 1]) | ((qh << (7 - 2 * l)) & 256)
                sg = y[74 + 4 * ib + l]
                base = 32 * ib + 8 * l
                for j in range(4):
                    o[base + j] = _signed(db * grid[g1, j], (sg >> j) & 1)
                    o[base + 4 + j] = _signed(db * grid[g2, j], (sg >> (j + 4)) & 1)


# -- row drivers: rows float32[nrows, n], weights float32[n] or [0], the tables (npos, kmap, neigh) and status
# -- int32[nrows, 2] -> out uint8[nrows, n/256*98 or *110]; and back, data uint8[nrows, nb*98 or nb*110] -> out
# -- float32[nrows, nb*256] -----------------------------------------------------------------------------------

quantize_iq3_xxs = checked_driver(__name__, "iq3_xxs", QK_K, IQ3_XXS_BYTES, quantize_block_iq3_xxs, _scratch)
quantize_iq3_s = checked_driver(__name__, "iq3_s", QK_K, IQ3_S_BYTES, quantize_block_iq3_s, _scratch)
dequantize_iq3_xxs = row_driver(each_row, __name__, "dequantize_iq3_xxs", "dequantize_row_iq3_xxs over all rows.",
                                ROW=dequantize_row_iq3_xxs)
dequantize_iq3_s = row_driver(each_row, __name__, "dequantize_iq3_s", "dequantize_row_iq3_s over all rows.",
                              ROW=dequantize_row_iq3_s)
