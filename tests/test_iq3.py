"""IQ3_XXS and IQ3_S beyond tests/test_identity.py (which compares them with ggml bit for bit: both
quantize paths on hard rows whose 1e30 rows are scaled to ~1e8, edge-case importance vectors, ggml's and
random bytes, thread counts, the importance-vector flags; run it with -k IQ3): zero blocks between
non-zero ones against ggml, the inputs on which ggml's search aborts the process (qtool raises QuantError
there instead). The round-trip error: test_identity too."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ggml_in_a_child
from gguf import GGMLQuantizationType as T

from qtool.errors import QuantError
from qtool.quantizers import get
from qtool.testing.data import HUGE_CASE, hard_rows, importance
from qtool.testing.golden import quantize_vs_ggml_report

TYPES = [T.IQ3_XXS, T.IQ3_S]


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_zero_blocks_between_non_zero_ones(oracle, qtype):
    """Whole 32-weight blocks of zeros: IQ3_S then writes the following blocks' indices and signs
    where the zero block's would have gone (ggml advances those pointers past quantized blocks only)."""
    rng = np.random.default_rng(26)
    x = (rng.standard_normal((24, 512)) * 0.02).astype(np.float32)
    blocks = x.reshape(24, 16, 32)
    blocks[rng.random((24, 16)) < 0.4] = 0
    for imat in (None, importance(512, 27)):
        report = quantize_vs_ggml_report(qtype, x, imat)
        assert not report, f"{qtype.name} zero blocks, imatrix {imat is not None}: {report}"


@pytest.mark.parametrize("path", ["null", "imatrix"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_search_overflow_raises(qtype, path):
    """|x| ~ 1e30: every neighbour's weighted distance is inf or NaN, where ggml aborts the process
    (GGML_ASSERT(grid_index >= 0)); qtool names the tensor and the row instead."""
    x = hard_rows(13, 512, 0)
    imat = importance(512, 1) if path == "imatrix" else None
    with pytest.raises(QuantError, match=rf"^blk\.3\.attn_v\.weight: {qtype.name} cannot quantize row {HUGE_CASE} "):
        get(qtype).quantize(x, imat, name="blk.3.attn_v.weight")


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_ggml_aborts_where_we_raise(oracle, qtype):
    """The rows qtool refuses are rows ggml aborts on (run in a child process: the abort kills it)."""
    x = hard_rows(13, 512, 0)[HUGE_CASE:HUGE_CASE + 1]
    with pytest.raises(QuantError):
        get(qtype).quantize(x)
    res = ggml_in_a_child(qtype, x)
    assert res.returncode != 0 and b"GGML_ASSERT(grid_index >= 0)" in res.stderr, res.stderr[-500:]
