"""Which type each tensor gets: llama.cpp's per-tensor rules under a preset, the overrides, the plan.

Reference: ``src/llama-quant.cpp`` of the llama.cpp vendored in llama-cpp-python 0.3.36. The rules change
between releases; this module follows that build exactly and ``tests/test_rules_vs_llama.py`` holds it to it.

The flow mirrors llama.cpp's, so that its counters tick in the same places::

    plan_model(preset, metadata, tensors, options)
      for each tensor, in llama-quantize's order (layer, then name):
        why_not_quantized()   -> a reason: copy as is
        explicit --token-embedding-type / --output-tensor-type -> that type, nothing else
        base type not quantized (F16/BF16/F32 presets) -> base type
        --tensor-type regexes (first match) or, unless --pure, the mixture rules (_Rules)
        _fallback()           -> a type whose block fits the row

The input tensors are anything with ``name``, ``shape`` (numpy order) and ``qtype`` (formats.source.TensorInfo);
the output is one ``TensorPlan`` per tensor. Nothing here quantizes or touches a file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from gguf import GGMLQuantizationType, LlamaFileType

from qtool.errors import FormatError, QuantError, UsageError
from qtool.formats.ggml_types import ExtraType, QType, ggml_type
from qtool.formats.source import TensorInfo
from qtool.quantizers.presets import (_FTYPE_OF_TYPE, _GUESSED, MOSTLY_Q2_0, Q2_0, Preset, _compile, block_size,
                                      get_preset, is_quantized, parse_tensor_type, type_name)

T = GGMLQuantizationType
F = LlamaFileType


def file_type(preset: str | Preset, metadata: Mapping[str, Any] | None = None,
              tensors: Sequence[Any] | None = None) -> int:
    """The general.file_type llama-quantize writes for ``preset``.

    For COPY it keeps the input's file type: its general.file_type, or else what llama.cpp's loader guesses
    from the most common tensor type, with the LLAMA_FTYPE_GUESSED bit (1024) set as llama.cpp writes it.
    """
    p = get_preset(preset)
    if not p.only_copy:
        return int(p.ftype)
    if metadata is not None and "general.file_type" in metadata:
        return _scalar_int(metadata["general.file_type"], "general.file_type")
    if tensors is None:
        raise UsageError("COPY keeps the input's file type: pass the input's metadata and tensors")
    counts: dict[int, int] = {}
    best, best_n = int(T.F32), 0
    for t in _ordered(tensors):
        q = int(t.qtype)
        counts[q] = counts.get(q, 0) + 1
        if counts[q] > best_n:
            best, best_n = q, counts[q]
    return _FTYPE_OF_TYPE.get(best, int(F.ALL_F32)) | _GUESSED


# --------------------------------------------------------------------------------------------------
# Model facts the rules read
# --------------------------------------------------------------------------------------------------


#: (arch, layer count) -> llama.cpp classifies the model as LLM_TYPE_70B, which bumps attn_v.
_SEVENTY_B_LAYERS = {"llama": 80, "qwen2": 80, "deci": 80, "olmo": 80, "jais2": 68}


@dataclass(frozen=True)
class ModelFacts:
    """The hparams llama-quant.cpp consults, read from GGUF metadata as llama.cpp's loader reads them."""

    arch: str
    n_layer: int        # <arch>.block_count (n_layer_all: counts NextN layers too)
    n_head: int         # of layer 0
    n_head_kv: int      # of layer 0; defaults to n_head
    n_expert: int
    is_70b: bool

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> "ModelFacts":
        arch = metadata.get("general.architecture")
        if isinstance(arch, (bytes, bytearray)):
            arch = arch.decode()
        if not isinstance(arch, str) or not arch:
            raise FormatError("model metadata has no general.architecture")
        key = f"{arch}.block_count"
        if key not in metadata:
            raise FormatError(f"model metadata has no {key}")
        n_layer = _scalar_int(metadata[key], key)
        n_head = _first_int(metadata.get(f"{arch}.attention.head_count", 0), f"{arch}.attention.head_count")
        kv_key = f"{arch}.attention.head_count_kv"
        n_head_kv = _first_int(metadata[kv_key], kv_key) if kv_key in metadata else n_head
        n_expert = _scalar_int(metadata.get(f"{arch}.expert_count", 0), f"{arch}.expert_count")
        n_nextn = _scalar_int(metadata.get(f"{arch}.nextn_predict_layers", 0), f"{arch}.nextn_predict_layers")
        is_70b = _SEVENTY_B_LAYERS.get(arch) == n_layer - n_nextn
        if arch == "llama" and (n_expert == 8 or n_head == n_head_kv):
            is_70b = False  # llama's loader: 8 experts -> 8x7B/8x22B, equal head counts -> 65B
        return cls(arch, n_layer, n_head, n_head_kv, n_expert, is_70b)


def _scalar_int(value: Any, key: str) -> int:
    try:
        if isinstance(value, (list, tuple)) or getattr(value, "ndim", 0):
            raise TypeError
        return int(value)
    except (TypeError, ValueError):
        raise FormatError(f"metadata {key} is not an integer: {value!r}") from None


def _first_int(value: Any, key: str) -> int:
    if isinstance(value, (list, tuple)) or getattr(value, "ndim", 0):
        if len(value) == 0:
            raise FormatError(f"metadata {key} is an empty array")
        value = value[0]
    return _scalar_int(value, key)


# --------------------------------------------------------------------------------------------------
# Which tensors are quantized at all (tensor_allows_quantization)
# --------------------------------------------------------------------------------------------------

#: substrings that keep a tensor as it is, with the reason shown to the user
_KEEP_SUBSTRINGS: tuple[tuple[str, str], ...] = (
    ("_norm.weight", "norm"),
    ("ffn_gate_inp.weight", "expert router"),
    ("ffn_gate_tid2eid.weight", "expert routing table"),
    ("altup", "altup (tiny)"),
    ("laurel", "laurel (tiny)"),
    ("per_layer_model_proj", "per_layer_model_proj"),
    ("ssm_conv1d", "conv1d"),
    ("shortconv.conv.weight", "conv1d"),
    ("indexer.k_proj.weight", "indexer projection"),
    ("indexer.q_proj.weight", "indexer projection"),
    *((f"time_mix_{n}.weight", "RWKV small weight") for n in (
        "first", "w0", "w1", "w2", "v0", "v1", "v2", "a0", "a1", "a2", "g1", "g2",
        "decay_w1", "decay_w2", "lerp_fused")),
    ("attn_rel_b.weight", "relative position bias"),
    (".position_embd", "multimodal position embedding"),
    ("sam.pos_embd", "multimodal"),
    ("sam.neck.", "multimodal"),
    ("sam.net_", "multimodal"),
    (".rel_pos", "multimodal"),
    (".patch_embd", "multimodal patch embedding"),
    (".patch_merger", "multimodal"),
    ("a.rvq.codebook", "audio codebook"),
    ("mm.a.code_embd", "audio codebook"),
)
_KEEP_EXACT = {"position_embd.weight": "position embedding", "token_types.weight": "token types"}
_KEEP_SUBSTRINGS_BY_ARCH: dict[str, tuple[str, ...]] = {
    "glm5-next": ("hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj", "indexer_compressor_gate",
                  "indexer_compressor_ape", "ssm_f_a.weight", "ssm_f_b.weight", "ssm_g_a.weight",
                  "ssm_g_b.weight", "ssm_beta.weight", "attn_kv_a_mqa.weight", "attn_k_b.weight",
                  "attn_v_b.weight"),
}


def ggml_ne(shape: Sequence[int]) -> tuple[int, int, int, int]:
    """ggml's ne[0..3] for a numpy-order shape (ne[0] is the row length)."""
    ne = [int(d) for d in reversed(tuple(shape))] + [1, 1, 1, 1]
    return ne[0], ne[1], ne[2], ne[3]


def ggml_n_dims(shape: Sequence[int]) -> int:
    """ggml_n_dims: trailing axes of size 1 do not count, so a (1, 256) tensor is 1-D."""
    ne = ggml_ne(shape)
    for i in (3, 2, 1):
        if ne[i] > 1:
            return i + 1
    return 1


def why_not_quantized(name: str, shape: Sequence[int], arch: str, leave_output: bool) -> str | None:
    """None when llama.cpp quantizes this tensor, else a short reason."""
    if ggml_n_dims(shape) < 2:
        return "1-D"
    # llama.cpp compares rfind("weight") with size - 6; for a 5-character name both are npos
    if not (name.endswith("weight") or len(name) == 5):
        return "not a weight"
    for sub, why in _KEEP_SUBSTRINGS:
        if sub in name:
            return why
    if leave_output and name == "output.weight":
        return "--leave-output-tensor"
    if name in _KEEP_EXACT:
        return _KEEP_EXACT[name]
    for sub in _KEEP_SUBSTRINGS_BY_ARCH.get(arch, ()):
        if sub in name:
            return f"{arch} keeps {sub}"
    return None


# --------------------------------------------------------------------------------------------------
# Tensor categories (tensor_get_category), first match wins
# --------------------------------------------------------------------------------------------------

OUTPUT, TOKEN_EMBD, ATTN_QKV, ATTN_KV_B, ATTN_V, ATTN_K, ATTN_Q, ATTN_OUTPUT, FFN_UP, FFN_GATE, FFN_DOWN, OTHER = (
    "output", "token_embd", "attn_qkv", "attn_kv_b", "attn_v", "attn_k", "attn_q", "attn_output",
    "ffn_up", "ffn_gate", "ffn_down", "other")
_TOKEN_EMBD_NAMES = ("token_embd.weight", "per_layer_token_embd.weight")
_CATEGORY_SUBSTRINGS = (
    ("attn_qkv.weight", ATTN_QKV), ("attn_kv_b.weight", ATTN_KV_B), ("attn_v.weight", ATTN_V),
    ("attn_k.weight", ATTN_K), ("attn_q.weight", ATTN_Q), ("attn_output.weight", ATTN_OUTPUT),
    ("ffn_up", FFN_UP), ("ffn_gate", FFN_GATE), ("ffn_down", FFN_DOWN),
)
_ATTN_V_LIKE = (ATTN_V, ATTN_QKV, ATTN_KV_B)


def category(name: str) -> str:
    if name == "output.weight":
        return OUTPUT
    if name in _TOKEN_EMBD_NAMES:
        return TOKEN_EMBD
    for sub, cat in _CATEGORY_SUBSTRINGS:
        if sub in name:
            return cat
    return OTHER


# --------------------------------------------------------------------------------------------------
# The fallback for rows that do not fit the block (tensor_type_fallback)
# --------------------------------------------------------------------------------------------------

_FALLBACK: dict[int, int] = {
    **dict.fromkeys((T.IQ1_S, T.IQ1_M, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S, T.IQ4_XS), T.IQ4_NL),
    **dict.fromkeys((Q2_0, T.Q2_K, T.Q3_K, T.TQ1_0, T.TQ2_0), T.Q4_0),
    T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0,
}


def _fallback(name: str, ncols: int, qtype: int) -> tuple[int, str | None]:
    qk = block_size(qtype)
    if ncols % qk == 0:
        return qtype, None
    if qtype in _FALLBACK:
        new = _FALLBACK[qtype]
    elif qk <= 32:
        new = qtype  # already a 32-block type: only F16 remains
    else:
        raise QuantError(f"{name}: row length {ncols} is not a multiple of {qk} and llama.cpp defines "
                         f"no fallback for {type_name(qtype)}")
    why = f"fallback from {type_name(qtype)}: {ncols} % {qk} != 0"
    if ncols % block_size(new) != 0:
        return T.F16, why + f", {ncols} % {block_size(new)} != 0"
    return new, why


# --------------------------------------------------------------------------------------------------
# The mixture rules (llama_tensor_get_type_impl)
# --------------------------------------------------------------------------------------------------


@dataclass
class _Counters:
    """quantize_state_impl's counters: they tick only when the mixture rules run for a tensor."""

    n_attention_wv: int = 0
    i_attention_wv: int = 0
    n_ffn_down: int = 0
    i_ffn_down: int = 0
    n_ffn_gate: int = 0
    i_ffn_gate: int = 0
    n_ffn_up: int = 0
    i_ffn_up: int = 0


def _use_more_bits(i_layer: int, n_layer: int) -> bool:
    # C integer division and remainder: (i - n/8) can be negative only when i < n/8, which short-circuits
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def _layer_of(name: str) -> int | None:
    """sscanf(name, "blk.%d.") as llama.cpp uses it."""
    m = re.match(r"blk\.\s*([+-]?\d+)", name)
    return int(m.group(1)) if m else None


_IQ2_LIKE = frozenset({F.MOSTLY_IQ2_XXS, F.MOSTLY_IQ2_XS, F.MOSTLY_IQ1_S, F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M,
                       F.MOSTLY_IQ1_M})
_OUTPUT_Q5K = frozenset({F.MOSTLY_IQ2_XXS, F.MOSTLY_IQ2_XS, F.MOSTLY_IQ3_XXS, F.MOSTLY_IQ1_S, F.MOSTLY_IQ2_S,
                         F.MOSTLY_IQ2_M, F.MOSTLY_IQ1_M})
_MOE8_ATTN_OUTPUT_Q5K = frozenset({
    F.MOSTLY_Q2_K, F.MOSTLY_IQ3_XS, F.MOSTLY_IQ3_XXS, F.MOSTLY_Q3_K_S, F.MOSTLY_Q3_K_M, F.MOSTLY_IQ4_NL,
    F.MOSTLY_Q4_K_S, F.MOSTLY_Q4_K_M, F.MOSTLY_IQ3_S, F.MOSTLY_IQ3_M, F.MOSTLY_IQ4_XS})
#: attn_output of dense (non-8-expert, non-falcon) models
_ATTN_OUTPUT_DENSE = {F.MOSTLY_Q2_K: T.Q3_K, F.MOSTLY_IQ3_XXS: T.IQ3_S, F.MOSTLY_Q3_K_M: T.Q4_K,
                      F.MOSTLY_Q3_K_L: T.Q5_K, F.MOSTLY_IQ3_M: T.Q4_K}


class _Rules:
    def __init__(self, facts: ModelFacts, ftype: int, options: "PlanOptions", tied: bool, counters: _Counters):
        self.m = facts
        self.ftype = ftype
        self.opt = options
        self.tied = tied
        self.c = counters

    def _layer(self, counter: int, n_layer: int, name: str) -> tuple[int, int]:
        if max(1, self.m.n_expert) > 1:
            i = _layer_of(name)
            if i is None:
                raise QuantError(f"{name}: cannot tell its layer (expected blk.N.)")
            if not 0 <= i < n_layer:
                raise QuantError(f"{name}: layer {i} is outside [0, {n_layer})")
            return i, n_layer
        return counter, n_layer

    def apply(self, name: str, ne: tuple[int, int, int, int], cat: str, new: int) -> tuple[int, str]:
        """The mixture's choice for one quantizable tensor whose preset base type is ``new``."""
        m, ft, c = self.m, self.ftype, self.c
        base = new

        def done(t: int, why: str) -> tuple[int, str]:
            return t, (why if int(t) != int(base) else "preset base")

        if m.arch == "glm5-next" and ("attn_q_a" in name or "attn_q_b" in name or "nextn.eh_proj" in name):
            if new not in (T.F32, T.BF16, T.F16):
                return T.Q8_0, "glm5-next keeps it at Q8_0"

        if cat == OUTPUT or (self.tied and cat == TOKEN_EMBD):
            what = "output" if cat == OUTPUT else "tied token_embd"
            if self.opt.output_tensor_type is not None:
                return self.opt.output_tensor_type, "--output-tensor-type (tied)"
            nx, qk = ne[0], block_size(new)
            if ft == F.MOSTLY_MXFP4_MOE:
                return T.Q8_0, f"{what}: MXFP4_MOE"
            if m.arch == "falcon" or nx % qk != 0:
                return T.Q8_0, f"{what}: " + ("falcon" if m.arch == "falcon" else f"{nx} % {qk} != 0")
            if ft in _OUTPUT_Q5K:
                return T.Q5_K, f"{what} rule"
            if new != T.Q8_0:
                return T.Q6_K, f"{what} rule"
            return done(new, f"{what} rule")

        if ft == F.MOSTLY_MXFP4_MOE:
            expert_role = cat in (FFN_UP, FFN_GATE, FFN_DOWN)
            if ne[2] > 1 and (m.arch != "bailingmoe3" or expert_role):
                return T.MXFP4, "MXFP4_MOE: expert tensor"
            return T.Q8_0, "MXFP4_MOE: not an expert tensor"

        if cat == TOKEN_EMBD:
            if ft in (F.MOSTLY_IQ2_XXS, F.MOSTLY_IQ2_XS, F.MOSTLY_IQ1_S, F.MOSTLY_IQ1_M):
                new = T.Q2_K
            elif ft in (F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M, F.MOSTLY_IQ3_XXS):
                new = T.IQ3_S
            elif ft in (F.MOSTLY_TQ1_0, F.MOSTLY_TQ2_0, MOSTLY_Q2_0):
                new = T.Q4_K
            return done(new, "token_embd rule")

        if ft in _IQ2_LIKE:
            iq2s_m = ft in (F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M)
            if cat in _ATTN_V_LIKE:
                if m.n_gqa >= 4 or m.n_expert >= 4:
                    new = T.Q4_K
                else:
                    new = T.IQ3_S if iq2s_m else T.Q2_K
                c.i_attention_wv += 1
                return done(new, f"{cat} rule")
            if m.n_expert == 8 and cat == ATTN_K:
                return done(T.Q4_K, "attn_k rule (8 experts)")
            if cat == FFN_DOWN:
                if c.i_ffn_down < c.n_ffn_down // 8:
                    new = T.IQ3_S if iq2s_m else T.Q2_K
                c.i_ffn_down += 1
                return done(new, "ffn_down rule (first eighth)")
            if cat == ATTN_OUTPUT:
                if m.n_expert == 8:
                    new = T.Q5_K
                elif ft in (F.MOSTLY_IQ1_S, F.MOSTLY_IQ1_M):
                    new = T.IQ2_XXS
                elif iq2s_m:
                    new = T.IQ3_S
                return done(new, "attn_output rule")
            return done(new, "")

        if cat in _ATTN_V_LIKE:
            gqa4 = m.n_gqa >= 4
            why = f"{cat} rule"
            if ft == F.MOSTLY_Q2_K:
                new = T.Q4_K if gqa4 else T.Q3_K
            elif ft == F.MOSTLY_Q2_K_S and gqa4:
                new = T.Q4_K
            elif ft == F.MOSTLY_IQ3_XXS:
                new = T.Q4_K if gqa4 else (T.IQ3_S if not self.opt.has_imatrix else T.IQ3_XXS)
            elif ft in (F.MOSTLY_IQ3_XS, F.MOSTLY_IQ3_S) and gqa4:
                new = T.Q4_K
            elif ft == F.MOSTLY_IQ3_M:
                new = T.Q4_K
            elif ft == F.MOSTLY_Q3_K_M:
                new = T.Q5_K if c.i_attention_wv < 2 else T.Q4_K
                why += f" (#{c.i_attention_wv})"
            elif ft == F.MOSTLY_Q3_K_L:
                new = T.Q5_K
            elif ft in (F.MOSTLY_IQ4_NL, F.MOSTLY_IQ4_XS) and gqa4:
                new = T.Q5_K
            elif ft in (F.MOSTLY_Q4_K_M, F.MOSTLY_Q5_K_M) and _use_more_bits(c.i_attention_wv, c.n_attention_wv):
                new = T.Q6_K
                why += f" (use_more_bits {c.i_attention_wv}/{c.n_attention_wv})"
            elif ft == F.MOSTLY_Q4_K_S and c.i_attention_wv < 4:
                new = T.Q5_K
                why += f" (#{c.i_attention_wv} < 4)"
            if m.is_70b and new in (T.Q3_K, T.Q4_K):
                new = T.Q5_K
                why += " (70B)"
            if m.n_expert == 8:
                new = T.Q8_0
                why += " (8 experts)"
            c.i_attention_wv += 1
            return done(new, why)

        if cat == ATTN_K:
            if m.n_expert == 8:
                new = T.Q8_0
            elif ft == F.MOSTLY_IQ3_XS:
                new = T.IQ3_XXS
            elif ft == F.MOSTLY_IQ3_XXS:
                new = T.IQ2_S
            return done(new, "attn_k rule")

        if cat == ATTN_Q:
            if ft == F.MOSTLY_IQ3_XS:
                new = T.IQ3_XXS
            elif ft == F.MOSTLY_IQ3_XXS:
                new = T.IQ2_S
            return done(new, "attn_q rule")

        if cat == FFN_DOWN:
            i, n = self._layer(c.i_ffn_down, c.n_ffn_down, name)
            falcon = m.arch == "falcon"
            why = f"ffn_down rule (layer {i}/{n})"
            if ft == F.MOSTLY_Q2_K:
                new = T.Q3_K
            elif ft == F.MOSTLY_Q2_K_S:
                if i < n // 8:
                    new = T.Q4_K
            elif ft == F.MOSTLY_IQ3_XXS and not self.opt.has_imatrix:
                new = T.Q4_K if i < n // 8 else T.Q3_K
            elif ft == F.MOSTLY_Q3_K_M:
                if i < n // 16:
                    new = T.Q5_K
                elif not falcon or _use_more_bits(i, n):
                    new = T.Q4_K
                else:
                    new = T.Q3_K
            elif ft == F.MOSTLY_IQ3_M and (i < n // 8 or (m.n_expert == 8 and _use_more_bits(i, n))):
                new = T.Q4_K
            elif ft == F.MOSTLY_Q3_K_L:
                new = T.Q4_K if falcon else T.Q5_K
            elif ft == F.MOSTLY_Q4_K_M:
                if falcon:
                    new = T.Q6_K if i < n // 16 else (T.Q5_K if _use_more_bits(i, n) else T.Q4_K)
                elif _use_more_bits(i, n):
                    new = T.Q6_K
            elif i < n // 8 and ft in (F.MOSTLY_IQ4_NL, F.MOSTLY_IQ4_XS) and not self.opt.has_imatrix:
                new = T.Q5_K
            elif ft == F.MOSTLY_Q5_K_M and _use_more_bits(i, n):
                new = T.Q6_K
            elif ft == F.MOSTLY_Q4_K_S and not falcon and i < n // 8:
                new = T.Q5_K
            elif ft in (F.MOSTLY_Q4_0, F.MOSTLY_Q5_0) and self.opt.has_imatrix and i < n // 8:
                new = T.Q4_1 if ft == F.MOSTLY_Q4_0 else T.Q5_1
            c.i_ffn_down += 1
            return done(new, why)

        if cat == ATTN_OUTPUT:
            if m.arch != "falcon":
                if m.n_expert == 8:
                    if ft in _MOE8_ATTN_OUTPUT_Q5K:
                        new = T.Q5_K
                else:
                    new = _ATTN_OUTPUT_DENSE.get(ft, new)
            elif ft == F.MOSTLY_Q3_K_L:
                new = T.Q4_K
            return done(new, "attn_output rule")

        # llama.cpp has a separate attn_qkv branch here that is never reached: attn_qkv is attn_v-like above

        if cat in (FFN_GATE, FFN_UP):
            counter = c.i_ffn_gate if cat == FFN_GATE else c.i_ffn_up
            n_total = c.n_ffn_gate if cat == FFN_GATE else c.n_ffn_up
            i, n = self._layer(counter, n_total, name)
            if ft == F.MOSTLY_IQ3_XS and n // 8 <= i < 7 * n // 8:
                new = T.IQ3_XXS
            if cat == FFN_GATE:
                c.i_ffn_gate += 1
            else:
                c.i_ffn_up += 1
            return done(new, f"{cat} rule (layer {i}/{n})")

        return done(new, "")


# --------------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------------


@dataclass
class PlanOptions:
    output_tensor_type: GGMLQuantizationType | None = None
    token_embedding_type: GGMLQuantizationType | None = None
    #: (regex, type): searched in each tensor name, first match wins, as llama.cpp's --tensor-type
    tensor_types: list[tuple[str, GGMLQuantizationType]] = field(default_factory=list)
    pure: bool = False
    leave_output_tensor: bool = False
    has_imatrix: bool = False
    allow_requantize: bool = False
    #: name -> (type, reason): per-tensor types by exact name (--types-from, a size-targeted mix). They
    #: stand where llama.cpp's mixture rules would; the explicit options above win over them, and the
    #: fallback for rows that do not fit still applies.
    exact_types: dict[str, tuple[GGMLQuantizationType, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class TensorPlan:
    name: str
    shape: tuple[int, ...]
    source_type: GGMLQuantizationType
    qtype: GGMLQuantizationType  # what to write (== source_type means copy as is)
    quantize: bool               # False: copied unchanged
    reason: str
    #: llama.cpp refuses to quantize this tensor to ``qtype`` without importance data for it
    needs_imatrix: bool = False


def _ordered(tensors: Iterable[TensorInfo]) -> list[TensorInfo]:
    """llama-quantize's tensor order (its weights map): by layer number (none first), then by name."""
    def key(t: TensorInfo) -> tuple[int, bytes]:
        layer = _layer_of(t.name)
        return (-1 if layer is None else layer), t.name.encode()
    return sorted(tensors, key=key)


def tensor_requires_imatrix(name: str, qtype: int, preset: str | Preset) -> bool:
    """llama-quant.cpp's rule: IQ1/IQ2/IQ3_XXS targets, and Q2_K in a Q2_K_S file, need importance data,
    except for the token embeddings and output.weight."""
    if name in _TOKEN_EMBD_NAMES or name == "output.weight":
        return False
    if qtype in (T.IQ3_XXS, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ1_M, T.IQ1_S):
        return True
    return qtype == T.Q2_K and int(get_preset(preset).ftype) == F.MOSTLY_Q2_K_S


def plan_model(preset: str | Preset, metadata: Mapping[str, Any], tensors: Iterable[TensorInfo],
               options: PlanOptions | None = None) -> list[TensorPlan]:
    """Which type llama-quantize gives each tensor, in the order it writes them.

    Raises UsageError for a quantized input tensor that would be requantized without allow_requantize
    (naming it), QuantError where llama.cpp itself would fail on a tensor (no fallback, bad layer number),
    FormatError for metadata the rules cannot read. Whether an importance matrix is required is not
    checked here: see ``needs_imatrix`` on each plan and :func:`check_imatrix`.
    """
    p = get_preset(preset)
    opt = options or PlanOptions()
    facts = ModelFacts.from_metadata(metadata)
    ordered = _ordered(tensors)
    if p.only_copy:
        return [TensorPlan(t.name, tuple(t.shape), t.qtype, t.qtype, False, "not quantized: COPY") for t in ordered]
    default = p.default_type
    ftype = int(p.ftype)
    patterns = [(_compile(rx), rx, qt) for rx, qt in opt.tensor_types]

    counters = _Counters()
    names = [t.name for t in ordered]
    counters.n_attention_wv = sum(category(n) in _ATTN_V_LIKE for n in names)
    counters.n_ffn_down = counters.n_ffn_gate = counters.n_ffn_up = facts.n_layer
    tied = "output.weight" not in names
    rules = _Rules(facts, ftype, opt, tied, counters)

    plans = []
    for t in ordered:
        shape = tuple(int(d) for d in t.shape)
        src = ggml_type(int(t.qtype))
        why_not = why_not_quantized(t.name, shape, facts.arch, opt.leave_output_tensor)
        if why_not is not None:
            plans.append(TensorPlan(t.name, shape, src, src, False, f"{_NOT_QUANTIZED_PREFIX}{why_not}"))
            continue
        new, why = _choose(t.name, shape, default, ftype, opt, patterns, rules)
        new = ggml_type(int(new))
        needs = tensor_requires_imatrix(t.name, new, p)
        quantize = new != src
        if not quantize:
            why = f"already {src.name} ({why})"
        plans.append(TensorPlan(t.name, shape, src, new, quantize, why, needs))

    for pl in plans:
        if pl.quantize and is_quantized(pl.source_type) and not opt.allow_requantize:
            raise UsageError(f"{pl.name} is already {pl.source_type.name}; requantizing it to {pl.qtype.name} "
                             f"needs --allow-requantize")
    return plans


def _choose(name: str, shape: tuple[int, ...], default: int, ftype: int, opt: PlanOptions,
            patterns: list[tuple[re.Pattern, str, GGMLQuantizationType]], rules: _Rules) -> tuple[int, str]:
    """llama_tensor_get_type for a tensor that may be quantized."""
    cat = category(name)
    ne = ggml_ne(shape)

    if opt.token_embedding_type is not None and cat == TOKEN_EMBD:
        # per_layer_token_embd follows it too, unless a --tensor-type names it
        if not (name == "per_layer_token_embd.weight" and any(rx.search(name) for rx, _, _ in patterns)):
            return _fits(name, ne[0], opt.token_embedding_type, "--token-embedding-type")
    if opt.output_tensor_type is not None and cat == OUTPUT:
        return _fits(name, ne[0], opt.output_tensor_type, "--output-tensor-type")

    if not is_quantized(default):
        return default, "preset base"

    new, why, manual = default, "preset base", False
    for rx, src, qt in patterns:
        if rx.search(name):
            new, why, manual = qt, f"--tensor-type {src}", True
            break
    if not manual and name in opt.exact_types:
        (new, why), manual = opt.exact_types[name], True
        fb, fb_why = _fallback(name, ne[0], new)
        return (fb, f"{why}; {fb_why}") if fb_why else (new, why)
    if not manual:
        if opt.pure:
            why = "--pure"
        else:
            new, why = rules.apply(name, ne, cat, new)
    fb, fb_why = _fallback(name, ne[0], new)
    if fb_why:
        return fb, fb_why
    return new, why


def mixable(metadata: Mapping[str, Any], tensors: Iterable[TensorInfo],
            options: PlanOptions | None = None) -> list[TensorInfo]:
    """The tensors a per-tensor map (``PlanOptions.exact_types``) decides, in llama-quantize's order: those
    llama.cpp quantizes and no explicit option names (--token-embedding-type, --output-tensor-type, also
    for tied embeddings, --tensor-type). Requires a preset whose base type is quantized."""
    opt = options or PlanOptions()
    facts = ModelFacts.from_metadata(metadata)
    ordered = _ordered(tensors)
    patterns = [_compile(rx) for rx, _ in opt.tensor_types]
    tied = "output.weight" not in {t.name for t in ordered}
    out = []
    for t in ordered:
        if why_not_quantized(t.name, tuple(t.shape), facts.arch, opt.leave_output_tensor) is not None:
            continue
        cat = category(t.name)
        if opt.token_embedding_type is not None and cat == TOKEN_EMBD:
            continue
        if opt.output_tensor_type is not None and (cat == OUTPUT or (tied and cat == TOKEN_EMBD)):
            continue
        if any(rx.search(t.name) for rx in patterns):
            continue
        out.append(t)
    return out


def _fits(name: str, ncols: int, qtype: int, option: str) -> tuple[int, str]:
    # llama.cpp applies no fallback to these two options and aborts later on a misfit; say so up front
    qk = block_size(qtype)
    if ncols % qk:
        raise QuantError(f"{name}: {option} {type_name(qtype)} needs rows that are a multiple of {qk}, "
                         f"this one has {ncols}")
    return qtype, option


# --------------------------------------------------------------------------------------------------
# Importance matrix requirement
# --------------------------------------------------------------------------------------------------


def tensors_needing_imatrix(plans: Iterable[TensorPlan]) -> list[TensorPlan]:
    return [pl for pl in plans if pl.needs_imatrix]


def check_imatrix(plans: Iterable[TensorPlan], imatrix_names: Iterable[str] | None) -> None:
    """Refuse as llama-quantize does. Without an importance matrix (None or empty after
    --include/--exclude-weights): the first tensor that needs one, whether or not it changes type. With
    one: the first tensor that is actually quantized to such a type and has no entry."""
    names = set(imatrix_names or ())
    for pl in plans:
        if not pl.needs_imatrix:
            continue
        if not names:
            raise UsageError(f"this quantization requires an importance matrix (--imatrix): "
                             f"{pl.name} would be {pl.qtype.name}")
        if pl.quantize and pl.name not in names:
            raise UsageError(f"the importance matrix has no entry for {pl.name}, which {pl.qtype.name} needs")


def imatrix_required(preset_or_type: str | Preset | QType,
                     plans: Iterable[TensorPlan] | None = None) -> bool:
    """Whether llama-quantize refuses this quantization without an importance matrix.

    With ``plans`` (from :func:`plan_model`) the answer is exact for that model. Without, for a preset, it is
    the answer for an ordinary dense transformer (attention q/k/v/output, ffn gate/up/down, 8 layers): the
    same rules run on a stand-in model. For a ggml type (a --tensor-type target, say): whether a tensor
    other than the embeddings and output.weight quantized to it needs one (Q2_K only does in Q2_K_S).
    """
    if plans is not None:
        return any(pl.needs_imatrix for pl in plans)
    if isinstance(preset_or_type, (T, ExtraType)):
        return tensor_requires_imatrix("blk.0.ffn_up.weight", preset_or_type, "Q8_0")
    p = get_preset(preset_or_type)
    if p.only_copy:
        return False
    return any(pl.needs_imatrix for pl in plan_model(p, *_STAND_IN))


def _stand_in_model() -> tuple[dict, list[TensorInfo]]:
    meta = {"general.architecture": "llama", "llama.block_count": 8, "llama.attention.head_count": 8,
            "llama.attention.head_count_kv": 8}
    tensors = [_stand_in("token_embd.weight", (1024, 512)), _stand_in("output.weight", (1024, 512))]
    for i in range(8):
        for n, shape in (("attn_q", (512, 512)), ("attn_k", (512, 512)), ("attn_v", (512, 512)),
                         ("attn_output", (512, 512)), ("ffn_gate", (1024, 512)), ("ffn_up", (1024, 512)),
                         ("ffn_down", (512, 1024))):
            tensors.append(_stand_in(f"blk.{i}.{n}.weight", shape))
    return meta, tensors


def _stand_in(name: str, shape: tuple[int, ...]) -> TensorInfo:
    return TensorInfo(name, name, shape, T.F32, 4 * shape[0] * shape[1])


_STAND_IN = _stand_in_model()


# --------------------------------------------------------------------------------------------------
# Recipes: llama-quantize's --tensor-type-file, and replaying another file's types
# --------------------------------------------------------------------------------------------------

_NOT_QUANTIZED_PREFIX = "not quantized: "


def read_tensor_type_file(path: str | Path) -> list[tuple[str, GGMLQuantizationType]]:
    """A --tensor-type-file as llama-quantize reads it: NAME=TYPE entries separated by any whitespace
    (spaces or newlines), each read as a --tensor-type (the name lower-cased, a regular expression
    searched in tensor names, first match wins), in file order. The format has no comments. A bad entry
    is a UsageError naming the file and line."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as e:
        raise UsageError(f"{p}: cannot read the tensor-type file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{p}: the tensor-type file is not UTF-8 text (byte {e.start})") from None
    return parse_tensor_type_text(text, str(p))


def parse_tensor_type_text(text: str, source: str) -> list[tuple[str, GGMLQuantizationType]]:
    """The entries of a tensor-type file's ``text`` (see :func:`read_tensor_type_file`); errors name
    ``source`` and the line."""
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for token in line.split():
            where = f"{source}:{lineno}: {token!r}"
            if token.startswith("#"):
                raise UsageError(f"{where}: llama-quantize's tensor-type file has no comments; "
                                 f"every entry is NAME=TYPE")
            out.append(parse_tensor_type(token, where))
    return out


_REGEX_SPECIAL = set("\\^$.|?*+()[]{}")


def recipe_pattern(name: str) -> str:
    """A pattern that llama-quantize's --tensor-type reading (lower-cased, std::regex searched) matches
    against ``name`` alone: anchored, metacharacters escaped, and upper-case letters, '=', and whitespace
    written as \\xHH (which lower-casing leaves intact)."""
    out = []
    for ch in name:
        if ch in _REGEX_SPECIAL:
            out.append("\\" + ch)
        elif ch.isupper() or ch == "=" or ch.isspace() or ord(ch) < 32:
            if ord(ch) > 0xFF:
                raise UsageError(f"{name!r}: a recipe cannot name this tensor ({ch!r} has no \\xHH form)")
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "^" + "".join(out) + "$"


def recipe_text(plans: Iterable[TensorPlan]) -> str:
    """The plan as a llama-quantize --tensor-type-file: one ``^name$=TYPE`` line per tensor llama.cpp
    quantizes, in plan order. Run with the same preset on the same input, llama-quantize gives every
    tensor the type the plan gives it (each type already fits its rows, so no fallback moves it)."""
    lines = [f"{recipe_pattern(pl.name)}={pl.qtype.name}" for pl in plans
             if not pl.reason.startswith(_NOT_QUANTIZED_PREFIX)]
    return "".join(line + "\n" for line in lines)


def types_from(tensors: Sequence[TensorInfo], other: Sequence[TensorInfo],
               source: str) -> dict[str, tuple[GGMLQuantizationType, str]]:
    """``other``'s tensor types (a GGUF's, e.g. a community quant) as an exact per-tensor map for
    ``tensors`` (new weights of the same model). The two must hold the same tensors with the same shapes:
    a missing, extra or reshaped tensor is a UsageError naming it and ``source``."""
    mine = {t.name: t for t in tensors}
    theirs = {t.name: t for t in other}
    missing = [n for n in mine if n not in theirs]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UsageError(f"--types-from {source} has no tensor {missing[0]}{more}, which the input has")
    extra = [n for n in theirs if n not in mine]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise UsageError(f"--types-from {source} has tensor {extra[0]}{more}, which the input lacks")
    for n, t in mine.items():
        a, b = tuple(int(d) for d in t.shape), tuple(int(d) for d in theirs[n].shape)
        if a != b:
            raise UsageError(f"{n}: shape {list(a)} in the input but {list(b)} in --types-from {source}")
    label = f"--types-from {Path(source).name}"
    return {n: (ggml_type(int(theirs[n].qtype)), label) for n in mine}
