"""A tensor's weights as float32, from any source: readers widen plain number types (F32, F16, BF16, ...)
themselves; quantized tensors are dequantized here from the bytes the reader hands out, through qtool's
type registry, or gguf-py's dequantizer for a type qtool has none for."""

from __future__ import annotations

import numpy as np

from qtool.errors import FormatError, QuantError
from qtool.formats.gguf_in import PLAIN_TYPES


def load_floats(source, name: str, *, threads: int | None = None, into: np.ndarray | None = None) -> np.ndarray:
    """Tensor ``name`` of ``source`` (a ModelSource) as float32 in numpy order. FormatError for a type
    that nothing here can dequantize. ``into``: see ModelSource.load."""
    info = source.info(name)
    if info.qtype in PLAIN_TYPES:
        return source.load(name, into=into)
    raw = source.raw(name)
    from qtool import quantizers

    try:
        q = quantizers.get(info.qtype)
    except QuantError:
        q = None
    if q is not None:
        try:
            out = q.dequantize(raw, name=info.name, threads=threads)
        except NotImplementedError:
            pass
        else:
            return np.ascontiguousarray(out, dtype=np.float32).reshape(info.shape)
    import gguf.quants

    try:
        out = gguf.quants.dequantize(raw, info.qtype)
    except NotImplementedError:
        raise FormatError(f"{source.path}: tensor {info.name!r} is {info.qtype.name}, which neither qtool nor "
                          f"gguf-py can dequantize") from None
    return np.ascontiguousarray(out, dtype=np.float32).reshape(info.shape)
