"""Every registered type against ggml's stored golden vectors: no llama-cpp-python needed.

A registered type without a golden file fails here (F32 excepted: it is a copy): generate one with
``python fixtures/golden/make_golden.py <TYPE>``.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from qtool.errors import QuantError
from qtool.formats.ggml_types import all_types, ggml_type_named
from qtool.quantizers import get, registered
from qtool.testing import golden
from qtool.testing.golden import mismatch_report

TYPES = [t for t in registered() if t != T.F32]


def _load(qtype):
    g = golden.load(qtype)
    if g is None:
        pytest.fail(f"{qtype.name} is registered but has no golden vectors: "
                    f"run python fixtures/golden/make_golden.py {qtype.name}")
    return g


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_quantize_without_imatrix(qtype):
    g = _load(qtype)
    q = get(qtype)
    if g.q is None:  # ggml refuses this type without an importance vector; so must we
        with pytest.raises(QuantError):
            q.quantize(g.rows)
        return
    assert mismatch_report(q.quantize(g.rows), g.q, q.type_size) == ""


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_quantize_with_imatrix(qtype):
    g = _load(qtype)
    q = get(qtype)
    assert mismatch_report(q.quantize(g.rows, g.imatrix), g.qi, q.type_size) == ""


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_dequantize(qtype):
    g = _load(qtype)
    q = get(qtype)
    for data, want in ((g.q, g.dq), (g.qi, g.dqi)):
        if data is None:
            continue
        got = q.dequantize(data)
        assert got.dtype == np.float32 and got.shape == want.shape
        # bit patterns, block by block: NaN payloads and signed zeros count
        assert mismatch_report(got, want, 4 * q.block_size, "ggml's to_float") == ""


def test_golden_files_are_for_known_types():
    """A stray or misnamed file would silently check nothing."""
    names = {t.name for t in all_types()}
    for p in sorted(golden.GOLDEN_DIR.glob("*.npz")):
        assert p.stem in names, p
        g = golden.load(ggml_type_named(p.stem))
        assert g.rows.shape == (golden.ROWS, golden.COLS) and g.rows.dtype == np.float32
        assert g.qi.dtype == np.uint8 and g.qi.shape[0] == golden.ROWS


def test_mismatch_report_names_blocks_and_bytes():
    a = np.arange(40, dtype=np.uint8).reshape(2, 20)
    assert mismatch_report(a, a.copy(), 10) == ""
    b = a.copy()
    b[1, 3] ^= 0xFF
    b[1, 15] ^= 0x01
    msg = mismatch_report(a, b, 10)
    # blocks of 10 bytes over the flat buffer: row 1 holds blocks 2 and 3
    assert msg.startswith("2 of 4 blocks differ; first bad block 2: 1 bytes differ")
    assert "[3] 0x17 vs 0xe8" in msg
    assert "sizes differ" in mismatch_report(a, a[:1], 10)
