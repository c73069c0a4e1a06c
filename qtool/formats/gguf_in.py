"""GGUF in, over gguf-py's memory-mapped GGUFReader, after qtool's own bounds check of the header.

GGUFReader trusts the lengths it reads: a string or array length past the end of the file yields short
views, and a huge array count makes it loop for ever. So before handing a file to it, ``scan_header``
walks the same layout with every length checked against the bytes that remain::

    magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
    n_kv x      (string key | u32 type | value)           string = u64 length + UTF-8 bytes
                                                          array  = u32 type + u64 count + values
    n_tensors x (string name | u32 n_dims | n_dims x u64 ne | u32 ggml type | u64 offset)
    padding to general.alignment (default 32) | tensor data, each at data start + offset

and checks each tensor's type, shape and byte span lie inside the file without overlapping.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType

from qtool.errors import FormatError, QuantError
from qtool.formats.ggml_types import QUANT_SIZES, ggml_type
from qtool.formats.source import ModelSource, TensorInfo, byte_shape

GGML_MAX_DIMS = 4
DEFAULT_ALIGNMENT = 32
#: GGUFReader makes a Python object per array element, so an array of 100M bytes would cost ~10 GB of
#: memory. The largest real arrays (vocabularies, merges) hold well under a million entries.
MAX_ARRAY_LEN = 1 << 24
_SCALAR_SIZES = {
    GGUFValueType.UINT8: 1, GGUFValueType.INT8: 1, GGUFValueType.BOOL: 1,
    GGUFValueType.UINT16: 2, GGUFValueType.INT16: 2,
    GGUFValueType.UINT32: 4, GGUFValueType.INT32: 4, GGUFValueType.FLOAT32: 4,
    GGUFValueType.UINT64: 8, GGUFValueType.INT64: 8, GGUFValueType.FLOAT64: 8,
}
#: ggml's element types that are plain numbers; loaded by a cast rather than a dequantizer.
_PLAIN = {
    GGMLQuantizationType.F32: "<f4", GGMLQuantizationType.F16: "<f2", GGMLQuantizationType.F64: "<f8",
    GGMLQuantizationType.I8: "i1", GGMLQuantizationType.I16: "<i2", GGMLQuantizationType.I32: "<i4",
    GGMLQuantizationType.I64: "<i8",
}


@dataclass(frozen=True)
class ScannedTensor:
    name: str
    ne: tuple[int, ...]  # ggml order
    qtype: GGMLQuantizationType
    start: int           # absolute file offset
    nbytes: int


class _Cursor:
    """Reads little-endian fields from a buffer, failing with the file named past its end."""

    def __init__(self, buf, path: Path):
        self.buf, self.path, self.pos = buf, path, 0
        self.size = len(buf)

    def fail(self, what: str) -> FormatError:
        return FormatError(f"{self.path}: {what}")

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise self.fail(f"truncated in the header: {what} needs {n} bytes at offset {self.pos}, "
                            f"{self.size - self.pos} remain")

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = struct.unpack_from("<I", self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = struct.unpack_from("<Q", self.buf, self.pos)
        self.pos += 8
        return v

    def string(self, what: str) -> bytes:
        n = self.u64(f"{what}'s length")
        self.need(n, f"{what} ({n} bytes)")
        s = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return s

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.pos += n


def scan_header(path: Path) -> tuple[int, list[ScannedTensor]]:
    """Walk and bounds-check a GGUF header. Returns (alignment, tensors); raises FormatError."""
    size = os.path.getsize(path)
    if size < 24:
        raise FormatError(f"{path}: {size} bytes is too short for a GGUF header")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise FormatError(f"{path}: not a GGUF file (magic {bytes(buf[:4])!r})")
        (v_le,) = struct.unpack_from("<I", buf, 4)
        if not v_le & 0xFFFF:  # a byte-swapped version reads as v << 24
            raise FormatError(f"{path}: a big-endian GGUF file; qtool reads little-endian GGUF only")
        c = _Cursor(buf, path)
        c.pos = 4
        version = c.u32("version")
        if version not in (2, 3):
            raise c.fail(f"GGUF version {version} is not supported (2 and 3 are)")
        n_tensors = c.u64("tensor count")
        n_kv = c.u64("key/value count")
        # each key/value takes at least 8+1+4+1 bytes, each tensor info 8+1+4+8+4+8
        if n_kv * 14 > size or n_tensors * 33 > size:
            raise c.fail(f"claims {n_kv} key/values and {n_tensors} tensors, more than {size} bytes can hold")
        alignment = DEFAULT_ALIGNMENT
        keys: set[bytes] = set()
        for i in range(n_kv):
            key = c.string(f"key {i}")
            if not key:
                raise c.fail(f"key {i} is empty")
            if key in keys:
                raise c.fail(f"key {key.decode('utf-8', 'replace')!r} appears twice")
            keys.add(key)
            kname = key.decode("utf-8", "replace")
            vtype = _value_type(c, kname, c.u32(f"type of {kname!r}"))
            if vtype == GGUFValueType.ARRAY:
                etype = _value_type(c, kname, c.u32(f"element type of {kname!r}"))
                count = c.u64(f"length of {kname!r}")
                if etype == GGUFValueType.ARRAY:
                    raise c.fail(f"key {kname!r} is an array of arrays, which GGUF does not allow")
                if count > MAX_ARRAY_LEN:
                    raise c.fail(f"key {kname!r} claims {count} elements, more than qtool reads "
                                 f"({MAX_ARRAY_LEN})")
                if etype == GGUFValueType.STRING:
                    c.need(count * 8, f"{count} strings of {kname!r}")
                    for j in range(count):
                        c.skip(c.u64(f"{kname!r}[{j}]'s length"), f"{kname!r}[{j}]")
                else:
                    c.skip(count * _SCALAR_SIZES[etype], f"{count} values of {kname!r}")
            elif vtype == GGUFValueType.STRING:
                c.string(f"value of {kname!r}")
            else:
                if kname == "general.alignment":
                    if vtype != GGUFValueType.UINT32:
                        raise c.fail(f"general.alignment is {vtype.name}, not UINT32")
                    alignment = c.u32("general.alignment")
                    if alignment == 0 or alignment & (alignment - 1):
                        raise c.fail(f"general.alignment {alignment} is not a power of two")
                else:
                    c.skip(_SCALAR_SIZES[vtype], f"value of {kname!r}")

        infos = []
        names: set[str] = set()
        for i in range(n_tensors):
            raw_name = c.string(f"name of tensor {i}")
            try:
                name = raw_name.decode("utf-8")
            except UnicodeDecodeError:
                raise c.fail(f"tensor {i}'s name is not UTF-8") from None
            if name in names:
                raise c.fail(f"tensor {name!r} appears twice")
            names.add(name)
            n_dims = c.u32(f"dimension count of {name!r}")
            if not 1 <= n_dims <= GGML_MAX_DIMS:
                raise c.fail(f"tensor {name!r} has {n_dims} dimensions (ggml allows 1 to {GGML_MAX_DIMS})")
            ne = tuple(c.u64(f"shape of {name!r}") for _ in range(n_dims))
            raw_type = c.u32(f"type of {name!r}")
            offset = c.u64(f"data offset of {name!r}")
            try:
                qtype = ggml_type(raw_type)
                block, type_size = QUANT_SIZES[qtype]
            except (ValueError, KeyError):
                raise c.fail(f"tensor {name!r} has unknown ggml type {raw_type}") from None
            if any(d >= 1 << 62 for d in ne) or np.prod(ne, dtype=object) >= 1 << 62:
                raise c.fail(f"tensor {name!r} has an absurd shape {list(ne)} (ggml order)")
            if ne[0] % block:
                raise c.fail(f"tensor {name!r}: row of {ne[0]} is not a whole number of {qtype.name} blocks "
                             f"of {block}")
            if offset % alignment:
                raise c.fail(f"tensor {name!r}: data offset {offset} is not a multiple of the alignment {alignment}")
            nbytes = int(np.prod(ne, dtype=object)) // block * type_size
            infos.append((name, ne, qtype, offset, nbytes))

        data_start = c.pos + (-c.pos % alignment)
        tensors = []
        for name, ne, qtype, offset, nbytes in infos:
            start = data_start + offset
            if start + nbytes > size:
                raise c.fail(f"tensor {name!r}: data [{start}, {start + nbytes}) runs past the end of the file "
                             f"({size} bytes); truncated?")
            tensors.append(ScannedTensor(name, ne, qtype, start, nbytes))
        spans = sorted((t for t in tensors if t.nbytes), key=lambda t: t.start)
        for a, b in zip(spans, spans[1:]):
            if b.start < a.start + a.nbytes:
                raise c.fail(f"tensors {a.name!r} and {b.name!r} overlap")
        return alignment, tensors


def _value_type(c: _Cursor, key: str, raw: int) -> GGUFValueType:
    try:
        return GGUFValueType(raw)
    except ValueError:
        raise c.fail(f"key {key!r} has unknown value type {raw}") from None


class GGUFSource(ModelSource):
    format = "gguf"

    def __init__(self, path: str | Path):
        super().__init__(Path(path))
        try:
            _, scanned = scan_header(self.path)
        except OSError as e:
            raise FormatError(f"{self.path}: cannot read: {e.strerror or e}") from None
        try:
            self._reader: GGUFReader | None = GGUFReader(self.path, "c")  # copy-on-write: writable views, file untouched
        except Exception as e:  # GGUFReader raises ValueError, KeyError, IndexError, ... on bad input
            raise FormatError(f"{self.path}: gguf-py cannot read it: {type(e).__name__}: {e}") from None
        self._metadata()
        by_name = {t.name: t for t in self._reader.tensors}
        infos = []
        self._data: dict[str, np.ndarray] = {}
        for s in scanned:
            t = by_name.get(s.name)
            if t is None or t.data_offset != s.start or t.n_bytes != s.nbytes:  # the two parsers disagree
                raise FormatError(f"{self.path}: tensor {s.name!r} reads differently from gguf-py")
            shape = tuple(int(d) for d in reversed(s.ne))
            infos.append(TensorInfo(s.name, s.name, shape, s.qtype, s.nbytes))
            self._data[s.name] = t.data
        self._set_tensors(infos)
        arch = self.metadata.get("general.architecture")
        self.architecture = arch if isinstance(arch, str) else None

    def _metadata(self) -> None:
        assert self._reader is not None
        for key, f in self._reader.fields.items():
            if key.startswith("GGUF."):  # the reader's own entries for the header counts
                continue
            vtype = f.types[0]
            self.metadata_types[key] = vtype
            if vtype == GGUFValueType.ARRAY:
                sub = GGUFValueType(int(f.parts[3][0]))  # parts: key length, key, type, element type, ...
                self.metadata_sub_types[key] = sub
                if sub == GGUFValueType.STRING:
                    self.metadata[key] = [_text(f.parts[i]) for i in f.data]
                else:
                    parts = [f.parts[i] for i in f.data]
                    arr = np.concatenate(parts) if parts else np.zeros(0, np.dtype(_NP_TYPES[sub]))
                    self.metadata[key] = arr.astype(arr.dtype.newbyteorder("="))
            elif vtype == GGUFValueType.STRING:
                self.metadata[key] = _text(f.parts[-1])
            else:
                self.metadata[key] = f.parts[-1][0].item()

    def _raw(self, info: TensorInfo) -> np.ndarray:
        return self._data[info.name].view(np.uint8).reshape(byte_shape(info.shape, info.qtype))

    def _load(self, info: TensorInfo) -> np.ndarray:
        raw = self._raw(info)
        if info.qtype in _PLAIN:
            # F32 comes back as a view of the (copy-on-write) map: no copy of the tensor
            return raw.view(_PLAIN[info.qtype]).astype(np.float32, copy=False).reshape(info.shape)
        out = _dequantize(raw, info, self.path)
        return np.ascontiguousarray(out, dtype=np.float32).reshape(info.shape)

    def close(self) -> None:
        self._reader = None
        self._data = {}


_NP_TYPES = {t: GGUFReader.gguf_scalar_to_np[t] for t in GGUFReader.gguf_scalar_to_np}


def _text(part: np.ndarray) -> str | bytes:
    b = part.tobytes()
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b  # kept as bytes so a writer can put back exactly what was there


def _dequantize(raw: np.ndarray, info: TensorInfo, path: Path) -> np.ndarray:
    """qtool's dequantizer for the type where one is registered, else gguf-py's."""
    from qtool import quantizers

    try:
        q = quantizers.get(info.qtype)
    except QuantError:
        q = None
    if q is not None:
        try:
            return q.dequantize(raw, name=info.name)
        except NotImplementedError:
            pass
    import gguf.quants

    try:
        return gguf.quants.dequantize(raw, info.qtype)
    except NotImplementedError:
        raise FormatError(f"{path}: tensor {info.name!r} is {info.qtype.name}, which neither qtool nor gguf-py "
                          f"can dequantize") from None
