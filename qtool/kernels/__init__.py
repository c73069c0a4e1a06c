"""Numba kernels: arrays in, arrays and status out. Nothing here imports the rest of qtool.

The first kernel module imported (they all import common.py, which calls `prepare_numba`) makes Numba's
on-disk cache cheaper to load (see `_load_cached_without_refresh`, `_runtime_from_cache`,
`_environments_without_numba_modules`, `_cache_folders_checked_once`), its first call of a kernel cheaper
to type (see `_type_arrays_without_numpy_ma`), and a cached kernel stale when any kernel source changed,
not only its own module (see `_stamps_cover_the_kernels`). The package itself imports no Numba: in a qtool
command, kernels a previous command stored run without it (kernels.native, and `__getattr__` below).
"""

from __future__ import annotations


#: how this process got Numba's runtime functions: "cache" (the blob beside the kernels), "compiled", or
#: None before the first kernel load
RUNTIME_FROM = None
_runtime_dir: list = []  # the cache folder of the kernel being loaded, for _runtime_from_cache


def _runtime_from_cache(ctx):
    """nrtdynmod.compile_nrt_functions, keeping the machine code in the kernels' cache folder.

    Every process that runs a Numba function first compiles Numba's runtime (NRT) functions from LLVM
    IR it builds in Python: ~27 ms of every qtool start-up. The result is a code library like any cached
    kernel's, so it is stored the way Numba stores theirs (object code plus bitcode for linking) and
    loaded from there (~4 ms). The file is named by Numba's and llvmlite's versions and the machine
    (Numba's own cache key for code), written whole under a temporary name, and carries a checksum;
    anything amiss and the functions are compiled as before.
    """
    import hashlib
    import os
    import pickle

    import llvmlite
    import numba
    from numba.core.runtime import nrtdynmod

    global RUNTIME_FROM
    codegen = ctx.codegen()
    folder = _runtime_dir[-1] if _runtime_dir else None
    key = hashlib.sha256(repr((numba.__version__, llvmlite.__version__, codegen.magic_tuple())).encode())
    path = os.path.join(folder, f"qtool-nrt-{key.hexdigest()[:20]}.bin") if folder else None
    if path is not None:
        try:
            payload = read_checked(path)
            if payload is not None:
                library = codegen.unserialize_library(pickle.loads(payload))
                RUNTIME_FROM = "cache"
                return library
        except Exception:  # noqa: BLE001 (unreadable or stale: compile it)
            pass
    ir_module, library = nrtdynmod.create_nrt_module(ctx)
    library.enable_object_caching()
    library.add_ir_module(ir_module)
    library.finalize()
    RUNTIME_FROM = "compiled"
    if path is not None:
        try:
            write_checked(path, pickle.dumps(library.serialize_using_object_code()))
        except Exception:  # noqa: BLE001 (a read-only cache folder: compile it next time too)
            pass
    return library


def read_checked(path: str) -> bytes | None:
    """The payload of a file `write_checked` wrote, or None where it is absent, unreadable or its checksum
    fails (the qtool files beside Numba's cache: the runtime blob above, kernels.native's store)."""
    import hashlib

    try:
        with open(path, "rb") as f:
            digest, payload = f.read(32), f.read()
    except OSError:
        return None
    return payload if hashlib.sha256(payload).digest() == digest else None


def write_checked(path: str, payload: bytes) -> None:
    """``payload`` behind its sha256, written whole under a temporary name in the same folder and renamed
    into place (a reader sees the old file or the new, never part of one), as readable as Numba's own
    cache files (mkstemp makes it 0600)."""
    import hashlib
    import os
    import tempfile

    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".qtool-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(hashlib.sha256(payload).digest() + payload)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _load_cached_without_refresh() -> bool:
    """Load cached kernels without refreshing Numba's whole target context first.

    Before every cache load Numba refreshes its target context, and the first refresh imports some
    forty modules of lowering code (linalg, random, typed containers, jitclass...): about 0.1-0.15 s
    of every qtool process's start-up, though a cached kernel is machine code that needs none of it.
    What a cached kernel does need is Numba's runtime (NRT) linked in, so that stays (its functions
    from the kernels' cache folder, see `_runtime_from_cache`). Every path that compiles still
    refreshes on its own (the compiler does, and lowering refreshes on a miss), so a cache miss
    compiles exactly as before. Where this Numba lacks the pieces, nothing changes.
    """
    try:
        from numba.core.caching import Cache
        from numba.core.runtime import nrtdynmod, rtsys
    except ImportError:
        return False
    if getattr(Cache, "_qtool_lazy_refresh", False):
        return True
    if not all(hasattr(Cache, name) for name in ("_load_overload", "_guard_against_spurious_io_errors")):
        return False
    if not hasattr(rtsys, "initialize"):
        return False
    if all(hasattr(nrtdynmod, name) for name in ("compile_nrt_functions", "create_nrt_module")):
        nrtdynmod.compile_nrt_functions = _runtime_from_cache

    def load_overload(self, sig, target_context):
        _runtime_dir.append(getattr(self, "_cache_path", None))
        try:
            rtsys.initialize(target_context)
        finally:
            _runtime_dir.pop()
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


def _environments_without_numba_modules() -> bool:
    """Rebuild a cached kernel's environments without importing Numba's library modules.

    A cached kernel carries the environments of the functions it calls; each names the module whose
    globals it holds, and Numba imports that module to rebuild it. A kernel that allocates (np.empty)
    calls Numba's own numba.np.arrayobj implementations, whose import pulls in Numba's string, hashing
    and sorting code: ~45 ms of every qtool start-up. Compiled nopython code reads an environment's
    constants, never its globals (only object-mode lowering does), so while such a module is not yet
    imported its environment gets a dict holding just the module's name: enough for Numba to cache
    code that calls it again. A qtool module, or one already imported, is rebuilt by Numba's own rule.
    """
    try:
        import sys

        from numba.core import environment
    except ImportError:
        return False
    numba_rule = getattr(environment, "_rebuild_env", None)
    if numba_rule is None or getattr(numba_rule, "_qtool_lazy", False):
        return numba_rule is not None
    if not all(hasattr(environment, name) for name in ("Environment", "lookup_environment")):
        return False

    def rebuild_env(modname, consts, env_name):
        if not (isinstance(modname, str) and modname.startswith("numba.") and modname not in sys.modules):
            return numba_rule(modname, consts, env_name)
        env = environment.lookup_environment(env_name)
        if env is not None:
            return env
        env = environment.Environment({"__name__": modname})
        env.consts[:] = consts
        env.env_name = env_name
        environment.Environment._memo[env_name] = env
        return env

    # Numba pickles an environment as a call of environment._rebuild_env, and its pickler stores a
    # function it cannot find by name whole: under Numba's name, cache files refer to the function
    # by name, this one where qtool is imported and Numba's own elsewhere
    rebuild_env.__module__, rebuild_env.__qualname__ = environment.__name__, "_rebuild_env"
    rebuild_env._qtool_lazy = True
    environment._rebuild_env = rebuild_env
    return True


def _cache_folders_checked_once() -> bool:
    """Check that a cache folder is writable once per process, not once per kernel.

    Numba's cache locators test a folder by creating and deleting a temporary file in it, for every
    jitted function as its module is imported: ~80 files for one type family, ~7 ms of start-up. A folder
    that passed is remembered; one that failed is tested again next time, as before.
    """
    try:
        from numba.core.caching import _CacheLocator
    except ImportError:
        return False
    numba_check = getattr(_CacheLocator, "ensure_cache_path", None)
    if numba_check is None or not hasattr(_CacheLocator, "get_cache_path"):
        return False
    if getattr(numba_check, "_qtool_once", False):
        return True
    passed: set = set()

    def ensure_cache_path(self):
        path = self.get_cache_path()
        if path not in passed:
            numba_check(self)
            passed.add(path)

    ensure_cache_path._qtool_once = True
    _CacheLocator.ensure_cache_path = ensure_cache_path
    return True


_folder_stamps: dict = {}
_sources: dict = {}
_modules: frozenset | None = None
_NOT_KERNELS = frozenset({"__init__.py", "native.py"})


def kernel_sources(folder: str) -> list[str]:
    """The kernel modules' .py files in ``folder`` (every .py but this file and native.py), listed once."""
    names = _sources.get(folder)
    if names is None:
        import os

        names = _sources[folder] = sorted(n for n in os.listdir(folder) if n.endswith(".py") and n not in _NOT_KERNELS)
    return names


def kernel_modules() -> frozenset:
    """The names of this package's kernel modules (the ones kernels.native may stand in for), made once."""
    global _modules
    if _modules is None:
        import os

        _modules = frozenset(n[:-3] for n in kernel_sources(os.path.dirname(os.path.abspath(__file__))))
    return _modules


def folder_stamp(folder: str) -> bytes:
    """A stamp of the folder's kernel sources: sha256 over the names, sizes and modification times of its .py
    files (an edit, a checkout or an install changes it), taken once per process (~0.1 ms; hashing their
    contents took ~3 ms). This file and native.py jit nothing and are left out."""
    stamp = _folder_stamps.get(folder)
    if stamp is None:
        import hashlib
        import os

        digest = hashlib.sha256()
        for name in kernel_sources(folder):
            st = os.stat(os.path.join(folder, name))
            digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        stamp = _folder_stamps[folder] = digest.digest()
    return stamp


def _stamps_cover_the_kernels() -> bool:
    """Stamp a cached kernel with every kernel source file, not only its own module's.

    Numba keeps a cached function while the source file that defines it is unchanged, but a kernel is
    machine code with the jitted functions it calls compiled in, and most of those live in other
    modules (common.py, search.py, lattice.py): an edit there left the callers' cached code stale in a
    working copy, so tests ran the old code. A function defined in this folder is now stamped with all of
    the folder's .py files (folder_stamp), so any edit recompiles the kernels on their next use in a new
    process. Functions elsewhere keep Numba's own stamp (a hash of their file).
    """
    try:
        import os
        import sys

        from numba.core import caching
    except ImportError:
        return False
    mixin = getattr(caching, "_SourceFileBackedLocatorMixin", None)
    numba_stamp = getattr(mixin, "get_source_stamp", None)
    if numba_stamp is None:
        return False
    if getattr(numba_stamp, "_qtool_folder", False):
        return True
    folder = os.path.dirname(os.path.abspath(__file__))

    def get_source_stamp(self):
        path = getattr(self, "_py_file", None)
        if getattr(sys, "frozen", False) or not isinstance(path, str) or \
                os.path.dirname(os.path.abspath(path)) != folder:
            return numba_stamp(self)
        return folder_stamp(folder)

    get_source_stamp._qtool_folder = True
    mixin.get_source_stamp = get_source_stamp
    return True


CACHE_FOLDERS_ONCE = LAZY_REFRESH = PLAIN_ARRAYS = LAZY_ENVIRONMENTS = STAMPS_COVER_KERNELS = False
_prepared: list = []


def prepare_numba() -> None:
    """Make Numba's cache cheaper to load, as above, once per process: called by common.py (which every
    kernel module imports) right after it imports Numba, before any kernel is jitted. Importing the package
    alone imports no Numba (kernels.native needs none)."""
    global CACHE_FOLDERS_ONCE, LAZY_REFRESH, PLAIN_ARRAYS, LAZY_ENVIRONMENTS, STAMPS_COVER_KERNELS
    if _prepared:
        return
    _prepared.append(True)
    CACHE_FOLDERS_ONCE = _cache_folders_checked_once()
    LAZY_REFRESH = _load_cached_without_refresh()
    PLAIN_ARRAYS = _type_arrays_without_numpy_ma()
    LAZY_ENVIRONMENTS = _environments_without_numba_modules()
    STAMPS_COVER_KERNELS = _stamps_cover_the_kernels()
    from qtool.kernels import native

    native.keep_serialized_code()


def __getattr__(name: str):
    """``from qtool.kernels import legacy`` in a process with stored kernels (kernels.native): the
    module's stand-in, which calls them without importing Numba. Otherwise the module itself imports."""
    if not name.startswith("_") and name in kernel_modules():
        from qtool.kernels import native

        stand_in = native.proxy(name)
        if stand_in is not None:
            return stand_in
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

