"""ggml's tensor types and llama's file types as qtool names them: gguf-py's enums and size table, plus
the few of the reference build (llama-cpp-python 0.3.36's ggml.h and llama.h) that the installed gguf-py
lacks.

gguf-py 0.19 has no Q2_0 (ggml type 42, 64 weights in 18 bytes) and no LLAMA_FTYPE_MOSTLY_Q2_0 (41). They
are members of the two small enums below, which are IntEnums like gguf-py's: a member equals and hashes as
its number, so ``QUANT_SIZES[42]``, ``QUANT_SIZES[ExtraType.Q2_0]`` and ``QUANT_SIZES[T.Q4_0]`` all work,
and a dict keyed on gguf-py's members takes these as keys too. Where a later gguf-py has a member of its
own, that one is used and the entry here is left out.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Mapping

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

#: name -> (ggml type number, weights per block, bytes per block): ggml.h and ggml-common.h of the reference
_EXTRA_TYPES = {"Q2_0": (42, 64, 2 + 64 // 4)}
#: name -> llama_ftype number: llama.h of the reference
_EXTRA_FTYPES = {"MOSTLY_Q2_0": 41}

ExtraType = IntEnum("ExtraType", {name: v for name, (v, _, _) in _EXTRA_TYPES.items()
                                  if v not in GGMLQuantizationType._value2member_map_})
ExtraFileType = IntEnum("ExtraFileType", {name: v for name, v in _EXTRA_FTYPES.items()
                                          if v not in LlamaFileType._value2member_map_})

#: what gguf.GGML_QUANT_SIZES is, for every type qtool knows: type -> (weights per block, bytes per block)
QUANT_SIZES: Mapping[int, tuple[int, int]] = {
    **GGML_QUANT_SIZES, **{t: _EXTRA_TYPES[t.name][1:] for t in ExtraType}}

QType = GGMLQuantizationType | ExtraType
FileType = LlamaFileType | ExtraFileType


def ggml_type(value: int) -> QType:
    """The type of a ggml type number; ValueError where neither gguf-py nor qtool knows it."""
    try:
        return GGMLQuantizationType(value)
    except ValueError:
        return ExtraType(value)


def ggml_type_named(name: str) -> QType:
    """The type of a ggml type name (exact spelling, e.g. ``Q4_K``); KeyError where unknown."""
    try:
        return GGMLQuantizationType[name]
    except KeyError:
        return ExtraType[name]


def file_type(value: int) -> FileType:
    """The llama file type of a number; ValueError where neither gguf-py nor qtool knows it."""
    try:
        return LlamaFileType(value)
    except ValueError:
        return ExtraFileType(value)


def file_type_named(name: str) -> FileType:
    """The llama file type of a name (e.g. ``MOSTLY_Q4_K_M``); KeyError where unknown."""
    try:
        return LlamaFileType[name]
    except KeyError:
        return ExtraFileType[name]


def all_types() -> list[QType]:
    """Every ggml type, in number order."""
    return sorted([*GGMLQuantizationType, *ExtraType])
