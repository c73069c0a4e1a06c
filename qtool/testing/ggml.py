"""ggml itself as the oracle: its quantizers and dequantizers called through ctypes.

The library is the ``libggml-base.so`` that llama-cpp-python (pinned to 0.3.36, the reference build)
ships. Tests and benchmarks use this module; qtool itself never does. Types are gguf-py's, qtool's own
for those gguf-py lacks (``qtool.formats.ggml_types``), or plain ggml type numbers.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from qtool.formats.ggml_types import QUANT_SIZES, QType, ggml_type


class _TypeTraits(ctypes.Structure):
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


#: types ggml_quantize_chunk's switch does not handle (dot-product partners, not storage types)
_NOT_IN_QUANTIZE_CHUNK = {GGMLQuantizationType.Q8_1, GGMLQuantizationType.Q8_K, GGMLQuantizationType.F64,
                          GGMLQuantizationType.I8, GGMLQuantizationType.I16, GGMLQuantizationType.I32,
                          GGMLQuantizationType.I64}

_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


def library_path() -> Path | None:
    """Where libggml-base.so of the installed llama-cpp-python lies, or None."""
    override = os.environ.get("QTOOL_GGML_LIB")
    if override:
        return Path(override)
    try:
        import importlib.util

        spec = importlib.util.find_spec("llama_cpp")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    lib = Path(list(spec.submodule_search_locations)[0]) / "lib" / "libggml-base.so"
    return lib if lib.exists() else None


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    path = library_path()
    if path is None:
        raise RuntimeError("llama-cpp-python (the ggml oracle) is not installed: pip install 'qtool[oracle]'")
    lib = ctypes.CDLL(str(path))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    return lib


def available() -> bool:
    """True where the oracle library can be loaded."""
    return problem() is None


#: the llama-cpp-python release whose ggml and llama.cpp are the reference build
PINNED_VERSION = "0.3.36"


def installed_version() -> str | None:
    """llama-cpp-python's version as pip recorded it, or None (read without importing the package)."""
    from importlib import metadata

    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return None


def problem() -> str | None:
    """Why the oracle cannot be used here (not installed, another release, library not found), or None."""
    if os.environ.get("QTOOL_GGML_LIB"):
        version = PINNED_VERSION  # an explicitly named library is taken as the reference build
    else:
        version = installed_version()
        if version is None:
            return "llama-cpp-python (the ggml oracle) is not installed: pip install 'qtool[oracle]'"
        if version != PINNED_VERSION:
            return f"llama-cpp-python {version} is installed, but the reference build is {PINNED_VERSION}"
    try:
        _lib()
    except (RuntimeError, OSError) as e:
        return f"libggml-base.so could not be loaded: {e}"
    return None


def _c_name(qtype: QType) -> str:
    """ggml's spelling in function names: Q8_K -> q8_K."""
    return qtype.name[0].lower() + qtype.name[1:]


def _exported(name: str):
    """An exported row function of libggml-base (src, dst, n) by name, or None."""
    fn = getattr(_lib(), name, None)
    if fn is not None:
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        fn.restype = None
    return fn


def requires_imatrix(qtype: QType | int) -> bool:
    return bool(_lib().ggml_quantize_requires_imatrix(int(qtype)))


def quantize(qtype: QType | int, data: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """ggml_quantize_chunk over all rows of ``data`` (float32 [nrows, n_per_row]) -> uint8 [nrows, row_bytes]."""
    qtype = ggml_type(int(qtype))
    row_ref = _exported(f"quantize_row_{_c_name(qtype)}_ref") if qtype in _NOT_IN_QUANTIZE_CHUNK else None
    if qtype in _NOT_IN_QUANTIZE_CHUNK and (row_ref is None or imatrix is not None):
        # ggml_quantize_chunk aborts the whole process on these (GGML_ABORT), so refuse politely
        raise ValueError(f"ggml_quantize_chunk has no {qtype.name} case, and its quantize_row_*_ref "
                         f"{'takes no importance vector' if row_ref else 'is not exported here'}")
    src = np.ascontiguousarray(data, dtype=np.float32)
    if src.ndim == 1:
        src = src.reshape(1, -1)
    nrows, n_per_row = src.shape
    block, size = QUANT_SIZES[qtype]
    assert n_per_row % block == 0, f"{qtype.name}: row of {n_per_row} is not a multiple of {block}"
    row_bytes = n_per_row // block * size
    dst = np.zeros((nrows, row_bytes), dtype=np.uint8)
    imat = None
    if imatrix is not None:
        imat = np.ascontiguousarray(imatrix, dtype=np.float32)
        assert imat.shape == (n_per_row,)
    if row_ref is not None:  # Q8_K: the reference row function over all rows at once
        row_ref(src.ctypes.data, dst.ctypes.data, src.size)
        return dst
    written = _lib().ggml_quantize_chunk(int(qtype), src.ctypes.data, dst.ctypes.data, 0, nrows, n_per_row,
                                         None if imat is None else imat.ctypes.data)
    assert written == dst.nbytes, (written, dst.nbytes)
    return dst


def dequantize(qtype: QType | int, data: np.ndarray, n_per_row: int) -> np.ndarray:
    """The type's to_float over uint8 [nrows, row_bytes] -> float32 [nrows, n_per_row]."""
    qtype = ggml_type(int(qtype))
    raw = np.ascontiguousarray(data, dtype=np.uint8)
    nrows = raw.size // (raw.shape[-1] if raw.ndim > 1 else raw.size)
    out = np.empty((nrows, n_per_row), dtype=np.float32)
    traits = _lib().ggml_get_type_traits(int(qtype)).contents
    if qtype == GGMLQuantizationType.F32:
        return raw.view(np.float32).reshape(nrows, n_per_row).copy()
    # not in ggml-base's trait table (Q8_K): the exported dequantize_row_<type> by name
    fn = _TO_FLOAT(traits.to_float) if traits.to_float else _exported(f"dequantize_row_{_c_name(qtype)}")
    assert fn is not None, f"ggml has no to_float for {qtype.name}"
    fn(raw.ctypes.data, out.ctypes.data, nrows * n_per_row)
    return out
