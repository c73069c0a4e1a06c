"""IQ2_XXS, IQ2_XS and IQ2_S beyond tests/test_identity.py (which compares them with ggml bit for bit:
hard rows with an importance vector, IQ2_S also without, edge-case importance vectors, ggml's and random
bytes, thread counts, the importance-vector flags; run it with -k IQ2): the unscaled 1e30 rows IQ2_XXS
takes, and the rows where ggml aborts and qtool raises (IQ3's too: the same neighbour search).

ggml aborts the process (iq2_find_best_neighbour: no distance below FLT_MAX) when weight*diff^2
overflows float32, and qtool raises QuantError there; so the inputs given to the oracle keep |x| well
below 1e19: hard_rows' 1e30 row is scaled down to ~1e13 (test_identity's huge_scale) and the importance
vectors stay below ~1e6 times their usual size.
IQ2_XXS alone gets through the 1e30 row in ggml, and must match there.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ggml_in_a_child
from gguf import GGMLQuantizationType as T

from qtool.errors import QuantError
from qtool.quantizers import get
from qtool.testing.data import HUGE_CASE, hard_rows, importance
from qtool.testing.golden import quantize_vs_ggml_report


def test_iq2_xxs_takes_huge_rows(oracle):
    """IQ2_XXS survives hard_rows' 1e30 row in ggml (inf weights end in make_qp_quants, not in the
    neighbour search): the unscaled rows must match too."""
    for seed in (0, 1):
        report = quantize_vs_ggml_report(T.IQ2_XXS, hard_rows(26, 512, seed), importance(512, seed + 3))
        assert not report, f"IQ2_XXS unscaled hard rows seed {seed}: {report}"


# the IQ2 and IQ3 neighbour searches alike (IQ2_XXS gets through, see above)
SEARCH_ABORTS = [(T.IQ2_XS, "imatrix"), (T.IQ2_S, "imatrix"), (T.IQ2_S, "null"), (T.IQ3_XXS, "null"),
                 (T.IQ3_XXS, "imatrix"), (T.IQ3_S, "null"), (T.IQ3_S, "imatrix")]
abort_ids = {"ids": lambda v: getattr(v, "name", str(v))}


@pytest.mark.parametrize("qtype,path", SEARCH_ABORTS, **abort_ids)
def test_search_overflow_raises(qtype, path):
    """|x| ~ 1e30: every neighbour's weighted distance is inf or NaN, where ggml aborts the process
    (GGML_ASSERT(grid_index >= 0)); qtool names the tensor and the row instead."""
    x = hard_rows(13, 512, 0)
    imat = importance(512, 1) if path == "imatrix" else None
    with pytest.raises(QuantError, match=rf"^blk\.3\.ffn_up\.weight: {qtype.name} cannot quantize row {HUGE_CASE} "):
        get(qtype).quantize(x, imat, name="blk.3.ffn_up.weight")


@pytest.mark.parametrize("qtype,path", SEARCH_ABORTS, **abort_ids)
def test_ggml_aborts_where_we_raise(oracle, qtype, path):
    """The rows qtool refuses are rows ggml aborts on (run in a child process: the abort kills it)."""
    x = hard_rows(13, 512, 0)[HUGE_CASE:HUGE_CASE + 1]
    imat = importance(512, 1) if path == "imatrix" else None
    with pytest.raises(QuantError):
        get(qtype).quantize(x, imat)
    res = ggml_in_a_child(qtype, x, imat)
    assert res.returncode != 0 and b"GGML_ASSERT(grid_index >= 0)" in res.stderr, res.stderr[-500:]


# Numba compiling for a CPU without AVX-512 (the features LLVM may use): haswell's
NO_AVX512 = "+64bit,+avx,+avx2,+sse4.2,+popcnt,+cx16,+bmi,+bmi2,+lzcnt,+movbe,+f16c"
_OTHER_PATH = """
import sys
import numpy as np
from gguf import GGMLQuantizationType as T
from numba.core.registry import cpu_target
from qtool.kernels.common import _has_avx512
from qtool.quantizers import get
from qtool.testing.data import hard_rows, importance
assert not _has_avx512(cpu_target.target_context), "compiled for AVX-512 after all"
x = hard_rows(16, 512, 5)
x[np.abs(x) > 1e20] = 0  # the 1e30 row overflows the IQ2_S search (test_search_overflow_raises)
sys.stdout.buffer.write(get(T.IQ2_S).quantize(x, None).tobytes())
sys.stdout.buffer.write(get(T.IQ1_S).quantize(x, importance(512, 6)).tobytes())
"""


def test_neighbour_scan_without_avx512(tmp_path):
    """The listed-point scan picks each coordinate's product by an AVX-512 permute where the code may use
    AVX-512, else by comparisons and selects: compiled for a CPU without it (NUMBA_CPU_NAME/FEATURES, a
    fresh cache), IQ2_S and IQ1_S give the bytes of this process (ggml's: test_identity)."""
    import numpy as np

    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES=NO_AVX512, NUMBA_CACHE_DIR=str(tmp_path))
    child = subprocess.run([sys.executable, "-c", _OTHER_PATH], capture_output=True, env=env, timeout=900)
    assert child.returncode == 0, child.stderr.decode()[-2000:]
    x = hard_rows(16, 512, 5)
    x[np.abs(x) > 1e20] = 0
    here = get(T.IQ2_S).quantize(x, None).tobytes() + get(T.IQ1_S).quantize(x, importance(512, 6)).tobytes()
    assert child.stdout == here
