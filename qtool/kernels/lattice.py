"""ggml's lattice search tables (iq2xs_init_impl, iq3xs_init_impl), built from a grid handed in.

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

from qtool.kernels.common import jit


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
