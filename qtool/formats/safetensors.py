"""safetensors in, by qtool's own parser over a memory map, trusting nothing the header says.

Layout of a safetensors file::

    +----------+----------------------------+--------------------------------------+
    | u64 LE N | N bytes of JSON header     | data area: tensor bytes, row-major   |
    +----------+----------------------------+--------------------------------------+
               {"__metadata__": {str: str},   offsets in the header are relative to
                "name": {"dtype": "BF16",     the start of the data area
                         "shape": [out, in],
                         "data_offsets": [begin, end]}, ...}

Every claim is checked against the real file before anything is read: the header length against the file
size (and a cap), the JSON, each dtype, shape and span, and that no two tensors share bytes. A sharded
model (``model.safetensors.index.json``) is checked the same way, shard by shard, plus that every shard it
names exists and holds the tensors it is said to hold.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from gguf import GGMLQuantizationType

from qtool.errors import FormatError
from qtool.formats.source import INDEX_SUFFIX, ModelSource, TensorInfo, half_words, widen

#: The safetensors library refuses headers larger than this; so do we.
MAX_HEADER_BYTES = 100_000_000

#: Bytes per element of every dtype the format defines; only SUPPORTED ones can be read.
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}
SUPPORTED = {
    "F32": GGMLQuantizationType.F32,
    "F16": GGMLQuantizationType.F16,
    "BF16": GGMLQuantizationType.BF16,
}


@dataclass(frozen=True)
class Entry:
    """One tensor of a safetensors file; ``begin``/``end`` are absolute file offsets."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def qtype(self) -> GGMLQuantizationType:
        return SUPPORTED[self.dtype]


def unsupported_dtype(dtype: str, name: str, path: Path) -> FormatError:
    return FormatError(f"unsupported dtype {dtype} for tensor {name!r} in {path} (qtool reads {', '.join(SUPPORTED)})")


class SafetensorsFile:
    """One .safetensors file: its validated header, and views of its tensors' bytes through one map."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.metadata: dict[str, str] = {}
        self.entries: dict[str, Entry] = {}  # in data order
        self._map: np.memmap | None = None
        self._parse()

    def _fail(self, what: str) -> FormatError:
        return FormatError(f"{self.path}: {what}")

    def _parse(self) -> None:
        try:
            size = os.path.getsize(self.path)
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise self._fail(f"truncated: {size} bytes, too short for the 8-byte header length")
                n = int.from_bytes(head, "little")
                if n > MAX_HEADER_BYTES:
                    raise self._fail(f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
                if 8 + n > size:
                    raise self._fail(f"header length {n} runs past the end of the file ({size} bytes)")
                raw = f.read(n)
        except OSError as e:
            raise self._fail(f"cannot read: {e.strerror or e}") from None
        if len(raw) != n:  # the file shrank under us
            raise self._fail(f"truncated header: {len(raw)} of {n} bytes")
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
        except UnicodeDecodeError as e:
            raise self._fail(f"header is not UTF-8 ({e.reason} at byte {e.start})") from None
        except _DuplicateKey as e:
            raise self._fail(f"header names {e.args[0]!r} twice") from None
        except (json.JSONDecodeError, RecursionError) as e:
            raise self._fail(f"header is not valid JSON ({getattr(e, 'msg', 'nested too deeply')}, "
                             f"at byte {getattr(e, 'pos', '?')})") from None
        if not isinstance(header, dict):
            raise self._fail(f"header is a JSON {type(header).__name__}, not an object")

        meta = header.pop("__metadata__", {})
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise self._fail("__metadata__ must be an object of string values")
        self.metadata = meta

        data_start = 8 + n
        data_len = size - data_start
        entries = [self._entry(name, spec, data_start, data_len) for name, spec in header.items()]
        entries.sort(key=lambda e: (e.begin, e.end))
        prev: Entry | None = None
        for e in entries:
            if e.end == e.begin:  # an empty tensor holds no bytes to share
                continue
            if prev is not None and e.begin < prev.end:
                raise self._fail(f"tensors {prev.name!r} and {e.name!r} overlap (bytes "
                                 f"[{prev.begin - data_start}, {prev.end - data_start}) and "
                                 f"[{e.begin - data_start}, {e.end - data_start}) of the data area)")
            prev = e
        self.entries = {e.name: e for e in entries}

    def _entry(self, name: str, spec: Any, data_start: int, data_len: int) -> Entry:
        where = f"tensor {name!r}"
        if not isinstance(spec, dict):
            raise self._fail(f"{where}: header entry is a JSON {type(spec).__name__}, not an object")
        missing = [k for k in ("dtype", "shape", "data_offsets") if k not in spec]
        if missing:
            raise self._fail(f"{where}: header entry lacks {', '.join(missing)}")
        dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
        if not isinstance(dtype, str):
            raise self._fail(f"{where}: dtype {dtype!r} is not a string")
        if dtype not in DTYPE_SIZES:
            raise unsupported_dtype(dtype, name, self.path)
        if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
            raise self._fail(f"{where}: shape {shape!r} is not a list of integers")
        if any(d < 0 for d in shape):
            raise self._fail(f"{where}: shape {shape} has a negative dimension")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise self._fail(f"{where}: data_offsets {offsets!r} is not a pair of integers")
        begin, end = offsets
        if not 0 <= begin <= end:
            raise self._fail(f"{where}: data_offsets [{begin}, {end}] are not an ascending pair of "
                             f"non-negative offsets")
        if end > data_len:
            raise self._fail(f"{where}: data_offsets [{begin}, {end}] run past the end of the data area "
                             f"({data_len} bytes)")
        want = math.prod(shape) * DTYPE_SIZES[dtype]
        if end - begin != want:
            raise self._fail(f"{where}: spans {end - begin} bytes but shape {shape} of {dtype} needs {want}")
        # a scalar is stored as one element; GGUF has no 0-d tensors
        return Entry(name, dtype, tuple(shape) or (1,), data_start + begin, data_start + end)

    def bytes_of(self, name: str) -> np.ndarray:
        """A tensor's stored bytes: a read-only flat uint8 view of the map."""
        e = self.entries[name]
        if e.end == e.begin:
            return np.zeros(0, dtype=np.uint8)
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="c")  # copy-on-write: writable views
            if self._map.shape[0] < e.end:
                raise self._fail(f"tensor {name!r}: file shrank to {self._map.shape[0]} bytes since it was opened")
        return self._map[e.begin:e.end]

    def close(self) -> None:
        self._map = None


class _DuplicateKey(Exception):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# -- sets of files: one file, or the shards an index names --------------------------------------------


class WeightFiles:
    """The tensors of one .safetensors file, of every shard of an index, or of a list of files, by stored
    name, in file order (shards in name order, tensors in data order within each)."""

    def __init__(self, path: str | Path, files: list[Path] | None = None):
        self.path = Path(path)
        self.shards: list[SafetensorsFile] = []
        self.where: dict[str, SafetensorsFile] = {}
        self.index_metadata: dict[str, Any] = {}
        try:
            if files is not None:
                for f in files:
                    self._add_shard(SafetensorsFile(f))
            elif self.path.name.endswith(INDEX_SUFFIX):
                self._open_index()
            else:
                self._add_shard(SafetensorsFile(self.path))
        except BaseException:
            self.close()
            raise

    def _add_shard(self, shard: SafetensorsFile) -> None:
        self.shards.append(shard)
        for name in shard.entries:
            if name in self.where:
                raise FormatError(f"{self.path}: tensor {name!r} is stored twice, in {self.where[name].path.name} "
                                  f"and {shard.path.name}")
            self.where[name] = shard

    def _open_index(self) -> None:
        index = self.path
        try:
            size = os.path.getsize(index)
            if size > MAX_HEADER_BYTES:
                raise FormatError(f"{index}: {size} bytes is too large for an index file")
            doc = json.loads(index.read_text(encoding="utf-8"))
        except OSError as e:
            raise FormatError(f"{index}: cannot read: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise FormatError(f"{index}: not UTF-8 text") from None
        except json.JSONDecodeError as e:
            raise FormatError(f"{index}: not valid JSON ({e.msg}, line {e.lineno})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("weight_map"), dict):
            raise FormatError(f"{index}: has no weight_map object")
        weight_map: dict[str, Any] = doc["weight_map"]
        meta = doc.get("metadata", {})
        self.index_metadata = meta if isinstance(meta, dict) else {}
        for name, shard in weight_map.items():
            if not isinstance(shard, str) or not shard or shard in (".", "..") or "/" in shard or "\\" in shard:
                raise FormatError(f"{index}: tensor {name!r} is mapped to {shard!r}, not a file name beside the index")
        for shard_name in sorted(set(weight_map.values())):
            shard_path = index.parent / shard_name
            if not shard_path.is_file():
                raise FormatError(f"{index}: shard {shard_name} does not exist (named for "
                                  f"{sum(1 for s in weight_map.values() if s == shard_name)} tensors)")
            self._add_shard(SafetensorsFile(shard_path))
        for name, shard_name in weight_map.items():
            found = self.where.get(name)
            if found is None or found.path.name != shard_name:
                raise FormatError(f"{index}: tensor {name!r} is not in its shard {shard_name}"
                                  + (f" (it is in {found.path.name})" if found is not None else ""))

    def entry(self, name: str) -> Entry:
        return self.where[name].entries[name]

    def names(self) -> list[str]:
        return [name for shard in self.shards for name in shard.entries]

    def bytes_of(self, name: str) -> np.ndarray:
        return self.where[name].bytes_of(name)

    @property
    def files(self) -> list[Path]:
        return [s.path for s in self.shards]

    def close(self) -> None:
        for s in self.shards:
            s.close()


class SafetensorsSource(ModelSource):
    """A bare .safetensors file (or index) with no config.json beside it: names stay as stored, and since
    no architecture is known, every name is listed in ``unmapped``."""

    format = "safetensors"

    def __init__(self, path: str | Path):
        super().__init__(Path(path))
        self._w = WeightFiles(self.path)
        self.files = [f for f in self._w.files if f != self.path]
        self.file_metadata = {k: v for s in self._w.shards for k, v in s.metadata.items()}
        infos = []
        for name in self._w.names():
            e = self._w.entry(name)
            if e.dtype not in SUPPORTED:  # parsed (a model folder may skip such buffers), but not read
                self._w.close()
                raise unsupported_dtype(e.dtype, name, self._w.where[name].path)
            infos.append(TensorInfo(name, name, e.shape, e.qtype, e.end - e.begin))
        self._set_tensors(infos)
        self.unmapped = [t.name for t in infos]
        self.loadable = False
        self.problems = [f"{self.path}: no config.json beside it, so no architecture or GGUF tensor names"]

    def _load(self, info: TensorInfo, into: np.ndarray | None = None) -> np.ndarray:
        e = self._w.entry(info.source_name)
        return widen(self._w.bytes_of(info.source_name), e.dtype, e.shape, into)

    def _halves(self, info: TensorInfo) -> tuple[np.ndarray, str] | None:
        e = self._w.entry(info.source_name)
        return half_words(self._w.bytes_of(info.source_name), e.dtype, e.shape)

    def _raw(self, info: TensorInfo) -> np.ndarray:
        from qtool.formats.source import byte_shape

        return self._w.bytes_of(info.source_name).reshape(byte_shape(info.shape, info.qtype))

    def close(self) -> None:
        self._w.close()


# -- writing (fixtures and tests) -----------------------------------------------------------------------


_NUMPY_DTYPES = {np.dtype("<f4"): "F32", np.dtype("<f2"): "F16"}


def write_safetensors(path: str | Path, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> None:
    """Write a safetensors file, tensors in the given order, the header padded with spaces to 8 bytes.

    Each value is a float32/float16 array, or a pair ``(dtype_name, array)`` whose array holds the raw
    elements (e.g. ``("BF16", uint16_bits)``) with the tensor's shape.
    """
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    blobs = []
    offset = 0
    for name, value in tensors.items():
        if isinstance(value, tuple):
            dtype, arr = value
        else:
            arr = np.asarray(value)
            dtype = _NUMPY_DTYPES.get(arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype)
            if dtype is None:
                raise ValueError(f"{name}: give ({'dtype'!r}, array) for numpy dtype {arr.dtype}")
        arr = np.ascontiguousarray(arr)
        if arr.dtype.itemsize != DTYPE_SIZES[dtype]:
            raise ValueError(f"{name}: {arr.dtype} elements are not {dtype}")
        blob = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for blob in blobs:
            f.write(blob)
