"""IQ3_XXS and IQ3_S beyond tests/test_identity.py (which compares them with ggml bit for bit: both
quantize paths on hard rows whose 1e30 rows are scaled to ~1e8, edge-case importance vectors, ggml's and
random bytes, thread counts, the importance-vector flags; run it with -k IQ3): zero blocks between
non-zero ones against ggml. The inputs on which ggml's search aborts the process (qtool raises QuantError
there instead): test_iq2, one parametrization over IQ2 and IQ3. The round-trip error: test_identity too."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from qtool.testing.data import importance
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
