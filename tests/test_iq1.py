"""IQ1_S and IQ1_M against ggml, bit for bit: hard rows with and without importance vectors, edge-case
importance vectors, dequantize (also of random bytes), thread counts, and the stored golden vectors."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

import qtool.quantizers.iq1  # noqa: F401  (registers IQ1_S and IQ1_M)
from qtool.errors import QuantError
from qtool.quantizers import get
from qtool.testing import ggml, golden
from qtool.testing.data import hard_rows, importance
from qtool.testing.golden import dequantize_vs_ggml_report, mismatch_report, thread_count_report

oracle = pytest.mark.oracle
TYPES = [T.IQ1_S, T.IQ1_M]
# (nrows, n_per_row, seed): every hard_rows case several times, widths 256..2048
SHAPES = [(52, 256, 0), (39, 768, 1), (26, 2048, 2)]
#: IQ1_S has no NULL path (ggml requires an importance vector; see test_iq1_s_without_importance_is_refused)
CASES = [(t, *s, path) for t in TYPES for s in SHAPES for path in ("null", "imatrix")
         if not (t == T.IQ1_S and path == "null")]


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
@pytest.mark.parametrize("qtype,nrows,n_per_row,seed,path", CASES, ids=lambda v: getattr(v, "name", str(v)))
def test_quantize_matches_ggml(qtype, nrows, n_per_row, seed, path):
    """null: C's NULL quant_weights (IQ1_M then weights by x^2); imatrix: qw*sqrt(sigma2 + x^2)."""
    _need_oracle()
    imat = importance(n_per_row, seed + 100) if path == "imatrix" else None
    _check(qtype, hard_rows(nrows, n_per_row, seed), imat, f"{path} seed {seed}")


@oracle
@pytest.mark.parametrize("kind", ["zero", "tiny", "huge", "one_hot"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_edge_importance_vectors(qtype, kind):
    """All-zero weights (no split scores), denormal-scale, overflowing and a single non-zero weight."""
    _need_oracle()
    n = 512
    imat = {
        "zero": np.zeros(n, np.float32),
        "tiny": importance(n, 21) * np.float32(1e-38),
        "huge": importance(n, 22) * np.float32(1e30),
        "one_hot": np.eye(1, n, 5, dtype=np.float32)[0],
    }[kind]
    for seed in (4, 5):
        _check(qtype, hard_rows(26, n, seed), imat, f"{kind} importance seed {seed}")


@oracle
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_ties_and_lattice_values(qtype):
    """Rows drawn from a few repeated values (sort ties: ggml's qsort keeps equal values in index order)
    and rows already on the lattice levels (+-delta), in many scales."""
    _need_oracle()
    rng = np.random.default_rng(31)
    pool = np.float32([-1.125, -0.875, -0.125, 0.125, 0.875, 1.125, 0.0, 0.5, -0.5, 1.0, -1.0])
    x = rng.choice(pool, (40, 512)).astype(np.float32) * rng.choice(np.float32([1, 1e-3, 3.0, 2.0 ** -9]), (40, 1))
    x = x.astype(np.float32)
    for imat in (importance(512, 32), np.ones(512, np.float32)):
        _check(qtype, x, imat, "ties")


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


@oracle
def test_requires_imatrix_as_ggml():
    _need_oracle()
    for qtype in TYPES:
        assert get(qtype).requires_imatrix == ggml.requires_imatrix(qtype), qtype.name


def test_iq1_s_without_importance_is_refused():
    with pytest.raises(QuantError, match="importance"):
        get(T.IQ1_S).quantize(hard_rows(2, 256, 0))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_same_bytes_for_any_thread_count(qtype):
    x = hard_rows(26, 1024, 11)
    imat = importance(1024, 12)
    report = thread_count_report(qtype, x, imat)
    assert not report, f"{qtype.name}: 1 thread vs 2 threads: {report}"


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_golden_vectors(qtype):
    """ggml's stored bytes and floats (fixtures/golden), checked without llama-cpp-python."""
    g = golden.load(qtype)
    assert g is not None, f"run python fixtures/golden/make_golden.py {qtype.name}"
    q = get(qtype)
    if g.q is not None:
        assert mismatch_report(q.quantize(g.rows), g.q, q.type_size) == ""
        assert mismatch_report(q.dequantize(g.q), g.dq, 4 * q.block_size, "ggml's to_float") == ""
    assert mismatch_report(q.quantize(g.rows, g.imatrix), g.qi, q.type_size) == ""
    assert mismatch_report(q.dequantize(g.qi), g.dqi, 4 * q.block_size, "ggml's to_float") == ""


def test_golden_iq1_m_has_unweighted_vectors():
    assert golden.load(T.IQ1_M).q is not None and golden.load(T.IQ1_S).q is None


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_round_trip_error_is_bounded(qtype):
    """Independent of ggml: gaussian rows come back correlated with the input (1.5-1.75 bits)."""
    x = (np.random.default_rng(15).standard_normal((8, 512)) * 0.02).astype(np.float32)
    q = get(qtype)
    back = q.dequantize(q.quantize(x, np.ones(512, np.float32)))
    rel = np.sqrt(np.mean((back - x) ** 2)) / np.sqrt(np.mean(x ** 2))
    assert rel < 0.8, rel
