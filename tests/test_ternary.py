"""TQ1_0 and TQ2_0 beyond tests/test_identity.py (which compares them with ggml bit for bit: hard
rows, extreme and rounding-boundary rows, ggml's, random and special-scale bytes, thread counts): against
gguf-py's numpy quantizers; the ternary round trip; whole blocks only."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants as gq

from conftest import round_trip
from qtool.errors import QuantError
from qtool.quantizers import get
from qtool.testing.data import boundary_rows, hard_rows
from qtool.testing.golden import mismatch_report

TYPES = [T.TQ1_0, T.TQ2_0]
# (nrows, n_per_row, seed): 338 rows, every hard_rows case many times, widths 256 .. 4096
SHAPES = [(130, 256, 0), (78, 512, 1), (65, 1024, 2), (39, 2048, 3), (26, 4096, 4)]

ids = {"ids": lambda t: t.name}


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
    x, y = round_trip(qtype)
    blocks = x.reshape(-1, 256)
    d = np.abs(blocks).max(axis=1, keepdims=True).astype(np.float16).astype(np.float32)
    t = y.reshape(-1, 256) / d
    assert np.isin(t, [-1.0, 0.0, 1.0]).all()
    assert (np.abs(blocks / np.abs(blocks).max(axis=1, keepdims=True) - t) <= 0.5).all()


@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_row_length_must_be_whole_blocks(qtype):
    with pytest.raises(QuantError, match="block size 256"):
        get(qtype).quantize(np.zeros((2, 384), np.float32))
