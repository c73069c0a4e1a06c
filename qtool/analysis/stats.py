"""Per-tensor figures: how far dequantized weights ``q`` are from the originals ``x``, which signs they
lost, and how outlier-heavy a tensor is. Everything is accumulated in float64 by the kernels in
qtool.kernels.stats; this module turns their sums into the named figures of `qtool inspect`.

Figures that are undefined for a tensor (the SQNR of an exact copy, the cosine against an all-zero
tensor, the kurtosis of a constant) are ``nan`` or ``inf`` here and ``null`` in JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qtool.kernels import native
from qtool.kernels import stats as K

#: quantiles of |q - x| reported as p50, p95, p99 (numpy's default "linear" interpolation)
QUANTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))
#: a column is an outlier channel when its L2 norm exceeds this multiple of the median column norm
CHANNEL_FACTOR = 5.0
#: a quantization block is scale-dominated when its absmax exceeds this multiple of its RMS
DOMINANCE_FACTOR = 8.0
#: how many of the worst outlier channels to name
WORST_CHANNELS = 5
#: the block size assumed for float (unblocked) types
FLOAT_BLOCK = 32


@dataclass
class Figures:
    """The three groups of figures of one tensor, as plain dicts (JSON-ready but for nan/inf)."""

    error: dict | None
    sign: dict
    outliers: dict
    #: float32 |q - x| (only when asked for, to draw a histogram)
    abs_error: np.ndarray | None = None


def _threads() -> int:
    return native.get_num_threads()


def _chunk(n: int) -> int:
    """Elements per parallel piece: a few pieces per thread, never tiny."""
    return max(1 << 15, -(-n // (4 * _threads())))


def _flat(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).reshape(-1)


def compare(q: np.ndarray, x: np.ndarray, *, block_size: int = FLOAT_BLOCK,
            keep_abs_error: bool = False) -> Figures:
    """Error and sign figures of dequantized ``q`` against original ``x`` (same shape), and the
    outlier figures of ``x``, whose quantization blocks are ``block_size`` long."""
    if q.shape != x.shape:
        raise ValueError(f"shapes differ: {q.shape} vs {x.shape}")
    qf, xf = _flat(q), _flat(x)
    n = xf.size
    absd = np.empty(n, dtype=np.float32) if n else np.empty(0, dtype=np.float32)
    s = K.error_partials(xf, qf, absd, _chunk(n))
    d2, x2, q2, xq = s[K.E_D2], s[K.E_X2], s[K.E_Q2], s[K.E_XQ]
    nx, nq = math.sqrt(x2), math.sqrt(q2)
    error = {
        "rmse": math.sqrt(d2 / n) if n else math.nan,
        "rel_rmse": (0.0 if d2 == 0.0 else math.inf) if x2 == 0.0 else math.sqrt(d2) / nx,
        "max_abs": float(s[K.E_MAXD]) if n else math.nan,
        "sqnr_db": (10.0 * math.log10(x2 / d2) if x2 > 0.0 else -math.inf) if d2 > 0.0 else math.nan,
        "cosine": float(xq / (nx * nq)) if nx > 0.0 and nq > 0.0 else math.nan,
    }
    error.update(zip((k for k, _ in QUANTILES), quantiles(absd, [p for _, p in QUANTILES])))
    nonzero, collapsed, flipped = int(s[K.E_NONZERO]), int(s[K.E_COLLAPSED]), int(s[K.E_FLIPPED])
    sign = {
        "nonzero": nonzero,
        "collapsed": collapsed,
        "flipped": flipped,
        "collapsed_frac": collapsed / nonzero if nonzero else 0.0,
        "flipped_frac": flipped / nonzero if nonzero else 0.0,
    }
    return Figures(error, sign, outlier_figures(x, block_size=block_size),
                   absd if keep_abs_error else None)


def describe(w: np.ndarray, *, block_size: int = FLOAT_BLOCK, keep_abs: bool = False) -> Figures:
    """Without a reference: the outlier figures of ``w`` and its fraction of exact zeros."""
    outliers, zeros = _outliers(w, block_size)
    n = w.size
    absw = np.abs(_flat(w)) if keep_abs else None
    return Figures(None, {"zero_frac": zeros / n if n else math.nan}, outliers, absw)


def outlier_figures(x: np.ndarray, *, block_size: int = FLOAT_BLOCK) -> dict:
    """crest, excess kurtosis, 3σ/6σ fractions, outlier channels and scale-dominated blocks of ``x``."""
    return _outliers(x, block_size)[0]


def _outliers(x: np.ndarray, block_size: int) -> tuple[dict, int]:
    xf = _flat(x)
    n = xf.size
    if n == 0:
        empty = {"crest": math.nan, "kurtosis": math.nan, "beyond_3sigma": math.nan, "beyond_6sigma": math.nan,
                 "outlier_channels": {"count": 0, "worst": []}, "scale_dominated_blocks": math.nan}
        return empty, 0
    chunk = _chunk(n)
    v = K.value_partials(xf, chunk)
    mu = float(v[K.V_SUM]) / n
    c = K.central_partials(xf, mu, chunk)
    m2, m4 = float(c[K.M_C2]) / n, float(c[K.M_C4]) / n
    sigma = math.sqrt(m2)
    rms = math.sqrt(v[K.V_SUM2] / n)

    x2d = xf.reshape(-1, x.shape[-1] if x.ndim else 1)
    nrows, ncols = x2d.shape
    rows_per_chunk = max(1, -(-nrows // (4 * _threads())), (1 << 15) // max(ncols, 1))
    nch = -(-nrows // rows_per_chunk)
    colsq = np.zeros((nch, ncols))
    sh = K.shape_partials(x2d, mu, sigma, int(block_size), DOMINANCE_FACTOR, rows_per_chunk, colsq)
    norms = np.sqrt(colsq.sum(axis=0))
    median = float(np.median(norms))
    hot = np.flatnonzero(norms > CHANNEL_FACTOR * median)
    worst = hot[np.argsort(-norms[hot], kind="stable")[:WORST_CHANNELS]]
    figures = {
        "crest": float(v[K.V_MAXABS]) / rms if rms > 0.0 else math.nan,
        "kurtosis": m4 / (m2 * m2) - 3.0 if m2 > 0.0 else math.nan,
        "beyond_3sigma": float(sh[K.S_BEYOND3]) / n,
        "beyond_6sigma": float(sh[K.S_BEYOND6]) / n,
        "outlier_channels": {"count": int(hot.size), "worst": [int(i) for i in worst]},
        "scale_dominated_blocks": float(sh[K.S_DOMINATED]) / float(sh[K.S_BLOCKS]),
    }
    return figures, int(v[K.V_ZEROS])


def quantiles(abs_values: np.ndarray, probs: list[float]) -> list[float]:
    """numpy's ``percentile(..., method="linear")`` of non-negative float32 values, exactly, in O(n)."""
    n = abs_values.size
    if n == 0:
        return [math.nan] * len(probs)
    ranks = set()
    for p in probs:
        h = (n - 1) * p
        ranks.update((math.floor(h), min(n - 1, math.floor(h) + 1)))
    ranks = sorted(ranks)
    values = dict(zip(ranks, select_sorted(abs_values.view(np.uint32), ranks)))
    out: list[float] = []
    for p in probs:
        h = (n - 1) * p
        lo = math.floor(h)
        a, b = values[lo], values[min(n - 1, lo + 1)]
        t = h - lo
        out.append(float(a + (b - a) * t if t < 0.5 else b - (b - a) * (1.0 - t)))
    return out


def select_sorted(bits: np.ndarray, ranks: list[int]) -> np.ndarray:
    """The values of non-negative float32 bit patterns ``bits`` (uint32 [n]) at 0-based sorted
    ``ranks``, as float64: an exact two-pass radix select (high 16 bits, then low 16 bits)."""
    nch = max(1, min(_threads(), bits.size // 65536 + 1))
    hi_hist = K.radix_histogram(bits, np.empty(0, dtype=np.uint32), nch)[0]
    located = [K.locate(hi_hist, k) for k in ranks]
    bins = np.array(sorted({hi for hi, _ in located}), dtype=np.uint32)
    lo_hist = K.radix_histogram(bits, bins, nch)
    slot_of = {int(b): i for i, b in enumerate(bins)}
    out = np.empty(len(ranks))
    for i, (hi, within) in enumerate(located):
        lo, _ = K.locate(lo_hist[slot_of[int(hi)]], within)
        out[i] = float(np.array([(int(hi) << 16) | int(lo)], dtype=np.uint32).view(np.float32)[0])
    return out


def histogram(abs_values: np.ndarray, bins: int = 12, decades: float = 6.0) -> dict:
    """A log-spaced histogram of non-negative values: ``{"zeros", "below", "edges", "counts",
    "above"}``. The edges run from the largest finite value down ``decades`` decades (or to the
    smallest non-zero value, if nearer); ``below`` counts the non-zero values under the first edge,
    ``above`` any NaN or Inf."""
    v = _flat(abs_values)
    finite = v[np.isfinite(v)]
    positive = finite[finite > 0]
    zeros = int(np.count_nonzero(v == 0))
    if positive.size == 0:
        return {"zeros": zeros, "below": 0, "edges": [], "counts": [], "above": int(v.size - zeros)}
    hi = float(positive.max())
    lo = max(float(positive.min()), hi * 10.0 ** -decades)
    edges = np.array([lo, hi]) if lo == hi else np.geomspace(lo, hi, bins + 1)
    edges[0], edges[-1] = lo, hi
    h = K.log_histogram(v, edges, max(1, min(_threads(), v.size // 65536 + 1)))
    return {"zeros": int(h[0]), "below": int(h[1]), "edges": edges.tolist(), "counts": h[2:-1].tolist(),
            "above": int(h[-1])}


def error_brief(q: np.ndarray, x: np.ndarray) -> dict:
    """The what-if figures of dequantized ``q`` against ``x``: rel_rmse, collapsed_frac, flipped_frac
    (one pass, no quantiles)."""
    qf, xf = _flat(q), _flat(x)
    s = K.error_partials(xf, qf, np.empty(0, dtype=np.float32), _chunk(xf.size))
    d2, x2 = s[K.E_D2], s[K.E_X2]
    nonzero = s[K.E_NONZERO]
    return {
        "rel_rmse": (0.0 if d2 == 0.0 else math.inf) if x2 == 0.0 else float(math.sqrt(d2 / x2)),
        "collapsed_frac": float(s[K.E_COLLAPSED] / nonzero) if nonzero else 0.0,
        "flipped_frac": float(s[K.E_FLIPPED] / nonzero) if nonzero else 0.0,
    }
