"""Numba kernels: arrays in, arrays and status out. Nothing here imports the rest of qtool.

Importing the package makes Numba's on-disk cache cheaper to load (see `_load_cached_without_refresh`).
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


LAZY_REFRESH = _load_cached_without_refresh()
