"""IQ4_NL and IQ4_XS against ggml, bit for bit: both quantize paths, edge-case importance vectors,
dequantize (also of random bytes), thread counts, and the stored golden vectors."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

import qtool.quantizers.iq4  # noqa: F401  (registers IQ4_NL and IQ4_XS)
from qtool.kernels import iq4 as ki
from qtool.quantizers import get
from qtool.testing import ggml, golden
from qtool.testing.data import hard_rows, importance
from qtool.testing.golden import dequantize_vs_ggml_report, mismatch_report, thread_count_report

oracle = pytest.mark.oracle
TYPES = [T.IQ4_NL, T.IQ4_XS]

# (nrows, n_per_row, seed) per type: widths multiples of the block, every hard_rows case several times
SHAPES = {
    T.IQ4_NL: [(130, 32, 0), (104, 96, 1), (65, 512, 2), (39, 4096, 3)],
    T.IQ4_XS: [(130, 256, 0), (104, 768, 1), (65, 1024, 2), (39, 4096, 3)],
}
CASES = [(t, *s) for t in TYPES for s in SHAPES[t]]


def _need_oracle():
    if not ggml.available():
        pytest.skip("llama-cpp-python (the ggml oracle) is not installed")


def _check(qtype, x, imat, what):
    ours = get(qtype).quantize(x, imat)
    ref = ggml.quantize(qtype, x, imat)
    assert ours.shape == ref.shape
    report = mismatch_report(ours, ref, GGML_QUANT_SIZES[qtype][1])
    assert not report, f"{qtype.name} {what} {x.shape[0]}x{x.shape[1]}: {report}"


@oracle
@pytest.mark.parametrize("path", ["null", "imatrix"])
@pytest.mark.parametrize("qtype,nrows,n_per_row,seed", CASES, ids=lambda v: getattr(v, "name", str(v)))
def test_quantize_matches_ggml(qtype, nrows, n_per_row, seed, path):
    """null: C's NULL quant_weights (ggml still weights by x^2); imatrix: weights qw*sqrt(sigma2 + x^2)."""
    _need_oracle()
    imat = importance(n_per_row, seed + 100) if path == "imatrix" else None
    _check(qtype, hard_rows(nrows, n_per_row, seed), imat, f"{path} seed {seed}")


@oracle
@pytest.mark.parametrize("kind", ["zero", "tiny", "huge", "one_hot"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_edge_importance_vectors(qtype, kind):
    """All-zero weights (0/0 in the scale search), denormal-scale, overflowing (w*q*x reaches inf) and
    a single non-zero weight per row."""
    _need_oracle()
    n = 1024
    imat = {
        "zero": np.zeros(n, np.float32),
        "tiny": importance(n, 21) * np.float32(1e-38),
        "huge": importance(n, 22) * np.float32(1e30),
        "one_hot": np.eye(1, n, 5, dtype=np.float32)[0],
    }[kind]
    for seed in (4, 5):
        _check(qtype, hard_rows(52, n, seed), imat, f"{kind} importance seed {seed}")


@oracle
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_codebook_search_edges(qtype):
    """Values on and between codebook entries and the midpoints between them, +-inf-scale magnitudes
    near float32's limits: the nearest-entry search must tie-break exactly as ggml's bisection."""
    _need_oracle()
    v = ki.KVALUES_IQ4NL.astype(np.float32)
    mids = (v[1:] + v[:-1]) / np.float32(2)
    pool = np.concatenate([v, -v, mids, np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, -np.inf),
                           np.float32([3e38, -3e38, 1e-40, -1e-45, 0.0])]).astype(np.float32)
    rng = np.random.default_rng(23)
    x = rng.choice(pool, (64, 512)).astype(np.float32) * rng.choice(np.float32([1, 1e-3, 2.0 ** -9]), (64, 1))
    x = x.astype(np.float32)
    x[~np.isfinite(x)] = 0
    for imat in (None, importance(512, 24)):
        _check(qtype, x, imat, "codebook edges")


@oracle
@pytest.mark.parametrize("source", ["ggml", "random"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_dequantize_matches_ggml(qtype, source):
    """Bit-for-bit floats, on ggml's own output and on random bytes (NaN/Inf/subnormal halves)."""
    _need_oracle()
    n_per_row = 1024
    if source == "ggml":
        data = ggml.quantize(qtype, hard_rows(26, n_per_row, 7), importance(n_per_row, 8))
    else:
        block, size = GGML_QUANT_SIZES[qtype]
        data = np.random.default_rng(9).integers(0, 256, (64, n_per_row // block * size), dtype=np.uint8)
    report = dequantize_vs_ggml_report(qtype, data, n_per_row)
    assert not report, f"{qtype.name} dequantize ({source} bytes): {report}"


@pytest.mark.parametrize("path", ["null", "imatrix"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_same_bytes_for_any_thread_count(qtype, path):
    x = hard_rows(26, 1024, 11)
    imat = importance(1024, 12) if path == "imatrix" else None
    report = thread_count_report(qtype, x, imat)
    assert not report, f"{qtype.name} {path}: 1 thread vs 2 threads: {report}"


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_golden_vectors(qtype):
    """ggml's stored bytes and floats (fixtures/golden), checked without llama-cpp-python."""
    g = golden.load(qtype)
    assert g is not None, f"run python fixtures/golden/make_golden.py {qtype.name}"
    q = get(qtype)
    assert mismatch_report(q.quantize(g.rows), g.q, q.type_size) == ""
    assert mismatch_report(q.quantize(g.rows, g.imatrix), g.qi, q.type_size) == ""
    for data, want in ((g.q, g.dq), (g.qi, g.dqi)):
        assert mismatch_report(q.dequantize(data), want, 4 * q.block_size, "ggml's to_float") == ""


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_importance_vector_changes_the_result(qtype):
    """The weighted path is really taken (a regression to the x^2 path would pass the thread test)."""
    x = hard_rows(13, 512, 13)
    q = get(qtype)
    assert not np.array_equal(q.quantize(x), q.quantize(x, importance(512, 14)))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_round_trip_error_is_small(qtype):
    """Independent of ggml: plain gaussian rows come back within a few percent of their RMS."""
    x = (np.random.default_rng(15).standard_normal((8, 512)) * 0.02).astype(np.float32)
    q = get(qtype)
    back = q.dequantize(q.quantize(x))
    rel = np.sqrt(np.mean((back - x) ** 2)) / np.sqrt(np.mean(x ** 2))
    assert rel < 0.12, rel


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
