"""Q2_K, Q3_K and Q6_K kernels against ggml, bit for bit: both quantize paths, dequantize, threads.

The kernels are called directly (drivers on plain arrays), so these tests hold whether or not the
registry classes exist yet.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

from qtool.kernels import kquants16 as kb
from qtool.testing import ggml
from qtool.testing.data import hard_rows, importance
from qtool.testing.golden import mismatch_report

oracle = pytest.mark.oracle

KERNELS = {
    T.Q2_K: (kb.quantize_q2_K, kb.dequantize_q2_K),
    T.Q3_K: (kb.quantize_q3_K, kb.dequantize_q3_K),
    T.Q6_K: (kb.quantize_q6_K, kb.dequantize_q6_K),
}
QTYPES = list(KERNELS)
NO_WEIGHTS = np.zeros(0, np.float32)

# (nrows, n_per_row, seed): 325 rows in all; every hard_rows case appears in each shape
SHAPES = [(104, 256, 0), (78, 1024, 1), (26, 4096, 2), (52, 512, 3), (65, 768, 4)]


def _need_oracle():
    if not ggml.available():
        pytest.skip("llama-cpp-python (the ggml oracle) is not installed")


def quantize(qtype, x, imatrix=None):
    n_per_row = x.shape[1]
    block, size = GGML_QUANT_SIZES[qtype]
    out = np.empty((x.shape[0], n_per_row // block * size), np.uint8)
    KERNELS[qtype][0](np.ascontiguousarray(x, np.float32), NO_WEIGHTS if imatrix is None else imatrix, out)
    return out


def dequantize(qtype, data):
    block, size = GGML_QUANT_SIZES[qtype]
    out = np.empty((data.shape[0], data.shape[1] // size * block), np.float32)
    KERNELS[qtype][1](data, out)
    return out


def float_report(ours: np.ndarray, ref: np.ndarray) -> str:
    diff = np.flatnonzero(ours.view(np.uint32).ravel() != ref.view(np.uint32).ravel())
    if diff.size == 0:
        return ""
    i = diff[0]
    return f"{diff.size} values differ; first at flat index {i}: {ours.ravel()[i]!r} vs ggml {ref.ravel()[i]!r}"


@oracle
@pytest.mark.parametrize("nrows,n_per_row,seed", SHAPES)
@pytest.mark.parametrize("path", ["ref", "imatrix"])
@pytest.mark.parametrize("qtype", QTYPES, ids=lambda t: t.name)
def test_quantize_matches_ggml(qtype, path, nrows, n_per_row, seed):
    _need_oracle()
    x = hard_rows(nrows, n_per_row, seed)
    imat = importance(n_per_row, seed + 100) if path == "imatrix" else None
    ours = quantize(qtype, x, imat)
    ref = ggml.quantize(qtype, x, imat)
    report = mismatch_report(ours, ref, GGML_QUANT_SIZES[qtype][1])
    assert not report, f"{qtype.name} {path} {nrows}x{n_per_row} seed {seed}: {report}"


def _odd_imatrix(kind: str, n: int) -> np.ndarray:
    if kind == "zeros":
        return np.zeros(n, np.float32)
    if kind == "ones":
        return np.ones(n, np.float32)
    if kind == "tiny":
        return (np.random.default_rng(21).random(n) * 1e-30).astype(np.float32)
    w = importance(n, 22)
    w[16:48] = 0  # whole sub-blocks without weight
    w[100:116] *= np.float32(1e6)
    return w


@oracle
@pytest.mark.parametrize("kind", ["zeros", "ones", "tiny", "zeroed_sub_blocks"])
@pytest.mark.parametrize("qtype", QTYPES, ids=lambda t: t.name)
def test_odd_importance_vectors_match_ggml(qtype, kind):
    """Degenerate weights drive the scale searches into their zero-sum and no-improvement branches."""
    _need_oracle()
    x = hard_rows(26, 512, 23)
    imat = _odd_imatrix(kind, 512)
    report = mismatch_report(quantize(qtype, x, imat), ggml.quantize(qtype, x, imat), GGML_QUANT_SIZES[qtype][1])
    assert not report, f"{qtype.name} imatrix={kind}: {report}"


def _extreme_rows(n: int) -> np.ndarray:
    """Finite rows on the edges of float32: near FLT_MAX with both signs (sums and scales overflow to
    inf and ggml divides by zero), subnormals, and values just above ggml's all-zero threshold."""
    rng = np.random.default_rng(31)
    g = rng.standard_normal((6, n)).astype(np.float32)
    x = np.empty((6, n), np.float32)
    x[0] = np.clip(g[0].astype(np.float64) * 1e38, -3.4e38, 3.4e38)
    x[1] = np.float32(3e38)
    x[1, ::2] = np.float32(-3e38)
    x[2] = g[2] * np.float32(1e-39)
    x[3] = g[3] * np.float32(1e-14)
    x[4] = np.float32(3.3e38)
    x[5] = g[5] * np.float32(1e19)
    assert np.isfinite(x).all()
    return x


@oracle
@pytest.mark.parametrize("path", ["ref", "imatrix"])
@pytest.mark.parametrize("qtype", QTYPES, ids=lambda t: t.name)
def test_extreme_finite_values_match_ggml(qtype, path):
    _need_oracle()
    x = _extreme_rows(512)
    imat = importance(512, 32) if path == "imatrix" else None
    report = mismatch_report(quantize(qtype, x, imat), ggml.quantize(qtype, x, imat), GGML_QUANT_SIZES[qtype][1])
    assert not report, f"{qtype.name} {path} extreme values: {report}"


@oracle
@pytest.mark.parametrize("source", ["ggml", "random"])
@pytest.mark.parametrize("qtype", QTYPES, ids=lambda t: t.name)
def test_dequantize_matches_ggml(qtype, source):
    """Bit-for-bit equal floats, on ggml's own output and on random bytes (NaN/Inf/subnormal halves)."""
    _need_oracle()
    n_per_row = 1024
    if source == "ggml":
        data = ggml.quantize(qtype, hard_rows(26, n_per_row, 7), importance(n_per_row, 8))
    else:
        block, size = GGML_QUANT_SIZES[qtype]
        data = np.random.default_rng(9).integers(0, 256, (26, n_per_row // block * size), dtype=np.uint8)
    report = float_report(dequantize(qtype, data), ggml.dequantize(qtype, data, n_per_row))
    assert not report, f"{qtype.name} dequantize ({source} bytes): {report}"


@pytest.mark.parametrize("path", ["ref", "imatrix"])
@pytest.mark.parametrize("qtype", QTYPES, ids=lambda t: t.name)
def test_same_bytes_for_any_thread_count(qtype, path):
    x = hard_rows(26, 512, 11)
    imat = importance(512, 12) if path == "imatrix" else None
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = quantize(qtype, x, imat)
        back_one = dequantize(qtype, one)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = quantize(qtype, x, imat)
        back_many = dequantize(qtype, one)
    finally:
        numba.set_num_threads(before)
    report = mismatch_report(one, many, GGML_QUANT_SIZES[qtype][1])
    assert not report, f"{qtype.name} {path}: 1 thread vs {numba.config.NUMBA_NUM_THREADS}: {report}"
    assert not float_report(back_one, back_many)


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda t: t.name)
def test_importance_vector_changes_the_result(qtype):
    """The imatrix path is really taken (a regression to the ref path would pass the thread test)."""
    x = hard_rows(13, 512, 13)
    assert not np.array_equal(quantize(qtype, x), quantize(qtype, x, importance(512, 14)))


@pytest.mark.parametrize("path", ["ref", "imatrix"])
@pytest.mark.parametrize("qtype", QTYPES, ids=lambda t: t.name)
def test_round_trip_error_is_small(qtype, path):
    """Independent of ggml: plain gaussian rows come back within the type's usual relative RMS error."""
    x = (np.random.default_rng(15).standard_normal((8, 512)) * 0.02).astype(np.float32)
    imat = importance(512, 16) if path == "imatrix" else None
    back = dequantize(qtype, quantize(qtype, x, imat))
    rel = np.sqrt(np.mean((back - x) ** 2)) / np.sqrt(np.mean(x ** 2))
    assert rel < {T.Q2_K: 0.36, T.Q3_K: 0.2, T.Q6_K: 0.03}[qtype], rel


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda t: t.name)
def test_all_zero_rows_give_zero_blocks(qtype):
    """ggml writes an all-zero block for an all-zero super-block (d = 0, every scale 0)."""
    x = np.zeros((2, 512), np.float32)
    out = quantize(qtype, x)
    back = dequantize(qtype, out)
    assert not back.any()
    if qtype == T.Q6_K:  # quantize_row_q6_K memsets the whole block
        assert not out.any()


@pytest.mark.parametrize("weighted", [False, True], ids=["x2", "importance"])
@pytest.mark.parametrize("nmax", [4, 32])
def test_batched_search_equals_one_block_search(nmax, weighted):
    """make_qx_quants_x16 (16 sub-blocks side by side) gives search.make_qx_quants' scales and quants
    bit for bit, sub-block by sub-block; no oracle needed."""
    from qtool.kernels.search import make_qx_quants

    x = hard_rows(26, 512, 41).reshape(-1, 256)
    w_all = np.resize(importance(512, 42), x.shape)
    xt = np.empty((16, 16), np.float32)
    wt = np.empty((16, 16), np.float32)
    wxt = np.empty((16, 16), np.float32)
    S = np.empty((7, 16), np.float32)
    L = np.empty(256, np.int8)
    scales = np.empty(16, np.float32)
    L1 = np.empty(16, np.int8)
    for b, row in enumerate(x):
        with np.errstate(over="ignore"):  # the 1e30 rows: x^2 is inf in C as well
            w = w_all[b] if weighted else row * row
        xt[:] = row.reshape(16, 16).T
        wt[:] = w.reshape(16, 16).T
        kb.make_qx_quants_x16(nmax, xt, wt, L, scales, S, wxt)
        for j in range(16):
            qw = w_all[b, 16 * j:16 * j + 16] if weighted else NO_WEIGHTS
            s1 = make_qx_quants(16, nmax, row[16 * j:16 * j + 16], L1, 1, qw)
            assert np.float32(s1).view(np.uint32) == scales[j].view(np.uint32), (b, j, s1, scales[j])
            assert np.array_equal(L1, L[16 * j:16 * j + 16]), (b, j, L1, L[16 * j:16 * j + 16])


def _sub_block_rows():
    """Super-blocks of hard data plus sub-block edge cases: flat, all-negative, one value, ties."""
    x = hard_rows(26, 512, 43).reshape(-1, 256)
    extra = np.zeros((2, 256), np.float32)
    extra[0, 0:16] = np.float32(-0.5)  # flat negative sub-block
    extra[0, 16:32] = np.float32(0.25)  # flat positive (min clamps to 0)
    extra[0, 32] = np.float32(1.0)
    extra[0, 48:64] = np.linspace(-1, 1, 16, dtype=np.float32)
    extra[0, 64:80] = -np.abs(np.linspace(-1, 1, 16, dtype=np.float32))
    extra[1, ::2] = np.float32(0.75)
    extra[1, 1::2] = np.float32(-0.75)
    return np.concatenate([x, extra])


@pytest.mark.parametrize("kind", ["qkx2", "qkx3"])
def test_batched_min_search_equals_one_block_search(kind):
    """make_qkx_quants_x16 gives search.make_qkx2_quants / make_qkx3_quants' scales, mins and quants
    bit for bit, with the parameters Q2_K uses."""
    from qtool.kernels.search import make_qkx2_quants, make_qkx3_quants

    one = make_qkx2_quants if kind == "qkx2" else make_qkx3_quants
    rmin, rdelta, nstep, use_mad = ((np.float32(-0.5), np.float32(0.1), 15, True) if kind == "qkx2"
                                    else (np.float32(-0.9), np.float32(0.05), 36, False))
    x = _sub_block_rows()
    w_all = np.resize(importance(512, 44), x.shape)
    xt, wt, lt, S = (np.empty((16, 16), np.float32) for _ in range(4))
    L = np.empty(256, np.uint8)
    scales = np.empty(16, np.float32)
    mins = np.empty(16, np.float32)
    L1 = np.empty(16, np.uint8)
    Laux = np.empty(16, np.uint8)
    for b, row in enumerate(x):
        with np.errstate(over="ignore", invalid="ignore"):  # the 1e30 rows overflow, as in C
            w = np.abs(row) if kind == "qkx2" else w_all[b] * np.sqrt(np.float32(0.01) + row * row)
        xt[:] = row.reshape(16, 16).T
        wt[:] = w.reshape(16, 16).T
        kb.make_qkx_quants_x16(3, xt, wt, L, scales, mins, rmin, rdelta, nstep, use_mad, kind == "qkx3", S, lt)
        for j in range(16):
            s1, m1 = one(16, 3, row[16 * j:16 * j + 16], w[16 * j:16 * j + 16], L1, Laux, rmin, rdelta, nstep, use_mad)
            got = (scales[j].view(np.uint32), mins[j].view(np.uint32))
            assert (np.float32(s1).view(np.uint32), np.float32(m1).view(np.uint32)) == got, (b, j, s1, m1, scales[j], mins[j])
            assert np.array_equal(L1, L[16 * j:16 * j + 16]), (b, j, L1, L[16 * j:16 * j + 16])


def test_batched_q3_search_equals_one_block_search():
    """make_q3_quants_x16 gives search.make_q3_quants' scales and quants bit for bit (Q3_K's ref path)."""
    from qtool.kernels.search import make_q3_quants

    x = _sub_block_rows()
    xt = np.empty((16, 16), np.float32)
    S = np.empty((4, 16), np.float32)
    Lt = np.empty((16, 16), np.int32)
    L = np.empty(256, np.int8)
    scales = np.empty(16, np.float32)
    L1 = np.empty(16, np.int8)
    with np.errstate(over="ignore"):
        for b, row in enumerate(x):
            xt[:] = row.reshape(16, 16).T
            kb.make_q3_quants_x16(4, xt, L, scales, S, Lt)
            for j in range(16):
                s1 = make_q3_quants(16, 4, row[16 * j:16 * j + 16], L1, True)
                assert np.float32(s1).view(np.uint32) == scales[j].view(np.uint32), (b, j, s1, scales[j])
                assert np.array_equal(L1, L[16 * j:16 * j + 16]), (b, j, L1, L[16 * j:16 * j + 16])
