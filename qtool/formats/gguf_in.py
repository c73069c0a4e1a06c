"""GGUF in: one bounds-checked pass over the header that validates and decodes it; tensor data memory-mapped.

::

    magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
    n_kv x      (string key | u32 type | value)           string = u64 length + UTF-8 bytes
                                                          array  = u32 type + u64 count + values
    n_tensors x (string name | u32 n_dims | n_dims x u64 ne | u32 ggml type | u64 offset)
    padding to general.alignment (default 32) | tensor data, each at data start + offset

Every length is checked against the bytes that remain before anything is read or allocated, so a truncated
or hostile header fails with a FormatError naming the file, never a hang or a huge allocation. Each
tensor's type, shape and byte span are checked to lie inside the file without overlapping.

Arrays are decoded in bulk: numbers as one numpy copy; strings (vocabularies and merges: 10^5 of them) by
locating every record with numpy and decoding them all with a single UTF-8 decode (``_string_array``).

The reader hands out bytes and their ggml type (``raw``) and widens plain number types (``load``); it does
not dequantize. Quantized tensors are dequantized above it, through the type registry
(``qtool.analysis.weights.load_floats``).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

from qtool.errors import FormatError
from qtool.formats.ggml_types import QUANT_SIZES, ggml_type
from qtool.formats.source import ModelSource, TensorInfo, byte_shape, half_words, widen

GGML_MAX_DIMS = 4
DEFAULT_ALIGNMENT = 32
#: The largest real arrays (vocabularies, merges) hold well under a million entries.
MAX_ARRAY_LEN = 1 << 24
_SCALARS = {  # value type -> (struct format, size, numpy dtype)
    GGUFValueType.UINT8: ("<B", 1, "u1"), GGUFValueType.INT8: ("<b", 1, "i1"), GGUFValueType.BOOL: ("<?", 1, "?"),
    GGUFValueType.UINT16: ("<H", 2, "<u2"), GGUFValueType.INT16: ("<h", 2, "<i2"),
    GGUFValueType.UINT32: ("<I", 4, "<u4"), GGUFValueType.INT32: ("<i", 4, "<i4"),
    GGUFValueType.FLOAT32: ("<f", 4, "<f4"),
    GGUFValueType.UINT64: ("<Q", 8, "<u8"), GGUFValueType.INT64: ("<q", 8, "<i8"),
    GGUFValueType.FLOAT64: ("<d", 8, "<f8"),
}
#: ggml's element types that hold plain numbers: ``load`` widens them to float32 (BF16 by a 16-bit shift,
#: as ggml_bf16_to_fp32 does). Every other type is quantized and comes out of the reader as bytes only.
PLAIN_TYPES = {
    GGMLQuantizationType.F32: "<f4", GGMLQuantizationType.F16: "<f2", GGMLQuantizationType.F64: "<f8",
    GGMLQuantizationType.BF16: "<u2",
    GGMLQuantizationType.I8: "i1", GGMLQuantizationType.I16: "<i2", GGMLQuantizationType.I32: "<i4",
    GGMLQuantizationType.I64: "<i8",
}
_HALF_WIDTH = {GGMLQuantizationType.F16: "F16", GGMLQuantizationType.BF16: "BF16"}
#: string arrays longer than this many bytes are walked record by record rather than located in bulk, which
#: holds a few bytes of scratch per byte of the array (a 150k-token vocabulary takes about 3 MB)
_BULK_WINDOW_MAX = 32 << 20


@dataclass(frozen=True)
class ScannedTensor:
    name: str
    ne: tuple[int, ...]  # ggml order
    qtype: GGMLQuantizationType
    start: int           # absolute file offset
    nbytes: int


@dataclass
class Header:
    """A GGUF header, validated and decoded. ``metadata`` holds str (bytes where not UTF-8), int, float,
    bool, a list of str/bytes for string arrays and a native-order numpy array for number arrays."""

    version: int
    alignment: int
    metadata: dict[str, Any]
    types: dict[str, GGUFValueType]
    sub_types: dict[str, GGUFValueType]
    tensors: list[ScannedTensor]


class _Cursor:
    """Reads little-endian fields from a buffer, failing with the file named past its end."""

    def __init__(self, buf, array: np.ndarray, path: Path):
        self.buf, self.array, self.path, self.pos = buf, array, path, 0
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
        s = self.buf[self.pos:self.pos + n]
        self.pos += n
        return s

    def scalar(self, vtype: GGUFValueType, what: str):
        fmt, n, _ = _SCALARS[vtype]
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def numbers(self, vtype: GGUFValueType, count: int, what: str) -> np.ndarray:
        _, n, dtype = _SCALARS[vtype]
        self.need(count * n, what)
        dt = np.dtype(dtype)
        out = self.array[self.pos:self.pos + count * n].view(dt).astype(dt.newbyteorder("="))  # a copy
        self.pos += count * n
        return out


def _text(b: bytes) -> str | bytes:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b  # kept as bytes so a writer can put back exactly what was there


def read_header(path: Path, buf, array: np.ndarray, *, bulk: bool = True) -> Header:
    """Validate and decode a GGUF header held in ``buf`` (a bytes-like of the whole file; ``array`` is the
    same bytes as a numpy uint8 array). Raises FormatError naming ``path``. ``bulk=False`` decodes string
    arrays record by record (the same result, slower; for tests)."""
    size = len(buf)
    if size < 24:
        raise FormatError(f"{path}: {size} bytes is too short for a GGUF header")
    if buf[:4] != b"GGUF":
        raise FormatError(f"{path}: not a GGUF file (magic {bytes(buf[:4])!r})")
    (v_le,) = struct.unpack_from("<I", buf, 4)
    if not v_le & 0xFFFF:  # a byte-swapped version reads as v << 24
        raise FormatError(f"{path}: a big-endian GGUF file; qtool reads little-endian GGUF only")
    c = _Cursor(buf, array, path)
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
    metadata: dict[str, Any] = {}
    types: dict[str, GGUFValueType] = {}
    sub_types: dict[str, GGUFValueType] = {}
    keys: set[bytes] = set()
    for i in range(n_kv):
        key = c.string(f"key {i}")
        if not key:
            raise c.fail(f"key {i} is empty")
        if key in keys:
            raise c.fail(f"key {key.decode('utf-8', 'replace')!r} appears twice")
        keys.add(key)
        try:
            kname = key.decode("utf-8")
        except UnicodeDecodeError:
            raise c.fail(f"key {i} ({key.decode('utf-8', 'replace')!r}) is not UTF-8") from None
        vtype = _value_type(c, kname, c.u32(f"type of {kname!r}"))
        if vtype == GGUFValueType.ARRAY:
            etype = _value_type(c, kname, c.u32(f"element type of {kname!r}"))
            count = c.u64(f"length of {kname!r}")
            if etype == GGUFValueType.ARRAY:
                raise c.fail(f"key {kname!r} is an array of arrays, which GGUF does not allow")
            if count > MAX_ARRAY_LEN:
                raise c.fail(f"key {kname!r} claims {count} elements, more than qtool reads ({MAX_ARRAY_LEN})")
            if etype == GGUFValueType.STRING:
                value: Any = _string_array(c, kname, count, bulk)
            else:
                value = c.numbers(etype, count, f"{count} values of {kname!r}")
            sub_types[kname] = etype
        elif vtype == GGUFValueType.STRING:
            value = _text(c.string(f"value of {kname!r}"))
        else:
            if kname == "general.alignment" and vtype != GGUFValueType.UINT32:
                raise c.fail(f"general.alignment is {vtype.name}, not UINT32")
            value = c.scalar(vtype, f"value of {kname!r}")
            if kname == "general.alignment":
                if value == 0 or value & (value - 1):
                    raise c.fail(f"general.alignment {value} is not a power of two")
                alignment = value
        types[kname] = vtype
        metadata[kname] = value

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
        n_elements = 1
        for d in ne:
            n_elements *= d
        if any(d >= 1 << 62 for d in ne) or n_elements >= 1 << 62:
            raise c.fail(f"tensor {name!r} has an absurd shape {list(ne)} (ggml order)")
        if ne[0] % block:
            raise c.fail(f"tensor {name!r}: row of {ne[0]} is not a whole number of {qtype.name} blocks "
                         f"of {block}")
        if offset % alignment:
            raise c.fail(f"tensor {name!r}: data offset {offset} is not a multiple of the alignment {alignment}")
        infos.append((name, ne, qtype, offset, n_elements // block * type_size))

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
    return Header(version, alignment, metadata, types, sub_types, tensors)


def _value_type(c: _Cursor, key: str, raw: int) -> GGUFValueType:
    try:
        return GGUFValueType(raw)
    except ValueError:
        raise c.fail(f"key {key!r} has unknown value type {raw}") from None


# -- arrays of strings ------------------------------------------------------------------------------------


class PackedStrings(list):
    """A GGUF array of strings as read, with ``packed``: its records' bytes as the file held them (u64
    length + bytes each), which a writer copies instead of encoding 10^5 strings again. Any change to the
    list drops ``packed`` (None: the writer then encodes the strings)."""

    __slots__ = ("packed",)

    def __init__(self, items, packed: bytes | None):
        super().__init__(items)
        self.packed = packed


def _forgets_packed(name: str):
    method = getattr(list, name)

    def changed(self, *args):
        self.packed = None
        return method(self, *args)

    changed.__name__ = name
    return changed


for _name in ("__setitem__", "__delitem__", "__iadd__", "__imul__", "append", "extend", "insert", "pop", "remove",
              "clear", "sort", "reverse"):
    setattr(PackedStrings, _name, _forgets_packed(_name))


class StringRecords(Sequence):
    """A GGUF array of strings held as its records' bytes (``packed``: u64 length + UTF-8 bytes each), which a
    writer copies; the strings themselves are decoded only when something reads them (a tokenizer.json's
    10^5 tokens go from its bytes to the GGUF's without becoming Python strings, formats.tokjson)."""

    __slots__ = ("packed", "_count", "_strings")

    def __init__(self, packed: bytes, count: int):
        self.packed, self._count, self._strings = packed, count, None

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):
        return self.strings()[index]

    def __iter__(self):
        return iter(self.strings())

    def __eq__(self, other):
        if isinstance(other, StringRecords):
            return self.packed == other.packed and self._count == other._count
        if isinstance(other, (list, tuple)):
            return self.strings() == list(other)
        return NotImplemented

    __hash__ = None

    def __repr__(self) -> str:
        return f"StringRecords({self._count} strings, {len(self.packed)} bytes)"

    def __reduce__(self):
        return StringRecords, (self.packed, self._count)

    def tolist(self) -> list:
        return list(self.strings())

    def strings(self) -> list:
        """The strings (str; bytes for one that is not UTF-8), decoded once."""
        if self._strings is None:
            from qtool.kernels import jsontext

            a = np.frombuffer(self.packed, np.uint8)
            starts, lengths = np.empty(self._count, np.int64), np.empty(self._count, np.int64)
            end = jsontext.record_spans(a if a.size else np.zeros(1, np.uint8), self._count, starts, lengths)
            if end != a.size:
                raise ValueError(f"{self!r}: its bytes are not {self._count} string records")
            out = _decode_records(a, starts - 8, lengths) if self._count else []
            if out is None:
                out = [_decoded(a[s:s + n].tobytes()) for s, n in zip(starts.tolist(), lengths.tolist())]
            self._strings = out
        return self._strings


def _decoded(raw: bytes):
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _string_array(c: _Cursor, kname: str, count: int, bulk: bool = True) -> list:
    """``count`` strings at the cursor: located and decoded in bulk where possible, else one by one.

    Both ways give the same list (str, or bytes for an element that is not UTF-8) and leave the cursor at
    the same place; only the record-by-record walk reports what is wrong with a damaged array.
    """
    c.need(count * 8, f"{count} strings of {kname!r}")
    if count == 0:
        return []
    found = None
    if bulk:
        for low_bytes in (1, 3):  # lengths below 256 (nearly every vocabulary), then below 2**24
            found = _locate_records(c.array, c.pos, count, low_bytes)
            if found is not None:
                break
    if found is not None:
        starts, lengths = found
        end = int(starts[-1] + 8 + lengths[-1])
        region = c.array[c.pos:c.pos + end]
        out = _decode_records(region, starts, lengths)
        if out is not None:
            c.pos += end
            return PackedStrings(out, region.tobytes())
    return _walk_records(c, kname, count)


def _walk_records(c: _Cursor, kname: str, count: int) -> list:
    """The strings one record at a time, each length checked against the bytes that remain."""
    buf, pos, size = c.buf, c.pos, c.size
    u64 = struct.Struct("<Q").unpack_from
    out = []
    append = out.append
    for j in range(count):
        if size - pos < 8:
            c.pos = pos
            c.need(8, f"{kname!r}[{j}]'s length")
        (n,) = u64(buf, pos)
        pos += 8
        if n > size - pos:
            c.pos = pos
            c.need(n, f"{kname!r}[{j}] ({n} bytes)")
        b = buf[pos:pos + n]
        pos += n
        try:
            append(b.decode("utf-8"))
        except UnicodeDecodeError:
            append(b)  # kept as bytes so a writer can put back exactly what was there
    c.pos = pos
    return out


def _locate_records(a: np.ndarray, p0: int, count: int, low_bytes: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Where the ``count`` string records (u64 length + bytes) that start at ``a[p0]`` begin, relative
    to p0, and their lengths, if every length fits in ``low_bytes`` bytes; None where this shortcut cannot
    tell (the caller then walks the records one by one).

    A record's successor starts at ``p + 8 + length``: a chain only a sequential walk follows. Instead,
    every offset whose upper ``8 - low_bytes`` bytes are zero and whose length fits the window is a
    candidate; every real record is one. Candidates that nothing points at are dropped until none is,
    and the answer is accepted only if the first ``count`` candidates are exactly the chain: the first at
    p0 and each one's successor the next. That check makes the result the one the walk gives, whatever
    the bytes are.
    """
    remain = len(a) - p0
    if count * 8 > _BULK_WINDOW_MAX:
        return None
    window = min(remain, count * 24 + 4096, _BULK_WINDOW_MAX)
    while True:
        r = a[p0:p0 + window]
        n = window - 7
        if n <= 0:
            return None
        z = r == 0
        k = z[low_bytes:low_bytes + n].copy()
        for b in range(low_bytes + 1, 8):
            k &= z[b:b + n]
        if np.count_nonzero(k) > 4 * count + 65536:  # mostly zeros, not text: the walk is as good
            return None
        cand = np.flatnonzero(k)
        if cand.size and cand[0] == 0:
            length = r[cand].astype(np.int64)
            for b in range(1, low_bytes):
                length |= r[cand + b].astype(np.int64) << (8 * b)
            nxt = cand + 8 + length
            fits = nxt <= window
            cand, length, nxt = cand[fits], length[fits], nxt[fits]
            for _ in range(32):
                if cand.size < count or cand[0] != 0:
                    break
                if np.array_equal(nxt[:count - 1], cand[1:count]):
                    return cand[:count], length[:count]
                pointed = np.zeros(window + 1, dtype=bool)
                pointed[nxt] = True
                pointed[0] = True
                keep = pointed[cand]
                if keep.all():
                    break
                cand, length, nxt = cand[keep], length[keep], nxt[keep]
        if window >= remain or window >= _BULK_WINDOW_MAX:
            return None
        window = min(remain, window * 4, _BULK_WINDOW_MAX)


def _decode_records(region: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> list | None:
    """Decode contiguous string records (``region`` begins with the first) with one UTF-8 decode: the
    8-byte length fields are cut out, a separator byte that no string contains is put between the
    strings, and the decoded text is split on it. None if some string is not UTF-8 (the caller then
    decodes one by one, keeping those as bytes)."""
    count = starts.size
    buf = region.copy()
    for b in range(8):
        buf[starts + b] = 0
    at = starts[1:] + 7  # the last byte of every length field after the first becomes the separator
    if np.count_nonzero(buf == 0) == 8 * count:  # no string holds a NUL: NUL separates them
        sep = 0
        keep = buf != 0
    else:
        keep = np.ones(buf.size, dtype=bool)
        for b in range(8):
            keep[starts + b] = False
        used = np.bincount(buf[keep], minlength=128)[:128]
        free = np.flatnonzero(used == 0)
        if free.size == 0:  # every ASCII character occurs in the strings: no separator to use
            return None
        sep = int(free[0])  # an ASCII byte never occurs inside a multi-byte UTF-8 sequence
        buf[at] = sep
    keep[at] = True
    try:
        text = buf[keep].tobytes().decode("utf-8")
    except UnicodeDecodeError:
        return None
    out = text.split(chr(sep))
    assert len(out) == count, (len(out), count)
    return out


# -- the source ---------------------------------------------------------------------------------------------


class GGUFSource(ModelSource):
    format = "gguf"

    def __init__(self, path: str | Path):
        super().__init__(Path(path))
        try:
            size = os.path.getsize(self.path)
            if size < 24:
                raise FormatError(f"{self.path}: {size} bytes is too short for a GGUF header")
            # copy-on-write: writable views for the callers, the file itself never touched
            self._map: np.memmap | None = np.memmap(self.path, dtype=np.uint8, mode="c")
        except OSError as e:
            raise FormatError(f"{self.path}: cannot read: {e.strerror or e}") from None
        header = read_header(self.path, self._map._mmap, self._map.view(np.ndarray))
        for key, value in header.metadata.items():
            if key.startswith("GGUF."):  # names gguf-py keeps for the header counts; never model metadata
                continue
            self.metadata[key] = value
            self.metadata_types[key] = header.types[key]
            if key in header.sub_types:
                self.metadata_sub_types[key] = header.sub_types[key]
        self._spans = {t.name: (t.start, t.nbytes) for t in header.tensors}
        self._set_tensors([TensorInfo(t.name, t.name, tuple(int(d) for d in reversed(t.ne)), t.qtype, t.nbytes)
                           for t in header.tensors])
        arch = self.metadata.get("general.architecture")
        self.architecture = arch if isinstance(arch, str) else None

    def _raw(self, info: TensorInfo) -> np.ndarray:
        if self._map is None:
            raise FormatError(f"{self.path}: closed")
        start, nbytes = self._spans[info.name]
        return self._map[start:start + nbytes].reshape(byte_shape(info.shape, info.qtype))

    def _halves(self, info: TensorInfo) -> tuple[np.ndarray, str] | None:
        if info.qtype not in _HALF_WIDTH:
            return None
        return half_words(self._raw(info), _HALF_WIDTH[info.qtype], info.shape)

    def _load(self, info: TensorInfo, into: np.ndarray | None = None) -> np.ndarray:
        """Plain number types widened to float32 (F32 as a view of the copy-on-write map: no copy)."""
        dtype = PLAIN_TYPES.get(info.qtype)
        if dtype is None:
            raise FormatError(f"{self.path}: tensor {info.name!r} is {info.qtype.name}, a quantized type: the "
                              f"reader gives its bytes (raw); dequantize them through the type registry")
        raw = self._raw(info)
        if info.qtype in _HALF_WIDTH:
            return widen(raw, _HALF_WIDTH[info.qtype], info.shape, into)
        return raw.view(dtype).astype(np.float32, copy=False).reshape(info.shape)

    def close(self) -> None:
        self._map = None
