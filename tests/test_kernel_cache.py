"""Loading kernels from Numba's cache without refreshing the whole target context (qtool.kernels)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from gguf import GGMLQuantizationType as T

from conftest import ROOT
from qtool.quantizers import get

CHILD = """
import sys, numpy as np
from gguf import GGMLQuantizationType as T
import qtool.kernels
from qtool.quantizers import get
x = np.random.default_rng(7).standard_normal((6, 512)).astype(np.float32)
out = [get(T.Q4_K).quantize(x).tobytes().hex(), get(T.Q8_0).quantize(x).tobytes().hex()]
loaded = 'numba.np.linalg' in sys.modules
import numba
@numba.njit
def median(a):
    return np.median(a)
print(qtool.kernels.LAZY_REFRESH, loaded, float(median(np.arange(5.0))))
print(*out)
"""


def _child() -> list[str]:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split("\n")


def test_cached_kernels_load_without_the_lowering_registries_and_give_the_same_bytes():
    x = np.random.default_rng(7).standard_normal((6, 512)).astype(np.float32)
    expected = [get(T.Q4_K).quantize(x).tobytes().hex(), get(T.Q8_0).quantize(x).tobytes().hex()]
    _child()  # the first child may compile into the cache; the second loads from it
    flags, blocks = _child()[:2]
    lazy, loaded, median = flags.split()
    assert lazy == "True"
    assert loaded == "False", "loading cached kernels imported Numba's lowering registries"
    assert float(median) == 2.0, "a fresh function no longer compiles after a lazy cache load"
    assert blocks.split() == expected
