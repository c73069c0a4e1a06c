"""GGUF out, one tensor at a time, in the layout gguf-py's GGUFWriter (and llama.cpp) give a file.

The header and every tensor's info are written first (the plan fixes each tensor's type and size before
any data is quantized), then tensor data is streamed in plan order. The file is written under a temporary
name in the target folder and renamed into place only when complete, so a failure or an interrupt never
leaves a partial output behind.

Metadata arrays (a vocabulary and its merges: 10^5 strings) are packed in bulk with numpy, to the bytes
gguf-py's per-element packing gives (``_pack_array``); every other value as that packing does
(``pack_value``). Writing here, not through GGUFWriter, spares a conversion from GGUF importing gguf-py's
writer module and what it imports (~8 ms of start-up).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from itertools import repeat
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from gguf import GGUFValueType

from qtool.errors import FormatError, UsageError
from qtool.formats.gguf_in import PackedStrings, StringRecords
from qtool.formats.ggml_types import QUANT_SIZES, QType

# Keys the writer itself owns, or that describe the input file rather than the model.
_DROPPED_KEYS = {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count", "general.architecture",
                 "general.alignment", "split.no", "split.count", "split.tensors.count"}


def value_type(value: Any) -> GGUFValueType:
    """The GGUF type gguf-py would pick for a Python value (used when the source gave none)."""
    if isinstance(value, (list, tuple, np.ndarray, StringRecords)):
        return GGUFValueType.ARRAY
    return GGUFValueType.get_type(value)


_NUMBER_DTYPES = {
    GGUFValueType.UINT8: "u1", GGUFValueType.INT8: "i1", GGUFValueType.UINT16: "<u2", GGUFValueType.INT16: "<i2",
    GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4", GGUFValueType.UINT64: "<u8",
    GGUFValueType.INT64: "<i8", GGUFValueType.FLOAT32: "<f4", GGUFValueType.FLOAT64: "<f8",
}


def _pack_numbers(value: Any, sub: GGUFValueType) -> bytes | None:
    """The elements of a number array as gguf-py's struct.pack of each would give them; None where only
    that per-element packing can tell (mixed or out-of-range values: it raises its own error)."""
    arr = np.asarray(value)
    if sub == GGUFValueType.BOOL:  # struct's "?" packs truthiness as 0/1
        return (arr != 0).view(np.uint8).tobytes() if arr.dtype.kind in "biuf" else None
    dtype = np.dtype(_NUMBER_DTYPES[sub])
    if arr.dtype == dtype.newbyteorder("="):
        return arr.astype(dtype, copy=False).tobytes()
    if dtype.kind in "iu":
        if arr.dtype.kind not in "biu" or arr.size and (arr.min() < np.iinfo(dtype).min or
                                                         arr.max() > np.iinfo(dtype).max):
            return None
        return arr.astype(dtype).tobytes()
    if arr.dtype.kind not in "biuf":
        return None
    wide = arr.astype(np.float64)  # struct packs a Python float (a double), rounding it to float32
    with np.errstate(over="ignore"):
        out = wide.astype(dtype)
    if np.any(np.isinf(out) & ~np.isinf(wide)):
        return None  # struct raises OverflowError here
    return out.tobytes()


def _pack_strings(value: Any) -> bytes | None:
    """u64 length + UTF-8 bytes of each string (bytes elements as they are); None for non-strings."""
    if isinstance(value, (PackedStrings, StringRecords)) and value.packed is not None:
        return value.packed  # as read (a GGUF's array unchanged since, a tokenizer.json's in bulk)
    n = len(value)
    if n and all(map(isinstance, value, repeat(str, n))):
        try:
            joined = "\0".join(value).encode("utf-8")
        except UnicodeEncodeError:
            return None  # a lone surrogate: let gguf-py raise
        blob = np.frombuffer(joined, np.uint8)
        seps = np.flatnonzero(blob == 0)
        if seps.size == n - 1:  # no string holds a NUL: the separators are exactly the joins
            lengths = np.diff(np.concatenate(([-1], seps, [blob.size]))) - 1
            keep = np.ones(blob.size, dtype=bool)
            keep[seps] = False
            payload = blob[keep]
        else:
            encoded = [v.encode("utf-8") for v in value]
            lengths = np.fromiter(map(len, encoded), np.int64, n)
            payload = np.frombuffer(b"".join(encoded), np.uint8)
    elif all(map(isinstance, value, repeat((str, bytes, bytearray), n))):
        try:
            encoded = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in value]
        except UnicodeEncodeError:
            return None
        lengths = np.fromiter(map(len, encoded), np.int64, n)
        payload = np.frombuffer(b"".join(encoded), np.uint8)
    else:
        return None
    starts = np.zeros(n, np.int64)
    np.cumsum(lengths[:-1] + 8, out=starts[1:])
    out = np.empty(8 * n + payload.size, np.uint8)
    fields = (starts[:, None] + np.arange(8)).reshape(-1)
    out[fields] = lengths.astype("<u8").view(np.uint8)
    in_text = np.ones(out.size, dtype=bool)
    in_text[fields] = False
    out[in_text] = payload
    return out.tobytes()


def _strings_size(value: Any) -> int | None:
    """The packed size of a string array's elements (u64 length + UTF-8 bytes each), counted without
    packing them; None unless every element is a str."""
    if isinstance(value, (PackedStrings, StringRecords)) and value.packed is not None:
        return len(value.packed)
    n = len(value)
    if not all(map(isinstance, value, repeat(str, n))):
        return None
    # surrogatepass: a lone surrogate counts 3 bytes here; packing it raises later, as gguf-py does
    return 8 * n + len("".join(value).encode("utf-8", "surrogatepass"))


def _pack_array(value: Any, sub: GGUFValueType) -> bytes | None:
    """Element type, count and elements of a metadata array; None where gguf-py should pack it."""
    if len(value) == 0:
        body = b""  # llama.cpp writes empty arrays (gguf-py's packing refuses them)
    elif sub == GGUFValueType.STRING:
        body = _pack_strings(value)
    elif sub == GGUFValueType.BOOL or sub in _NUMBER_DTYPES:
        body = _pack_numbers(value, sub)
    else:
        return None
    return None if body is None else struct.pack("<IQ", sub, len(value)) + body


#: struct formats of the scalar value types (little-endian; bool packs truthiness as 0/1)
_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d", GGUFValueType.BOOL: "?",
}
#: "GGUF" as the little-endian u32 a file starts with, and the version written
_MAGIC, _VERSION = 0x46554747, 3
_DEFAULT_ALIGNMENT = 32


def pack_value(value: Any, vtype: GGUFValueType, sub_type: GGUFValueType | None = None) -> bytes:
    """A metadata value as GGUF stores it after its key: its type (u32), then the value, with the bytes and the
    errors gguf-py's GGUFWriter gives (struct.error for a number out of range, ValueError for what it refuses);
    arrays of a known element type packed in bulk (``_pack_array``)."""
    return struct.pack("<I", vtype) + _pack_body(value, vtype, sub_type)


def _pack_body(value: Any, vtype: GGUFValueType, sub_type: GGUFValueType | None = None) -> bytes:
    if vtype == GGUFValueType.ARRAY and sub_type is not None:
        packed = _pack_array(value, sub_type)
        if packed is not None:
            return packed
    if isinstance(value, np.ndarray):
        value = value.tolist()
    fmt = _SCALAR_FORMATS.get(vtype)
    if fmt is not None:
        return struct.pack(fmt, value)
    if vtype == GGUFValueType.STRING:
        return _pack_string(value)
    if vtype != GGUFValueType.ARRAY:
        raise ValueError("Invalid GGUF metadata value type or value")
    if not isinstance(value, Sequence):
        raise ValueError("Invalid GGUF metadata array, expecting sequence")
    if len(value) == 0:
        raise ValueError("Invalid GGUF metadata array. Empty array")
    if sub_type is not None:
        element = sub_type
    elif isinstance(value, bytes):
        element = GGUFValueType.UINT8
    else:
        element = GGUFValueType.get_type(value[0])
        if not all(GGUFValueType.get_type(v) is element for v in value[1:]):
            raise ValueError("All items in a GGUF array should be of the same type")
    return struct.pack("<IQ", element, len(value)) + b"".join(_pack_body(v, element) for v in value)


def _pack_string(value: str | bytes) -> bytes:
    """u64 length + UTF-8 bytes (bytes as they are)."""
    encoded = value.encode("utf-8") if isinstance(value, str) else value
    return struct.pack("<Q", len(encoded)) + bytes(encoded)  # (len() of anything else raises, as in gguf-py)


def _pad(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def _metadata_entry(value: Any, vtype: GGUFValueType | None,
                    sub_type: GGUFValueType | None) -> tuple[Any, GGUFValueType, GGUFValueType | None]:
    """(value, type, element type) as the file will hold them; the type gguf-py would pick where none is given."""
    if vtype is None:
        vtype = value_type(value)
    if vtype == GGUFValueType.ARRAY:
        if not isinstance(value, (np.ndarray, list, bytes, StringRecords)):
            value = list(value)  # (a list as it is: a PackedStrings keeps its bytes; bytes are u8 elements)
        return value, vtype, sub_type
    if isinstance(value, np.generic):
        value = value.item()
    return value, vtype, None


def check_output_path(output: Path, inputs: Iterable[Path]) -> None:
    """Refuse to write over an input file, or into a folder that does not exist."""
    out = Path(output)
    for p in inputs:
        p = Path(p)
        if out.exists() and p.exists() and os.path.samefile(out, p):
            raise UsageError(f"{out}: refusing to overwrite the input file; choose another -o")
        if out.resolve() == p.resolve():
            raise UsageError(f"{out}: refusing to overwrite the input; choose another -o")
    if out.exists() and out.is_dir():
        raise UsageError(f"{out}: is a folder; give a file name with -o")
    if not out.parent.exists():
        raise UsageError(f"{out.parent}: output folder does not exist")


class GGUFOut:
    """Write a GGUF file: ``add_metadata`` and ``add_tensor`` infos, then ``begin()``, then ``write()``
    each tensor's bytes in the same order, then ``commit()``. ``abort()`` (or leaving the ``with``
    block by an exception) removes the temporary file.

    The layout is GGUFWriter's: header (magic, version 3, tensor and key counts), ``general.architecture``
    first and then the keys in the order added (a key added again moves to the end), the tensor infos
    (name, dimensions in ggml's order, type, offset), zeros to the alignment, and each tensor's bytes padded
    with zeros to the alignment."""

    def __init__(self, path: Path, architecture: str, *, alignment: int | None = None):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.qtool-tmp")
        self._kv: dict[str, tuple[Any, GGUFValueType, GGUFValueType | None]] = {
            "general.architecture": (architecture, GGUFValueType.STRING, None)}
        self.alignment = _DEFAULT_ALIGNMENT
        if alignment is not None and alignment != _DEFAULT_ALIGNMENT:
            if alignment <= 0 or alignment & (alignment - 1):
                raise ValueError("Invalid alignment: must be a non-zero power of two")
            self.alignment = int(alignment)
            self._kv["general.alignment"] = (self.alignment, GGUFValueType.UINT32, None)
        self._tensors: dict[str, tuple[tuple[int, ...], int, int]] = {}  # name -> (shape, type, bytes)
        self._expected: list[tuple[str, int]] = []
        self._next = 0
        self._file = None
        self._started = False

    def __enter__(self) -> "GGUFOut":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self._started:
            self.abort()

    def add_metadata(self, key: str, value: Any, vtype: GGUFValueType | None = None,
                     sub_type: GGUFValueType | None = None) -> None:
        if key in _DROPPED_KEYS:
            return
        self._kv.pop(key, None)
        self._kv[key] = _metadata_entry(value, vtype, sub_type)

    def add_tensor(self, name: str, shape: tuple[int, ...], qtype: QType) -> int:
        """Declare a tensor (numpy-order element shape); returns its size in bytes."""
        block, size = QUANT_SIZES[qtype]
        if shape[-1] % block:
            raise FormatError(f"{name}: row of {shape[-1]} does not fit {qtype.name} blocks of {block}")
        if name in self._tensors:
            raise ValueError(f"Duplicated tensor name {name!r}")
        nbytes = int(np.prod(shape[:-1], dtype=np.int64)) * (shape[-1] // block * size)
        self._tensors[name] = (tuple(int(d) for d in shape), int(qtype), nbytes)
        self._expected.append((name, nbytes))
        return nbytes

    def data_offset(self) -> int:
        """Where tensor data will start (header, metadata and tensor infos as declared so far, padded to
        the alignment), computed without writing; each tensor then takes its bytes padded to the alignment."""
        n = 4 + 4 + 8 + 8  # magic, version, tensor count, key/value count
        for key, (value, vtype, sub) in self._kv.items():
            n += 8 + len(key.encode("utf-8"))
            size = None
            if vtype == GGUFValueType.ARRAY and sub == GGUFValueType.STRING and len(value):
                size = _strings_size(value)  # a vocabulary: 10^5 strings, counted, not packed
            n += len(pack_value(value, vtype, sub)) if size is None else 4 + 4 + 8 + size
        for name, (shape, _, _) in self._tensors.items():
            n += 8 + len(name.encode("utf-8")) + 4 + 8 * len(shape) + 4 + 8
        return _pad(n, self.alignment)

    def _head(self) -> bytes:
        """Header, metadata and tensor infos, zeros to the alignment: the bytes before the first tensor's."""
        parts = [struct.pack("<IIQQ", _MAGIC, _VERSION, len(self._tensors), len(self._kv))]
        for key, (value, vtype, sub) in self._kv.items():
            parts.append(_pack_string(key))
            parts.append(pack_value(value, vtype, sub))
        offset = 0
        for name, (shape, qtype, nbytes) in self._tensors.items():
            parts.append(_pack_string(name))
            parts.append(struct.pack(f"<I{len(shape)}QIQ", len(shape), *reversed(shape), qtype, offset))
            offset += _pad(nbytes, self.alignment)
        n = sum(map(len, parts))
        parts.append(bytes(_pad(n, self.alignment) - n))
        return b"".join(parts)

    def begin(self) -> None:
        """Open the temporary file and write header, metadata and tensor infos."""
        head = self._head()  # (a value that cannot be packed raises before any file exists)
        self._started = True
        self._file = open(self.tmp, "wb")
        self._file.write(head)

    def write(self, name: str, data: np.ndarray) -> None:
        expected_name, nbytes = self._expected[self._next]
        if name != expected_name or data.nbytes != nbytes:
            raise RuntimeError(f"tensor {name} ({data.nbytes} bytes) written where {expected_name} "
                               f"({nbytes} bytes) was declared")
        self._file.write(np.ascontiguousarray(data).view(np.uint8).reshape(-1).data)
        self._file.write(bytes(_pad(nbytes, self.alignment) - nbytes))
        self._next += 1

    def commit(self) -> Path:
        if self._next != len(self._expected):
            raise RuntimeError(f"{len(self._expected) - self._next} declared tensors were never written")
        self._file.close()
        self._file = None
        os.replace(self.tmp, self.path)
        self._started = False
        return self.path

    def abort(self) -> None:
        try:
            if self._file is not None:
                self._file.close()
        finally:
            self._file = None
            self._started = False
            try:
                self.tmp.unlink()
            except FileNotFoundError:
                pass
