"""One reading interface over every input qtool accepts: `open_model(path)` -> `ModelSource`.

A ModelSource lists its tensors (``TensorInfo``, numpy-order shapes, GGUF names) and hands out one tensor
at a time, either widened to float32 (``load``) or as the bytes it is stored in (``raw``). Readers do not
dequantize: qtool.analysis.weights.load_floats does, through the type registry.
Files are memory-mapped; nothing reads a whole model. The concrete sources live beside this module:
safetensors.py (bare safetensors files and shard sets), hf.py (Hugging Face model folders), gguf_in.py.
"""

from __future__ import annotations

import functools
import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

from qtool.errors import FormatError

INDEX_SUFFIX = ".safetensors.index.json"


@dataclass(frozen=True)
class TensorInfo:
    name: str                     # GGUF name: mapped for HF inputs, as stored for GGUF inputs
    source_name: str              # name in the input file
    shape: tuple[int, ...]        # numpy order: the last axis is the row (ggml's ne0)
    qtype: GGMLQuantizationType   # storage type
    nbytes: int                   # bytes as stored

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


class ModelSource:
    """Base of every input. A context manager; ``close()`` drops the file maps.

    Attributes beyond the shared interface: ``metadata_types`` / ``metadata_sub_types`` (the GGUF value
    type of each metadata key, and the element type of array keys), ``files`` (every file read besides
    ``path``), ``loadable`` and ``problems`` (whether the metadata is enough for llama.cpp to load the
    model, and if not, why).
    """

    format: str = ""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.architecture: str | None = None
        self.metadata: dict[str, Any] = {}
        self.metadata_types: dict[str, GGUFValueType] = {}
        self.metadata_sub_types: dict[str, GGUFValueType] = {}
        self.tensors: list[TensorInfo] = []
        self.unmapped: list[str] = []
        self.files: list[Path] = []
        self.loadable: bool = True
        self.problems: list[str] = []
        self._by_name: dict[str, TensorInfo] = {}

    # -- what a concrete source implements -------------------------------------------------------

    def _load(self, info: TensorInfo, into: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError

    def _raw(self, info: TensorInfo) -> np.ndarray:
        raise NotImplementedError

    def _stored(self, info: TensorInfo) -> np.ndarray:
        """The tensor's bytes exactly where the file map holds them (for release)."""
        return self._raw(info)

    def close(self) -> None:
        pass

    # -- what everybody calls --------------------------------------------------------------------

    def info(self, name: str) -> TensorInfo:
        """The TensorInfo of a tensor, by its GGUF name."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor named {name!r}") from None

    def load(self, name: str, *, into: np.ndarray | None = None) -> np.ndarray:
        """The tensor as float32 in numpy order, widened (F16/BF16); a quantized GGUF tensor is refused with a
        FormatError (qtool.analysis.weights.load_floats dequantizes it). F32 tensors may come
        back as a view of the file's copy-on-write map: writing to it never reaches the file.

        ``into``: a float32 buffer of at least the tensor's size that a big F16/BF16 tensor is widened into
        (the result is then a view of it): a loop over tensors reuses one buffer instead of faulting in
        fresh memory for each, ~2x the widening's speed. The caller owns it: the next load overwrites it."""
        info = self.info(name)
        out = self._load(info, into)
        assert out.dtype == np.float32 and out.shape == info.shape, (name, out.dtype, out.shape, info.shape)
        return out

    def halves(self, name: str) -> tuple[np.ndarray, str] | None:
        """The stored words of an F16/BF16 tensor, as stored or only rearranged (HF folders: llama's permuted
        q/k, stacked experts): (uint16 in the tensor's numpy-order shape, read-only, usually a view of the map,
        "F16" or "BF16"), so that a caller can widen it a slice of rows at a time (``widen``); None for any
        other tensor (F32, quantized, or a transform of the values)."""
        return self._halves(self.info(name))

    def _halves(self, info: TensorInfo) -> tuple[np.ndarray, str] | None:
        return None

    def raw(self, name: str) -> np.ndarray:
        """The stored bytes, uint8 of shape (*shape[:-1], row_bytes), usually a read-only view of the map."""
        info = self.info(name)
        out = self._raw(info).view()
        out.flags.writeable = False
        assert out.dtype == np.uint8 and out.nbytes == info.nbytes, (name, out.dtype, out.nbytes, info.nbytes)
        return out

    def release(self, name: str) -> None:
        """Done with this tensor: let the OS drop the file pages under it.

        Mapped pages a reader touched stay resident until memory gets tight, so converting or inspecting a
        model would otherwise grow the resident set to the whole file. Dropping each tensor's pages once it
        is consumed keeps it near one tensor. Harmless if the tensor is needed again (the pages are read
        back from the file); a no-op for tensors that are not file-mapped.
        """
        drop_pages(self._stored(self.info(name)))

    def _set_tensors(self, tensors: list[TensorInfo]) -> None:
        by_name: dict[str, TensorInfo] = {}
        for t in tensors:
            if t.name in by_name:
                other = by_name[t.name].source_name
                raise FormatError(f"{self.path}: tensors {other!r} and {t.source_name!r} both map to {t.name!r}")
            by_name[t.name] = t
        self.tensors = tensors
        self._by_name = by_name

    def __enter__(self) -> "ModelSource":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.path} format={self.format} arch={self.architecture} "
                f"tensors={len(self.tensors)}>")


def drop_pages(view: np.ndarray) -> None:
    """madvise(MADV_DONTNEED) over the whole pages of a view into a np.memmap (other arrays: no-op).

    Only pages entirely inside the view are dropped, so a neighbouring tensor is never touched.
    """
    mm = getattr(view, "_mmap", None)
    if mm is None or view.nbytes == 0 or not hasattr(mm, "madvise") or not view.flags.c_contiguous:
        return
    base = np.frombuffer(mm, dtype=np.uint8, count=1).ctypes.data
    start = view.ctypes.data - base
    end = start + view.nbytes
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
    last = end // mmap.PAGESIZE * mmap.PAGESIZE
    if 0 <= first < last <= len(mm):
        mm.madvise(mmap.MADV_DONTNEED, first, last - first)


def half_words(data: np.ndarray, dtype: str, shape: tuple[int, ...]) -> tuple[np.ndarray, str] | None:
    """(uint16 words of ``shape``, dtype) of stored F16/BF16 bytes; None for other dtypes (ModelSource.halves)."""
    if dtype not in ("F16", "BF16"):
        return None
    words = data.reshape(-1).view("<u2").reshape(shape)
    words.flags.writeable = False
    return words, dtype


#: below this many elements NumPy widens faster than a parallel kernel starts
_WIDEN_IN_KERNEL = 1 << 18


def widen(data: np.ndarray, dtype: str, shape: tuple[int, ...], into: np.ndarray | None = None) -> np.ndarray:
    """Stored F32/F16/BF16 elements (flat bytes or already typed) -> float32 of ``shape``: a view of the
    (copy-on-write) map for aligned F32, else a fresh array, or for a big half tensor a view of ``into``
    (float32, at least that long) where given. Exact: every half and bfloat16 is a float32."""
    if dtype == "F32":
        aligned = data.ctypes.data % 4 == 0
        return data.reshape(-1).view(np.uint8).view("<f4").astype(np.float32, copy=not aligned).reshape(shape)
    if dtype not in ("F16", "BF16"):
        raise ValueError(f"cannot widen {dtype}")
    bits = data.reshape(-1).view("<u2")
    if bits.size < _WIDEN_IN_KERNEL:
        if dtype == "F16":
            out = bits.view("<f2").astype(np.float32)
        else:  # bfloat16 is the top half of a float32
            out = (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)
        return out.reshape(shape)
    from qtool.kernels import widen as kernels

    if bits.ctypes.data % 2:
        bits = bits.copy()
    out = into[:bits.size] if into is not None and into.size >= bits.size else np.empty(bits.size, np.float32)
    if dtype == "F16":
        kernels.lookup_f32(bits, _half_table(), out)
    else:
        kernels.bf16_to_f32(bits, out)
    return out.reshape(shape)


@functools.cache
def _half_table() -> np.ndarray:
    """Every half's float32 value, by its bits (NumPy's conversion, as for small tensors)."""
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


def byte_shape(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> tuple[int, ...]:
    """(*shape[:-1], row_bytes) for a numpy-order element shape stored as ``qtype``."""
    from qtool.formats.ggml_types import QUANT_SIZES

    block, size = QUANT_SIZES[qtype]
    return (*shape[:-1], shape[-1] // block * size)


def open_model(path: str | Path, *, pre_tokenizer: str | None = None, tensors_only: bool = False) -> ModelSource:
    """Open a model: a .gguf file, a .safetensors file, a *.safetensors.index.json, or a folder
    (a Hugging Face folder with config.json, or a folder holding exactly one .gguf file).

    For a Hugging Face folder: ``pre_tokenizer`` forces tokenizer.ggml.pre (None: detect it), and
    ``tensors_only`` reads the tensors alone, with no claim that llama.cpp runs them (HFSource.tensors_only).
    """
    p = Path(path)
    if not p.exists():
        raise FormatError(f"{p}: no such file or folder")
    if p.is_dir():
        if (p / "config.json").is_file():
            from qtool.formats.hf import HFSource

            return HFSource(p, pre_tokenizer=pre_tokenizer, tensors_only=tensors_only)
        ggufs = sorted(q for q in p.iterdir() if q.suffix == ".gguf" and q.is_file())
        if len(ggufs) == 1:
            return _open_gguf(ggufs[0])
        if len(ggufs) > 1:
            raise FormatError(f"{p}: holds {len(ggufs)} .gguf files; name the one to read")
        raise FormatError(f"{p}: neither a model folder (no config.json) nor a folder with a .gguf file")
    name = p.name
    if name.endswith(".safetensors") or name.endswith(INDEX_SUFFIX):
        if (p.parent / "config.json").is_file():
            from qtool.formats.hf import HFSource

            return HFSource(p.parent, weights=p, pre_tokenizer=pre_tokenizer, tensors_only=tensors_only)
        from qtool.formats.safetensors import SafetensorsSource

        return SafetensorsSource(p)
    if name.endswith(".gguf"):
        return _open_gguf(p)
    # Unknown suffix: go by the magic bytes.
    with open(p, "rb") as f:
        head = f.read(4)
    if head == b"GGUF":
        return _open_gguf(p)
    raise FormatError(f"{p}: not a .gguf, .safetensors or {INDEX_SUFFIX} file, nor a model folder")


def _open_gguf(p: Path) -> ModelSource:
    from qtool.formats.gguf_in import GGUFSource

    return GGUFSource(p)


def map_bytes(path: Path, what: str = "file"):
    """A whole file mapped read-only (bytes for an empty one: mmap refuses those), or a one-line FormatError
    naming it: its pages are the page cache's, not a copy (a 5 MB tokenizer.json read into bytes took ~5 ms)."""
    try:
        with open(path, "rb") as f:
            if f.seek(0, 2) == 0:
                return b""
            try:
                return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):  # a file system that cannot map files: its bytes, read
                f.seek(0)
                return f.read()
    except OSError as e:
        raise FormatError(f"{path}: cannot read {what}: {e.strerror or e}") from None


def read_json(path: Path, what: str = "file", raw: bytes | None = None) -> Any:
    """A JSON file (config.json, tokenizer.json, ...) parsed, or a one-line FormatError naming it; ``raw``:
    its bytes, where the caller has read them."""
    import json

    try:  # bytes decoded whole: read_text's newline translation took 2.5x as long (25 ms for a 5.4 MB tokenizer.json)
        if raw is None:
            raw = path.read_bytes()
        return json.loads(str(raw, "utf-8"))
    except OSError as e:
        raise FormatError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise FormatError(f"{path}: {what} is not UTF-8 text") from None
    except RecursionError:
        raise FormatError(f"{path}: {what} is not valid JSON (nested too deeply)") from None
    except ValueError as e:  # JSONDecodeError, and integers too long to convert
        raise FormatError(f"{path}: {what} is not valid JSON ({getattr(e, 'msg', e)})") from None
