"""llama-quantize's presets: the table of names, file types and base types, and type-name parsing.

Reference: ``tools/quantize/quantize.cpp`` of the llama.cpp vendored in llama-cpp-python 0.3.36. Which tensor
gets which type under a preset is qtool.plan's business. Nothing here quantizes or touches a file.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Iterable

from gguf import GGMLQuantizationType, LlamaFileType

from qtool.errors import UsageError
from qtool.formats.ggml_types import (QUANT_SIZES, FileType, QType, all_types, file_type_named,
                                      ggml_type, ggml_type_named)
from qtool.formats.ggml_types import file_type as _llama_file_type

T = GGMLQuantizationType
F = LlamaFileType
#: the reference build's Q2_0 type and file type, which gguf-py 0.19 lacks
Q2_0 = ggml_type_named("Q2_0")
MOSTLY_Q2_0 = file_type_named("MOSTLY_Q2_0")

#: ggml's is_quantized flag: every type except the plain float and integer ones.
_NOT_QUANTIZED = frozenset({T.F32, T.F16, T.BF16, T.I8, T.I16, T.I32, T.I64, T.F64})

#: Types ggml_quantize_chunk can produce (the rest exist only as dot-product partners or integers).
TARGET_TYPES = frozenset(t for t in all_types() if t not in {T.Q8_1, T.Q8_K, T.I8, T.I16, T.I32, T.I64, T.F64})


def type_name(qtype: int) -> str:
    """ggml type name for a type id, also for the few gguf-py does not know."""
    return ggml_type(int(qtype)).name


def is_quantized(qtype: int) -> bool:
    """ggml_is_quantized."""
    return qtype not in _NOT_QUANTIZED


def block_size(qtype: int) -> int:
    return QUANT_SIZES[qtype][0]


# --------------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """One entry of llama-quantize's list of allowed quantization types."""

    name: str
    #: llama_ftype as written to general.file_type
    ftype: FileType
    #: llama_ftype_get_default_type: the type of every quantizable tensor before the mixture rules.
    base_type: QType
    description: str
    #: the preset an alias stands for (llama-quantize's Q3_K, Q4_K, Q5_K)
    alias_of: str | None = None

    @property
    def only_copy(self) -> bool:
        return self.name == "COPY"

    @property
    def default_type(self) -> QType:
        return self.base_type


#: llama_ftype_get_default_type
_BASE_TYPE: dict[int, int] = {
    F.MOSTLY_Q4_0: T.Q4_0, F.MOSTLY_Q4_1: T.Q4_1, F.MOSTLY_Q5_0: T.Q5_0, F.MOSTLY_Q5_1: T.Q5_1,
    F.MOSTLY_Q8_0: T.Q8_0, F.MOSTLY_F16: T.F16, F.MOSTLY_BF16: T.BF16, F.ALL_F32: T.F32,
    F.MOSTLY_Q1_0: T.Q1_0, MOSTLY_Q2_0: Q2_0, F.MOSTLY_MXFP4_MOE: T.MXFP4,
    F.MOSTLY_Q2_K_S: T.Q2_K, F.MOSTLY_Q2_K: T.Q2_K, F.MOSTLY_IQ3_XS: T.IQ3_S,
    F.MOSTLY_Q3_K_S: T.Q3_K, F.MOSTLY_Q3_K_M: T.Q3_K, F.MOSTLY_Q3_K_L: T.Q3_K,
    F.MOSTLY_Q4_K_S: T.Q4_K, F.MOSTLY_Q4_K_M: T.Q4_K, F.MOSTLY_Q5_K_S: T.Q5_K, F.MOSTLY_Q5_K_M: T.Q5_K,
    F.MOSTLY_Q6_K: T.Q6_K, F.MOSTLY_TQ1_0: T.TQ1_0, F.MOSTLY_TQ2_0: T.TQ2_0,
    F.MOSTLY_IQ2_XXS: T.IQ2_XXS, F.MOSTLY_IQ2_XS: T.IQ2_XS, F.MOSTLY_IQ2_S: T.IQ2_XS, F.MOSTLY_IQ2_M: T.IQ2_S,
    F.MOSTLY_IQ3_XXS: T.IQ3_XXS, F.MOSTLY_IQ1_S: T.IQ1_S, F.MOSTLY_IQ1_M: T.IQ1_M,
    F.MOSTLY_IQ4_NL: T.IQ4_NL, F.MOSTLY_IQ4_XS: T.IQ4_XS, F.MOSTLY_IQ3_S: T.IQ3_S, F.MOSTLY_IQ3_M: T.IQ3_S,
}

#: llama-quantize's QUANT_OPTIONS, in its order (the order matters for numeric lookups: 15 -> "Q4_K").
_QUANT_OPTIONS: list[tuple[str, int, str]] = [
    ("Q1_0", F.MOSTLY_Q1_0, " 1.125 bpw quantization"),
    ("Q2_0", MOSTLY_Q2_0, " 2.25 bpw quantization (group 64)"),
    ("Q4_0", F.MOSTLY_Q4_0, " 4.34G, +0.4685 ppl @ Llama-3-8B"),
    ("Q4_1", F.MOSTLY_Q4_1, " 4.78G, +0.4511 ppl @ Llama-3-8B"),
    ("MXFP4_MOE", F.MOSTLY_MXFP4_MOE, " MXFP4 MoE"),
    ("Q5_0", F.MOSTLY_Q5_0, " 5.21G, +0.1316 ppl @ Llama-3-8B"),
    ("Q5_1", F.MOSTLY_Q5_1, " 5.65G, +0.1062 ppl @ Llama-3-8B"),
    ("IQ2_XXS", F.MOSTLY_IQ2_XXS, " 2.06 bpw quantization"),
    ("IQ2_XS", F.MOSTLY_IQ2_XS, " 2.31 bpw quantization"),
    ("IQ2_S", F.MOSTLY_IQ2_S, " 2.5  bpw quantization"),
    ("IQ2_M", F.MOSTLY_IQ2_M, " 2.7  bpw quantization"),
    ("IQ1_S", F.MOSTLY_IQ1_S, " 1.56 bpw quantization"),
    ("IQ1_M", F.MOSTLY_IQ1_M, " 1.75 bpw quantization"),
    ("TQ1_0", F.MOSTLY_TQ1_0, " 1.69 bpw ternarization"),
    ("TQ2_0", F.MOSTLY_TQ2_0, " 2.06 bpw ternarization"),
    ("Q2_K", F.MOSTLY_Q2_K, " 2.96G, +3.5199 ppl @ Llama-3-8B"),
    ("Q2_K_S", F.MOSTLY_Q2_K_S, " 2.96G, +3.1836 ppl @ Llama-3-8B"),
    ("IQ3_XXS", F.MOSTLY_IQ3_XXS, " 3.06 bpw quantization"),
    ("IQ3_S", F.MOSTLY_IQ3_S, " 3.44 bpw quantization"),
    ("IQ3_M", F.MOSTLY_IQ3_M, " 3.66 bpw quantization mix"),
    ("Q3_K", F.MOSTLY_Q3_K_M, "alias for Q3_K_M"),
    ("IQ3_XS", F.MOSTLY_IQ3_XS, " 3.3 bpw quantization"),
    ("Q3_K_S", F.MOSTLY_Q3_K_S, " 3.41G, +1.6321 ppl @ Llama-3-8B"),
    ("Q3_K_M", F.MOSTLY_Q3_K_M, " 3.74G, +0.6569 ppl @ Llama-3-8B"),
    ("Q3_K_L", F.MOSTLY_Q3_K_L, " 4.03G, +0.5562 ppl @ Llama-3-8B"),
    ("IQ4_NL", F.MOSTLY_IQ4_NL, " 4.50 bpw non-linear quantization"),
    ("IQ4_XS", F.MOSTLY_IQ4_XS, " 4.25 bpw non-linear quantization"),
    ("Q4_K", F.MOSTLY_Q4_K_M, "alias for Q4_K_M"),
    ("Q4_K_S", F.MOSTLY_Q4_K_S, " 4.37G, +0.2689 ppl @ Llama-3-8B"),
    ("Q4_K_M", F.MOSTLY_Q4_K_M, " 4.58G, +0.1754 ppl @ Llama-3-8B"),
    ("Q5_K", F.MOSTLY_Q5_K_M, "alias for Q5_K_M"),
    ("Q5_K_S", F.MOSTLY_Q5_K_S, " 5.21G, +0.1049 ppl @ Llama-3-8B"),
    ("Q5_K_M", F.MOSTLY_Q5_K_M, " 5.33G, +0.0569 ppl @ Llama-3-8B"),
    ("Q6_K", F.MOSTLY_Q6_K, " 6.14G, +0.0217 ppl @ Llama-3-8B"),
    ("Q8_0", F.MOSTLY_Q8_0, " 7.96G, +0.0026 ppl @ Llama-3-8B"),
    ("F16", F.MOSTLY_F16, "14.00G, +0.0020 ppl @ Mistral-7B"),
    ("BF16", F.MOSTLY_BF16, "14.00G, -0.0050 ppl @ Mistral-7B"),
    ("F32", F.ALL_F32, "26.00G              @ 7B"),
    ("COPY", F.ALL_F32, "only copy tensors, no quantizing"),
]


def _build_presets() -> dict[str, Preset]:
    out: dict[str, Preset] = {}
    for name, ftype, desc in _QUANT_OPTIONS:
        if name in out:
            raise AssertionError(f"preset {name} listed twice")
        alias = desc.removeprefix("alias for ") if desc.startswith("alias for ") else None
        out[name] = Preset(name, _llama_file_type(ftype), ggml_type(_BASE_TYPE[int(ftype)]), desc.strip(), alias)
    return out


PRESETS: dict[str, Preset] = _build_presets()

#: What llama.cpp's model loader records as the file type of a file made mostly of one ggml type; it is
#: also the ftype a plain ggml type name stands for where llama-quantize has a preset of that base type.
_FTYPE_OF_TYPE: dict[int, int] = {
    T.F32: F.ALL_F32, T.F16: F.MOSTLY_F16, T.BF16: F.MOSTLY_BF16, T.Q4_0: F.MOSTLY_Q4_0, T.Q4_1: F.MOSTLY_Q4_1,
    T.Q5_0: F.MOSTLY_Q5_0, T.Q5_1: F.MOSTLY_Q5_1, T.Q8_0: F.MOSTLY_Q8_0, T.Q2_K: F.MOSTLY_Q2_K,
    T.Q3_K: F.MOSTLY_Q3_K_M, T.Q4_K: F.MOSTLY_Q4_K_M, T.Q5_K: F.MOSTLY_Q5_K_M, T.Q6_K: F.MOSTLY_Q6_K,
    T.TQ1_0: F.MOSTLY_TQ1_0, T.TQ2_0: F.MOSTLY_TQ2_0, T.IQ2_XXS: F.MOSTLY_IQ2_XXS, T.IQ2_XS: F.MOSTLY_IQ2_XS,
    T.IQ2_S: F.MOSTLY_IQ2_S, T.IQ3_XXS: F.MOSTLY_IQ3_XXS, T.IQ1_S: F.MOSTLY_IQ1_S, T.IQ1_M: F.MOSTLY_IQ1_M,
    T.IQ4_NL: F.MOSTLY_IQ4_NL, T.IQ4_XS: F.MOSTLY_IQ4_XS, T.IQ3_S: F.MOSTLY_IQ3_S, T.NVFP4: F.MOSTLY_NVFP4,
    T.Q1_0: F.MOSTLY_Q1_0, Q2_0: MOSTLY_Q2_0,
}
_GUESSED = 1024  # LLAMA_FTYPE_GUESSED: the loader's mark for a file type it inferred


def preset_names(include_aliases: bool = True) -> list[str]:
    return [p.name for p in PRESETS.values() if include_aliases or p.alias_of is None]


def get_preset(name: str | Preset) -> Preset:
    """Look a preset up as llama-quantize does: by name, case-insensitive, or by llama_ftype number.

    Plain ggml type names are accepted where llama-quantize accepts them, and then name a preset, whose
    file type is recorded: Q3_K/Q4_K/Q5_K are aliases of the _M mixtures (file types 12/15/17, what
    llama.cpp's loader also calls a file of mostly that type), and most other quantized types share their
    name with a preset. Beware IQ2_S: the preset's tensors are mostly IQ2_XS (as in llama.cpp). Types with
    no preset (MXFP4: see MXFP4_MOE; NVFP4; Q8_1, Q8_K) are refused with a hint.

    A number picks the first preset with that ftype in llama-quantize's order (0 -> F32, 15 -> Q4_K).
    Unlike llama-quantize (std::stoi), "7abc" is not read as 7.
    """
    if isinstance(name, Preset):
        return name
    key = name.strip().upper()
    if key in PRESETS:
        return PRESETS[key]
    if re.fullmatch(r"[+-]?\d+", key):
        for p in PRESETS.values():
            if int(p.ftype) == int(key):
                return p
        raise UsageError(f"no llama-quantize preset has file type {int(key)}")
    hint = ""
    try:
        t = ggml_type_named(key)
    except KeyError:
        t = None
    if t is not None:
        hint = f"; {key} is a ggml type but not a llama-quantize preset (use it with --tensor-type or --pure of a preset)"
    raise UsageError(f"unknown quantization type {name!r}{hint}{_close_matches(key, PRESETS)}")


def _close_matches(key: str, names: Iterable[str]) -> str:
    names = list(names)
    close = difflib.get_close_matches(key, names, n=4, cutoff=0.6)
    close += [n for n in names if key and n.startswith(key) and n not in close]
    return f"; did you mean {', '.join(close[:5])}?" if close else ""


def parse_ggml_type(name: str) -> QType:
    """A ggml type name (case-insensitive) for --output-tensor-type, --token-embedding-type, --tensor-type.

    llama-quantize accepts any ggml type here; types ggml cannot quantize to (Q8_1, Q8_K, the integer types)
    would crash it later, so they are refused here.
    """
    key = name.strip().upper()
    try:
        t = ggml_type_named(key)
    except KeyError:
        raise UsageError(f"unknown ggml type {name!r}{_close_matches(key, [t.name for t in TARGET_TYPES])}") from None
    if t not in TARGET_TYPES:
        raise UsageError(f"ggml cannot quantize to {t.name}; choose one of the storage types "
                         f"({', '.join(sorted(x.name for x in TARGET_TYPES))})")
    return t


def parse_tensor_type(spec: str, where: str | None = None) -> tuple[str, QType]:
    """One --tensor-type NAME=TYPE argument, as llama-quantize reads it: the name part is lower-cased and
    used as a regular expression searched in each tensor name. Errors begin with ``where`` (by default
    ``--tensor-type 'SPEC'``)."""
    where = where or f"--tensor-type {spec!r}"
    name, sep, qtype = spec.partition("=")
    if not sep:
        raise UsageError(f"{where} is not NAME=TYPE")
    if not name:
        raise UsageError(f"{where} has no tensor name")
    if not qtype:
        raise UsageError(f"{where} has no type")
    pattern = name.lower()
    try:
        re.compile(pattern)
        return pattern, parse_ggml_type(qtype)
    except re.error as e:
        raise UsageError(f"{where}: {pattern!r} is not a regular expression: {e}") from None
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from None


def _compile(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise UsageError(f"bad --tensor-type regex {pattern!r}: {e}") from None
