"""TQ1_0 and TQ2_0 beyond tests/test_identity.py (hard rows, ggml's, random and special-scale bytes,
thread counts): degenerate and rounding-boundary blocks against ggml bit for bit; against gguf-py's
numpy quantizers; the ternary round trip; whole blocks only."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import need_oracle
from gguf import GGMLQuantizationType as T
from gguf import quants as gq

from qtool.errors import QuantError
from qtool.quantizers import get
from qtool.testing import ggml
from qtool.testing.data import boundary_rows, hard_rows
from qtool.testing.golden import mismatch_report

TYPES = [T.TQ1_0, T.TQ2_0]
# (nrows, n_per_row, seed): 338 rows, every hard_rows case many times, widths 256 .. 4096
SHAPES = [(130, 256, 0), (78, 512, 1), (65, 1024, 2), (39, 2048, 3), (26, 4096, 4)]

oracle = pytest.mark.oracle
ids = {"ids": lambda t: t.name}


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


@oracle
@pytest.mark.parametrize("rows", [extreme_rows, boundary_rows], ids=["extreme", "boundary"])
@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_degenerate_and_boundary_blocks_match_ggml(qtype, rows):
    need_oracle()
    x = rows()
    q = get(qtype)
    with np.errstate(all="ignore"):
        want = ggml.quantize(qtype, x)
    assert mismatch_report(q.quantize(x), want, q.type_size) == ""


@pytest.mark.parametrize("nrows,n_per_row,seed", SHAPES)
@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_matches_gguf_py(qtype, nrows, n_per_row, seed):
    """gguf-py's numpy TQ1_0/TQ2_0 are bit-exact with ggml's: a second oracle that needs no
    llama-cpp-python. Quantize, and dequantize of those bytes."""
    x = hard_rows(nrows, n_per_row, seed)
    q = get(qtype)
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
    q = get(qtype)
    assert mismatch_report(q.quantize(x), gq.quantize(x, qtype), q.type_size, "gguf-py") == ""


@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_round_trip_is_ternary(qtype):
    """Every dequantized weight is -d, 0 or +d with d the block's largest |x| in half precision, and
    each weight lands on the nearest of the three."""
    rng = np.random.default_rng(31)
    x = rng.standard_normal((8, 512)).astype(np.float32)
    q = get(qtype)
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
        get(qtype).quantize(np.zeros((2, 384), np.float32))
