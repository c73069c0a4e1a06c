"""The type registry: one quantizer per ggml type, sizes from gguf's table (qtool's own for the types gguf-py
lacks), input validation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

from qtool.errors import QuantError
from qtool.formats.ggml_types import QUANT_SIZES, ggml_type_named
from qtool.quantizers import Quantizer, get, registered
from qtool.quantizers.base import _REGISTRY

REG = registered()
ALL = list(REG)
ids = {"ids": lambda t: t.name}


def _rows(q: Quantizer, nrows: int = 4, nblocks: int = 2) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.standard_normal((nrows, q.block_size * max(nblocks, 32 // q.block_size))).astype(np.float32)


def _imatrix_for(q: Quantizer, n: int):
    return np.ones(n, np.float32) if q.requires_imatrix else None


def test_registry_is_keyed_by_type():
    assert T.F32 in REG and T.Q8_0 in REG
    assert list(REG) == sorted(REG)
    for t, q in REG.items():
        assert type(q).qtype == t and q.qtype == t and q.name == t.name


@pytest.mark.parametrize("qtype", ALL, **ids)
def test_a_second_registration_raises(qtype):
    before = dict(_REGISTRY)
    with pytest.raises(TypeError, match=f"{qtype.name} is registered twice"):
        type(f"Another{qtype.name}", (Quantizer,), {}, qtype=qtype)
    assert _REGISTRY == before  # the first registration stands


@pytest.mark.parametrize("qtype", ALL, **ids)
def test_sizes_come_from_gguf(qtype):
    q = REG[qtype]
    block, size = GGML_QUANT_SIZES[qtype] if isinstance(qtype, T) else QUANT_SIZES[qtype]
    assert (q.block_size, q.type_size) == (block, size)
    assert q.row_bytes(4 * block) == 4 * size
    assert q.nbytes((3, 5, 2 * block)) == 15 * 2 * size
    assert q.bits_per_weight == pytest.approx(8 * size / block)


@pytest.mark.parametrize("qtype", ALL, **ids)
def test_quantize_output_shape_and_dtype(qtype):
    q = REG[qtype]
    x = _rows(q)
    out = q.quantize(x.reshape(2, 2, -1), _imatrix_for(q, x.shape[1]))
    assert out.dtype == np.uint8 and out.shape == (2, 2, q.row_bytes(x.shape[1]))
    back = q.dequantize(out)
    assert back.dtype == np.float32 and back.shape == (2, 2, x.shape[1])


@pytest.mark.parametrize("qtype", ALL, **ids)
def test_quantizing_into_a_used_buffer_writes_every_byte(qtype):
    """into= gives the bytes a fresh array gets, over a buffer holding another tensor's bytes (convert reuses
    one): a kernel that skipped a byte would leave the old one there."""
    q = REG[qtype]
    x = _rows(q, nrows=5, nblocks=3)
    fresh = q.quantize(x, _imatrix_for(q, x.shape[1]))
    for fill in (0x00, 0xFF, 0x5A):
        buffer = np.full(fresh.nbytes + 7, fill, np.uint8)
        got = q.quantize(x, _imatrix_for(q, x.shape[1]), into=buffer)
        assert np.shares_memory(got, buffer) and got.shape == fresh.shape
        np.testing.assert_array_equal(got, fresh)
        assert (buffer[fresh.nbytes:] == fill).all()  # nothing written past the tensor
    with pytest.raises(ValueError, match="not .* contiguous bytes"):
        q.quantize(x, _imatrix_for(q, x.shape[1]), into=np.empty(fresh.nbytes - 1, np.uint8))


def test_get_by_name():
    assert get("q4_0") is REG[T.Q4_0] and get(T.Q8_0) is REG[T.Q8_0]
    assert get("q2_0") is REG[ggml_type_named("Q2_0")] is REG[42]  # a type gguf-py 0.19 has no name for
    with pytest.raises(QuantError, match="unknown ggml type 'Q9_9'"):
        get("Q9_9")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("qtype", ALL, **ids)
def test_non_finite_row_names_tensor_row_and_column(qtype, bad):
    q = REG[qtype]
    x = _rows(q, nrows=6)
    x[3, 5] = bad
    x[4, 1] = bad  # only the first bad row is named
    with pytest.raises(QuantError) as e:
        q.quantize(x, _imatrix_for(q, x.shape[1]), name="blk.0.ffn_up.weight")
    msg = str(e.value)
    assert "blk.0.ffn_up.weight" in msg and "row 3" in msg and "column 5" in msg


@pytest.mark.parametrize("qtype", [t for t in ALL if REG[t].block_size > 1], **ids)
def test_row_length_not_a_multiple_of_the_block(qtype):
    q = REG[qtype]
    n = q.block_size * 2 + q.block_size // 2
    with pytest.raises(QuantError) as e:
        q.quantize(np.zeros((3, n), np.float32), _imatrix_for(q, n), name="output.weight")
    msg = str(e.value)
    assert "output.weight" in msg and str(n) in msg and str(q.block_size) in msg and "[3, " in msg


@pytest.mark.parametrize("qtype", [t for t in ALL if REG[t].uses_imatrix], **ids)
def test_wrong_imatrix_length(qtype):
    q = REG[qtype]
    x = _rows(q)
    n = x.shape[1]
    for w in (np.ones(n - 1, np.float32), np.ones(n + q.block_size, np.float32), np.ones((2, n), np.float32)):
        with pytest.raises(QuantError, match="attn_q.weight: importance vector"):
            q.quantize(x, w, name="attn_q.weight")


@pytest.mark.parametrize("qtype", [t for t in ALL if REG[t].uses_imatrix], **ids)
def test_per_expert_imatrix_shape_is_checked(qtype):
    q = REG[qtype]
    x = _rows(q, nrows=6).reshape(3, 2, -1)
    n = x.shape[-1]
    q.quantize(x, np.ones((3, n), np.float32))  # one per expert: fine
    with pytest.raises(QuantError, match="per expert"):
        q.quantize(x, np.ones((2, n), np.float32), name="ffn_gate_exps.weight")


def test_empty_tensor_is_refused():
    with pytest.raises(QuantError, match="empty"):
        get("Q8_0").quantize(np.zeros((0, 32), np.float32), name="t")


@pytest.mark.parametrize("qtype", [t for t in ALL if REG[t].type_size > 1 and REG[t].block_size > 1], **ids)
def test_dequantize_rejects_partial_blocks(qtype):
    q = REG[qtype]
    with pytest.raises(QuantError, match="not a whole number"):
        q.dequantize(np.zeros((2, q.type_size + 1), np.uint8), name="t")


def test_family_of_names_the_module_that_registers_each_type():
    """FAMILY_OF (which lets a command import only the kernels it uses) agrees with the family modules."""
    import importlib

    from qtool.quantizers import FAMILY_OF, registered

    reg = registered()
    assert sorted(t.name for t in reg) == sorted(FAMILY_OF)
    for qtype, q in reg.items():
        module = importlib.import_module(f"qtool.quantizers.{FAMILY_OF[qtype.name]}")
        assert any(v is type(q) for v in vars(module).values()), (qtype.name, module.__name__)


def test_a_type_loads_only_its_own_family():
    code = ("import sys; from qtool.quantizers import get, can_quantize; import qtool.plan, qtool.convert\n"
            "from gguf import GGMLQuantizationType as T\n"
            "assert 'numba' not in sys.modules, 'planning imported numba'\n"
            "assert can_quantize(T.IQ2_XS) and not can_quantize(T.F64)\n"
            "get('Q8_0')\n"
            "loaded = sorted(m.rsplit('.', 1)[1] for m in sys.modules if m.startswith('qtool.kernels.'))\n"
            "print(' '.join(loaded))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    loaded = set(r.stdout.split())
    assert "legacy" in loaded and not loaded & {"iq1", "iq2", "iq3", "kquants16", "kquants32", "fp4"}, loaded
