"""Q1_0 and Q2_0 against ggml bit for bit: hard rows with and without importance vectors (ggml ignores
them), the blocks where their arithmetic is at its edges, dequantize of ggml's bytes, of random bytes and of
every kind of half-precision scale, thread counts. (Golden vectors: tests/test_golden.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from qtool.formats.ggml_types import ggml_type_named
from qtool.quantizers import get
from qtool.testing.data import hard_rows, importance
from qtool.testing.golden import dequantize_vs_ggml_report, mismatch_report, thread_count_report

TYPES = [T.Q1_0, ggml_type_named("Q2_0")]
# (nrows, n_per_row, seed): every hard_rows case many times, widths 128 .. 4096
SHAPES = [(130, 128, 0), (78, 512, 1), (39, 1536, 2), (26, 4096, 3)]
ids = {"ids": lambda t: t.name}


def _check(oracle, qtype, x, imatrix=None, what=""):
    q = get(qtype)
    with np.errstate(all="ignore"):
        want = oracle.quantize(qtype, x, imatrix)
    report = mismatch_report(q.quantize(x, imatrix), want, q.type_size)
    assert not report, f"{qtype.name} {what} {x.shape[0]}x{x.shape[1]}: {report}"


@pytest.mark.oracle
@pytest.mark.parametrize("nrows,n_per_row,seed", SHAPES)
@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_quantize_matches_ggml(oracle, qtype, nrows, n_per_row, seed):
    x = hard_rows(nrows, n_per_row, seed)
    _check(oracle, qtype, x, None, "without imatrix")
    _check(oracle, qtype, x, importance(n_per_row, seed + 100), "with imatrix")


@pytest.mark.oracle
@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_importance_vector_is_ignored_as_by_ggml(oracle, qtype):
    """ggml's quantize_q1_0/q2_0 take quant_weights and never read them: the bytes are the same with one."""
    x = hard_rows(26, 1024, 6)
    report = mismatch_report(oracle.quantize(qtype, x, importance(1024, 6)), oracle.quantize(qtype, x),
                             get(qtype).type_size, "ggml without imatrix")
    assert not report
    assert not get(qtype).uses_imatrix and not oracle.requires_imatrix(qtype)


def edge_rows(n: int = 512, seed: int = 5) -> np.ndarray:
    """Finite rows where the two types' arithmetic is at its edges: all-subnormal blocks (Q2_0's 1/amax
    overflows to inf), tiny normal blocks, FLT_MAX (Q1_0's sum of |x| overflows), signed zeros (the sign
    bit of -0.0), the smallest subnormal alone in a block of zeros."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((8, n)).astype(np.float32)
    fmax = np.finfo(np.float32).max
    rows = [g[0] * np.float32(1e-39), g[1] * np.float32(1e-44), g[2] * np.float32(1e38),
            np.where(g[3] > 0, fmax, -fmax).astype(np.float32), g[4] * np.float32(1e-37),
            g[5] * np.float32(3e-39),
            np.where(g[6] > 0, np.float32(0.0), np.float32(-0.0)).astype(np.float32)]
    r = np.zeros(n, np.float32)
    r[::64] = np.float32(1e-45)
    r[7::64] = -np.float32(1e-45)
    rows.append(r)
    return np.stack(rows)


def boundary_rows(nrows: int = 48, n: int = 512, seed: int = 9) -> np.ndarray:
    """Weights on and one ulp either side of +-amax/2, where roundf's half-away-from-zero decides Q2_0's
    code, with amax a power of two or not, and -amax/+amax ties for the block maximum."""
    rng = np.random.default_rng(seed)
    x = np.empty((nrows, n), np.float32)
    for r in range(nrows):
        amax = np.float32(rng.choice([1.0, 0.75, 3.0, 1e-3, 0.1, 7.0 / 3.0]))
        half = np.float32(amax * np.float32(0.5))
        cands = np.array([half, np.nextafter(half, np.float32(0)), np.nextafter(half, np.float32(1e9)),
                          amax, -amax, np.float32(0), np.float32(-0.0)], np.float32)
        v = rng.choice(cands, n) * rng.choice(np.array([-1, 1], np.float32), n)
        v[::64] = amax if r % 2 else -amax
        x[r] = v
    return x


@pytest.mark.oracle
@pytest.mark.parametrize("rows", [edge_rows, boundary_rows], ids=["edge", "boundary"])
@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_edge_and_boundary_blocks_match_ggml(oracle, qtype, rows):
    _check(oracle, qtype, rows(), None, rows.__name__)


# half-precision scales: +-0, subnormals, normals, +-inf, quiet and signalling NaNs of both signs
SPECIAL_HALVES = [0x0000, 0x8000, 0x0001, 0x83FF, 0x3C00, 0xC000, 0x7BFF, 0x7C00, 0xFC00,
                  0x7E00, 0xFE00, 0x7C01, 0xFDC0, 0x7F88, 0xFFA9, 0x3555]


@pytest.mark.oracle
@pytest.mark.parametrize("source", ["ggml", "random", "special scales"])
@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_dequantize_matches_ggml(oracle, qtype, source):
    """ggml's to_float bit for bit (NaN payloads and signed zeros count), Q2_0's never-written code 3
    included (random bytes)."""
    q = get(qtype)
    rng = np.random.default_rng(13)
    if source == "ggml":
        data = oracle.quantize(qtype, hard_rows(39, 1024, 11))
    else:
        data = rng.integers(0, 256, (64, 1024 // q.block_size * q.type_size), dtype=np.uint8)
        if source == "special scales":  # the scale is the first two bytes of each 18-byte block
            blocks = data.reshape(-1, q.type_size)
            scales = np.resize(np.array(SPECIAL_HALVES, np.uint16), blocks.shape[0])
            blocks[:, 0], blocks[:, 1] = scales & 0xFF, scales >> 8
    report = dequantize_vs_ggml_report(qtype, data, data.shape[1] // q.type_size * q.block_size)
    assert not report, f"{qtype.name} dequantize ({source} bytes): {report}"


@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_same_bytes_for_any_thread_count(qtype):
    report = thread_count_report(qtype, hard_rows(53, 1024, 21), importance(1024, 22))
    assert not report, f"{qtype.name}: 1 thread vs 2 threads: {report}"


def test_round_trip_is_what_the_formats_say():
    """Without the oracle: Q1_0 gives every weight its sign times the block's mean |x| (in half precision);
    Q2_0 gives -d, 0 or +d with d the block's largest |x|, each weight to the nearest of the three."""
    x = np.random.default_rng(31).standard_normal((8, 512)).astype(np.float32)
    q1 = get(T.Q1_0)
    y = q1.dequantize(q1.quantize(x)).reshape(-1, 128)
    b = x.reshape(-1, 128)
    total = np.cumsum(np.abs(b), axis=1, dtype=np.float32)[:, -1]  # in weight order, as ggml adds
    d = (total / np.float32(128)).astype(np.float16).astype(np.float32)
    assert np.array_equal(y, np.where(b >= 0, d[:, None], -d[:, None]))

    q2 = get(ggml_type_named("Q2_0"))
    y = q2.dequantize(q2.quantize(x)).reshape(-1, 64)
    b = x.reshape(-1, 64)
    amax = np.abs(b).max(axis=1, keepdims=True)
    d = amax.astype(np.float16).astype(np.float32)
    t = y / d
    assert np.isin(t, [-1.0, 0.0, 1.0]).all()
    assert (np.abs(b / amax - t) <= 0.5).all()


def test_what_if_takes_them_by_name():
    """inspect --what-if names types as the user writes them, Q2_0 too (not a gguf-py name)."""
    from qtool.analysis.whatif import parse_types

    assert [q.name for q in parse_types("q2_0, Q1_0")] == ["Q2_0", "Q1_0"]
