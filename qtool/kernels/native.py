"""Run cached kernels without importing Numba: their machine code, loaded through llvmlite alone.

Importing Numba and typing a first call costs a qtool command ~0.2-0.25 s before its first tensor, though a
cached kernel is machine code that needs none of Numba's Python: only its C runtime (the helper, NRT and
threading-layer extension modules) and LLVM's loader. So a command process (``qtool.command_process``) keeps
each kernel it runs in a store of its own, as Numba compiled it: the object code of the kernel's library
(every function it calls is linked in), the name of its CPython wrapper and of the environments that code
reads. A later command process loads that object code into an MCJIT engine of its own and calls the
wrapper, as Numba would after typing the arguments: the bytes written are the same machine code's.

A kernel module is served by a stand-in (`proxy`) while the package is asked for it by name (``from
qtool.kernels import legacy``): a name with stored code is a `NativeKernel`; any other name, a call whose
argument types have no stored code, and every entry that does not match this process (another kernel
source, Numba, llvmlite, Python or CPU, a checksum that fails) go to the real module, with Numba, as
before. At the end of a command that imported Numba, `record` stores what it ran. Nothing here imports
Numba; a process that never enabled it (a library caller, the tests) is unchanged.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import pickle
import sys
import threading
import types as pytypes

import numpy as np

from qtool.kernels import folder_stamp, kernel_modules, read_checked, write_checked

_FOLDER = os.path.dirname(os.path.abspath(__file__))
#: Numba settings a stored kernel may run under: any other NUMBA_* variable (a CPU name, a threading
#: layer, debug or optimisation options) can change the code Numba would make, so it turns this off
_HARMLESS_ENV = frozenset({"NUMBA_NUM_THREADS", "NUMBA_CACHE_DIR"})
_SUFFIX = ".qn"
#: the symbols compiled parallel code calls, and the threading layer's attribute for each (as Numba registers
#: them when it launches the layer)
_THREAD_SYMBOLS = {"numba_parallel_for": "parallel_for", **{name: name for name in (
    "do_scheduling_signed", "do_scheduling_unsigned", "allocate_sched", "deallocate_sched", "get_num_threads",
    "set_num_threads", "get_thread_id", "set_parallel_chunksize", "get_parallel_chunksize", "get_sched_size")}}
_CO_VARARGS = 0x04

_lock = threading.RLock()
_state = {"enabled": False, "names": {}, "runtime": None, "threads": None, "header": None, "stamp": None,
          "process": None}


def enable() -> bool:
    """Turn the native path on for this process (a qtool command's); False where it cannot apply."""
    if os.environ.get("QTOOL_NATIVE", "1") == "0" or "numba" in sys.modules:
        return False
    if not sys.platform.startswith("linux"):
        return False  # entries are ELF objects (undefined_symbols); elsewhere Numba runs every kernel
    if any(k.startswith("NUMBA_") and k not in _HARMLESS_ENV for k in os.environ):
        return False
    if importlib.util.find_spec("llvmlite") is None or importlib.util.find_spec("numba") is None:
        return False
    _state["enabled"] = True
    return True


def store_folder() -> str:
    """Where entries live: $QTOOL_NATIVE_DIR, else beside Numba's cache of the kernels (their __pycache__)
    where that is writable, else the user's cache folder."""
    chosen = os.environ.get("QTOOL_NATIVE_DIR")
    if chosen:
        return chosen
    beside = os.path.join(_FOLDER, "__pycache__")
    if os.access(beside if os.path.isdir(beside) else _FOLDER, os.W_OK):
        return os.path.join(beside, "qtool-native")
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(home, "qtool", "native-" + hashlib.sha256(_FOLDER.encode()).hexdigest()[:16])


# -- argument types ------------------------------------------------------------------------------------
# A call's key is what Numba's typing of the same arguments tells apart: for an array its dtype, number of
# dimensions, layout (C, F or A, from its flags) and whether it is read-only; for a scalar its dtype; for
# a tuple its items. `numba_key` spells a Numba signature the same way, so a stored entry is found only by
# arguments Numba would have run that very code for.


def _arg_key(value):
    if isinstance(value, np.ndarray):
        if type(value) not in (np.ndarray, np.memmap) or not value.dtype.isnative or value.dtype.fields is not None:
            return None
        flags = value.flags
        layout = "C" if flags.c_contiguous else "F" if flags.f_contiguous else "A"
        return ("a", value.dtype.str, value.ndim, layout, not flags.writeable)
    if isinstance(value, bool):
        return ("s", "|b1")
    if isinstance(value, int):
        return ("s", "<i8") if -(1 << 63) <= value < (1 << 63) else None
    if isinstance(value, float):
        return ("s", "<f8")
    if isinstance(value, np.generic):
        return ("s", value.dtype.str) if value.dtype.isnative and value.dtype.kind in "biuf" else None
    if type(value) is tuple:
        items = tuple(_arg_key(v) for v in value)
        return None if None in items else ("t", items)
    return None


def call_key(args: tuple):
    keys = tuple(_arg_key(a) for a in args)
    return None if None in keys else keys


def numba_key(sig: tuple, varargs: bool):
    """The call key of the flat arguments that Numba typed as ``sig`` (its last item the packed ``*args``
    tuple when ``varargs``); None for a type this module does not spell."""
    from numba.core import types
    from numba.np import numpy_support

    def one(t):
        if isinstance(t, types.Array):
            if not t.aligned or t.layout not in ("C", "F", "A"):
                return None
            try:
                dtype = numpy_support.as_dtype(t.dtype)
            except Exception:  # noqa: BLE001 (a record or other dtype: not stored)
                return None
            if not dtype.isnative or dtype.fields is not None:
                return None
            return ("a", dtype.str, t.ndim, t.layout, not t.mutable)
        if isinstance(t, types.Boolean):
            return ("s", "|b1")
        if isinstance(t, (types.Integer, types.Float)):
            return ("s", numpy_support.as_dtype(t).str)
        if isinstance(t, types.BaseTuple) and not isinstance(t, types.BaseNamedTuple):
            items = tuple(one(x) for x in t.types)
            return None if None in items else ("t", items)
        return None

    sig = tuple(sig)
    if varargs:
        if not sig or not isinstance(sig[-1], types.BaseTuple) or isinstance(sig[-1], types.BaseNamedTuple):
            return None
        sig = sig[:-1] + tuple(sig[-1].types)
    keys = tuple(one(t) for t in sig)
    return None if None in keys else keys


def _entry_path(module: str, name: str, key) -> str:
    digest = hashlib.sha256(repr(key).encode()).hexdigest()[:20]
    return os.path.join(store_folder(), f"{module}.{name}.{digest}{_SUFFIX}")


def _manifest_path(module: str) -> str:
    return os.path.join(store_folder(), f"{module}.kernels")


def _manifest(module: str) -> tuple[frozenset, dict]:
    """The names of ``module``'s jitted kernels and its plain constants (`_plain`: numbers, strings, ...), as
    the last command that imported it stored them (none where none did, or the kernel sources or Numba
    changed since)."""
    found = _state["names"].get(module)
    if found is None:
        found = (frozenset(), {})
        try:
            stored = _unpickled(read_checked(_manifest_path(module)))
            if isinstance(stored, dict) and stored.get("stamp") == _installed_stamp():
                found = (frozenset(stored["names"]), dict(stored["constants"]))
        except Exception:  # noqa: BLE001 (not ours: the real module serves every name)
            pass
        _state["names"][module] = found
    return found


def _unpickled(payload: bytes | None):
    """The object a checked file holds; None where there is none or it is not a pickle of this Python's."""
    if payload is None:
        return None
    try:
        return pickle.loads(payload)
    except Exception:  # noqa: BLE001 (not ours, or another pickle version: not used)
        return None


# -- what an entry must match --------------------------------------------------------------------------


def _file_stamp(path: str) -> str:
    st = os.stat(path)
    return f"{path}\0{st.st_size}\0{st.st_mtime_ns}"


def _installed_stamp() -> tuple:
    """Numba's and llvmlite's installed files (reinstalling either changes it), this Python, this module and
    qtool's kernel sources."""
    if _state["stamp"] is not None:
        return _state["stamp"]
    numba_dir = os.path.dirname(importlib.util.find_spec("numba").origin)
    llvmlite_dir = os.path.dirname(importlib.util.find_spec("llvmlite").origin)
    files = [os.path.join(numba_dir, "__init__.py"), os.path.join(numba_dir, "_version.py"),
             os.path.join(llvmlite_dir, "__init__.py"), os.path.join(llvmlite_dir, "_version.py"),
             os.path.abspath(__file__)]  # this file: how an entry is made and read
    _state["stamp"] = (sys.implementation.cache_tag, sys.version,
                       tuple(_file_stamp(f) for f in files if os.path.exists(f)), folder_stamp(_FOLDER).hex())
    return _state["stamp"]


def _machine(ll) -> tuple:
    """LLVM's triple, CPU name and features: what Numba keys its own cached code on (Codegen.magic_tuple).
    ``ll``: llvmlite.binding, or a `_DirectLLVM`."""
    return (ll.get_process_triple(), ll.get_host_cpu_name(), ll.get_host_cpu_features().flatten())


# -- LLVM ----------------------------------------------------------------------------------------------
# Loading stored code takes a dozen calls of llvmlite's C library. Through llvmlite.binding they cost its
# import, ~30 ms of every command (Python wrappers of LLVM's whole API, importlib.resources); through ctypes,
# the library's load alone (~9 ms). The signatures are llvmlite's own declarations of the version that
# _DIRECT_VERSIONS names (tests/test_native_kernels.py checks them against llvmlite.binding's); with any
# other llvmlite the calls go through llvmlite.binding.

_DIRECT_VERSIONS = ("0.50.",)
_c = ctypes
#: name: (restype, argtypes), as llvmlite.binding declares them (opaque references as void pointers)
DIRECT_SIGNATURES = {
    "LLVMPY_InitializeNativeTarget": (None, ()),
    "LLVMPY_InitializeNativeAsmPrinter": (None, ()),
    "LLVMPY_AddSymbol": (None, (_c.c_char_p, _c.c_void_p)),
    "LLVMPY_GetProcessTriple": (None, (_c.POINTER(_c.c_char_p),)),
    "LLVMPY_GetHostCPUName": (None, (_c.POINTER(_c.c_char_p),)),
    "LLVMPY_GetHostCPUFeatures": (_c.c_int, (_c.POINTER(_c.c_char_p),)),
    "LLVMPY_DisposeString": (None, (_c.c_char_p,)),
    "LLVMPY_GetTargetFromTriple": (_c.c_void_p, (_c.c_char_p, _c.POINTER(_c.c_char_p))),
    "LLVMPY_CreateTargetMachine": (_c.c_void_p, (_c.c_void_p, _c.c_char_p, _c.c_char_p, _c.c_char_p, _c.c_int,
                                                 _c.c_char_p, _c.c_char_p, _c.c_int, _c.c_int, _c.c_char_p)),
    "LLVMPY_GetGlobalContext": (_c.c_void_p, ()),
    "LLVMPY_ParseAssembly": (_c.c_void_p, (_c.c_void_p, _c.c_char_p, _c.POINTER(_c.c_char_p))),
    "LLVMPY_CreateMCJITCompiler": (_c.c_void_p, (_c.c_void_p, _c.c_void_p, _c.c_bool, _c.POINTER(_c.c_char_p))),
    "LLVMPY_CreateObjectFile": (_c.c_void_p, (_c.c_char_p, _c.c_size_t)),
    "LLVMPY_MCJITAddObjectFile": (None, (_c.c_void_p, _c.c_void_p)),
    "LLVMPY_FinalizeObject": (None, (_c.c_void_p,)),
    "LLVMPY_GetFunctionAddress": (_c.c_uint64, (_c.c_void_p, _c.c_char_p)),
    "LLVMPY_GetGlobalValueAddress": (_c.c_uint64, (_c.c_void_p, _c.c_char_p)),
}


class _Features(dict):
    def flatten(self) -> str:
        """llvmlite's FeatureMap.flatten: +name / -name, sorted by name, comma-separated."""
        return ",".join(("+" if on else "-") + name for name, on in sorted(self.items()))


class _DirectLLVM:
    """libllvmlite's calls through ctypes: llvmlite.binding's get_process_triple, get_host_cpu_name,
    get_host_cpu_features and add_symbol, and an MCJIT engine that loads object code (`engine`)."""

    def __init__(self, lib):
        self.lib = lib
        for name, (restype, argtypes) in DIRECT_SIGNATURES.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, list(argtypes)

    @classmethod
    def load(cls) -> "_DirectLLVM | None":
        """None where this llvmlite is not a version whose signatures these are, or its library is not there."""
        try:
            import llvmlite

            if not llvmlite.__version__.startswith(_DIRECT_VERSIONS) or not sys.platform.startswith("linux") \
                    or os.uname().machine != "x86_64":  # (elsewhere llvmlite picks another memory manager)
                return None
            path = os.path.join(os.path.dirname(llvmlite.__file__), "binding", "libllvmlite.so")
            return cls(ctypes.CDLL(path)) if os.path.exists(path) else None
        except (ImportError, OSError, AttributeError):
            return None

    def _out(self, call, *args) -> tuple:
        """(what call(*args, &out) returned, the string it put in out), the string disposed of as llvmlite does."""
        out = ctypes.c_char_p(None)
        returned = call(*args, ctypes.byref(out))
        try:
            return returned, (out.value or b"").decode()
        finally:
            if out.value is not None:
                self.lib.LLVMPY_DisposeString(out)

    def initialize_native_target(self) -> None:
        self.lib.LLVMPY_InitializeNativeTarget()

    def initialize_native_asmprinter(self) -> None:
        self.lib.LLVMPY_InitializeNativeAsmPrinter()

    def add_symbol(self, name: str, address: int) -> None:
        self.lib.LLVMPY_AddSymbol(name.encode(), ctypes.c_void_p(address))

    def get_process_triple(self) -> str:
        return self._out(self.lib.LLVMPY_GetProcessTriple)[1]

    def get_host_cpu_name(self) -> str:
        return self._out(self.lib.LLVMPY_GetHostCPUName)[1]

    def get_host_cpu_features(self) -> _Features:
        ok, text = self._out(self.lib.LLVMPY_GetHostCPUFeatures)
        features = _Features()
        if ok:
            for item in text.split(","):
                if item:
                    features[item[1:]] = item[0] == "+"
        return features

    def create_engine(self, triple: str, cpu: str, features: str) -> "_DirectEngine":
        """An MCJIT engine over an empty module, for a target machine as llvmlite's create_target_machine(cpu,
        features, jit=True) makes it (opt 2, reloc and code model defaults, no ABI name)."""
        lib = self.lib
        target, error = self._out(lib.LLVMPY_GetTargetFromTriple, triple.encode())
        if not target:
            raise RuntimeError(error)
        machine = lib.LLVMPY_CreateTargetMachine(target, triple.encode(), cpu.encode(), features.encode(), 2,
                                                 b"default", b"jitdefault", 0, 1, b"")
        if not machine:
            raise RuntimeError("cannot create a target machine")
        module, error = self._out(lib.LLVMPY_ParseAssembly, lib.LLVMPY_GetGlobalContext(), b"")
        if error or not module:
            raise RuntimeError(error)
        engine, error = self._out(lib.LLVMPY_CreateMCJITCompiler, module, machine, False)
        if not engine:
            raise RuntimeError(error)
        return _DirectEngine(lib, engine)


class _DirectEngine:
    """llvmlite.binding's ExecutionEngine, as far as loading object code goes."""

    def __init__(self, lib, engine):
        self.lib, self.engine = lib, engine
        self.objects = []  # their bytes stay alive with the engine

    def add_object(self, data: bytes) -> None:
        self.objects.append(data)
        self.lib.LLVMPY_MCJITAddObjectFile(self.engine, self.lib.LLVMPY_CreateObjectFile(data, len(data)))

    def finalize_object(self) -> None:
        self.lib.LLVMPY_FinalizeObject(self.engine)

    def get_function_address(self, name: str) -> int:
        return self.lib.LLVMPY_GetFunctionAddress(self.engine, name.encode("ascii"))

    def get_global_value_address(self, name: str) -> int:
        return self.lib.LLVMPY_GetGlobalValueAddress(self.engine, name.encode("ascii"))


class _BindingEngine:
    """The same through llvmlite.binding (another llvmlite version)."""

    def __init__(self, ll, engine):
        self.ll, self.engine = ll, engine

    def add_object(self, data: bytes) -> None:
        self.engine.add_object_file(self.ll.ObjectFileRef.from_data(data))

    def finalize_object(self) -> None:
        self.engine.finalize_object()

    def get_function_address(self, name: str) -> int:
        return self.engine.get_function_address(name)

    def get_global_value_address(self, name: str) -> int:
        return self.engine.get_global_value_address(name)


# -- the runtime: Numba's C extension modules and one MCJIT engine -------------------------------------


def _extension(name: str):
    """Numba's C extension module ``name`` (numba.x.y), loaded alone under its own name: Numba, if it is
    imported later in the process, finds it in sys.modules and uses the same module."""
    module = sys.modules.get(name)
    if module is not None:
        return module
    parts = name.split(".")
    numba_dir = os.path.dirname(importlib.util.find_spec("numba").origin)
    folder = os.path.join(numba_dir, *parts[1:-1])
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(folder, parts[-1] + suffix)
        if os.path.exists(path):
            break
    else:
        raise ImportError(f"no extension module {name}")
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


class _Runtime:
    """What Numba sets up before it runs compiled code, without Numba: the C helpers' and NRT's symbols,
    the exception classes, the threading layer (on the first parallel kernel), an engine to load into."""

    def __init__(self):
        ll = _DirectLLVM.load()
        if ll is None:
            import llvmlite.binding as ll

        self.ll = ll
        ll.initialize_native_target()
        ll.initialize_native_asmprinter()
        helperlib = _extension("numba._helperlib")
        self.dynfunc = _extension("numba._dynfunc")
        nrt = _extension("numba.core.runtime._nrt_python")
        self.helpers = helperlib.c_helpers
        ll.add_symbol("_Py_NoneStruct", id(None))
        for helpers in (helperlib.c_helpers, self.dynfunc.c_helpers):
            for name, address in helpers.items():
                ll.add_symbol("numba_" + name, address)
        import builtins

        for obj in vars(builtins).values():
            if isinstance(obj, type) and issubclass(obj, BaseException):
                ll.add_symbol(f"PyExc_{obj.__name__}", id(obj))
        for name, address in nrt.c_helpers.items():
            ll.add_symbol(name if name.startswith("_") else "NRT_" + name, address)
        # Compiled code gets the Python objects it names (the class of an array it returns) by unpickling
        # bytes it holds, through numba_unpickle, which imports Numba's serializer to do it: this one unpickles
        # them with the standard library (they are pickled by reference), once each
        unpickled: dict = {}

        def unpickle(data, size, hashed):
            raw = ctypes.string_at(data, size)
            if raw not in unpickled:
                unpickled[raw] = pickle.loads(raw)
            return unpickled[raw]

        self.unpickle = ctypes.CFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)(unpickle)
        ll.add_symbol("numba_unpickle", ctypes.cast(self.unpickle, ctypes.c_void_p).value)
        self.math: set = set()
        self.layer = None  # (name, module) once a parallel kernel launched the threads
        triple, cpu, features = _machine(ll)
        if isinstance(ll, _DirectLLVM):
            self.engine = ll.create_engine(triple, cpu, features)
        else:
            machine = ll.Target.from_triple(triple).create_target_machine(cpu=cpu, features=features, jit=True)
            self.engine = _BindingEngine(ll, ll.create_mcjit_compiler(ll.parse_assembly(""), machine))
        self.environments = []  # kept alive: the loaded code holds their addresses

    def threads(self, layer: str):
        """Launch the threading layer Numba used when the entry was stored (once); False if another runs."""
        if self.layer is not None:
            return self.layer[0] == layer
        if layer not in ("tbb", "omp", "workqueue"):
            return False
        if "numba.np.ufunc.parallel" in sys.modules:
            return False  # Numba runs its own threads in this process
        lib = _extension(f"numba.np.ufunc.{layer}pool" if layer != "workqueue" else "numba.np.ufunc.workqueue")
        for symbol, attr in _THREAD_SYMBOLS.items():
            self.ll.add_symbol(symbol, getattr(lib, attr))
        ctypes.CFUNCTYPE(None, ctypes.c_int)(lib.launch_threads)(max_threads())
        self.set_threads = ctypes.CFUNCTYPE(None, ctypes.c_int)(lib.set_num_threads)
        self.layer = (layer, lib)
        self.set_threads(_state["threads"] or max_threads())
        return True

    def load(self, entry: dict, module: str, name: str):
        for fname in entry["math"]:
            if fname not in self.math:
                self.ll.add_symbol(fname, self.helpers[fname])
                self.math.add(fname)
        if entry["layer"] is not None and not self.threads(entry["layer"]):
            return None
        self.engine.add_object(entry["object"])
        self.engine.finalize_object()
        address = self.engine.get_function_address(entry["wrapper"])
        if not address:
            return None
        own = None
        for env_name, consts in entry["environments"]:
            env = self.dynfunc.Environment({"__name__": f"qtool.kernels.{module}"})
            env.consts[:] = consts
            self.environments.append(env)
            own = own or env
            where = self.engine.get_global_value_address(env_name)
            if where:
                ctypes.c_void_p.from_address(where).value = id(env)
        stand_in = pytypes.ModuleType(f"qtool.kernels.{module}")
        function = self.dynfunc.make_function(stand_in, name, f"stored machine code of {module}.{name}", address,
                                              own, (self,))
        nfixed = entry["nfixed"]
        if not entry["varargs"]:
            return function
        return lambda *args: function(*args[:nfixed], tuple(args[nfixed:]))


def _runtime() -> _Runtime:
    with _lock:
        if _state["runtime"] is None:
            _state["runtime"] = _Runtime()
        return _state["runtime"]


def max_threads() -> int:
    """Numba's NUMBA_NUM_THREADS: the variable, else the CPUs this process may run on."""
    try:
        return max(1, int(os.environ["NUMBA_NUM_THREADS"]))
    except (KeyError, ValueError):
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def set_num_threads(n: int) -> None:
    """numba.set_num_threads for this process's kernels, stored or Numba's, without importing Numba."""
    n = max(1, min(int(n), max_threads()))
    if "numba" in sys.modules or not _state["enabled"]:
        import numba

        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
        return
    _state["threads"] = n
    runtime = _state["runtime"]
    if runtime is not None and runtime.layer is not None:
        runtime.set_threads(n)


def get_num_threads() -> int:
    """numba.get_num_threads, without importing Numba where the stored kernels run the threads."""
    if "numba" in sys.modules or not _state["enabled"]:
        import numba

        return numba.get_num_threads()
    return _state["threads"] or max_threads()


def adopt_threads(parallel) -> None:
    """Numba's threading module as it is imported into a process whose stored kernels launched the
    threading layer already: it takes that layer as its own instead of launching it a second time."""
    runtime = _state["runtime"]
    if runtime is None or runtime.layer is None or getattr(parallel, "_is_initialized", True):
        return
    name, lib = runtime.layer
    parallel._threading_layer = name
    parallel._load_threading_functions(lib)
    parallel._is_initialized = True
    runtime.set_threads(_state["threads"] or max_threads())


def _header(ll) -> tuple:
    header = _state["header"]
    if header is None:
        header = _state["header"] = (_installed_stamp(), _machine(ll))
    return header


def _read_entry(path: str, key, header):
    entry = _unpickled(read_checked(path))
    if not isinstance(entry, dict) or entry.get("header") != header or entry.get("key") != key:
        return None
    return entry


class NativeKernel:
    """A kernel called through its stored machine code; any call without it goes to the real kernel."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name
        self.__name__ = self.__qualname__ = name
        self._loaded: dict = {}

    def __repr__(self) -> str:
        return f"<stored kernel qtool.kernels.{self.module}.{self.name}>"

    def real(self):
        return getattr(importlib.import_module(f"qtool.kernels.{self.module}"), self.name)

    def __call__(self, *args):
        key = call_key(args)
        try:
            function = self._loaded[key]
        except KeyError:
            function = self._loaded[key] = self._load(key) if key is not None else None
        if function is None:
            return self.real()(*args)
        return function(*args)

    def _load(self, key):
        with _lock:
            try:
                runtime = _runtime()
                entry = _read_entry(_entry_path(self.module, self.name, key), key, _header(runtime.ll))
                return None if entry is None else runtime.load(entry, self.module, self.name)
            except Exception:  # noqa: BLE001 (anything amiss: Numba runs the kernel, as without this module)
                if os.environ.get("QTOOL_DEBUG"):
                    raise
                return None


class _Proxy(pytypes.ModuleType):
    """Stands in for kernel module ``qtool.kernels.<short>`` until a name needs the real one."""

    def __init__(self, short: str):
        super().__init__(f"qtool.kernels.{short}", f"stored kernels of qtool.kernels.{short} (kernels.native)")
        self._short = short

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        names, constants = _manifest(self._short)
        if attr in names:
            value = NativeKernel(self._short, attr)
        elif attr in constants:
            value = constants[attr]
        else:
            value = getattr(importlib.import_module(f"qtool.kernels.{self._short}"), attr)
        setattr(self, attr, value)
        return value


_proxies: dict = {}


def proxy(short: str):
    """The stand-in for kernel module ``short``, or None where the native path is off or nothing is stored."""
    if not _state["enabled"] or short not in kernel_modules() or "numba" in sys.modules:
        return None
    if not _manifest(short)[0]:
        return None
    with _lock:
        if short not in _proxies:
            _proxies[short] = _Proxy(short)
        return _proxies[short]


# -- storing what a command ran ------------------------------------------------------------------------


def keep_serialized_code() -> None:
    """Have Numba keep each cached library's object code as it loads it (it drops it once the engine has
    it), so that `record` can store it. Called as the kernels are set up, in a process that enabled this."""
    if not _state["enabled"]:
        return
    from numba.core import codegen

    library_class = codegen.CPUCodeLibrary
    numba_rule = library_class.__dict__.get("_unserialize")
    if numba_rule is None or getattr(numba_rule.__func__, "_qtool_keeps", False):
        return

    def unserialize(cls, codegen_, state):
        library = numba_rule.__func__(cls, codegen_, state)
        library._qtool_serialized = state
        return library

    unserialize._qtool_keeps = True
    library_class._unserialize = classmethod(unserialize)


def record() -> int:
    """Store the kernels this process ran through Numba that the store lacks; the number stored."""
    if not _state["enabled"] or "numba.core.dispatcher" not in sys.modules:
        return 0
    try:
        return _record()
    except Exception:  # noqa: BLE001 (a store that cannot be written: Numba runs them next time too)
        if os.environ.get("QTOOL_DEBUG"):
            raise
        return 0


def _record() -> int:
    import llvmlite.binding as ll
    from numba.core import intrinsics
    from numba.core.dispatcher import Dispatcher
    from numba.core.registry import cpu_target

    header = _header(ll)
    if tuple(cpu_target.target_context.codegen().magic_tuple()) != header[1]:
        return 0  # Numba made its code for another CPU description than LLVM's host (NUMBA_CPU_*)
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    layer = getattr(parallel, "_threading_layer", None) if getattr(parallel, "_is_initialized", False) else None
    stored = 0
    for modname, module in list(sys.modules.items()):
        if not modname.startswith("qtool.kernels.") or modname.split(".")[-1] not in kernel_modules():
            continue
        if not isinstance(module, pytypes.ModuleType) or isinstance(module, _Proxy):
            continue
        short = modname.split(".")[-1]
        kernels = sorted(name for name, obj in vars(module).items()
                         if isinstance(obj, Dispatcher) and getattr(obj.py_func, "__module__", None) == modname)
        constants = {name: value for name, value in vars(module).items()
                     if not name.startswith("_") and _plain(value)}
        if kernels and _manifest(short) != (frozenset(kernels), constants):
            write_checked(_manifest_path(short), pickle.dumps({"stamp": _installed_stamp(), "names": kernels,
                                                        "constants": constants}))
            _state["names"][short] = (frozenset(kernels), constants)
        for name in kernels:
            obj = getattr(module, name)
            code = obj.py_func.__code__
            if code.co_kwonlyargcount:
                continue
            varargs = bool(code.co_flags & _CO_VARARGS)
            parallel_kernel = bool(obj.targetoptions.get("parallel"))
            if parallel_kernel and layer is None:
                continue
            for sig, cres in list(obj.overloads.items()):
                key = numba_key(sig, varargs)
                if key is None:
                    continue
                path = _entry_path(short, name, key)
                if _read_entry(path, key, header) is not None:
                    continue
                entry = _entry(cres, key, header, code.co_argcount, varargs, layer if parallel_kernel else None,
                               sorted(intrinsics.INTR_MATH))
                if entry is None:
                    continue
                write_checked(path, pickle.dumps(entry, protocol=pickle.HIGHEST_PROTOCOL))
                stored += 1
    return stored


def _entry(cres, key, header, nfixed: int, varargs: bool, layer, math: list):
    library = cres.library
    state = getattr(library, "_qtool_serialized", None)
    if state is None:
        try:
            state = library.serialize_using_object_code()
        except Exception:  # noqa: BLE001 (a library without object code: not stored)
            return None
    if state[1] != "object":
        return None
    needs = undefined_symbols(state[2][0])
    if needs is None or not all(_resolvable(symbol, math) for symbol in needs):
        return None  # not an ELF object, or code that calls something the runtime here does not provide
    environments = [(cres.fndesc.env_name, cres.environment)]
    environments += [(env.env_name, env) for env in cres.referenced_envs or ()]
    stored = []
    for name, env in environments:
        consts = list(getattr(env, "consts", None) or ())
        if not all(_plain(c) for c in consts):
            return None  # code that reads a Numba object from its environment: not stored
        stored.append((name, consts))
    return {"header": header, "key": key, "object": state[2][0], "wrapper": cres.fndesc.llvm_cpython_wrapper_name,
            "environments": stored, "nfixed": nfixed, "varargs": varargs, "layer": layer, "math": math}


def _plain(value) -> bool:
    """Whether a value unpickles without Numba (an environment's constant, a kernel module's constant for the
    manifest): a NumPy dtype, a builtin scalar or string, a builtin exception class, or a tuple of these."""
    if value is None or type(value) in (bool, int, float, complex, str, bytes, np.dtype) or isinstance(value, np.dtype):
        return True
    if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == "builtins":
        return True
    return type(value) is tuple and all(_plain(v) for v in value)


def undefined_symbols(obj: bytes):
    """The names an ELF64 little-endian object file uses without defining them; None for any other file."""
    import struct

    if obj[:4] != b"\x7fELF" or obj[4] != 2 or obj[5] != 1:
        return None
    shoff, = struct.unpack_from("<Q", obj, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", obj, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", obj, shoff + i * shentsize) for i in range(shnum)]
    names = set()
    for _, kind, _, _, offset, size, link, _, _, entsize in sections:
        if kind != 2 or not entsize:  # SHT_SYMTAB
            continue
        strings = sections[link][4]
        for at in range(offset, offset + size, entsize):
            name, info, _, shndx, _, _ = struct.unpack_from("<IBBHQQ", obj, at)
            if shndx == 0 and name:  # SHN_UNDEF
                end = obj.index(b"\0", strings + name)
                names.add(obj[strings + name:end].decode())
    return names


def _resolvable(symbol: str, math: list) -> bool:
    """Whether a stored object's undefined ``symbol`` is one `_Runtime` registers or one the process has (the C
    library's); called where Numba is imported, with its helper modules loaded."""
    if symbol in _THREAD_SYMBOLS or symbol in math or symbol == "_Py_NoneStruct" or symbol.startswith("PyExc_"):
        return True
    helperlib, dynfunc = sys.modules.get("numba._helperlib"), sys.modules.get("numba._dynfunc")
    nrt = sys.modules.get("numba.core.runtime._nrt_python")
    if symbol.startswith("numba_") and any(m is not None and symbol[6:] in m.c_helpers for m in (helperlib, dynfunc)):
        return True
    if nrt is not None and (symbol in nrt.c_helpers or (symbol.startswith("NRT_") and symbol[4:] in nrt.c_helpers)):
        return True
    if _state["process"] is None:
        _state["process"] = ctypes.CDLL(None)  # the symbols the process has loaded
    try:
        return bool(getattr(_state["process"], symbol))
    except AttributeError:
        return False
