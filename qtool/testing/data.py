"""Seeded weight-like data full of the cases that break quantizers.

Used by the oracle tests, the golden-vector generator and the benchmarks, so all three exercise the
same inputs.
"""

from __future__ import annotations

import numpy as np

#: hard_rows' case of huge (1e30) magnitudes: rows HUGE_CASE, HUGE_CASE + N_CASES, ...
HUGE_CASE, N_CASES = 10, 13

#: half-precision bit patterns: +-0, subnormals, normals, +-inf, quiet and signalling NaNs of both signs
SPECIAL_HALVES = (0x0000, 0x8000, 0x0001, 0x83FF, 0x3C00, 0xC000, 0x7BFF, 0x7C00, 0xFC00,
                  0x7E00, 0xFE00, 0x7C01, 0xFDC0, 0x7F88, 0xFFA9, 0x3555)


def hard_rows(nrows: int, n_per_row: int, seed: int = 0, huge_scale: float = 1.0) -> np.ndarray:
    """float32 [nrows, n_per_row]: gaussian rows with, per row, one of the hard cases mixed in.

    Cases (cycling over rows): plain gaussian; all zeros; tiny (1e-30, denormal-scale) values;
    one +-1e4 spike per 32; an outlier column band; heavy tails (student-t, df=2); values on
    quantization rounding boundaries (k + 0.5 multiples of a step); constant rows; rows with a
    single non-zero; mixed-sign blocks where |min| == |max|; huge magnitudes (1e30); half-zero
    blocks; values just below half-precision overflow.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((nrows, n_per_row)).astype(np.float32) * np.float32(0.02)
    n_cases = N_CASES
    for r in range(nrows):
        case = r % n_cases
        row = x[r]
        if case == 1:
            row[:] = 0
        elif case == 2:
            row *= np.float32(1e-28)
        elif case == 3:
            idx = np.arange(rng.integers(0, 32), n_per_row, 32)
            row[idx] = rng.choice(np.array([-1e4, 1e4], np.float32), idx.size)
        elif case == 4:
            cols = rng.choice(n_per_row, size=max(1, n_per_row // 64), replace=False)
            row[cols] *= np.float32(80.0)
        elif case == 5:
            row[:] = (rng.standard_t(2.0, n_per_row) * 0.01).astype(np.float32)
        elif case == 6:
            step = np.float32(1.0 / 16)
            row[:] = (rng.integers(-16, 16, n_per_row) + np.float32(0.5)).astype(np.float32) * step
        elif case == 7:
            row[:] = np.float32(0.125)
        elif case == 8:
            row[:] = 0
            row[rng.integers(0, n_per_row)] = np.float32(-0.75)
        elif case == 9:
            row[0::32] = np.float32(1.0)
            row[1::32] = np.float32(-1.0)
        elif case == 10:
            row *= np.float32(1e30)
        elif case == 11:
            half = np.arange(n_per_row) % 32 < 16
            row[half] = 0
        elif case == 12:
            row *= np.float32(60000.0 / 0.08)
    # a few sprinkled exact zeros and sign-symmetric pairs everywhere
    zero_mask = rng.random((nrows, n_per_row)) < 0.02
    x[zero_mask] = 0
    if huge_scale != 1.0:
        x[HUGE_CASE::N_CASES] *= np.float32(huge_scale)
    return x


def importance(n_per_row: int, seed: int = 1) -> np.ndarray:
    """A positive, skewed importance vector (as llama-imatrix produces: mean squared activations),
    with a few zero entries and a few dominant columns."""
    rng = np.random.default_rng(seed)
    w = (rng.gamma(0.7, 1.0, n_per_row) ** 2).astype(np.float32)
    w[rng.choice(n_per_row, size=max(1, n_per_row // 50), replace=False)] = 0
    w[rng.choice(n_per_row, size=max(1, n_per_row // 100), replace=False)] *= np.float32(100.0)
    return w


def boundary_rows(nrows: int = 48, n: int = 512, seed: int = 9, spacing: int = 256) -> np.ndarray:
    """Weights on and one ulp either side of +-amax/2, where round-half-away-from-zero decides a
    ternary code, with amax a power of two or not, and -amax/+amax ties for the block maximum (one
    +-amax every ``spacing`` weights: the block size, so that every block holds its maximum)."""
    rng = np.random.default_rng(seed)
    x = np.empty((nrows, n), np.float32)
    for r in range(nrows):
        amax = np.float32(rng.choice([1.0, 0.75, 3.0, 1e-3, 0.1, 7.0 / 3.0]))
        half = np.float32(amax * np.float32(0.5))
        cands = np.array([half, np.nextafter(half, np.float32(0)), np.nextafter(half, np.float32(1e9)),
                          amax, -amax, np.float32(0), np.float32(-0.0)], np.float32)
        v = rng.choice(cands, n) * rng.choice(np.array([-1, 1], np.float32), n)
        v[::spacing] = amax if r % 2 else -amax
        x[r] = v
    return x


def special_scale_blocks(type_size: int, offsets: tuple[int, ...], seed: int = 17) -> np.ndarray:
    """uint8 [n_blocks, type_size]: random bytes, with the half-precision scales at byte ``offsets`` of
    each block (negative: from the block's end) set to every combination of SPECIAL_HALVES, one block
    each (16 blocks for one scale, 256 for two)."""
    import itertools

    combos = list(itertools.product(SPECIAL_HALVES, repeat=len(offsets)))
    out = np.random.default_rng(seed).integers(0, 256, (len(combos), type_size), dtype=np.uint8)
    for i, halves in enumerate(combos):
        for off, h in zip(offsets, halves):
            o = off % type_size
            out[i, o:o + 2] = (h & 0xFF, h >> 8)
    return out


def extreme_rows(kinds: tuple, n: int = 512, seed: int = 5) -> np.ndarray:
    """float32 [len(kinds), n]: finite rows that drive a quantizer into float32's degenerate arithmetic
    (scales with an infinite reciprocal, ranges that overflow: inf - inf, 0 * inf), one row per kind.

    A number s: a gaussian row times s (1e-39: denormal blocks; 1e38: overflowing sums). By name:
    '+-max' FLT_MAX by the sign of a gaussian row; 'max,0' FLT_MAX and 0 alternating; 'min,-max/32' a
    gaussian row with 1e-45 and -FLT_MAX at the start of every 32; '+-0' zeros of random sign; 'lone/B'
    zeros but for the smallest subnormal at 0 and its negative at 7 of every B; '1e38 clipped' a gaussian
    row times 1e38 in float64, clipped to +-3.4e38; '+-3e38' 3e38 and -3e38 alternating; '3.3e38' constant.
    Row i is built from the i-th of len(kinds) gaussian rows of default_rng(seed).
    """
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((len(kinds), n)).astype(np.float32)
    fmax = np.finfo(np.float32).max
    rows = []
    for kind, r in zip(kinds, g):
        r = r.copy()
        if not isinstance(kind, str):
            r = r * np.float32(kind)
        elif kind == "+-max":
            r = np.where(r > 0, fmax, -fmax).astype(np.float32)
        elif kind == "max,0":
            r[::2], r[1::2] = fmax, 0
        elif kind == "min,-max/32":
            r[::32], r[1::32] = np.float32(1e-45), -fmax
        elif kind == "+-0":
            r = np.where(r > 0, np.float32(0.0), np.float32(-0.0)).astype(np.float32)
        elif kind.startswith("lone/"):
            b = int(kind[5:])
            r[:] = 0
            r[::b], r[7::b] = np.float32(1e-45), -np.float32(1e-45)
        elif kind == "1e38 clipped":
            r = np.clip(r.astype(np.float64) * 1e38, -3.4e38, 3.4e38).astype(np.float32)
        elif kind == "+-3e38":
            r[:] = np.float32(3e38)
            r[::2] = np.float32(-3e38)
        elif kind == "3.3e38":
            r[:] = np.float32(3.3e38)
        else:
            raise ValueError(f"unknown extreme row kind {kind!r}")
        rows.append(r)
    x = np.stack(rows).astype(np.float32)
    assert np.isfinite(x).all()
    return x


#: edge_importance's kinds
EDGE_IMPORTANCE = ("zero", "ones", "tiny", "tiny uniform", "huge", "big", "one_hot", "zeroed sub-blocks")


def edge_importance(kind: str, n_per_row: int) -> np.ndarray:
    """float32 [n_per_row] importance vectors that drive the weighted searches into their degenerate
    branches: 'zero' (every weight 0: zero sums, 0/0, no trial ever taken), 'ones', 'tiny' (denormal
    scale, 1e-38 times importance()), 'tiny uniform' (uniform below 1e-30), 'huge' (1e30 times: w*x*q
    reaches inf), 'big' (1e6 times), 'one_hot' (a single non-zero weight), 'zeroed sub-blocks'
    (columns 16..47 without weight, 100..115 a million times heavier)."""
    n = n_per_row
    if kind == "zero":
        return np.zeros(n, np.float32)
    if kind == "ones":
        return np.ones(n, np.float32)
    if kind == "tiny":
        return importance(n, 21) * np.float32(1e-38)
    if kind == "tiny uniform":
        return (np.random.default_rng(21).random(n) * 1e-30).astype(np.float32)
    if kind == "huge":
        return importance(n, 22) * np.float32(1e30)
    if kind == "big":
        return importance(n, 22) * np.float32(1e6)
    if kind == "one_hot":
        return np.eye(1, n, 5, dtype=np.float32)[0]
    if kind == "zeroed sub-blocks":
        w = importance(n, 22)
        w[16:48] = 0
        w[100:116] *= np.float32(1e6)
        return w
    raise ValueError(f"unknown importance kind {kind!r}")
