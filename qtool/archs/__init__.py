"""Architectures: one module per family, registered on its Hugging Face ``architectures`` names (see
base.py). Importing this package registers every family."""

from __future__ import annotations

from qtool.archs import bert, gemma, llama, phi3, qwen  # noqa: F401  (registration side effect)
from qtool.archs.base import Family, lookup, registered, supported

FAMILIES = (llama, qwen, gemma, phi3, bert)


__all__ = ["Family", "lookup", "registered", "supported", "FAMILIES"]
