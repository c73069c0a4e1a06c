"""IQ3_XXS and IQ3_S against ggml, bit for bit: both quantize paths, edge-case importance vectors,
dequantize (also of random bytes), thread counts, the stored golden vectors, and the inputs on which
ggml's search aborts the process (qtool raises QuantError there instead)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

import qtool.quantizers.iq3  # noqa: F401  (registers IQ3_XXS and IQ3_S)
from qtool.errors import QuantError
from qtool.quantizers import get
from qtool.testing import ggml, golden
from qtool.testing.data import hard_rows, importance
from qtool.testing.golden import dequantize_vs_ggml_report, mismatch_report, thread_count_report

oracle = pytest.mark.oracle
ROOT = Path(__file__).resolve().parents[1]
TYPES = [T.IQ3_XXS, T.IQ3_S]

# (nrows, n_per_row, seed): every hard_rows case at least twice; the grid searches are slow
SHAPES = [(26, 256, 0), (26, 512, 1), (13, 1024, 2), (13, 2048, 3)]
CASES = [(t, *s) for t in TYPES for s in SHAPES]

#: hard_rows' case 10 (1e30 magnitudes) overflows the grid search's distances to inf, where ggml
#: asserts and aborts the process: scaled to ~1e8 magnitudes, those rows stay large but finite.
_HUGE_CASE, _N_CASES = 10, 13


def _rows(nrows, n_per_row, seed):
    x = hard_rows(nrows, n_per_row, seed)
    x[_HUGE_CASE::_N_CASES] *= np.float32(1e-20)
    return x


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
    """null: C's NULL quant_weights (ggml weights by x^2); imatrix: weights qw*sqrt(sigma2 + x^2)."""
    _need_oracle()
    imat = importance(n_per_row, seed + 100) if path == "imatrix" else None
    _check(qtype, _rows(nrows, n_per_row, seed), imat, f"{path} seed {seed}")


@oracle
@pytest.mark.parametrize("kind", ["zero", "tiny", "huge", "one_hot"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_edge_importance_vectors(qtype, kind):
    """All-zero weights (no trial scale is ever taken), denormal-scale, overflowing (w*x*q reaches inf)
    and a single non-zero weight per row."""
    _need_oracle()
    n = 512
    imat = {
        "zero": np.zeros(n, np.float32),
        "tiny": importance(n, 21) * np.float32(1e-38),
        "huge": importance(n, 22) * np.float32(1e30),
        "one_hot": np.eye(1, n, 5, dtype=np.float32)[0],
    }[kind]
    x = _rows(26, n, 4)
    if kind == "huge":  # 1e30 weights on the ~1e8 rows overflow the search again (see the next test)
        x = np.delete(x, np.s_[_HUGE_CASE::_N_CASES], axis=0)
    _check(qtype, x, imat, f"{kind} importance")


@oracle
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_zero_blocks_between_non_zero_ones(qtype):
    """Whole 32-weight blocks of zeros: IQ3_S then writes the following blocks' indices and signs
    where the zero block's would have gone (ggml advances those pointers past quantized blocks only)."""
    _need_oracle()
    rng = np.random.default_rng(26)
    x = (rng.standard_normal((24, 512)) * 0.02).astype(np.float32)
    blocks = x.reshape(24, 16, 32)
    blocks[rng.random((24, 16)) < 0.4] = 0
    for imat in (None, importance(512, 27)):
        _check(qtype, x, imat, "zero blocks")


@oracle
@pytest.mark.parametrize("source", ["ggml", "random"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_dequantize_matches_ggml(qtype, source):
    """Bit-for-bit floats, on ggml's own output and on random bytes (every grid index, NaN/Inf halves)."""
    _need_oracle()
    n_per_row = 1024
    if source == "ggml":
        data = ggml.quantize(qtype, _rows(13, n_per_row, 7), importance(n_per_row, 8))
    else:
        block, size = GGML_QUANT_SIZES[qtype]
        data = np.random.default_rng(9).integers(0, 256, (64, n_per_row // block * size), dtype=np.uint8)
    report = dequantize_vs_ggml_report(qtype, data, n_per_row)
    assert not report, f"{qtype.name} dequantize ({source} bytes): {report}"


@pytest.mark.parametrize("path", ["null", "imatrix"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_same_bytes_for_any_thread_count(qtype, path):
    x = _rows(26, 512, 11)
    imat = importance(512, 12) if path == "imatrix" else None
    report = thread_count_report(qtype, x, imat)
    assert not report, f"{qtype.name} {path}: 1 thread vs 2 threads: {report}"


@pytest.mark.parametrize("path", ["null", "imatrix"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_search_overflow_raises(qtype, path):
    """|x| ~ 1e30: every neighbour's weighted distance is inf or NaN, where ggml aborts the process
    (GGML_ASSERT(grid_index >= 0)); qtool names the tensor and the row instead."""
    x = hard_rows(13, 512, 0)
    imat = importance(512, 1) if path == "imatrix" else None
    with pytest.raises(QuantError, match=rf"^blk\.3\.attn_v\.weight: {qtype.name} cannot quantize row {_HUGE_CASE} "):
        get(qtype).quantize(x, imat, name="blk.3.attn_v.weight")


@oracle
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_ggml_aborts_where_we_raise(qtype):
    """The rows qtool refuses are rows ggml aborts on (run in a child process: the abort kills it)."""
    _need_oracle()
    x = hard_rows(13, 512, 0)[_HUGE_CASE:_HUGE_CASE + 1]
    with pytest.raises(QuantError):
        get(qtype).quantize(x)
    code = ("import io, sys, numpy as np; from gguf import GGMLQuantizationType as T; from qtool.testing import ggml; "
            f"ggml.quantize(T.{qtype.name}, np.load(io.BytesIO(sys.stdin.buffer.read())))")
    buf = io.BytesIO()
    np.save(buf, x)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", code], input=buf.getvalue(), capture_output=True, env=env,
                         timeout=120)
    assert res.returncode != 0 and b"GGML_ASSERT(grid_index >= 0)" in res.stderr, res.stderr[-500:]


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_golden_vectors(qtype):
    """ggml's stored bytes and floats (fixtures/golden), checked without llama-cpp-python."""
    g = golden.load(qtype)
    assert g is not None, f"no fixtures/golden/{qtype.name}.npz"
    q = get(qtype)
    assert mismatch_report(q.quantize(g.rows), g.q, q.type_size) == ""
    assert mismatch_report(q.quantize(g.rows, g.imatrix), g.qi, q.type_size) == ""
    for data, want in ((g.q, g.dq), (g.qi, g.dqi)):
        assert mismatch_report(q.dequantize(data), want, 4 * q.block_size, "ggml's to_float") == ""


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_importance_vector_changes_the_result(qtype):
    """The weighted path is really taken (a regression to the x^2 path would pass the thread test)."""
    x = _rows(13, 512, 13)
    q = get(qtype)
    assert not np.array_equal(q.quantize(x), q.quantize(x, importance(512, 14)))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_round_trip_error_is_small(qtype):
    """Independent of ggml: plain gaussian rows come back within a modest fraction of their RMS."""
    x = (np.random.default_rng(15).standard_normal((8, 512)) * 0.02).astype(np.float32)
    q = get(qtype)
    back = q.dequantize(q.quantize(x))
    rel = np.sqrt(np.mean((back - x) ** 2)) / np.sqrt(np.mean(x ** 2))
    assert rel < 0.25, rel
