"""GGUF out, through gguf.GGUFWriter, one tensor at a time.

The header and every tensor's info are written first (the plan fixes each tensor's type and size before
any data is quantized), then tensor data is streamed in plan order. The file is written under a temporary
name in the target folder and renamed into place only when complete, so a failure or an interrupt never
leaves a partial output behind.

Metadata arrays (a vocabulary and its merges: 10^5 strings) are packed in bulk with numpy, to the bytes
gguf-py's per-element packing gives (``_pack_array``).
"""

from __future__ import annotations

import os
import struct
from itertools import repeat
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from gguf import GGUFEndian, GGUFValueType, GGUFWriter

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


class _Writer(GGUFWriter):
    """gguf-py's writer with metadata arrays of a known element type packed in bulk."""

    def _pack_val(self, val: Any, vtype: GGUFValueType, add_vtype: bool,
                  sub_type: GGUFValueType | None = None) -> bytes:
        if vtype == GGUFValueType.ARRAY and sub_type is not None and self.endianess == GGUFEndian.LITTLE:
            packed = _pack_array(val, sub_type)
            if packed is not None:
                return (struct.pack("<I", vtype) if add_vtype else b"") + packed
        if isinstance(val, np.ndarray):
            val = val.tolist()
        return super()._pack_val(val, vtype, add_vtype, sub_type)


def _add_kv(writer: GGUFWriter, key: str, value: Any, vtype: GGUFValueType | None,
            sub_type: GGUFValueType | None) -> None:
    if vtype is None:
        vtype = value_type(value)
    if vtype == GGUFValueType.ARRAY:
        if not isinstance(value, (np.ndarray, list, StringRecords)):
            value = list(value)  # (a list as it is: a PackedStrings keeps its bytes)
        writer.add_key_value(key, value, vtype, sub_type=sub_type)
    else:
        if isinstance(value, np.generic):
            value = value.item()
        writer.add_key_value(key, value, vtype)


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
    block by an exception) removes the temporary file."""

    def __init__(self, path: Path, architecture: str, *, alignment: int | None = None):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.qtool-tmp")
        self._writer = _Writer(path=None, arch=architecture)
        if alignment is not None and alignment != 32:
            self._writer.add_custom_alignment(alignment)
        self._expected: list[tuple[str, int]] = []
        self._next = 0
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
        if key in self._writer.kv_data[0]:
            del self._writer.kv_data[0][key]
        _add_kv(self._writer, key, value, vtype, sub_type)

    def add_tensor(self, name: str, shape: tuple[int, ...], qtype: QType) -> int:
        """Declare a tensor (numpy-order element shape); returns its size in bytes."""
        block, size = QUANT_SIZES[qtype]
        if shape[-1] % block:
            raise FormatError(f"{name}: row of {shape[-1]} does not fit {qtype.name} blocks of {block}")
        nbytes = int(np.prod(shape[:-1], dtype=np.int64)) * (shape[-1] // block * size)
        # GGUFWriter takes the element shape as it is for any tensor dtype but uint8 (whose byte shape it
        # would convert through its own size table, which lacks the types gguf-py does not know)
        self._writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
        self._expected.append((name, nbytes))
        return nbytes

    def data_offset(self) -> int:
        """Where tensor data will start (header, metadata and tensor infos as declared so far, padded to
        the alignment), computed without writing; each tensor then takes its bytes padded to the alignment."""
        w = self._writer
        n = 4 + 4 + 8 + 8  # magic, version, tensor count, key/value count
        for key, val in w.kv_data[0].items():
            n += len(w._pack_val(key, GGUFValueType.STRING, add_vtype=False))
            size = None
            if val.type == GGUFValueType.ARRAY and val.sub_type == GGUFValueType.STRING and len(val.value):
                size = _strings_size(val.value)  # a vocabulary: 10^5 strings, counted, not packed
            if size is None:
                n += len(w._pack_val(val.value, val.type, add_vtype=True, sub_type=val.sub_type))
            else:
                n += 4 + 4 + 8 + size  # value type, element type, count, elements
        for name, ti in w.tensors[0].items():
            n += len(w._pack_val(name, GGUFValueType.STRING, add_vtype=False)) + 4 + 8 * len(ti.shape) + 4 + 8
        return GGUFWriter.ggml_pad(n, w.data_alignment)

    @property
    def alignment(self) -> int:
        return self._writer.data_alignment

    def begin(self) -> None:
        """Open the temporary file and write header, metadata and tensor infos."""
        self._started = True
        self._writer.write_header_to_file(path=self.tmp)
        self._writer.write_kv_data_to_file()
        self._writer.write_ti_data_to_file()

    def write(self, name: str, data: np.ndarray) -> None:
        expected_name, nbytes = self._expected[self._next]
        if name != expected_name or data.nbytes != nbytes:
            raise RuntimeError(f"tensor {name} ({data.nbytes} bytes) written where {expected_name} "
                               f"({nbytes} bytes) was declared")
        self._writer.write_tensor_data(np.ascontiguousarray(data).view(np.uint8).reshape(-1))
        self._next += 1

    def commit(self) -> Path:
        if self._next != len(self._expected):
            raise RuntimeError(f"{len(self._expected) - self._next} declared tensors were never written")
        self._writer.flush()
        self._writer.close()
        os.replace(self.tmp, self.path)
        self._started = False
        return self.path

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            self._started = False
            try:
                self.tmp.unlink()
            except FileNotFoundError:
                pass
