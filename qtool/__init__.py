"""qtool: convert models to GGUF byte-identically to ggml, and inspect where quantization hurt.

Importing the package makes two dependencies cheaper to start (see `_gguf_on_demand`, `_StandIns`):
every qtool command pays for its imports before its first tensor.
"""

__version__ = "0.1.0"

import importlib as _importlib
import importlib.util as _importlib_util
import os as _os
import sys as _sys
import threading as _threading
import types as _types


def _gguf_on_demand() -> bool:
    """Register the ``gguf`` package without running its ``__init__`` until a name needs it.

    gguf's ``__init__`` imports every module of the package, with sentencepiece (its vocabulary
    helpers), yaml (its model-card reader) and its GGUF reader: ~50 ms of every qtool start-up, where a
    conversion from a GGUF file needs only its constants and its writer. So the package is registered
    as Python would register it, minus running ``__init__``: a name asked of it comes from the first
    of `_GGUF_PARTS` that defines it (the same objects ``__init__`` re-exports), and any other name runs
    the package's own ``__init__`` once (so does ``dir()``), after which the package is what gguf makes
    it. Submodules import as usual.
    Where gguf is already imported or cannot be found, nothing changes.
    """
    if "gguf" in _sys.modules:
        return False
    spec = _importlib_util.find_spec("gguf")
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return False
    package = _importlib_util.module_from_spec(spec)
    lock = _threading.RLock()
    whole = []

    def run_init() -> bool:
        """gguf's own __init__, once; whether this call ran it (call with the lock held)."""
        if whole:
            return False
        whole.append(True)
        spec.loader.exec_module(package)
        return True

    def __getattr__(name: str):
        with lock:
            if not whole and not name.startswith("_"):
                for part in _GGUF_PARTS:
                    module = _importlib.import_module(f"gguf.{part}")
                    if name in vars(module):
                        value = vars(package)[name] = vars(module)[name]  # where __init__ would put it
                        return value
            if run_init() and name in vars(package):
                return vars(package)[name]
        raise AttributeError(f"module 'gguf' has no attribute {name!r}")

    def __dir__():
        with lock:
            run_init()
        return sorted(vars(package))

    package.__getattr__ = __getattr__
    package.__dir__ = __dir__
    _sys.modules["gguf"] = package
    return True


#: the gguf modules whose names qtool asks for, in the order a name is looked up: a conversion from GGUF
#: uses the first three; one from a Hugging Face folder the model-card reader (metadata), size labels
#: (utility) and the special-token reader (vocab) too
_GGUF_PARTS = ("constants", "gguf_writer", "tensor_mapping", "metadata", "utility", "vocab")


class _StandIns:
    """An import hook: while a watched module is imported, a module it imports at the top but uses only
    now and then is a stand-in that imports the real module the first time it is used.

    Numba's config module and gguf's model-card reader import yaml (~16 ms) to read a file that is
    rarely there: a ``.numba_config.yaml`` in the working folder, a model card's YAML header; gguf's
    vocabulary module imports sentencepiece (~9 ms) for a class qtool does not use (`_LazyName`); typer's
    main module imports subprocess (~3 ms) to open a URL or an editor, its core difflib to suggest an option
    name after a typo (``get_close_matches``, a `_LazyName`). Once the
    watched module has run, the stand-in leaves ``sys.modules``, so any other importer gets the module
    itself. Where the module is imported already or not installed, the hook steps aside.
    """

    def __init__(self):
        self.watched = {"numba.core.config": "yaml", "gguf.metadata": "yaml",  # "": no stand-in, only after
                        "gguf.vocab": "sentencepiece", "typer.main": "subprocess", "typer.core": "difflib"}
        self.after = {}  # watched module -> a function called with it once it has run
        #: watched modules that take names from their stand-in (``from sentencepiece import
        #: SentencePieceProcessor``): each name is a `_LazyName` until it is used
        self.lazy_names = {"gguf.vocab", "typer.core"}

    def find_spec(self, name, path=None, target=None):
        deferred = self.watched.get(name)
        if deferred is None or (deferred and deferred in _sys.modules):
            return None
        for finder in _sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if (spec.loader is None or not hasattr(spec.loader, "exec_module")
                or (deferred and _importlib_util.find_spec(deferred) is None)):
            return spec
        spec.loader = _ExecWithStandIn(spec.loader, deferred, self.after.get(name), name in self.lazy_names)
        return spec


class _ExecWithStandIn:
    def __init__(self, loader, deferred: str, after, lazy_names: bool = False):
        self.loader, self.deferred, self.after, self.lazy_names = loader, deferred, after, lazy_names

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self.loader  # the module keeps its own loader
        deferred = self.deferred
        stand_in = self._stand_in() if deferred else None
        if stand_in is not None:
            _sys.modules[deferred] = stand_in
        try:
            self.loader.exec_module(module)
        finally:
            if stand_in is not None and _sys.modules.get(deferred) is stand_in:
                del _sys.modules[deferred]
        if self.after is not None:
            self.after(module)

    def _stand_in(self) -> _types.ModuleType:
        """A module that, on its first attribute asked for, leaves sys.modules and imports the real one."""
        deferred = self.deferred
        stand_in = _types.ModuleType(deferred, f"imports {deferred} on first use (qtool._StandIns)")

        lazy = self.lazy_names

        def __getattr__(name: str):
            if lazy and not name.startswith("__"):
                return _LazyName(deferred, name)
            if lazy and name == "__path__":  # asked by ``from ... import``: no submodule is wanted from it
                raise AttributeError(name)
            if _sys.modules.get(deferred) is stand_in:
                del _sys.modules[deferred]
            return getattr(_importlib.import_module(deferred), name)

        stand_in.__getattr__ = __getattr__
        return stand_in


class _LazyName:
    """A name a watched module took from its stand-in (gguf's vocabulary module: ``from sentencepiece import
    SentencePieceProcessor``, ~9 ms of every Hugging Face conversion, which reads SentencePiece models
    through sentencepiece itself): the module is imported the first time the name is called, an attribute
    of it is read, or an isinstance/issubclass test asks it."""

    __slots__ = ("_module", "_name")

    def __init__(self, module: str, name: str):
        self._module, self._name = module, name

    def _real(self):
        return getattr(_importlib.import_module(self._module), self._name)

    def __call__(self, *args, **kwargs):
        return self._real()(*args, **kwargs)

    def __getattr__(self, attr: str):
        return getattr(self._real(), attr)

    def __instancecheck__(self, obj) -> bool:
        return isinstance(obj, self._real())

    def __subclasscheck__(self, cls) -> bool:
        return issubclass(cls, self._real())

    def __repr__(self) -> str:
        return f"<{self._module}.{self._name}, imported on first use (qtool._LazyName)>"


def command_process() -> bool:
    """Set up the ``qtool`` command's own process (cli.app.run): Numba's third-party extensions are not
    loaded, since qtool's kernels use none, and LLVM's calls are not reported as Numba events.

    Numba looks for extensions (the ``numba_extensions`` entry points of every installed distribution)
    before its first call of any function: importing importlib.metadata and scanning the installed
    packages, ~25 ms of every qtool start-up. Here importlib.metadata is a stand-in while Numba's
    entry-point module imports, and that module is marked as done. numba.core.base registers callbacks
    that turn every call into LLVM into two Numba events, for its compile statistics: loading three
    type families' cached kernels makes some thousand of them (~15 ms); here they are unregistered. A
    process that imports qtool as a library (and may use an extension or the statistics) is left
    alone. The command's kernels run from their stored machine code where a previous command stored it
    (kernels.native), and Numba is then not imported at all. False where Numba is imported already.
    """
    if "numba.core.entrypoints" in _sys.modules or "numba.core.base" in _sys.modules:
        return False

    def extensions_done(module) -> None:
        if hasattr(module, "_already_initialized"):
            module._already_initialized = True

    def llvm_calls_unreported(module) -> None:
        try:
            from llvmlite.binding import ffi

            callbacks = list(ffi.lib._lock._cblist)
        except (ImportError, AttributeError, TypeError):
            return
        for acquire, release in callbacks:
            if getattr(acquire, "__module__", None) == module.__name__:
                ffi.unregister_lock_callback(acquire, release)

    from qtool.kernels import native

    if native.enable():  # cached kernels run from their stored machine code, without importing Numba
        _STAND_INS.watched["numba.np.ufunc.parallel"] = ""
        _STAND_INS.after["numba.np.ufunc.parallel"] = native.adopt_threads
    _STAND_INS.watched["numba.core.entrypoints"] = "importlib.metadata"
    _STAND_INS.after["numba.core.entrypoints"] = extensions_done
    _STAND_INS.watched["numba.core.base"] = ""
    _STAND_INS.after["numba.core.base"] = llvm_calls_unreported
    return True


#: the big shared libraries a command loads after its modules are imported: LLVM's,
#: for the stored kernels (kernels.native). (NumPy's are loaded by then: the kernels' loader imports NumPy.)
_PRELOADED = (("llvmlite", ("binding", "libllvmlite.so")),)  # (package, path parts inside it)


def preload_libraries() -> _threading.Thread | None:
    """Map the big shared libraries a command will load (`_PRELOADED`), in a thread of its own, while the main
    thread imports the command's Python modules; the caller joins the thread before the process ends.

    Loading a library is mostly the dynamic loader relocating it (LLVM's: ~6 ms), and Python's own loaders
    (an extension module's import, ``ctypes.CDLL``) keep the interpreter lock while they do it. Here libc's
    ``dlopen`` is called through ctypes, which lets the lock go, with the flags those loaders use
    (``RTLD_NOW | RTLD_LOCAL``): the later load by the module itself finds the library mapped and costs
    nothing. A library that is not installed, or a libc without ``dlopen``, is skipped.
    """
    import ctypes

    paths = []
    for package, parts in _PRELOADED:
        spec = _importlib_util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        path = _os.path.join(spec.submodule_search_locations[0], *parts)
        if _os.path.exists(path):
            paths.append(path)
    if not paths:
        return None
    try:
        dlopen = ctypes.CDLL(None).dlopen
    except (OSError, AttributeError):
        return None
    dlopen.restype, dlopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_int]
    flags = getattr(_os, "RTLD_NOW", 2) | getattr(_os, "RTLD_LOCAL", 0)

    def load() -> None:
        for path in paths:
            dlopen(_os.fsencode(path), flags)  # a failure (NULL) leaves it to the module's own load

    thread = _threading.Thread(target=load, name="qtool-preload", daemon=True)
    thread.start()
    return thread


GGUF_ON_DEMAND = _gguf_on_demand()
_STAND_INS = next((f for f in _sys.meta_path if type(f).__name__ == "_StandIns"), None)
if _STAND_INS is None:
    _STAND_INS = _StandIns()
    _sys.meta_path.insert(0, _STAND_INS)
