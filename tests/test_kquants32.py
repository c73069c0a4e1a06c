"""Q4_K, Q5_K and Q8_K beyond tests/test_identity.py (which compares them with ggml bit for bit and bounds
their round-trip error): the scale searches' NULL-weights and scratch variants against their plain forms."""

from __future__ import annotations

import numpy as np
import pytest

from qtool.testing.data import hard_rows


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


PAIRED = ["Q4_K", "Q5_K"]


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("name", PAIRED)
def test_super_blocks_searched_in_pairs_match_one_at_a_time(name, weighted):
    """Q4_K and Q5_K search two super-blocks side by side, a row's odd last one alone: every super-block
    of a row of 1 to 5 must come out as it does quantized as a row of its own (ggml's blocks are
    independent), whichever neighbour it was paired with."""
    from qtool.quantizers import get
    from qtool.testing.data import importance

    q = get(name)
    for nsb in (1, 2, 3, 5):
        x = hard_rows(26, 256 * nsb, 40 + nsb)
        w = importance(256 * nsb, 7) if weighted else None
        whole = q.quantize(x, w)
        for s in range(nsb):
            alone = q.quantize(np.ascontiguousarray(x[:, 256 * s:256 * (s + 1)]),
                               None if w is None else w[256 * s:256 * (s + 1)])
            assert np.array_equal(whole[:, q.type_size * s:q.type_size * (s + 1)], alone), (nsb, s)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("name", PAIRED)
def test_odd_super_block_counts_match_ggml(oracle, name, weighted):
    """Rows of an odd number of super-blocks (the last one searched alone) against ggml."""
    from gguf import GGMLQuantizationType as T

    from qtool.testing.data import importance
    from qtool.testing.golden import quantize_vs_ggml_report

    for nsb in (1, 3, 5):
        x = hard_rows(26, 256 * nsb, 60 + nsb)
        report = quantize_vs_ggml_report(T[name], x, importance(256 * nsb, 9) if weighted else None)
        assert not report, (nsb, report)
