"""Importance matrices, read as llama-quantize reads them (reference: llama.cpp in llama-cpp-python 0.3.36,
common/imatrix-loader.cpp and tools/quantize/quantize.cpp).

Two formats, told apart the way llama.cpp does (a GGUF file, else the legacy layout)::

    legacy .dat (little-endian)
        i32 n_entries (>= 1)
        n_entries x  i32 name_len | name | i32 ncall | i32 nval (>= 1) | nval x f32
                     (llama-imatrix stores mean(x^2) * ncall per column)
        optional:    i32 chunk_count | i32 dataset_len | dataset

    GGUF
        metadata     imatrix.datasets (string array), imatrix.chunk_count (u32), imatrix.chunk_size (u32)
        tensors      <name>.in_sum2  F32 [n_mat, n_per_row]  sum of x^2 per column
                     <name>.counts   F32 [n_mat, 1]          how many rows went into each matrix

write_imatrix_gguf writes the GGUF format as llama-imatrix does (`qtool imatrix`).

What llama-quantize hands to the quantizer, per entry:
    legacy:  value / ncall                      (the value as stored when ncall <= 0)
    GGUF:    in_sum2[j, :] / counts[j]          (1.0 for a matrix j with no count, e.g. an unused expert)
"""

from __future__ import annotations

import contextlib
import math
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

from qtool.errors import FormatError, QuantError, UsageError

#: llama-quantize's kv override strings hold at most 127 bytes.
_KV_STR_MAX = 127
_TOKEN_EMBD_NAMES = ("token_embd.weight", "per_layer_token_embd.weight")
_LONG_MIN = -(1 << 63)


@dataclass
class Imatrix:
    #: the path as given to load_imatrix (llama-quantize records it as given)
    source: str
    #: per tensor: float32, n_per_row values, or n_mat * n_per_row for 3-D (expert) tensors, ready to use
    entries: dict[str, np.ndarray]
    #: per tensor: the counts the values were divided by (int64; one per matrix; legacy: [ncall])
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    #: tokens per chunk; None for the legacy format, which does not record it
    chunk_size: int | None = None
    is_legacy: bool = False

    def __len__(self) -> int:
        """Entries left; llama-quantize quantizes as without an imatrix once filtering leaves none."""
        return len(self.entries)

    def names(self) -> list[str]:
        return sorted(self.entries)

    def filter(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> "Imatrix":
        """--include-weights / --exclude-weights: keep the entries whose name contains one of ``include``,
        or drop those containing one of ``exclude`` (plain substrings, not regexes). Not both."""
        include, exclude = list(include or ()), list(exclude or ())
        if include and exclude:
            raise UsageError("--include-weights and --exclude-weights cannot be used together")
        keep = [n for n in self.entries if not any(x in n for x in exclude)]
        if include:
            keep = [n for n in keep if any(x in n for x in include)]
        return replace(self, entries={n: self.entries[n] for n in keep},
                       counts={n: self.counts[n] for n in keep if n in self.counts})

    def for_tensor(self, name: str, shape: Sequence[int]) -> np.ndarray | None:
        """The importance values for tensor ``name`` of numpy-order ``shape``, or None if there are none.

        The length must be n_per_row times the tensor's third ggml axis (the experts): else QuantError,
        except for the token embeddings, which llama-quantize quietly quantizes without.
        """
        values = self.entries.get(name)
        if values is None:
            return None
        ne = [int(d) for d in reversed(tuple(shape))] + [1, 1, 1]
        want = ne[0] * ne[2]
        if values.size != want:
            if name in _TOKEN_EMBD_NAMES:
                return None
            raise QuantError(f"{name}: the importance matrix ({self.source}) has {values.size} values for it, "
                             f"the tensor (shape {list(shape)}) needs {want}")
        return values

    def check_finite(self) -> None:
        """llama-quantize refuses an importance matrix with NaN or Inf in any entry it was given."""
        for name in sorted(self.entries):
            v = self.entries[name]
            bad = np.flatnonzero(~np.isfinite(v))
            if bad.size:
                raise FormatError(f"{self.source}: entry {name!r} holds a non-finite value ({v[bad[0]]}) "
                                  f"at index {int(bad[0])}")


def quantize_metadata(imatrix: Imatrix | None) -> dict[str, tuple[GGUFValueType, Any]]:
    """The ``quantize.imatrix.*`` keys llama-quantize adds to its output, in the order it adds them, as
    {key: (GGUF type, value)}. Empty when there is no imatrix or filtering left no entry.

    Strings are cut to 127 bytes as llama-quantize's kv overrides cut them (a multi-byte character split
    there is dropped whole, where llama.cpp would write its first bytes). The chunk count is written only
    when positive.
    """
    if imatrix is None or not imatrix.entries:
        return {}
    out: dict[str, tuple[GGUFValueType, Any]] = {
        "quantize.imatrix.file": (GGUFValueType.STRING, _kv_str(imatrix.source)),
    }
    if imatrix.datasets:
        out["quantize.imatrix.dataset"] = (GGUFValueType.STRING, _kv_str(imatrix.datasets[0]))
    out["quantize.imatrix.entries_count"] = (GGUFValueType.UINT32, len(imatrix.entries))
    if imatrix.chunk_count > 0:
        out["quantize.imatrix.chunks_count"] = (GGUFValueType.UINT32, imatrix.chunk_count)
    return out


def _kv_str(s: str) -> str:
    raw = s.encode("utf-8", "surrogateescape").split(b"\0", 1)[0][:_KV_STR_MAX]
    return raw.decode("utf-8", "ignore")


def load_imatrix(path: str | Path) -> Imatrix:
    """Read an importance matrix in either format; FormatError (naming the file) for anything malformed."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise FormatError(f"{p}: cannot read the importance matrix: {e.strerror or e}") from None
    if magic == b"GGUF":
        return _load_gguf(p, str(path))
    return _load_legacy(p, str(path))


# --------------------------------------------------------------------------------------------------
# legacy .dat
# --------------------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, buf, path: Path):
        self.buf, self.path, self.pos, self.size = buf, path, 0, len(buf)

    def left(self) -> int:
        return self.size - self.pos

    def fail(self, what: str) -> FormatError:
        return FormatError(f"{self.path}: {what}")

    def i32(self, what: str) -> int:
        if self.left() < 4:
            raise self.fail(f"truncated: {what} at offset {self.pos} needs 4 bytes, {self.left()} remain")
        (v,) = struct.unpack_from("<i", self.buf, self.pos)
        self.pos += 4
        return v

    def take(self, n: int, what: str) -> bytes:
        if n > self.left():
            raise self.fail(f"truncated: {what} at offset {self.pos} claims {n} bytes, {self.left()} remain")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out


def _load_legacy(path: Path, source: str) -> Imatrix:
    try:
        buf = path.read_bytes()  # a legacy file is at most a few hundred MB: values are float32 per column
    except OSError as e:
        raise FormatError(f"{path}: cannot read the importance matrix: {e.strerror or e}") from None
    if not buf:
        raise FormatError(f"{path}: empty file, not an importance matrix")
    return _parse_legacy(buf, path, source)


def _parse_legacy(buf: bytes, path: Path, source: str) -> Imatrix:
    r = _Reader(buf, path)
    n_entries = r.i32("the entry count")
    if n_entries < 1:
        raise r.fail(f"no data (entry count {n_entries}); neither GGUF nor a legacy imatrix")
    # each entry takes at least 16 bytes: check the claim before looping over it
    if n_entries > r.left() // 16:
        raise r.fail(f"claims {n_entries} entries, more than its {r.size} bytes can hold")
    entries: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for i in range(n_entries):
        n = r.i32(f"entry {i + 1}'s name length")
        if n < 0:
            raise r.fail(f"entry {i + 1} has a negative name length ({n})")
        raw = r.take(n, f"entry {i + 1}'s name")
        name = raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")  # read as a C string
        ncall = r.i32(f"{name!r}'s call count")
        nval = r.i32(f"{name!r}'s value count")
        if nval < 1:
            raise r.fail(f"entry {name!r} has {nval} values")
        values = np.frombuffer(r.take(4 * nval, f"{nval} values of {name!r}"), dtype="<f4").astype(np.float32)
        if ncall > 0:
            values = values / np.float32(ncall)
        entries[name] = values  # a repeated name: the last one wins, as in llama.cpp's map
        counts[name] = np.array([ncall], dtype=np.int64)
    chunk_count, datasets = 0, []
    if r.left() > 0:  # optional trailer; llama.cpp reads what is there and shrugs off the rest
        tail = r.take(min(4, r.left()), "chunk count").ljust(4, b"\0")
        chunk_count = struct.unpack("<i", tail)[0]
        if r.left() >= 4:
            n = r.i32("dataset name length")
            if 0 < n <= r.left():
                raw = r.take(n, "dataset name")
                datasets.append(raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape"))
    return Imatrix(source, entries, counts, datasets, chunk_count, None, True)


# --------------------------------------------------------------------------------------------------
# GGUF
# --------------------------------------------------------------------------------------------------

_SUMS, _COUNTS = ".in_sum2", ".counts"


def _load_gguf(path: Path, source: str) -> Imatrix:
    from qtool.formats.gguf_in import GGUFSource

    src = GGUFSource(path)  # bounds-checked; raises FormatError naming the file
    try:
        return _parse_gguf(src, path, source)
    finally:
        src.close()


def _parse_gguf(src, path: Path, source: str) -> Imatrix:
    def fail(what: str) -> FormatError:
        return FormatError(f"{path}: {what}")

    if not src.tensors:
        raise fail("no data: the GGUF holds no tensors")
    meta, types = src.metadata, src.metadata_types
    missing = [k for k in ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size") if k not in meta]
    if missing:
        raise fail(f"missing imatrix metadata ({', '.join(missing)}); llama-quantize refuses it")
    datasets: list[str] = []
    if types["imatrix.datasets"] == GGUFValueType.ARRAY and \
            src.metadata_sub_types.get("imatrix.datasets") == GGUFValueType.STRING:
        for d in meta["imatrix.datasets"]:
            if isinstance(d, bytes):
                d = d.decode("utf-8", "surrogateescape")
            datasets.append(d.split("\0", 1)[0])
    sizes = {}
    for key in ("imatrix.chunk_count", "imatrix.chunk_size"):
        if types[key] != GGUFValueType.UINT32:
            raise fail(f"{key} is {types[key].name}, not UINT32")
        v = int(meta[key])
        sizes[key] = v - (1 << 32) if v >= 1 << 31 else v  # llama.cpp keeps them in an int32

    pairs: dict[str, list] = {}
    for t in src.tensors:
        for suffix, slot in ((_SUMS, 0), (_COUNTS, 1)):
            if t.name.endswith(suffix):
                pairs.setdefault(t.name[:-len(suffix)], [None, None])[slot] = t
                break

    entries: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for name in sorted(pairs):
        sums_t, counts_t = pairs[name]
        if sums_t is None or counts_t is None:
            raise fail(f"entry {name!r} has {'no ' + _SUMS if sums_t is None else 'no ' + _COUNTS} tensor")
        if sums_t.qtype != GGMLQuantizationType.F32 or counts_t.qtype != GGMLQuantizationType.F32:
            raise fail(f"entry {name!r}: {_SUMS} and {_COUNTS} must be F32, not "
                       f"{sums_t.qtype.name} and {counts_t.qtype.name}")
        sums = np.ascontiguousarray(src.load(sums_t.name), dtype=np.float32).reshape(-1)
        raw_counts = np.ascontiguousarray(src.load(counts_t.name), dtype=np.float32).reshape(-1)
        if raw_counts.size == 0:
            raise fail(f"entry {name!r} has an empty {_COUNTS} tensor")
        c = np.array([_lround(float(x)) for x in raw_counts], dtype=np.int64)
        entries[name] = _normalize(sums, c)
        counts[name] = c
    return Imatrix(source, entries, counts, datasets, sizes["imatrix.chunk_count"],
                   sizes["imatrix.chunk_size"], False)


def _lround(x: float) -> int:
    """C's lround on x86-64: half away from zero; NaN, infinities and out-of-range values give LONG_MIN."""
    if not math.isfinite(x) or abs(x) >= 2.0 ** 63:
        return _LONG_MIN
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def _normalize(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """in_sum2 / count per matrix; 1.0 for a matrix without a positive count. As in llama-quantize, a
    remainder of sums that does not fill a whole matrix is left at 0."""
    n_mat = counts.size
    ne0 = sums.size // n_mat
    out = np.zeros(sums.size, dtype=np.float32)
    for j in range(n_mat):
        cnt = np.float32(counts[j])  # int64 -> float, as llama.cpp converts it
        sl = slice(j * ne0, (j + 1) * ne0)
        out[sl] = sums[sl] / cnt if cnt > 0 else np.float32(1.0)
    return out



# --------------------------------------------------------------------------------------------------
# writing (llama-imatrix's GGUF output)
# --------------------------------------------------------------------------------------------------

_GGUF_ALIGNMENT = 32


def write_imatrix_gguf(path: str | Path, sums: dict[str, np.ndarray], counts: dict[str, np.ndarray], *,
                       datasets: Sequence[str], chunk_count: int, chunk_size: int) -> Path:
    """Write an importance matrix as llama-imatrix writes its GGUF (save_imatrix in tools/imatrix/imatrix.cpp).

    ``sums[name]``: float32 sums of squared activations, ``n_mat x n_per_row`` (or flat); ``counts[name]``:
    rows per matrix (one count covers all matrices of a dense weight). Layout, GGUF v3, alignment 32::

        metadata   general.type = "imatrix", imatrix.datasets [string], imatrix.chunk_count u32,
                   imatrix.chunk_size u32                                           (in this order)
        tensors    for each name in sorted order: <name>.in_sum2  F32 ne [n_per_row * n_mat / n_counts, n_counts]
                                                  <name>.counts   F32 ne [1, n_counts]
                   (ggml order; as ggml_n_dims counts, trailing dimensions of 1 are not written)

    Written under a temporary name beside ``path`` and renamed into place when complete.
    """
    import os
    import tempfile

    path = Path(path)
    kv = [
        ("general.type", GGUFValueType.STRING, "imatrix"),
        ("imatrix.datasets", GGUFValueType.ARRAY, list(datasets)),
        ("imatrix.chunk_count", GGUFValueType.UINT32, int(chunk_count)),
        ("imatrix.chunk_size", GGUFValueType.UINT32, int(chunk_size)),
    ]
    tensors: list[tuple[str, list[int], bytes]] = []
    for name in sorted(sums):
        values = np.ascontiguousarray(sums[name], dtype="<f4").reshape(-1)
        c = np.asarray(counts[name]).reshape(-1)
        n_mat = int(c.size)
        if n_mat < 1 or values.size % n_mat:
            raise ValueError(f"{name}: {values.size} sums do not split into {n_mat} matrices")
        tensors.append((f"{name}{_SUMS}", [values.size // n_mat, n_mat], values.tobytes()))
        tensors.append((f"{name}{_COUNTS}", [1, n_mat], c.astype("<f4").tobytes()))

    def s(text: str) -> bytes:
        raw = text.encode("utf-8", "surrogateescape")
        return struct.pack("<Q", len(raw)) + raw

    head = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(kv))]
    for key, vtype, value in kv:
        head += [s(key), struct.pack("<I", int(vtype))]
        if vtype == GGUFValueType.STRING:
            head.append(s(value))
        elif vtype == GGUFValueType.UINT32:
            head.append(struct.pack("<I", value))
        else:
            head += [struct.pack("<IQ", int(GGUFValueType.STRING), len(value))] + [s(v) for v in value]
    offset = 0
    for name, ne, data in tensors:
        while len(ne) > 1 and ne[-1] == 1:  # ggml_n_dims
            ne = ne[:-1]
        head += [s(name), struct.pack("<I", len(ne)), struct.pack(f"<{len(ne)}Q", *ne),
                 struct.pack("<IQ", int(GGMLQuantizationType.F32), offset)]
        offset += -(-len(data) // _GGUF_ALIGNMENT) * _GGUF_ALIGNMENT
    header = b"".join(head)
    header += b"\0" * (-len(header) % _GGUF_ALIGNMENT)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            for _, _, data in tensors:
                f.write(data)
                f.write(b"\0" * (-len(data) % _GGUF_ALIGNMENT))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it private; the result is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
