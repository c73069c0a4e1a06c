"""IQ1_S and IQ1_M beyond tests/test_identity.py (which compares them with ggml bit for bit: hard rows with
and without importance vectors, edge-case importance vectors, ggml's and random bytes, thread counts, the
importance-vector flags, round-trip error; run it with -k IQ1): sort ties and on-lattice rows against
ggml; the golden file's shape."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from qtool.testing import golden
from qtool.testing.data import importance
from qtool.testing.golden import quantize_vs_ggml_report

TYPES = [T.IQ1_S, T.IQ1_M]


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_ties_and_lattice_values(oracle, qtype):
    """Rows drawn from a few repeated values (sort ties: ggml's qsort keeps equal values in index order)
    and rows already on the lattice levels (+-delta), in many scales."""
    rng = np.random.default_rng(31)
    pool = np.float32([-1.125, -0.875, -0.125, 0.125, 0.875, 1.125, 0.0, 0.5, -0.5, 1.0, -1.0])
    x = rng.choice(pool, (40, 512)).astype(np.float32) * rng.choice(np.float32([1, 1e-3, 3.0, 2.0 ** -9]), (40, 1))
    x = x.astype(np.float32)
    for imat in (importance(512, 32), np.ones(512, np.float32)):
        report = quantize_vs_ggml_report(qtype, x, imat)
        assert not report, f"{qtype.name} ties, imatrix {'ones' if imat.min() == 1 else 'importance'}: {report}"


def test_golden_iq1_m_has_unweighted_vectors():
    assert golden.load(T.IQ1_M).q is not None and golden.load(T.IQ1_S).q is None
