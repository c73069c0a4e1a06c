"""Q1_0 and Q2_0 beyond tests/test_identity.py (which compares them with ggml bit for bit: hard rows with
and without importance vectors, extreme and rounding-boundary rows, ggml's, random and special-scale
bytes, thread counts): what the formats say a round trip gives; naming in --what-if."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from qtool.formats.ggml_types import ggml_type_named
from qtool.quantizers import get


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
