"""Numba kernels: arrays in, arrays and status out. Nothing here imports the rest of qtool.

Importing the package makes Numba's on-disk cache cheaper to load (see `_load_cached_without_refresh`)
and its first call of a kernel cheaper to type (see `_type_arrays_without_numpy_ma`).
"""

from __future__ import annotations


def _load_cached_without_refresh() -> bool:
    """Load cached kernels without refreshing Numba's whole target context first.

    Before every cache load Numba refreshes its target context, and the first refresh imports some
    forty modules of lowering code (linalg, random, typed containers, jitclass...): about 0.1-0.15 s
    of every qtool process's start-up, though a cached kernel is machine code that needs none of it.
    What a cached kernel does need is Numba's runtime (NRT) linked in, so that stays. Every path
    that compiles still refreshes on its own (the compiler does, and lowering refreshes on a miss),
    so a cache miss compiles exactly as before. Where this Numba lacks the pieces, nothing changes.
    """
    try:
        from numba.core.caching import Cache
        from numba.core.runtime import rtsys
    except ImportError:
        return False
    if getattr(Cache, "_qtool_lazy_refresh", False):
        return True
    if not all(hasattr(Cache, name) for name in ("_load_overload", "_guard_against_spurious_io_errors")):
        return False
    if not hasattr(rtsys, "initialize"):
        return False

    def load_overload(self, sig, target_context):
        rtsys.initialize(target_context)
        with self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)

    Cache.load_overload = load_overload
    Cache._qtool_lazy_refresh = True
    return True


def _type_arrays_without_numpy_ma() -> bool:
    """Type an ndarray argument without importing numpy.ma.

    The first call of each kernel types its arguments in Python, and Numba's rule for arrays begins
    with ``isinstance(val, np.ma.MaskedArray)``: that attribute imports numpy.ma (~14 ms of start-up)
    in a process that never touches a masked array. While numpy.ma is not imported no array can be a
    masked one, so the array is typed by the same rule without that test; once it is, Numba's own
    rule does all of it.
    """
    try:
        import sys

        import numpy as np
        from numba.core import types
        from numba.core.typing import typeof as nb_typeof
        from numba.np import numpy_support
    except ImportError:
        return False
    impl = nb_typeof.typeof_impl
    numba_rule = impl.dispatch(np.ndarray)
    if getattr(numba_rule, "_qtool_plain", False):
        return True

    def typeof_array(val, c):
        if "numpy.ma" in sys.modules:
            return numba_rule(val, c)
        try:
            dtype = numpy_support.from_dtype(val.dtype)
        except Exception:  # noqa: BLE001 (Numba's own rule words the error)
            return numba_rule(val, c)
        return types.Array(dtype, val.ndim, numpy_support.map_layout(val), readonly=not val.flags.writeable)

    typeof_array._qtool_plain = True
    impl.register(np.ndarray)(typeof_array)
    return True


LAZY_REFRESH = _load_cached_without_refresh()
PLAIN_ARRAYS = _type_arrays_without_numpy_ma()
