"""Stored machine code (qtool.kernels.native): a qtool command that finds its kernels stored by an earlier one
runs them without importing Numba, and writes the same bytes; anything amiss in the store falls back to
Numba, with the same bytes."""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

from conftest import ROOT
from qtool.kernels import native

MODEL = ROOT / "fixtures" / "tiny-llama"

#: a qtool command as the console script runs it (qtool.cli.app.run), reporting at exit whether Numba was
#: imported and which threading layer the process's Numba took
COMMAND = """
import atexit, sys
from qtool.cli.app import run

def report():
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    layer = getattr(parallel, "_threading_layer", None) if parallel is not None else None
    print("numba:" + ("yes" if "numba" in sys.modules else "no"), "layer:" + str(layer),
          "binding:" + ("yes" if "llvmlite.binding" in sys.modules else "no"), file=sys.stderr)

atexit.register(report)
sys.argv = ["qtool", *sys.argv[1:]]
run()
"""


def _qtool(store: Path, *args, native_on: bool = True) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    env.update(PYTHONPATH=str(ROOT), QTOOL_NATIVE_DIR=str(store), QTOOL_NATIVE="1" if native_on else "0")
    done = subprocess.run([sys.executable, "-c", COMMAND, *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1].split()
    return dict(item.split(":", 1) for item in last) | {"stdout": done.stdout}


def _convert(store: Path, out: Path, *options, native_on: bool = True) -> dict:
    return _qtool(store, "convert", MODEL, "-o", out, "-q", *options, native_on=native_on)


@pytest.mark.slow
def test_a_second_command_runs_the_stored_kernels_without_numba(tmp_path):
    store = tmp_path / "store"
    first = _convert(store, tmp_path / "a.gguf", "--type", "Q4_K_M")
    assert first["numba"] == "yes"  # nothing stored yet: Numba ran the kernels, and they were stored
    assert sorted(store.glob("*.kernels")) and sorted(store.glob("*.qn"))
    second = _convert(store, tmp_path / "b.gguf", "--type", "Q4_K_M")
    assert second["numba"] == "no"
    # on the llvmlite whose signatures _DirectLLVM declares, the stored code loads through ctypes alone
    assert second["binding"] == ("no" if native._DirectLLVM.load() is not None else "yes")
    reference = _convert(store, tmp_path / "c.gguf", "--type", "Q4_K_M", native_on=False)
    assert reference["numba"] == "yes"
    assert (tmp_path / "b.gguf").read_bytes() == (tmp_path / "c.gguf").read_bytes()
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "c.gguf").read_bytes()
    # one thread: the thread count set before the stored threading layer starts
    assert _convert(store, tmp_path / "d.gguf", "--type", "Q4_K_M", "--threads", "1")["numba"] == "no"
    assert (tmp_path / "d.gguf").read_bytes() == (tmp_path / "c.gguf").read_bytes()


@pytest.mark.slow
def test_inspect_runs_the_stored_kernels_and_prints_the_same_figures(tmp_path):
    """inspect's figures come from kernels that return arrays (boxed through the runtime's own unpickling of
    the array class) and from kernel modules' constants (read from the stored manifest)."""
    store = tmp_path / "store"
    _convert(store, tmp_path / "q.gguf", "--type", "Q4_K_M")
    args = ("inspect", tmp_path / "q.gguf", "--reference", MODEL, "--json")
    _qtool(store, *args)
    stored = _qtool(store, *args)
    assert stored["numba"] == "no"
    through_numba = _qtool(store, *args, native_on=False)
    assert through_numba["numba"] == "yes"
    assert stored["stdout"] == through_numba["stdout"] and '"rmse"' in stored["stdout"]


@pytest.mark.slow
def test_numba_joins_a_process_whose_stored_kernels_started_the_threads(tmp_path):
    """Q8_0 stored, IQ4_NL not (its drivers pass lookup tables from Python): the first tensors run stored
    code and launch the threading layer, then Numba is imported for IQ4_NL and takes that layer over."""
    store = tmp_path / "store"
    _convert(store, tmp_path / "warm.gguf", "--type", "Q8_0", "--pure")
    mixed = ("--type", "Q8_0", "--pure", "--tensor-type", "ffn_down=IQ4_NL", "--output-tensor-type", "IQ4_NL")
    both = _convert(store, tmp_path / "a.gguf", *mixed)
    assert both["numba"] == "yes" and both["layer"] != "None"
    _convert(store, tmp_path / "b.gguf", *mixed, native_on=False)
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()


def _damage(path: Path, how: str) -> None:
    blob = path.read_bytes()
    if how == "checksum":  # a flipped byte: the checksum fails
        path.write_bytes(blob[:-1] + bytes([blob[-1] ^ 0xFF]))
        return
    entry = pickle.loads(blob[32:])  # a sound file, made for another CPU or by another kernel source
    if how == "machine":
        entry["header"] = (entry["header"][0], ("other-triple", "other-cpu", ""))
    else:
        entry["header"] = (entry["header"][0][:-1] + ("0" * 64,), entry["header"][1])
    payload = pickle.dumps(entry)
    path.write_bytes(hashlib.sha256(payload).digest() + payload)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["checksum", "machine", "source"])
def test_a_damaged_or_foreign_store_falls_back_to_numba(tmp_path, how):
    store = tmp_path / "store"
    _convert(store, tmp_path / "a.gguf", "--type", "Q8_0")
    entries = sorted(store.glob("*.qn"))
    assert entries
    for path in entries:
        _damage(path, how)
    fell_back = _convert(store, tmp_path / "b.gguf", "--type", "Q8_0")
    assert fell_back["numba"] == "yes"
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()
    # the command that fell back stored its kernels again, so the next one runs without Numba
    assert _convert(store, tmp_path / "c.gguf", "--type", "Q8_0")["numba"] == "no"
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "c.gguf").read_bytes()


def _arrays():
    base = np.arange(48, dtype=np.float32).reshape(6, 8)
    readonly = base.copy()
    readonly.flags.writeable = False
    yield base
    yield base.T  # F order
    yield base[:, ::2]  # neither
    yield readonly
    yield base[0]
    yield np.zeros((2, 3, 4), np.uint8)
    yield np.zeros(5, np.uint16)
    yield np.zeros(0, np.float32)
    yield np.ones(1, np.int64)[:1]


def _scalars():
    yield from (3, -7, 2.5, True, np.float32(1.5), np.uint16(3), np.int32(-2), np.uint8(1))


@pytest.mark.parametrize("args", [
    *[(a,) for a in _arrays()],
    *[(s,) for s in _scalars()],
    (np.zeros((2, 4), np.float32), np.zeros((2, 4), np.uint8), 7, np.float32(0.5)),
    ((),),
    ((np.zeros(3, np.float32), np.zeros(3, np.float32)),),
    ((np.zeros(3, np.float32), np.zeros(4, np.int8), 2),),
], ids=lambda a: repr(a)[:60])
def test_a_call_s_key_is_numba_s_typing_of_it(args):
    """The key a call is looked up by is the one `record` derives from Numba's own typing of the same
    arguments, so stored code is only ever called with the argument types it was compiled for."""
    sig = tuple(numba.typeof(a) for a in args)
    assert native.call_key(args) is not None
    assert native.call_key(args) == native.numba_key(sig, varargs=False)


def test_keys_tell_apart_what_numba_tells_apart():
    a = np.zeros((4, 4), np.float32)
    ro = a.copy()
    ro.flags.writeable = False
    variants = [a, a.T[:, :3], a[:, ::2], ro, a.astype(np.float64), a[0], a.reshape(2, 2, 4)]
    keys = [native.call_key((v,)) for v in variants]
    types = [numba.typeof(v) for v in variants]
    assert len(set(keys)) == len(set(types)) == len(variants)


def test_varargs_are_keyed_flat():
    sig = (numba.typeof(np.zeros((2, 2), np.float32)), numba.typeof((np.zeros(3, np.int8), np.zeros(3, np.int8))))
    flat = (np.zeros((2, 2), np.float32), np.zeros(3, np.int8), np.zeros(3, np.int8))
    assert native.numba_key(sig, varargs=True) == native.call_key(flat)
    assert native.numba_key((sig[0], numba.typeof(())), varargs=True) == native.call_key(flat[:1])


@pytest.mark.parametrize("value", [
    np.ma.masked_array(np.zeros(3)),
    np.zeros(3, ">f4"),
    np.zeros(3, dtype=[("a", "<f4")]),
    1 << 70,
    "text",
    None,
    [np.zeros(2)],
    1.5j,
], ids=lambda v: type(v).__name__ + repr(getattr(v, "dtype", ""))[:20])
def test_what_has_no_key_goes_to_numba(value):
    assert native.call_key((np.zeros(2), value)) is None


def test_direct_llvm_declares_llvmlites_signatures():
    """native._DirectLLVM calls libllvmlite with the signatures llvmlite.binding declares for them (its opaque
    references as void pointers); a new llvmlite that changed one fails here, not in a process."""
    import ctypes

    import llvmlite
    import llvmlite.binding as ll
    from llvmlite.binding import ffi

    if not llvmlite.__version__.startswith(native._DIRECT_VERSIONS):
        pytest.skip(f"llvmlite {llvmlite.__version__}: loads go through llvmlite.binding")
    ll.get_process_triple()  # (declarations are made as their modules import)

    def spelled(t):
        if t is None:
            return None
        if isinstance(t, type) and issubclass(t, ctypes._Pointer) and issubclass(t._type_, ctypes.Structure):
            return ctypes.c_void_p  # ffi's opaque LLVM...Ref
        return t

    for name, (restype, argtypes) in native.DIRECT_SIGNATURES.items():
        fn = getattr(ffi.lib, name)._cfn
        if name == "LLVMPY_DisposeString":  # llvmlite passes the c_char_p it holds, undeclared
            assert fn.argtypes is None
            continue
        if restype is None:  # a result llvmlite does not read: undeclared (ctypes' int) or void
            assert fn.restype in (None, ctypes.c_int), name
        else:
            assert spelled(fn.restype) == restype, name
        # undeclared arguments: llvmlite calls it with none
        assert [spelled(a) for a in fn.argtypes or ()] == list(argtypes), name


def test_direct_llvm_sees_the_machine_llvmlite_sees():
    """The stored entries' header: the same triple, CPU name and features through ctypes as through
    llvmlite.binding (an entry stored by a Numba process is found by a process without it)."""
    import llvmlite.binding as ll

    direct = native._DirectLLVM.load()
    if direct is None:
        pytest.skip("no direct path for this llvmlite or platform")
    assert native._machine(direct) == native._machine(ll)
