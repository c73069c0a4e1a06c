"""Q4_K, Q5_K and Q8_K against ggml, bit for bit: both quantize paths, dequantize, thread counts."""

from __future__ import annotations

import ctypes
import functools

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

from qtool.quantizers import get
from qtool.testing import ggml
from qtool.testing.data import hard_rows, importance
from qtool.testing.golden import mismatch_report

oracle = pytest.mark.oracle

# (nrows, n_per_row, seed): every row case of hard_rows appears at least twice overall
SHAPES = [(26, 256, 0), (26, 1024, 1), (13, 4096, 2), (39, 512, 3)]


def _need_oracle():
    if not ggml.available():
        pytest.skip("llama-cpp-python (the ggml oracle) is not installed")


@functools.lru_cache(maxsize=1)
def _q8_K_lib():
    """ggml_quantize_chunk rejects Q8_K (it aborts), so call its exported row functions directly."""
    lib = ctypes.CDLL(str(ggml.library_path()))
    for name in ("quantize_row_q8_K_ref", "dequantize_row_q8_K"):
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        fn.restype = None
    return lib


def _ggml_quantize(qtype, x, imatrix=None):
    if qtype != T.Q8_K:
        return ggml.quantize(qtype, x, imatrix)
    block, size = GGML_QUANT_SIZES[qtype]
    dst = np.zeros((x.shape[0], x.shape[1] // block * size), np.uint8)
    _q8_K_lib().quantize_row_q8_K_ref(x.ctypes.data, dst.ctypes.data, x.size)
    return dst


def _ggml_dequantize(qtype, data, n_per_row):
    if qtype != T.Q8_K:
        return ggml.dequantize(qtype, data, n_per_row)
    data = np.ascontiguousarray(data)
    out = np.empty((data.shape[0], n_per_row), np.float32)
    _q8_K_lib().dequantize_row_q8_K(data.ctypes.data, out.ctypes.data, out.size)
    return out


@oracle
@pytest.mark.parametrize("nrows,n_per_row,seed", SHAPES)
@pytest.mark.parametrize("path", ["ref", "imatrix", "zero_imatrix"])
@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q5_K])
def test_quantize_matches_ggml(qtype, path, nrows, n_per_row, seed):
    """ref: no importance vector (quantize_row_*_ref); imatrix: the _impl path; zero_imatrix: the _impl
    path with every weight zero (columns never activated: zero sums, 0/0 in the searches)."""
    _need_oracle()
    x = hard_rows(nrows, n_per_row, seed)
    imat = {"ref": None, "imatrix": importance(n_per_row, seed + 100),
            "zero_imatrix": np.zeros(n_per_row, np.float32)}[path]
    ours = get(qtype).quantize(x, imat)
    ref = _ggml_quantize(qtype, x, imat)
    assert ours.shape == ref.shape
    report = mismatch_report(ours, ref, GGML_QUANT_SIZES[qtype][1])
    assert not report, f"{qtype.name} {path} {nrows}x{n_per_row} seed {seed}: {report}"


@oracle
@pytest.mark.parametrize("nrows,n_per_row,seed", SHAPES)
def test_q8_K_matches_ggml(nrows, n_per_row, seed):
    _need_oracle()
    x = hard_rows(nrows, n_per_row, seed)
    ours = get(T.Q8_K).quantize(x)
    ref = _ggml_quantize(T.Q8_K, x)
    report = mismatch_report(ours, ref, GGML_QUANT_SIZES[T.Q8_K][1])
    assert not report, f"Q8_K {nrows}x{n_per_row} seed {seed}: {report}"


@oracle
@pytest.mark.parametrize("source", ["ggml", "random"])
@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q5_K, T.Q8_K])
def test_dequantize_matches_ggml(qtype, source):
    """Bit-for-bit equal floats, on ggml's own output and on random bytes (NaN/Inf/subnormal halves)."""
    _need_oracle()
    n_per_row = 1024
    x = hard_rows(26, n_per_row, 7)
    if source == "ggml":
        data = _ggml_quantize(qtype, x, importance(n_per_row, 8) if qtype != T.Q8_K else None)
    else:
        block, size = GGML_QUANT_SIZES[qtype]
        data = np.random.default_rng(9).integers(0, 256, (26, n_per_row // block * size), dtype=np.uint8)
    ours = get(qtype).dequantize(data)
    ref = _ggml_dequantize(qtype, data, n_per_row)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    # bit patterns block by block: NaN payloads and signed zeros count
    report = mismatch_report(ours, ref, 4 * get(qtype).block_size, "ggml's to_float")
    assert not report, f"{qtype.name} dequantize ({source} bytes): {report}"


@pytest.mark.parametrize("path", ["ref", "imatrix"])
@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q5_K, T.Q8_K])
def test_same_bytes_for_any_thread_count(qtype, path):
    if path == "imatrix" and not get(qtype).uses_imatrix:
        pytest.skip(f"{qtype.name} ignores the importance vector")
    x = hard_rows(26, 512, 11)
    imat = importance(512, 12) if path == "imatrix" else None
    q = get(qtype)
    one = q.quantize(x, imat, threads=1)
    two = q.quantize(x, imat, threads=2)
    report = mismatch_report(one, two, q.type_size)
    assert not report, f"{qtype.name} {path}: 1 thread vs 2 threads: {report}"
    report = mismatch_report(q.dequantize(one, threads=1), q.dequantize(one, threads=2), 4 * q.block_size, "2 threads")
    assert not report, f"{qtype.name} dequantize: 1 thread vs 2 threads: {report}"


@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q5_K])
def test_importance_vector_changes_the_result(qtype):
    """The imatrix path is really taken (a regression to the ref path would pass the thread test)."""
    x = hard_rows(13, 512, 13)
    q = get(qtype)
    assert not np.array_equal(q.quantize(x), q.quantize(x, importance(512, 14)))


@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q5_K, T.Q8_K])
def test_round_trip_error_is_small(qtype):
    """Independent of ggml: plain gaussian rows come back within a few percent of their RMS."""
    x = (np.random.default_rng(15).standard_normal((8, 512)) * 0.02).astype(np.float32)
    q = get(qtype)
    back = q.dequantize(q.quantize(x))
    rel = np.sqrt(np.mean((back - x) ** 2)) / np.sqrt(np.mean(x ** 2))
    assert rel < {T.Q4_K: 0.12, T.Q5_K: 0.06, T.Q8_K: 0.01}[qtype], rel


@pytest.mark.parametrize("use_mad", [False, True])
@pytest.mark.parametrize("n,nmax", [(32, 15), (16, 3), (32, 31)])
def test_qkx3_null_weights_mean_x_squared(n, nmax, use_mad):
    """make_qkx3_quants with C's NULL weights (no ggml caller to compare with) must equal passing x^2,
    and the scratch-taking variant must equal the allocating one."""
    from qtool.kernels import search

    x = hard_rows(26, n, 17)
    x[:, 0] = x[:, 1]  # some ties
    rmin, rdelta = np.float32(-0.9), np.float32(0.05)
    scratch = search.qkx_scratch(n)
    with np.errstate(over="ignore"):  # the 1e30 rows: x*x is inf, as in C
        squares = x * x
    for row, sq in zip(x, squares):
        L1, L2, L3, aux = (np.zeros(n, np.uint8) for _ in range(4))
        got = search.make_qkx3_quants(n, nmax, row, np.zeros(0, np.float32), L1, aux, rmin, rdelta, 36, use_mad)
        want = search.make_qkx3_quants(n, nmax, row, sq, L2, aux, rmin, rdelta, 36, use_mad)
        again = search.make_qkx3_quants_s(n, nmax, row, sq, L3, aux, rmin, rdelta, 36, use_mad, scratch)
        assert np.array(got).view(np.uint32).tolist() == np.array(want).view(np.uint32).tolist(), (row, got, want)
        assert np.array(again).view(np.uint32).tolist() == np.array(want).view(np.uint32).tolist()
        assert np.array_equal(L1, L2) and np.array_equal(L2, L3)


@pytest.mark.parametrize("weighted", [False, True])
def test_make_qx_quants_scratch_reuse(weighted):
    """One scratch reused across blocks (as the row drivers do) gives what a fresh one gives."""
    from qtool.kernels import search

    x = hard_rows(26, 32, 19)
    qw = np.abs(hard_rows(26, 32, 20)) if weighted else None
    scratch = search.qx_scratch(32)
    scratch[...] = np.nan  # stale garbage must not leak into a result
    for r, row in enumerate(x):
        w = qw[r] if weighted else np.zeros(0, np.float32)
        L1, L2 = np.zeros(32, np.int8), np.zeros(32, np.int8)
        a = search.make_qx_quants_s(32, 16, row, L1, 1, w, scratch)
        b = search.make_qx_quants(32, 16, row, L2, 1, w)
        assert np.float32(a).view(np.uint32) == np.float32(b).view(np.uint32) and np.array_equal(L1, L2), r
