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
mm = np.memmap(sys.argv[1], np.float32, "w+", shape=x.shape)
mm[:] = x
assert get(T.Q8_0).quantize(mm[2:]).tobytes().hex() == out[1][2 * 2 * 544:]  # a map's rows, as convert passes them
loaded = 'numba.np.linalg' in sys.modules
masked = 'numpy.ma' in sys.modules
import numba
@numba.njit
def median(a):
    return np.median(a)
@numba.njit
def arrays(n):  # reference counting: arrays made, kept in a list, dropped
    kept = [np.ones(3) * i for i in range(n)]
    return np.zeros(n).sum() + sum([a.sum() for a in kept])
assert arrays(4) == 18.0
print(qtool.kernels.LAZY_REFRESH, loaded, float(median(np.arange(5.0))), masked, qtool.kernels.RUNTIME_FROM)
print(*out)
from qtool.kernels.common import first_nonfinite_row
print(first_nonfinite_row._cache._cache_path)
"""


def _child(tmp_path) -> list[str]:
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "x.f32")], capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split("\n")


def test_cached_kernels_load_without_the_lowering_registries_and_give_the_same_bytes(tmp_path):
    x = np.random.default_rng(7).standard_normal((6, 512)).astype(np.float32)
    expected = [get(T.Q4_K).quantize(x).tobytes().hex(), get(T.Q8_0).quantize(x).tobytes().hex()]
    _child(tmp_path)  # the first child may compile into the cache; the second loads from it
    flags, blocks = _child(tmp_path)[:2]
    lazy, loaded, median, masked, runtime = flags.split()
    assert lazy == "True"
    assert runtime == "cache", "Numba's runtime functions were compiled again, not loaded from the cache"
    assert loaded == "False", "loading cached kernels imported Numba's lowering registries"
    assert masked == "False", "typing the kernels' arrays imported numpy.ma"
    assert float(median) == 2.0, "a fresh function no longer compiles after a lazy cache load"
    assert blocks.split() == expected


def test_a_damaged_runtime_cache_is_compiled_again(tmp_path):
    """A runtime blob cut short fails its checksum: the next process compiles the functions (and works) and
    writes the blob again, which the one after loads."""
    from pathlib import Path

    folder = Path(_child(tmp_path)[2])
    blobs = list(folder.glob("qtool-nrt-*.bin"))
    assert blobs, f"no runtime blob in {folder}"
    for b in blobs:
        b.write_bytes(b.read_bytes()[:-100])
    assert _child(tmp_path)[0].split()[4] == "compiled"
    assert _child(tmp_path)[0].split()[4] == "cache"


def test_arrays_are_typed_as_numba_types_them(tmp_path):
    """qtool's rule for plain ndarrays gives Numba's types (layout, dtype, read-only), and hands a masked
    array to Numba's own rule, which refuses it as before."""
    import numba
    from numba.core.typing.typeof import typeof

    import qtool.kernels

    assert qtool.kernels.PLAIN_ARRAYS
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    frozen = base.copy()
    frozen.flags.writeable = False
    for a, want in ((base, "array(float32, 2d, C)"), (base.T, "array(float32, 2d, F)"),
                    (base[:, ::2], "array(float32, 2d, A)"), (frozen, "readonly array(float32, 2d, C)"),
                    (np.zeros(3, np.uint8), "array(uint8, 1d, C)"), (np.zeros((), np.float64), "array(float64, 0d, C)"),
                    (np.memmap(tmp_path / "m", np.float32, "w+", shape=(2, 8))[1:], "array(float32, 2d, C)")):
        assert str(typeof(a)) == want
    try:
        typeof(np.ma.array([1.0]))
    except numba.core.errors.NumbaTypeError as e:
        assert "MaskedArray" in str(e)
    else:
        raise AssertionError("a masked array was typed")
