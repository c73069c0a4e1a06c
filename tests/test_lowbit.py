"""Q1_0 and Q2_0 beyond tests/test_identity.py (hard rows with and without importance vectors, ggml's,
random and special-scale bytes, thread counts): the blocks where their arithmetic is at its edges, against
ggml bit for bit; what the formats say a round trip gives; naming in --what-if."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from qtool.formats.ggml_types import ggml_type_named
from qtool.quantizers import get
from qtool.testing.data import boundary_rows
from qtool.testing.golden import mismatch_report

TYPES = [T.Q1_0, ggml_type_named("Q2_0")]
ids = {"ids": lambda t: t.name}


def _check(oracle, qtype, x, imatrix=None, what=""):
    q = get(qtype)
    with np.errstate(all="ignore"):
        want = oracle.quantize(qtype, x, imatrix)
    report = mismatch_report(q.quantize(x, imatrix), want, q.type_size)
    assert not report, f"{qtype.name} {what} {x.shape[0]}x{x.shape[1]}: {report}"


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


@pytest.mark.oracle
@pytest.mark.parametrize("rows", [edge_rows, partial(boundary_rows, spacing=64)], ids=["edge", "boundary"])
@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_edge_and_boundary_blocks_match_ggml(oracle, qtype, rows, request):
    _check(oracle, qtype, rows(), None, request.node.callspec.id)


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
