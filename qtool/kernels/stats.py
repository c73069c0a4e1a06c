"""Error, sign-loss and outlier statistics over one tensor: float64 accumulation, parallel over chunks.

Every kernel takes plain float32 arrays (dequantized weights ``q``, original weights ``x``) and returns
partial sums that the caller (qtool.analysis.stats) turns into figures. Accumulators are float64, so the
figures agree with a numpy float64 computation to ~1e-12 relative; ``fastmath`` only lets LLVM reorder
the sums (no ``nnan``/``ninf``: NaN and Inf in a tensor must still show in the figures).

Parallel kernels split their input into ``chunk``-element (or ``chunk``-row) pieces and write one row
of a partial-results array per piece, so the result does not depend on the thread count beyond the
order of float64 additions.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

#: LLVM may reassociate and contract, but must keep NaN and Inf semantics.
FASTMATH = {"reassoc", "contract", "arcp", "nsz"}

_jit = numba.njit(cache=True, nogil=True)
_pjit = numba.njit(cache=True, nogil=True, parallel=True, fastmath=FASTMATH)

# Columns of the partial arrays (and of the reduced vectors the kernels return).
E_D2, E_X2, E_Q2, E_XQ, E_MAXD, E_NONZERO, E_COLLAPSED, E_FLIPPED = range(8)
N_ERROR = 8
V_SUM, V_SUM2, V_MAXABS, V_ZEROS = range(4)
N_VALUE = 4
M_C2, M_C4 = range(2)
S_BEYOND3, S_BEYOND6, S_DOMINATED, S_BLOCKS = range(4)
N_SHAPE = 4


@_pjit
def error_partials(x, q, absd, chunk):
    """Pair statistics of original ``x`` and dequantized ``q`` (both float32 [n], same length).

    Returns float64 [8]: Σ(q-x)², Σx², Σq², Σx·q, max|q-x|, count(x≠0), count(x≠0 ∧ q=0),
    count(x·q<0). When ``absd`` is float32 [n] it receives float32(|q-x|) for ``select_sorted``
    (through its uint32 view) and ``log_histogram``; pass an empty array to skip.
    """
    n = x.size
    want_abs = absd.size == n
    nch = (n + chunk - 1) // chunk
    part = np.zeros((nch, N_ERROR))
    for c in prange(nch):
        lo = c * chunk
        hi = min(n, lo + chunk)
        d2 = 0.0
        x2 = 0.0
        q2 = 0.0
        xq = 0.0
        maxd = 0.0
        nonzero = 0
        collapsed = 0
        flipped = 0
        for i in range(lo, hi):
            xv = np.float64(x[i])
            qv = np.float64(q[i])
            d = qv - xv
            ad = abs(d)
            d2 += d * d
            x2 += xv * xv
            q2 += qv * qv
            xq += xv * qv
            if ad > maxd:
                maxd = ad
            if xv != 0.0:
                nonzero += 1
                if qv == 0.0:
                    collapsed += 1
                elif (xv > 0.0) != (qv > 0.0):
                    flipped += 1
            if want_abs:
                absd[i] = np.float32(ad)
        p = part[c]
        p[E_D2] = d2
        p[E_X2] = x2
        p[E_Q2] = q2
        p[E_XQ] = xq
        p[E_MAXD] = maxd
        p[E_NONZERO] = nonzero
        p[E_COLLAPSED] = collapsed
        p[E_FLIPPED] = flipped
    out = np.zeros(N_ERROR)
    for c in range(nch):
        for k in range(N_ERROR):
            if k == E_MAXD:
                if part[c, k] > out[k] or np.isnan(part[c, k]):
                    out[k] = part[c, k]
            else:
                out[k] += part[c, k]
    return out


@_pjit
def value_partials(x, chunk):
    """One-pass statistics of float32 [n] ``x``: float64 [4] = Σx, Σx², max|x|, count(x=0)."""
    n = x.size
    nch = (n + chunk - 1) // chunk
    part = np.zeros((nch, N_VALUE))
    for c in prange(nch):
        lo = c * chunk
        hi = min(n, lo + chunk)
        s = 0.0
        s2 = 0.0
        mx = 0.0
        zeros = 0
        for i in range(lo, hi):
            v = np.float64(x[i])
            s += v
            s2 += v * v
            a = abs(v)
            if a > mx or np.isnan(a):
                mx = a
            if v == 0.0:
                zeros += 1
        part[c, V_SUM] = s
        part[c, V_SUM2] = s2
        part[c, V_MAXABS] = mx
        part[c, V_ZEROS] = zeros
    out = np.zeros(N_VALUE)
    for c in range(nch):
        out[V_SUM] += part[c, V_SUM]
        out[V_SUM2] += part[c, V_SUM2]
        out[V_ZEROS] += part[c, V_ZEROS]
        if part[c, V_MAXABS] > out[V_MAXABS] or np.isnan(part[c, V_MAXABS]):
            out[V_MAXABS] = part[c, V_MAXABS]
    return out


@_pjit
def central_partials(x, mu, chunk):
    """Central moment sums of float32 [n] ``x`` about ``mu``: float64 [2] = Σ(x-μ)², Σ(x-μ)⁴."""
    n = x.size
    nch = (n + chunk - 1) // chunk
    part = np.zeros((nch, 2))
    for c in prange(nch):
        lo = c * chunk
        hi = min(n, lo + chunk)
        c2 = 0.0
        c4 = 0.0
        for i in range(lo, hi):
            d = np.float64(x[i]) - mu
            d2 = d * d
            c2 += d2
            c4 += d2 * d2
        part[c, M_C2] = c2
        part[c, M_C4] = c4
    out = np.zeros(2)
    for c in range(nch):
        out[M_C2] += part[c, M_C2]
        out[M_C4] += part[c, M_C4]
    return out


@_pjit
def shape_partials(x, mu, sigma, block, dominance, rows_per_chunk, colsq):
    """Outlier shape of float32 [nrows, ncols] ``x`` (rows along the last axis, as ggml stores them).

    Returns float64 [4] = count(|x-μ| > 3σ), count(|x-μ| > 6σ), the number of ``block``-element
    pieces of each row (the last one may be short) whose absmax exceeds ``dominance`` × their RMS,
    and the number of pieces. ``colsq`` (float64 [nchunks, ncols], zeroed) receives per-chunk sums of
    x² down each column; the caller adds the chunks up into column norms.
    """
    nrows, ncols = x.shape
    nch = colsq.shape[0]
    part = np.zeros((nch, N_SHAPE))
    t3 = 3.0 * sigma
    t6 = 6.0 * sigma
    for c in prange(nch):
        r0 = c * rows_per_chunk
        r1 = min(nrows, r0 + rows_per_chunk)
        b3 = 0
        b6 = 0
        dom = 0
        nblocks = 0
        acc = colsq[c]
        for r in range(r0, r1):
            row = x[r]
            for b0 in range(0, ncols, block):
                b1 = min(ncols, b0 + block)
                ss = 0.0
                am = 0.0
                for j in range(b0, b1):
                    v = np.float64(row[j])
                    v2 = v * v
                    ss += v2
                    acc[j] += v2
                    a = abs(v)
                    if a > am:
                        am = a
                    dev = abs(v - mu)
                    if dev > t3:
                        b3 += 1
                        if dev > t6:
                            b6 += 1
                nblocks += 1
                if am > dominance * np.sqrt(ss / (b1 - b0)):
                    dom += 1
        part[c, S_BEYOND3] = b3
        part[c, S_BEYOND6] = b6
        part[c, S_DOMINATED] = dom
        part[c, S_BLOCKS] = nblocks
    out = np.zeros(N_SHAPE)
    for c in range(nch):
        for k in range(N_SHAPE):
            out[k] += part[c, k]
    return out


@_pjit
def radix_histogram(bits, shift, mask, match_shift, slot_of, nslots, nch):
    """Histogram of ``(bits >> shift) & mask`` over the elements whose ``bits >> match_shift`` has a
    slot (``slot_of[...] >= 0``); one histogram per slot: int64 [nslots, mask + 1]."""
    n = bits.size
    width = mask + 1
    chunk = (n + nch - 1) // nch
    part = np.zeros((nch, nslots, width), dtype=np.int64)
    for c in prange(nch):
        lo = c * chunk
        hi = min(n, lo + chunk)
        h = part[c]
        for i in range(lo, hi):
            b = bits[i]
            s = slot_of[b >> match_shift]
            if s >= 0:
                h[s, (b >> shift) & mask] += 1
    out = np.zeros((nslots, width), dtype=np.int64)
    for c in range(nch):
        out += part[c]
    return out


@_jit
def locate(hist, k):
    """Index of the bin holding the element of rank ``k`` (0-based) and its rank inside that bin."""
    acc = 0
    for b in range(hist.size):
        if acc + hist[b] > k:
            return b, k - acc
        acc += hist[b]
    return hist.size - 1, 0


@_pjit
def log_histogram(values, edges, nch):
    """Counts of the non-negative float32 ``values`` [n] against increasing positive ``edges``
    (float64 [nbins + 1]): int64 [nbins + 3] = (zeros, positive values below the first edge,
    bin 0 .. nbins-1, values above the last edge or NaN). Bins are half-open [lo, hi) except the
    last, which holds its upper edge."""
    n = values.size
    nb = edges.size - 1
    chunk = (n + nch - 1) // nch
    part = np.zeros((nch, nb + 3), dtype=np.int64)
    for c in prange(nch):
        lo = c * chunk
        hi = min(n, lo + chunk)
        h = part[c]
        for i in range(lo, hi):
            v = np.float64(values[i])
            if v == 0.0:
                h[0] += 1
            elif v < edges[0]:
                h[1] += 1
            elif v == edges[nb]:
                h[nb + 1] += 1
            elif v > edges[nb] or np.isnan(v):
                h[nb + 2] += 1
            else:
                k = np.searchsorted(edges, v, side="right") - 1
                h[2 + k] += 1
    out = np.zeros(nb + 3, dtype=np.int64)
    for c in range(nch):
        out += part[c]
    return out
