"""Seeded weight-like data full of the cases that break quantizers.

Used by the oracle tests, the golden-vector generator and the benchmarks, so all three exercise the
same inputs.
"""

from __future__ import annotations

import numpy as np


def hard_rows(nrows: int, n_per_row: int, seed: int = 0) -> np.ndarray:
    """float32 [nrows, n_per_row]: gaussian rows with, per row, one of the hard cases mixed in.

    Cases (cycling over rows): plain gaussian; all zeros; tiny (1e-30, denormal-scale) values;
    one +-1e4 spike per 32; an outlier column band; heavy tails (student-t, df=2); values on
    quantization rounding boundaries (k + 0.5 multiples of a step); constant rows; rows with a
    single non-zero; mixed-sign blocks where |min| == |max|; huge magnitudes (1e30); half-zero
    blocks; values just below half-precision overflow.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((nrows, n_per_row)).astype(np.float32) * np.float32(0.02)
    n_cases = 13
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
    return x


def importance(n_per_row: int, seed: int = 1) -> np.ndarray:
    """A positive, skewed importance vector (as llama-imatrix produces: mean squared activations),
    with a few zero entries and a few dominant columns."""
    rng = np.random.default_rng(seed)
    w = (rng.gamma(0.7, 1.0, n_per_row) ** 2).astype(np.float32)
    w[rng.choice(n_per_row, size=max(1, n_per_row // 50), replace=False)] = 0
    w[rng.choice(n_per_row, size=max(1, n_per_row // 100), replace=False)] *= np.float32(100.0)
    return w
