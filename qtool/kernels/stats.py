"""Error, sign-loss and outlier statistics over one tensor: float64 accumulation, parallel over chunks.

Every kernel takes plain float32 arrays (dequantized weights ``q``, original weights ``x``) and returns
sums that the caller (qtool.analysis.stats) turns into figures. Accumulators are float64, so the figures
agree with a numpy float64 computation to ~1e-12 relative.

Shape of the code (after pynndescent): a serial ``*_chunk`` function per piece of work, compiled with
``fastmath`` so LLVM may reassociate the sums and vectorize (no ``nnan``/``ninf``: NaN and Inf in a
tensor must still show in the figures), and one ``parallel=True`` driver per statistic that hands
``chunk``-element pieces to ``prange`` and writes one row of a partial-results array per piece. Maxima
of non-negative floats are taken on their uint32 bit patterns, which order like the values and
vectorize where a float max without ``nnan`` does not.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from qtool.kernels.common import bits_f32

#: LLVM may reassociate and contract, but must keep NaN and Inf semantics.
FASTMATH = {"reassoc", "contract", "arcp", "nsz"}

_fjit = numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
_jit = numba.njit(cache=True, nogil=True)
_pjit = numba.njit(cache=True, nogil=True, parallel=True)

# Entries of the vectors the drivers return.
E_D2, E_X2, E_Q2, E_XQ, E_NONZERO, E_COLLAPSED, E_FLIPPED, E_MAXD = range(8)
N_ERROR = 8
V_SUM, V_SUM2, V_MAXABS, V_ZEROS = range(4)
N_VALUE = 4
M_C2, M_C4 = range(2)
S_BEYOND3, S_BEYOND6, S_DOMINATED, S_BLOCKS = range(4)
N_SHAPE = 4

_ABS_MASK = np.uint32(0x7FFFFFFF)


@_jit
def _pieces(n, chunk):
    return (n + chunk - 1) // chunk


# -- error and sign --------------------------------------------------------------------------------


#: elements per inner block of a chunk: its inputs stay in cache across the separate loops over it
_SUB = 4096


@_fjit
def _pair_sums(x, q, out):
    """Σ(q-x)², Σx², Σq², Σx·q of float32 [m] ``x``, ``q``, added into float64 ``out[:4]``."""
    d2 = 0.0
    x2 = 0.0
    q2 = 0.0
    xq = 0.0
    for i in range(x.size):
        xv = np.float64(x[i])
        qv = np.float64(q[i])
        d = qv - xv
        d2 += d * d
        x2 += xv * xv
        q2 += qv * qv
        xq += xv * qv
    out[E_D2] += d2
    out[E_X2] += x2
    out[E_Q2] += q2
    out[E_XQ] += xq


@_fjit
def _sign_counts(x, q, out):
    """count(x≠0), count(x≠0 ∧ q=0), count(x·q<0) of float32 [m] ``x``, ``q``, added into ``out[4:7]``.
    x·q is taken in float64, where the product of two float32 cannot underflow to zero."""
    nonzero = np.int32(0)
    collapsed = np.int32(0)
    flipped = np.int32(0)
    for i in range(x.size):
        xv = x[i]
        qv = q[i]
        nonzero += np.int32(xv != 0)
        collapsed += np.int32((xv != 0) & (qv == 0))
        flipped += np.int32(np.float64(xv) * np.float64(qv) < 0)
    out[E_NONZERO] += nonzero
    out[E_COLLAPSED] += collapsed
    out[E_FLIPPED] += flipped


@_fjit
def _abs_diff(x, q, absd):
    """|q-x| of float32 [m] ``x``, ``q`` into float32 ``absd`` (float32 subtraction: the exact
    difference, correctly rounded); returns the largest bit pattern."""
    for i in range(x.size):
        absd[i] = abs(q[i] - x[i])
    u = absd.view(np.uint32)
    top = np.uint32(0)
    for i in range(u.size):
        v = u[i]
        top = v if v > top else top
    return top


@_fjit
def error_chunk(x, q, absd, want_abs, out):
    """Pair sums and sign counts of float32 [m] ``x``, ``q`` added into float64 ``out[:7]``; with
    ``want_abs``, float32(|q-x|) into ``absd`` [m] and the largest bit pattern of it returned (else 0).

    Sums, counts and |q-x| are separate loops (each vectorizes; fused, none does), run block by block
    so that each ``_SUB``-element block is read from cache by the second and third."""
    m = x.size
    top = np.uint32(0)
    for b0 in range(0, m, _SUB):
        b1 = min(m, b0 + _SUB)
        xs = x[b0:b1]
        qs = q[b0:b1]
        _pair_sums(xs, qs, out)
        _sign_counts(xs, qs, out)
        if want_abs:
            t = _abs_diff(xs, qs, absd[b0:b1])
            top = t if t > top else top
    return top


@_jit
def max_diff_chunk(x, q, u, top):
    """max |q-x| in float64 over the elements whose float32(|q-x|) has the bit pattern ``top``
    (float32 rounding is monotonic, so the float64 maximum is among them); -1 when none."""
    m = -1.0
    for i in range(u.size):
        if u[i] == top:
            d = abs(np.float64(q[i]) - np.float64(x[i]))
            if d > m or np.isnan(d):
                m = d
    return m


@_pjit
def error_partials(x, q, absd, chunk):
    """Pair statistics of original ``x`` and dequantized ``q`` (float32 [n] each).

    Returns float64 [8]: Σ(q-x)², Σx², Σq², Σx·q, count(x≠0), count(x≠0 ∧ q=0), count(x·q<0) and
    max|q-x|. When ``absd`` is float32 [n] it receives float32(|q-x|), for ``radix_histogram`` (through
    its uint32 view) and ``log_histogram``; pass an empty array to skip it, and max|q-x| (NaN then).
    """
    n = x.size
    want_abs = absd.size == n
    nch = _pieces(n, chunk)
    part = np.zeros((nch, N_ERROR))
    tops = np.zeros(nch, dtype=np.uint32)
    for c in prange(nch):
        lo = c * chunk
        hi = min(n, lo + chunk)
        tops[c] = error_chunk(x[lo:hi], q[lo:hi], absd[lo:hi] if want_abs else absd, want_abs, part[c])
    out = np.zeros(N_ERROR)
    for c in range(nch):
        for k in range(E_MAXD):
            out[k] += part[c, k]
    out[E_MAXD] = np.nan
    if want_abs and n > 0:
        top = tops.max()
        u = absd.view(np.uint32)
        best = -1.0
        for c in range(nch):  # only the pieces holding the top pattern are read again
            if tops[c] == top:
                lo = c * chunk
                hi = min(n, lo + chunk)
                m = max_diff_chunk(x[lo:hi], q[lo:hi], u[lo:hi], top)
                if m > best or np.isnan(m):
                    best = m
        out[E_MAXD] = best
    return out


# -- values and moments -----------------------------------------------------------------------------


@_fjit
def _value_sums(x, out):
    s = 0.0
    s2 = 0.0
    for i in range(x.size):
        v = np.float64(x[i])
        s += v
        s2 += v * v
    out[V_SUM] += s
    out[V_SUM2] += s2


@_fjit
def _zeros_and_top(x, out):
    """count(x=0) of float32 [m] ``x`` added into ``out[V_ZEROS]``; returns max |x| as its bit pattern."""
    u = x.view(np.uint32)
    zeros = np.int32(0)
    top = np.uint32(0)
    for i in range(u.size):
        a = u[i] & _ABS_MASK
        zeros += np.int32(a == 0)
        top = a if a > top else top
    out[V_ZEROS] += zeros
    return top


@_fjit
def value_chunk(x, out):
    """Σx, Σx², max|x| (exact: |x| is a float32), count(x=0) of float32 [m] ``x`` into ``out[:4]``."""
    m = x.size
    top = np.uint32(0)
    for b0 in range(0, m, _SUB):
        xs = x[b0:min(m, b0 + _SUB)]
        _value_sums(xs, out)
        t = _zeros_and_top(xs, out)
        top = t if t > top else top
    out[V_MAXABS] = np.float64(bits_f32(top))


@_pjit
def value_partials(x, chunk):
    """One-pass statistics of float32 [n] ``x``: float64 [4] = Σx, Σx², max|x|, count(x=0)."""
    n = x.size
    nch = _pieces(n, chunk)
    part = np.zeros((nch, N_VALUE))
    for c in prange(nch):
        lo = c * chunk
        value_chunk(x[lo:min(n, lo + chunk)], part[c])
    out = np.zeros(N_VALUE)
    for c in range(nch):
        out[V_SUM] += part[c, V_SUM]
        out[V_SUM2] += part[c, V_SUM2]
        out[V_ZEROS] += part[c, V_ZEROS]
        if part[c, V_MAXABS] > out[V_MAXABS] or np.isnan(part[c, V_MAXABS]):
            out[V_MAXABS] = part[c, V_MAXABS]
    return out


@_fjit
def central_chunk(x, mu, out):
    """Σ(x-μ)², Σ(x-μ)⁴ of float32 [m] ``x`` into ``out[:2]``."""
    c2 = 0.0
    c4 = 0.0
    for i in range(x.size):
        d = np.float64(x[i]) - mu
        d2 = d * d
        c2 += d2
        c4 += d2 * d2
    out[M_C2] = c2
    out[M_C4] = c4


@_pjit
def central_partials(x, mu, chunk):
    """Central moment sums of float32 [n] ``x`` about ``mu``: float64 [2] = Σ(x-μ)², Σ(x-μ)⁴."""
    n = x.size
    nch = _pieces(n, chunk)
    part = np.zeros((nch, 2))
    for c in prange(nch):
        lo = c * chunk
        central_chunk(x[lo:min(n, lo + chunk)], mu, part[c])
    out = np.zeros(2)
    for c in range(nch):
        out[M_C2] += part[c, M_C2]
        out[M_C4] += part[c, M_C4]
    return out


# -- outlier shape ----------------------------------------------------------------------------------


@_fjit
def _deviations(row, mu, t3, t6, colsq, out):
    """count(|x-μ| > t3), count(|x-μ| > t6) of float32 [ncols] ``row`` added into ``out[:2]``; x² added
    into float64 ``colsq`` [ncols]."""
    b3 = np.int32(0)
    b6 = np.int32(0)
    for j in range(row.size):
        v = np.float64(row[j])
        colsq[j] += v * v
        dev = abs(v - mu)
        b3 += np.int32(dev > t3)
        b6 += np.int32(dev > t6)
    out[S_BEYOND3] += b3
    out[S_BEYOND6] += b6


@_fjit
def _dominated(blk, dominance):
    """Whether float32 [b] ``blk``'s absmax exceeds ``dominance`` × its RMS."""
    u = blk.view(np.uint32)
    ss = 0.0
    top = np.uint32(0)
    for j in range(blk.size):
        v = np.float64(blk[j])
        ss += v * v
        a = u[j] & _ABS_MASK
        top = a if a > top else top
    return np.float64(bits_f32(top)) > dominance * np.sqrt(ss / blk.size)


@_fjit
def shape_rows(x, mu, t3, t6, block, dominance, colsq, out):
    """Outlier shape of the float32 rows [r, ncols] ``x``, added into float64 ``out[:4]``: count(|x-μ| >
    t3), count(|x-μ| > t6), the ``block``-element pieces of each row (the last may be short)::

        row:  | block 0 | block 1 | ... | short last block |

    whose absmax exceeds ``dominance`` × their RMS, and the number of pieces. Adds x² down each
    column into float64 ``colsq`` [ncols]."""
    nrows, ncols = x.shape
    dom = 0
    nblocks = 0
    for r in range(nrows):
        row = x[r]
        _deviations(row, mu, t3, t6, colsq, out)
        for b0 in range(0, ncols, block):
            nblocks += 1
            dom += _dominated(row[b0:min(ncols, b0 + block)], dominance)
    out[S_DOMINATED] += dom
    out[S_BLOCKS] += nblocks


@_pjit
def shape_partials(x, mu, sigma, block, dominance, rows_per_chunk, colsq):
    """Outlier shape of float32 [nrows, ncols] ``x`` (rows along the last axis, as ggml stores them).

    Returns float64 [4] = count(|x-μ| > 3σ), count(|x-μ| > 6σ), scale-dominated blocks, blocks (see
    ``shape_rows``). ``colsq`` (float64 [nchunks, ncols], zeroed) receives per-chunk column sums of x²;
    the caller adds them up into column norms."""
    nrows = x.shape[0]
    nch = colsq.shape[0]
    part = np.zeros((nch, N_SHAPE))
    for c in prange(nch):
        r0 = c * rows_per_chunk
        shape_rows(x[r0:min(nrows, r0 + rows_per_chunk)], mu, 3.0 * sigma, 6.0 * sigma, block, dominance,
                   colsq[c], part[c])
    out = np.zeros(N_SHAPE)
    for c in range(nch):
        for k in range(N_SHAPE):
            out[k] += part[c, k]
    return out


# -- selection and histograms -----------------------------------------------------------------------


@_jit
def high_histogram_chunk(u, h):
    """Counts of the high 16 bits of uint32 [m] ``u`` into int64 ``h`` [65536]."""
    for i in range(u.size):
        h[u[i] >> np.uint32(16)] += 1


@_jit
def low_histogram_chunk(u, slot_of, h):
    """Counts of the low 16 bits of the elements of uint32 [m] ``u`` whose high 16 bits have a slot
    (``slot_of``, int16 [65536], -1 for none) into int64 ``h`` [nslots, 65536] row ``slot``."""
    for i in range(u.size):
        s = slot_of[u[i] >> np.uint32(16)]
        if s >= 0:
            h[s, u[i] & np.uint32(0xFFFF)] += 1


@_pjit
def radix_histogram(u, bins, nch):
    """Pass 1 (``bins`` empty): the histogram of the high 16 bits of uint32 [n] ``u``, int64 [1, 65536].
    Pass 2: for each high half in ``bins``, the histogram of the low 16 bits of the elements that
    have it, int64 [nbins, 65536]. Together they select any rank of ``u`` exactly."""
    n = u.size
    chunk = _pieces(n, nch)
    rows = max(1, bins.size)
    slot_of = np.full(1 << 16, -1, dtype=np.int16)
    for s in range(bins.size):
        slot_of[bins[s]] = s
    part = np.zeros((nch, rows, 1 << 16), dtype=np.int64)
    for c in prange(nch):
        lo = c * chunk
        hi = min(n, lo + chunk)
        if bins.size == 0:
            high_histogram_chunk(u[lo:hi], part[c, 0])
        else:
            low_histogram_chunk(u[lo:hi], slot_of, part[c])
    out = np.zeros((rows, 1 << 16), dtype=np.int64)
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


@_jit
def log_histogram_chunk(values, edges, h):
    nb = edges.size - 1
    for i in range(values.size):
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
            h[2 + np.searchsorted(edges, v, side="right") - 1] += 1


@_pjit
def log_histogram(values, edges, nch):
    """Counts of the non-negative float32 ``values`` [n] against increasing positive ``edges``
    (float64 [nbins + 1]): int64 [nbins + 3] = (zeros, positive values below the first edge,
    bin 0 .. nbins-1, values above the last edge or NaN). Bins are half-open [lo, hi) except the
    last, which holds its upper edge."""
    n = values.size
    nb = edges.size - 1
    chunk = _pieces(n, nch)
    part = np.zeros((nch, nb + 3), dtype=np.int64)
    for c in prange(nch):
        lo = c * chunk
        log_histogram_chunk(values[lo:min(n, lo + chunk)], edges, part[c])
    out = np.zeros(nb + 3, dtype=np.int64)
    for c in range(nch):
        out += part[c]
    return out
