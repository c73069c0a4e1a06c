"""ggml's lattice search tables (iq2xs_init_impl, iq3xs_init_impl), built from a grid handed in, and the
search steps the IQ kernels share (the trial-scale lanes, block weights, sign folding, level rounding, sums).

A lattice grid is ``levels`` uint8[n, dim]: each point's level index per coordinate. A level vector
``p`` is keyed ``u = sum(p[j] << (bits * j))``. The tables:

    kmap   int32[kmap_size]  u of a grid point -> its index; u of an off-grid vector whose levels are
                             all below ``nreach`` -> -(start + 1); anything else -1
    neigh  uint16[...]       at start: a count n, then n grid indices: every grid point at the
                             ``nwant`` smallest distinct squared distances sum((p - g)^2), ordered by
                             (distance, index) as ggml's qsort of (distance, index) pairs leaves them

ggml measures distances between odd coordinates 2l + 1, four times the level distance: the order is
the same. ggml also lists neighbours for level vectors no quantizer forms (IQ2's level 3); those keep
-1 here.
"""

from __future__ import annotations

import numpy as np

from qtool.kernels.common import F32, jit, jit_inline, lane_trial_sums, nearest_int


@jit
def _append(buf, used, v):
    """buf[used] = v, doubling buf when full; returns the (maybe new) buffer."""
    if used == buf.shape[0]:
        nb = np.empty(2 * buf.shape[0], buf.dtype)
        nb[:used] = buf[:used]
        buf = nb
    buf[used] = v
    return buf


@jit
def build_neighbours(levels, bits, nreach, nwant, kmap_size):
    """(kmap int32[kmap_size], neigh uint16[...], starts int64[...]) of the grid ``levels`` uint8[n, dim]
    (see above); starts: the offset of each list's count slot."""
    n, dim = levels.shape
    kmap = np.full(kmap_size, -1, np.int32)
    lt = np.empty((dim, n), np.int32)  # coordinate-major, so the distance loop over points vectorizes
    for g in range(n):
        u = 0
        for j in range(dim):
            lt[j, g] = levels[g, j]
            u |= np.int64(levels[g, j]) << (bits * j)
        kmap[u] = g
    mask = (1 << bits) - 1
    d2 = np.empty(n, np.int32)
    pos = np.empty(dim, np.int32)
    cand = np.empty(n, np.int32)
    neigh = np.empty(1 << 16, np.uint16)
    starts = np.empty(kmap_size, np.int64)
    nlists = 0
    used = 0
    for u in range(kmap_size):
        if kmap[u] >= 0:
            continue
        ok = True
        for j in range(dim):
            pos[j] = (u >> (bits * j)) & mask
            ok = ok and pos[j] < nreach
        if not ok:
            continue
        d2[:] = 0
        for j in range(dim):
            pj = pos[j]
            row = lt[j]
            for g in range(n):
                t = row[g] - pj
                d2[g] += t * t
        cut = np.int32(1 << 30)
        for g in range(n):
            cut = min(cut, d2[g])
        for _ in range(nwant - 1):  # the next distinct distance up
            nxt = np.int32(1 << 30)
            for g in range(n):
                v = d2[g]
                nxt = min(nxt, v if v > cut else np.int32(1 << 30))
            if nxt == np.int32(1 << 30):
                break
            cut = nxt
        m = 0
        for g in range(n):
            if d2[g] <= cut:
                cand[m] = g
                m += 1
        for a in range(1, m):  # stable insertion sort by distance: ties stay in index order
            g = cand[a]
            b = a - 1
            while b >= 0 and d2[cand[b]] > d2[g]:
                cand[b + 1] = cand[b]
                b -= 1
            cand[b + 1] = g
        kmap[u] = -(used + 1)
        starts[nlists] = used
        nlists += 1
        neigh = _append(neigh, used, m)
        used += 1
        for a in range(m):
            neigh = _append(neigh, used, cand[a])
            used += 1
    return kmap, neigh[:used].copy(), starts[:nlists].copy()


# ---------------------------------------------------------------------------------------------------
# The trial-scale loop of the IQ2 and IQ3 searches (quantize_row_iq2_*_impl, quantize_row_iq3_*_impl)
#
# ggml tries the inverse scales inv = (top + step*s)/denom, s = -nhalf..nhalf, one after another; the
# trials do not depend on each other until the winner is picked. qtool runs them side by side, trial s
# in lane s + nhalf of TRIAL_LANES (lanes past the last trial repeat it): sv float32[4, TRIAL_LANES]
# holds inv, sum w*x*q, sum w*q*q and the trial scale 1/inv; Ls int32[n, TRIAL_LANES] each trial's
# levels, in C's order per lane.
# ---------------------------------------------------------------------------------------------------

TRIAL_LANES = 32
INV, SUMQX, SUMQ2, SCALE = range(4)


@jit_inline
def start_trials(sv, ns, nhalf, top, step, denom):
    """The ns trials' inverse scales and scales into sv, their sums zeroed."""
    inv = sv[INV]
    tsc = sv[SCALE]
    sqx = sv[SUMQX]
    sq2 = sv[SUMQ2]
    for s in range(TRIAL_LANES):
        inv[s] = (top + F32(min(s, ns - 1) - nhalf) * step) / denom
        tsc[s] = F32(1.0) / inv[s]
        sqx[s] = F32(0.0)
        sq2[s] = F32(0.0)


@jit_inline
def round_trials(xval, n, sv, Ls, lmax):
    """Ls[i, s] = clamp(nearest_int(0.5*(inv_s*x_i - 1)), 0, lmax) for the n values, every lane."""
    inv = sv[INV]
    for i in range(n):
        xi = xval[i]
        row = Ls[i]
        for s in range(TRIAL_LANES):
            row[s] = odd_level(inv[s], xi, lmax)


@jit_inline
def sum_trials(weight, xval, n, sv, Ls):
    """Every lane's sum w*x*q and sum w*q*q over q = 2*level + 1, in C's order (common.lane_trial_sums: the
    sums in registers)."""
    lane_trial_sums(weight, xval, n, Ls, TRIAL_LANES, sv[SUMQX], sv[SUMQ2])


@jit_inline
def best_trial(sv, ns, scale):
    """ggml's pick among the ns trials, in trial order: (winning lane or -1, its scale sumqx/sumq2, or
    the scale given when none wins)."""
    sqx = sv[SUMQX]
    sq2 = sv[SUMQ2]
    best = F32(0.0)
    bs = -1
    for s in range(ns):
        if sq2[s] > F32(0.0) and sqx[s] * sqx[s] > best * sq2[s]:
            scale = sqx[s] / sq2[s]
            best = scale * sqx[s]
            bs = s
    return bs, scale


@jit_inline
def sum_squares(x, n):
    """sum(x^2) over the first n values, float32 in order."""
    s = F32(0.0)
    for i in range(n):
        s += x[i] * x[i]
    return s


@jit_inline
def importance(xb, qw, n, sigma2, base, weight):
    """The importance of the n weights of a block into weight: qw*sqrt(sigma2 + x^2), or base + x^2
    without qw (qw empty: base 0 for x^2, which 0 + x^2 is exactly; sigma2/4 for IQ2_S)."""
    if qw.shape[0] > 0:
        for i in range(n):
            weight[i] = qw[i] * np.sqrt(sigma2 + xb[i] * xb[i])
    else:
        for i in range(n):
            weight[i] = base + xb[i] * xb[i]


@jit_inline
def block_weights(xb, qw, n, sigma2, base, weight, waux):
    """importance() into weight and its square root into waux (the IQ2/IQ3 neighbour distances)."""
    importance(xb, qw, n, sigma2, base, weight)
    for i in range(n):
        waux[i] = np.sqrt(weight[i])


@jit_inline
def odd_level(inv, x, lmax):
    """clamp(nearest_int(0.5*(inv*x - 1)), 0, lmax): the level l whose odd value 2l + 1 lies nearest inv*x,
    as ggml rounds the IQ searches' weights and their block scales."""
    l = nearest_int(F32(0.5) * (inv * x - F32(1.0)))
    return max(0, min(lmax, l))


@jit_inline
def max_of(xval, n):
    """C's running MAX(m, x) = m > x ? m : x over the first n values."""
    m = xval[0]
    for i in range(1, n):
        m = m if m > xval[i] else xval[i]
    return m


@jit_inline
def fold_signs(xb, weight, xval, k, parity):
    """|x| of the 8 weights of group k into xval; returns their sign bits. With ``parity`` (IQ2_XXS,
    IQ2_XS: 7 stored bits, the 8th implied even) an odd count of negatives flips the sign back on the
    weight of least weight*x^2, whose xval goes negative. (IQ3 writes the same steps inline: through
    this call its blocks ran ~3% slower.)"""
    nflip = 0
    s = 0
    for i in range(8):
        v = xb[8 * k + i]
        if v >= F32(0.0):
            xval[8 * k + i] = v
        else:
            xval[8 * k + i] = -v
            nflip += 1
            s |= 1 << i
    if parity and nflip & 1:
        imin = 0
        mn = weight[8 * k] * xb[8 * k] * xb[8 * k]
        for i in range(1, 8):
            ax = weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i]
            if ax < mn:
                mn = ax
                imin = i
        xval[8 * k + imin] = -xval[8 * k + imin]
        s ^= 1 << imin
    return s


@jit_inline
def sum_wq(weight, xval, L, n):
    """sum w*x*q and sum w*q*q over q = 2*L + 1 (the levels' odd values), in ggml's order."""
    sumqx = F32(0.0)
    sumq2 = F32(0.0)
    for i in range(n):
        w = weight[i]
        q = F32(2 * np.int32(L[i]) + 1)
        sumqx += w * xval[i] * q
        sumq2 += w * q * q
    return sumqx, sumq2
