"""IQ2_XXS, IQ2_XS and IQ2_S against ggml, bit for bit: quantize (IQ2_S also without an importance
vector), edge-case importance vectors, dequantize (also of random bytes), thread counts, golden vectors.

ggml aborts the process (iq2_find_best_neighbour: no distance below FLT_MAX) when weight*diff^2
overflows float32, and qtool raises QuantError there; so the inputs given to the oracle keep |x| well
below 1e19: hard_rows' 1e30 row is scaled down to ~1e13 and the importance vectors stay below ~1e6
times their usual size. IQ2_XXS alone gets through the 1e30 row in ggml, and must match there.
"""

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

import qtool.quantizers.iq2  # noqa: F401  (registers IQ2_XXS, IQ2_XS and IQ2_S)
from qtool.errors import QuantError
from qtool.quantizers import get
from qtool.testing import ggml, golden
from qtool.testing.data import hard_rows, importance
from qtool.testing.golden import dequantize_vs_ggml_report, mismatch_report, thread_count_report

oracle = pytest.mark.oracle
ROOT = Path(__file__).resolve().parents[1]
_HUGE_CASE = 10  # hard_rows' 1e30 row
TYPES = [T.IQ2_XXS, T.IQ2_XS, T.IQ2_S]
# (nrows, n_per_row, seed): every hard_rows case at least twice at each width
SHAPES = [(52, 256, 0), (39, 1024, 1), (26, 2048, 2)]
CASES = [(t, *s) for t in TYPES for s in SHAPES]


def oracle_rows(nrows: int, n_per_row: int, seed: int) -> np.ndarray:
    """hard_rows with the 1e30 case (row % 13 == 10) brought to ~1e13, where ggml does not abort."""
    x = hard_rows(nrows, n_per_row, seed)
    x[10::13] *= np.float32(1e-17)
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
@pytest.mark.parametrize("qtype,nrows,n_per_row,seed", CASES, ids=lambda v: getattr(v, "name", str(v)))
def test_quantize_matches_ggml(qtype, nrows, n_per_row, seed):
    """The importance-weighted path for all three; IQ2_S also with C's NULL (weights sigma2/4 + x^2)."""
    _need_oracle()
    x = oracle_rows(nrows, n_per_row, seed)
    _check(qtype, x, importance(n_per_row, seed + 100), f"imatrix seed {seed}")
    if qtype == T.IQ2_S:
        _check(qtype, x, None, f"null seed {seed}")


@oracle
def test_iq2_xxs_takes_huge_rows():
    """IQ2_XXS survives hard_rows' 1e30 row in ggml (inf weights end in make_qp_quants, not in the
    neighbour search): the unscaled rows must match too."""
    _need_oracle()
    for seed in (0, 1):
        _check(T.IQ2_XXS, hard_rows(26, 512, seed), importance(512, seed + 3), "unscaled hard rows")


@oracle
@pytest.mark.parametrize("kind", ["zero", "tiny", "big", "one_hot"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_edge_importance_vectors(qtype, kind):
    """All-zero weights (every neighbour distance 0: the first listed wins), denormal-scale, large
    and a single non-zero weight per row."""
    _need_oracle()
    n = 512
    imat = {
        "zero": np.zeros(n, np.float32),
        "tiny": importance(n, 21) * np.float32(1e-38),
        "big": importance(n, 22) * np.float32(1e6),
        "one_hot": np.eye(1, n, 5, dtype=np.float32)[0],
    }[kind]
    _check(qtype, oracle_rows(26, n, 4), imat, f"{kind} importance")


@oracle
@pytest.mark.parametrize("source", ["ggml", "random"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_dequantize_matches_ggml(qtype, source):
    """Bit-for-bit floats, on ggml's own output and on random bytes (NaN/Inf/subnormal halves, every
    grid index and sign pattern, IQ2_S's high index bits)."""
    _need_oracle()
    n_per_row = 1024
    if source == "ggml":
        data = ggml.quantize(qtype, oracle_rows(26, n_per_row, 7), importance(n_per_row, 8))
    else:
        block, size = GGML_QUANT_SIZES[qtype]
        data = np.random.default_rng(9).integers(0, 256, (64, n_per_row // block * size), dtype=np.uint8)
    report = dequantize_vs_ggml_report(qtype, data, n_per_row)
    assert not report, f"{qtype.name} dequantize ({source} bytes): {report}"


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_same_bytes_for_any_thread_count(qtype):
    x = oracle_rows(26, 1024, 11)
    imat = importance(1024, 12)
    for w in ([imat, None] if qtype == T.IQ2_S else [imat]):
        report = thread_count_report(qtype, x, w)
        assert not report, f"{qtype.name} imatrix={w is not None}: 1 thread vs 2 threads: {report}"


@pytest.mark.parametrize("qtype,path", [(T.IQ2_XS, "imatrix"), (T.IQ2_S, "imatrix"), (T.IQ2_S, "null")],
                         ids=lambda v: getattr(v, "name", str(v)))
def test_search_overflow_raises(qtype, path):
    """|x| ~ 1e30: every neighbour's weighted distance is inf or NaN, where ggml aborts the process
    (GGML_ASSERT(grid_index >= 0)); qtool names the tensor and the row instead."""
    x = hard_rows(13, 512, 0)
    imat = importance(512, 1) if path == "imatrix" else None
    with pytest.raises(QuantError, match=rf"^blk\.3\.ffn_up\.weight: {qtype.name} cannot quantize row {_HUGE_CASE} "):
        get(qtype).quantize(x, imat, name="blk.3.ffn_up.weight")


@oracle
@pytest.mark.parametrize("qtype", [T.IQ2_XS, T.IQ2_S], ids=lambda t: t.name)
def test_ggml_aborts_where_we_raise(qtype):
    """The rows qtool refuses are rows ggml aborts on (run in a child process: the abort kills it)."""
    _need_oracle()
    x = hard_rows(13, 512, 0)[_HUGE_CASE:_HUGE_CASE + 1]
    imat = importance(512, 1)
    with pytest.raises(QuantError):
        get(qtype).quantize(x, imat)
    code = ("import io, sys, numpy as np; from gguf import GGMLQuantizationType as T; from qtool.testing import ggml; "
            "z = np.load(io.BytesIO(sys.stdin.buffer.read())); "
            f"ggml.quantize(T.{qtype.name}, z['x'], z['w'])")
    buf = io.BytesIO()
    np.savez(buf, x=x, w=imat)
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
    if g.q is None:
        with pytest.raises(QuantError):
            q.quantize(g.rows)
    else:
        assert mismatch_report(q.quantize(g.rows), g.q, q.type_size) == ""
    assert mismatch_report(q.quantize(g.rows, g.imatrix), g.qi, q.type_size) == ""
    for data, want in ((g.q, g.dq), (g.qi, g.dqi)):
        if data is not None:
            assert mismatch_report(q.dequantize(data), want, 4 * q.block_size, "ggml's to_float") == ""


@pytest.mark.parametrize("qtype", [T.IQ2_XXS, T.IQ2_XS], ids=lambda t: t.name)
def test_importance_vector_is_required(qtype):
    """ggml refuses these types without one (GGML_ASSERT); so does qtool, with a QuantError."""
    with pytest.raises(QuantError):
        get(qtype).quantize(hard_rows(2, 256, 0))


def test_iq2_s_importance_vector_changes_the_result():
    """IQ2_S's weighted path is really taken (a regression to the NULL path would pass the thread test)."""
    x = oracle_rows(13, 512, 13)
    q = get(T.IQ2_S)
    assert not np.array_equal(q.quantize(x), q.quantize(x, importance(512, 14)))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_round_trip_error_is_bounded(qtype):
    """Independent of ggml: plain gaussian rows come back within ~2-bit accuracy of their RMS."""
    x = (np.random.default_rng(15).standard_normal((8, 512)) * 0.02).astype(np.float32)
    q = get(qtype)
    back = q.dequantize(q.quantize(x, np.ones(512, np.float32)))
    rel = np.sqrt(np.mean((back - x) ** 2)) / np.sqrt(np.mean(x ** 2))
    assert rel < 0.6, rel
