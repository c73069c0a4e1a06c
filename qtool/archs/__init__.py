"""Architectures: one module per family, registered on its Hugging Face ``architectures`` names (see
base.py). Importing this package registers every family.

``tensors_only()``: within the block, Hugging Face folders are read for their tensors alone (see
HFSource.tensors_only), so that a model of an architecture not in the registry can still be quantized.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

from qtool.archs import bert, gemma, llama, phi3, qwen  # noqa: F401  (registration side effect)
from qtool.archs.base import Family, lookup, registered, supported

FAMILIES = (llama, qwen, gemma, phi3, bert)

#: True within ``tensors_only()``: HF folders give their tensors only, marked not runnable
TENSORS_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("qtool_tensors_only", default=False)


@contextlib.contextmanager
def tensors_only(on: bool = True) -> Iterator[None]:
    token = TENSORS_ONLY.set(bool(on))
    try:
        yield
    finally:
        TENSORS_ONLY.reset(token)


__all__ = ["Family", "lookup", "registered", "supported", "FAMILIES", "tensors_only", "TENSORS_ONLY"]
