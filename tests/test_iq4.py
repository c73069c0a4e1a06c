"""IQ4_NL and IQ4_XS beyond tests/test_identity.py (hard rows on both paths, ggml's and random bytes,
edge-case importance vectors, thread counts, round-trip error): codebook-search edges against ggml bit for
bit; the nearest-entry search against ggml's bisection."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from qtool.kernels import iq4 as ki
from qtool.testing.data import importance
from qtool.testing.golden import quantize_vs_ggml_report

TYPES = [T.IQ4_NL, T.IQ4_XS]


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_codebook_search_edges(oracle, qtype):
    """Values on and between codebook entries and the midpoints between them, +-inf-scale magnitudes
    near float32's limits: the nearest-entry search must tie-break exactly as ggml's bisection."""
    v = ki.KVALUES_IQ4NL.astype(np.float32)
    mids = (v[1:] + v[:-1]) / np.float32(2)
    pool = np.concatenate([v, -v, mids, np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, -np.inf),
                           np.float32([3e38, -3e38, 1e-40, -1e-45, 0.0])]).astype(np.float32)
    rng = np.random.default_rng(23)
    x = rng.choice(pool, (64, 512)).astype(np.float32) * rng.choice(np.float32([1, 1e-3, 2.0 ** -9]), (64, 1))
    x = x.astype(np.float32)
    x[~np.isfinite(x)] = 0
    for imat in (None, importance(512, 24)):
        report = quantize_vs_ggml_report(qtype, x, imat)
        assert not report, f"{qtype.name} codebook edges, imatrix {imat is not None}: {report}"


def test_best_index_is_ggml_bisection():
    """The select-based search equals ggml's best_index_int8 bisection (written out here) everywhere
    that matters: on, between and at the midpoints of entries, beyond both ends, +-inf and NaN."""
    v = ki.KVALUES_IQ4NL_F32

    def bisect(x):
        if x <= v[0]:
            return 0
        if x >= v[15]:
            return 15
        ml, mu = 0, 15
        while mu - ml > 1:
            mav = (ml + mu) // 2
            if x < v[mav]:
                mu = mav
            else:
                ml = mav
        return mu - 1 if np.float32(x - v[mu - 1]) < np.float32(v[mu] - x) else mu

    mids = (v[1:] + v[:-1]) / np.float32(2)
    xs = np.concatenate([v, mids, np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(-np.inf)),
                         np.float32([-1e30, 1e30, np.inf, -np.inf, np.nan, 0.0, -0.0]),
                         np.random.default_rng(25).uniform(-140, 130, 2000).astype(np.float32)]).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        for x in xs:
            i = ki.best_index_iq4(v, x)
            assert i == bisect(x), (x, i)
            got = ki.nearest_value_iq4(v, x)
            assert np.float32(got).view(np.uint32) == v[i].view(np.uint32), (x, got)
