"""TQ1_0 and TQ2_0 against ggml bit for bit (quantize, dequantize of its blocks and of random bytes,
degenerate and rounding-boundary blocks, thread counts) and against gguf-py's numpy quantizers."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants as gq

import qtool.quantizers.ternary  # noqa: F401  (registers TQ1_0, TQ2_0)
from qtool.errors import QuantError
from qtool.quantizers.base import _REGISTRY
from qtool.testing import ggml, golden
from qtool.testing.data import hard_rows, importance
from qtool.testing.golden import mismatch_report

TYPES = [T.TQ1_0, T.TQ2_0]
# (nrows, n_per_row, seed): 338 rows, every hard_rows case many times, widths 256 .. 4096
SHAPES = [(130, 256, 0), (78, 512, 1), (65, 1024, 2), (39, 2048, 3), (26, 4096, 4)]

oracle = pytest.mark.oracle
ids = {"ids": lambda t: t.name}


def _q(qtype):
    # straight from the registry: qtool.quantizers does not import this family yet
    return _REGISTRY[qtype]


def _need_oracle():
    if not ggml.available():
        pytest.skip("llama-cpp-python (the ggml oracle) is not installed")


def extreme_rows(n: int = 512, seed: int = 5) -> np.ndarray:
    """Finite rows at the edges of ggml's arithmetic: all-subnormal blocks (1/amax overflows to inf),
    tiny normal blocks, magnitudes past half precision (d stored as inf), FLT_MAX, lone spikes."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((8, n)).astype(np.float32)
    fmax = np.finfo(np.float32).max
    rows = [g[0] * np.float32(1e-39), g[1] * np.float32(1e-44), g[2] * np.float32(1e38),
            np.where(g[3] > 0, fmax, -fmax).astype(np.float32), g[4] * np.float32(1e-37),
            g[5] * np.float32(3e-39)]
    r = g[6].copy()
    r[::2] = fmax
    r[1::2] = 0
    rows.append(r)
    r = np.zeros(n, np.float32)
    r[::256] = np.float32(1e-45)  # one smallest subnormal per block, the rest zeros
    r[7::256] = -np.float32(1e-45)
    rows.append(r)
    return np.stack(rows)


def boundary_rows(nrows: int = 48, n: int = 512, seed: int = 9) -> np.ndarray:
    """Weights on and one ulp either side of amax/2, where lroundf's half-away-from-zero decides, with
    amax a power of two or not, and -amax/+amax ties for the block maximum."""
    rng = np.random.default_rng(seed)
    x = np.empty((nrows, n), np.float32)
    for r in range(nrows):
        amax = np.float32(rng.choice([1.0, 0.75, 3.0, 1e-3, 0.1, 7.0 / 3.0]))
        half = np.float32(amax * np.float32(0.5))
        cands = np.array([half, np.nextafter(half, np.float32(0)), np.nextafter(half, np.float32(1e9)),
                          amax, -amax, np.float32(0), np.float32(-0.0)], np.float32)
        v = rng.choice(cands, n) * rng.choice(np.array([-1, 1], np.float32), n)
        v[::256] = amax if r % 2 else -amax
        x[r] = v
    return x


# half-precision bit patterns: +-0, subnormals, normals, +-inf, quiet and signalling NaNs of both signs
SPECIAL_HALVES = [0x0000, 0x8000, 0x0001, 0x83FF, 0x3C00, 0xC000, 0x7BFF, 0x7C00, 0xFC00,
                  0x7E00, 0xFE00, 0x7C01, 0xFDC0, 0x7F88, 0xFFA9, 0x3555]


@oracle
@pytest.mark.parametrize("nrows,n_per_row,seed", SHAPES)
@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_quantize_matches_ggml(qtype, nrows, n_per_row, seed):
    _need_oracle()
    x = hard_rows(nrows, n_per_row, seed)
    q = _q(qtype)
    assert mismatch_report(q.quantize(x), ggml.quantize(qtype, x), q.type_size) == ""


@oracle
@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_importance_vector_is_ignored_as_by_ggml(qtype):
    """ggml's quantize_tq*_0 drop quant_weights; an importance vector changes nothing on either side."""
    _need_oracle()
    x = hard_rows(26, 1024, 6)
    w = importance(1024, 6)
    q = _q(qtype)
    want = ggml.quantize(qtype, x, w)
    assert mismatch_report(want, ggml.quantize(qtype, x), q.type_size, "ggml without imatrix") == ""
    assert mismatch_report(q.quantize(x, w), want, q.type_size) == ""


@oracle
@pytest.mark.parametrize("rows", [extreme_rows, boundary_rows], ids=["extreme", "boundary"])
@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_degenerate_and_boundary_blocks_match_ggml(qtype, rows):
    _need_oracle()
    x = rows()
    q = _q(qtype)
    with np.errstate(all="ignore"):
        want = ggml.quantize(qtype, x)
    assert mismatch_report(q.quantize(x), want, q.type_size) == ""


def _special_scale_blocks(qtype) -> np.ndarray:
    """One block per SPECIAL_HALVES scale, random trit bytes (any byte value, past 242 included)."""
    q = _q(qtype)
    rng = np.random.default_rng(17)
    out = rng.integers(0, 256, (len(SPECIAL_HALVES), q.type_size), dtype=np.uint8)
    for i, d in enumerate(SPECIAL_HALVES):
        out[i, -2:] = (d & 0xFF, d >> 8)
    return out.reshape(4, -1)


@oracle
@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_dequantize_matches_ggml(qtype):
    """ggml's to_float bit for bit: on its own blocks, on random bytes, on every kind of scale."""
    _need_oracle()
    q = _q(qtype)
    n = 1024
    blocks = [ggml.quantize(qtype, hard_rows(39, n, 11)),
              np.random.default_rng(13).integers(0, 256, (64, n // 256 * q.type_size), dtype=np.uint8),
              _special_scale_blocks(qtype)]
    for data in blocks:
        got = q.dequantize(data)
        want = ggml.dequantize(qtype, data, data.shape[1] // q.type_size * 256)
        assert mismatch_report(got, want, 4 * 256, "ggml's to_float") == ""


@pytest.mark.parametrize("nrows,n_per_row,seed", SHAPES)
@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_matches_gguf_py(qtype, nrows, n_per_row, seed):
    """gguf-py's numpy TQ1_0/TQ2_0 are bit-exact with ggml's: a second oracle that needs no
    llama-cpp-python. Quantize, and dequantize of those bytes."""
    x = hard_rows(nrows, n_per_row, seed)
    q = _q(qtype)
    with np.errstate(all="ignore"):  # 1e30 rows: the scale overflows half precision, in both
        want = gq.quantize(x, qtype)
        got = q.quantize(x)
        assert mismatch_report(got, want, q.type_size, "gguf-py") == ""
        deq = gq.dequantize(want, qtype)
    ours = q.dequantize(want)
    assert mismatch_report(ours, deq, 4 * 256, "gguf-py") == ""


@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_boundary_blocks_match_gguf_py(qtype):
    x = boundary_rows()
    q = _q(qtype)
    assert mismatch_report(q.quantize(x), gq.quantize(x, qtype), q.type_size, "gguf-py") == ""


@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_thread_count_does_not_change_bytes(qtype):
    x = hard_rows(53, 1024, 21)
    q = _q(qtype)
    one = q.quantize(x, threads=1)
    two = q.quantize(x, threads=2)
    deq_one = q.dequantize(one, threads=1)
    deq_two = q.dequantize(one, threads=2)
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    assert mismatch_report(two, one, q.type_size, "1 thread") == ""
    assert mismatch_report(deq_two, deq_one, 4 * 256, "1 thread") == ""


@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_golden_vectors(qtype):
    """ggml's stored bytes and floats (fixtures/golden/<TYPE>.npz): identity without the oracle."""
    g = golden.load(qtype)
    assert g is not None, f"run python fixtures/golden/make_golden.py {qtype.name}"
    q = _q(qtype)
    assert mismatch_report(q.quantize(g.rows), g.q, q.type_size) == ""
    assert mismatch_report(q.quantize(g.rows, g.imatrix), g.qi, q.type_size) == ""
    for data, want in ((g.q, g.dq), (g.qi, g.dqi)):
        assert mismatch_report(q.dequantize(data), want, 4 * 256, "ggml's to_float") == ""


@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_round_trip_is_ternary(qtype):
    """Every dequantized weight is -d, 0 or +d with d the block's largest |x| in half precision, and
    each weight lands on the nearest of the three."""
    rng = np.random.default_rng(31)
    x = rng.standard_normal((8, 512)).astype(np.float32)
    q = _q(qtype)
    y = q.dequantize(q.quantize(x))
    assert y.shape == x.shape and y.dtype == np.float32
    blocks = x.reshape(-1, 256)
    d = np.abs(blocks).max(axis=1, keepdims=True).astype(np.float16).astype(np.float32)
    t = y.reshape(-1, 256) / d
    assert np.isin(t, [-1.0, 0.0, 1.0]).all()
    assert (np.abs(blocks / np.abs(blocks).max(axis=1, keepdims=True) - t) <= 0.5).all()


@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_row_length_must_be_whole_blocks(qtype):
    with pytest.raises(QuantError, match="block size 256"):
        _q(qtype).quantize(np.zeros((2, 384), np.float32))
