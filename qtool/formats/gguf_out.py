"""GGUF out, through gguf.GGUFWriter, one tensor at a time.

The header and every tensor's info are written first (the plan fixes each tensor's type and size before
any data is quantized), then tensor data is streamed in plan order. The file is written under a temporary
name in the target folder and renamed into place only when complete, so a failure or an interrupt never
leaves a partial output behind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from gguf import GGUFValueType, GGUFWriter

from qtool.errors import FormatError, UsageError
from qtool.formats.ggml_types import QUANT_SIZES, QType

# Keys the writer itself owns, or that describe the input file rather than the model.
_DROPPED_KEYS = {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count", "general.architecture",
                 "general.alignment", "split.no", "split.count", "split.tensors.count"}


def value_type(value: Any) -> GGUFValueType:
    """The GGUF type gguf-py would pick for a Python value (used when the source gave none)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return GGUFValueType.ARRAY
    return GGUFValueType.get_type(value)


def _add_kv(writer: GGUFWriter, key: str, value: Any, vtype: GGUFValueType | None,
            sub_type: GGUFValueType | None) -> None:
    if vtype is None:
        vtype = value_type(value)
    if vtype == GGUFValueType.ARRAY:
        if isinstance(value, np.ndarray):
            value = value.tolist()
        writer.add_key_value(key, list(value), vtype, sub_type=sub_type)
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
        self._writer = GGUFWriter(path=None, arch=architecture)
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
