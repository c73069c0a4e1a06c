"""Q2_K, Q3_K and Q6_K beyond tests/test_identity.py (which compares them with ggml bit for bit: hard rows
on both paths, extreme rows, odd importance vectors, dequantize, thread counts, round-trip error): the
all-zero block, the batched 16-sub-block searches against the one-block searches (make_qkx_quants_lanes, which
Q4_K and Q5_K use too, with their parameters)."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from qtool.kernels import kquants16 as kb
from qtool.quantizers import get
from qtool.testing.data import hard_rows, importance


QTYPES = [T.Q2_K, T.Q3_K, T.Q6_K]
NO_WEIGHTS = np.zeros(0, np.float32)


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda t: t.name)
def test_all_zero_rows_give_zero_blocks(qtype):
    """ggml writes an all-zero block for an all-zero super-block (d = 0, every scale 0)."""
    x = np.zeros((2, 512), np.float32)
    out = get(qtype).quantize(x)
    back = get(qtype).dequantize(out)
    assert not back.any()
    if qtype == T.Q6_K:  # quantize_row_q6_K memsets the whole block
        assert not out.any()


def _x16_arrays(ltype):
    """xt float32[16, 16] (x sub-block-minor), L ltype[256] and scales float32[16] of a batched search, and L1
    ltype[16], the one-block search's quants."""
    return np.empty((16, 16), np.float32), np.empty(256, ltype), np.empty(16, np.float32), np.empty(16, ltype)


def _assert_sub_block(b, j, s1, L1, scales, L):
    """Sub-block j of block b: the one-block search's scale s1 and quants L1 are the batched search's."""
    assert np.float32(s1).view(np.uint32) == scales[j].view(np.uint32), (b, j, s1, scales[j])
    assert np.array_equal(L1, L[16 * j:16 * j + 16]), (b, j, L1, L[16 * j:16 * j + 16])


@pytest.mark.parametrize("weighted", [False, True], ids=["x2", "importance"])
@pytest.mark.parametrize("nmax", [4, 32])
def test_batched_search_equals_one_block_search(nmax, weighted):
    """make_qx_quants_x16 (16 sub-blocks side by side) gives search.make_qx_quants' scales and quants
    bit for bit, sub-block by sub-block; no oracle needed."""
    from qtool.kernels.search import make_qx_quants

    x = hard_rows(26, 512, 41).reshape(-1, 256)
    w_all = np.resize(importance(512, 42), x.shape)
    xt, L, scales, L1 = _x16_arrays(np.int8)
    wt = np.empty((16, 16), np.float32)
    S = np.empty((2, 16), np.float32)
    for b, row in enumerate(x):
        with np.errstate(over="ignore"):  # the 1e30 rows: x^2 is inf in C as well
            w = w_all[b] if weighted else row * row
        xt[:] = row.reshape(16, 16).T
        wt[:] = w.reshape(16, 16).T
        kb.make_qx_quants_x16(nmax, xt, wt, L, scales, S)
        for j in range(16):
            qw = w_all[b, 16 * j:16 * j + 16] if weighted else NO_WEIGHTS
            s1 = make_qx_quants(16, nmax, row[16 * j:16 * j + 16], L1, 1, qw)
            _assert_sub_block(b, j, s1, L1, scales, L)


FIVE_PASSES = np.array([1030948904, 3207929511, 3212322081, 3203460988, 1056054383, 1050200068, 3204275476,
                        3163545867, 3208831905, 3203883925, 3189150341, 1046026283, 1050699815, 1059217652,
                        3206748876, 1064684098], np.uint32).view(np.float32)


def _sub_block_rows():
    """Super-blocks of hard data plus sub-block edge cases: flat, all-negative, one value, ties."""
    x = hard_rows(26, 512, 43).reshape(-1, 256)
    extra = np.zeros((4, 256), np.float32)
    extra[0, 0:16] = np.float32(-0.5)  # flat negative sub-block
    extra[0, 16:32] = np.float32(0.25)  # flat positive (min clamps to 0)
    extra[0, 32] = np.float32(1.0)
    extra[0, 48:64] = np.linspace(-1, 1, 16, dtype=np.float32)
    extra[0, 64:80] = -np.abs(np.linspace(-1, 1, 16, dtype=np.float32))
    extra[1, ::2] = np.float32(0.75)
    extra[1, 1::2] = np.float32(-0.75)
    # a sub-block whose make_q3_quants refinement still changes a quant in its fifth and last pass (found
    # by searching seeded gaussian sub-blocks: ~1 in 16,000 does); the rest of rows 2 and 3 are gaussian
    extra[2:] = np.random.default_rng(45).standard_normal((2, 256), dtype=np.float32)
    extra[2, 0:16] = FIVE_PASSES
    extra[3, 80:96] = -FIVE_PASSES
    return np.concatenate([x, extra])


#: (n, nmax, rmin, rdelta, nstep, use_mad) of make_qkx2_quants (Q2_K ref; Q4_K and Q5_K ref) and
#: make_qkx3_quants (the _impl paths) as the k-quants call them
QKX_CALLS = {"q2_K_ref": ("qkx2", 16, 3, -0.5, 0.1, 15, True), "q2_K_impl": ("qkx3", 16, 3, -0.9, 0.05, 36, False),
             "q4_K_ref": ("qkx2", 32, 15, -1.0, 0.1, 20, False), "q5_K_ref": ("qkx2", 32, 31, -0.5, 0.1, 15, False),
             "q4_K_impl": ("qkx3", 32, 15, -0.9, 0.05, 36, False), "q5_K_impl": ("qkx3", 32, 31, -0.9, 0.05, 36, False)}


@pytest.mark.parametrize("call", QKX_CALLS)
def test_batched_min_search_equals_one_block_search(call):
    """search.make_qkx_quants_lanes (16 blocks side by side, each lane its own chain of trials) gives
    search.make_qkx2_quants / make_qkx3_quants' scales, mins and quants bit for bit, with the parameters
    each k-quant uses."""
    from qtool.kernels.search import (SUB_LANES, make_qkx2_quants, make_qkx3_quants, make_qkx_quants_lanes,
                                      qkx_lanes_scratch)

    kind, n, nmax, rmin, rdelta, nstep, use_mad = QKX_CALLS[call]
    one = make_qkx2_quants if kind == "qkx2" else make_qkx3_quants
    rmin, rdelta = np.float32(rmin), np.float32(rdelta)
    x = _sub_block_rows().reshape(-1, SUB_LANES * n)
    w_all = np.resize(importance(512, 44), x.shape)
    L, L1, Laux = np.empty(SUB_LANES * n, np.uint8), np.empty(n, np.uint8), np.empty(n, np.uint8)
    scales, mins = np.empty(SUB_LANES, np.float32), np.empty(SUB_LANES, np.float32)
    scratch = qkx_lanes_scratch(n)
    for b, row in enumerate(x):
        with np.errstate(over="ignore", invalid="ignore"):  # the 1e30 rows overflow, as in C
            w = np.abs(row) if kind == "qkx2" else w_all[b] * np.sqrt(np.float32(0.01) + row * row)
        xt = np.ascontiguousarray(row.reshape(SUB_LANES, n).T)
        wt = np.ascontiguousarray(w.reshape(SUB_LANES, n).T)
        make_qkx_quants_lanes(n, nmax, xt, wt, rmin, rdelta, nstep, use_mad, kind == "qkx3", L, scales,
                              mins, scratch)
        for j in range(SUB_LANES):
            s1, m1 = one(n, nmax, row[n * j:n * j + n], w[n * j:n * j + n], L1, Laux, rmin, rdelta, nstep, use_mad)
            got = (scales[j].view(np.uint32), mins[j].view(np.uint32))
            assert (np.float32(s1).view(np.uint32), np.float32(m1).view(np.uint32)) == got, (b, j, s1, m1, scales[j], mins[j])
            assert np.array_equal(L1, L[n * j:n * j + n]), (b, j, L1, L[n * j:n * j + n])


def test_batched_q3_search_equals_one_block_search():
    """make_q3_quants_x16 gives search.make_q3_quants' scales and quants bit for bit (Q3_K's ref path)."""
    from qtool.kernels.search import make_q3_quants

    x = _sub_block_rows()
    xt, L, scales, L1 = _x16_arrays(np.int8)
    S = np.empty((4, 16), np.float32)
    Lt = np.empty((16, 16), np.int32)
    with np.errstate(over="ignore"):
        for b, row in enumerate(x):
            xt[:] = row.reshape(16, 16).T
            kb.make_q3_quants_x16(4, xt, L, scales, S, Lt)
            for j in range(16):
                s1 = make_q3_quants(16, 4, row[16 * j:16 * j + 16], L1, True)
                _assert_sub_block(b, j, s1, L1, scales, L)


def test_kernel_block_layouts_are_gguf_s():
    """The kernels' block sizes are the ones gguf's registry gives the types (was an import-time assert in
    qtool/quantizers/kquants.py, which made every import of it load these kernels)."""
    for qtype, nbytes in ((T.Q2_K, kb.Q2_K_BYTES), (T.Q3_K, kb.Q3_K_BYTES), (T.Q6_K, kb.Q6_K_BYTES)):
        assert get(qtype).type_size == nbytes, qtype.name
