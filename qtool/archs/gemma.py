"""Gemma, Gemma 2 and Gemma 3 (text; also the text model of Gemma3ForConditionalGeneration), as
convert_hf_to_gguf's GemmaModel, Gemma2Model and Gemma3Model convert them: every ``*norm.weight`` shifted by +1
(Gemma's RMSNorm multiplies by 1 + weight; llama.cpp by the weight), ``lm_head`` dropped (tied to the
embeddings), soft-capping and sliding-window keys, SentencePiece vocabulary without a space prefix. No q/k
permutation: llama.cpp runs Gemma with NeoX-style rope, the HF layout.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass

import gguf
import numpy as np
from gguf import MODEL_ARCH

from qtool.archs.base import SKIPPED_SUFFIXES, Family
from qtool.archs.config import Config
from qtool.archs.metadata import hparams as shared_hparams
from qtool.archs.metadata import rope_parameters
from qtool.archs.transforms import Transform
from qtool.errors import FormatError


def _bf16_words(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 words, round to nearest even (torch's conversion; NaN stays NaN)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16)
    return rounded


@dataclass(frozen=True)
class NormShift(Transform):
    """norm_plus_one: weight + shift as the reference computes it. ModelBase.prepare_tensors widens every dtype
    but F16 and F32 to F32 before modify_tensors adds the shift: F32 and BF16 weights are shifted in float32,
    F16 weights in F16 (torch's half add: float32 arithmetic, rounded to nearest even). Takes the widened
    float32 values (``load``) or the stored words (``raw``: the shifted value stored in that dtype again,
    as llama-quantize would store the reference's F32 value) and gives back the same kind."""

    shift: float = 1.0
    dtype: str = "F32"
    name = "norm_plus_one"

    def for_dtype(self, dtype: str) -> "NormShift":
        return NormShift(self.shift, dtype)

    def shape(self, shapes, where):
        (s,) = shapes
        return s

    def __call__(self, arrays):
        (a,) = arrays
        words = a.dtype.kind == "u"
        if self.dtype == "F32":
            x = a.view(np.float32) if words else a
            out = (x.astype(np.float32) + np.float32(self.shift)).astype(np.float32)
            return out.view(np.uint32) if words else out
        if self.dtype == "F16":
            x = a.view(np.float16).astype(np.float32) if words else a.astype(np.float32)
            out = (x + np.float32(self.shift)).astype(np.float16)
            return out.view(np.uint16) if words else out.astype(np.float32)
        if self.dtype == "BF16":
            x = (a.astype(np.uint32) << np.uint32(16)).view(np.float32) if words else a.astype(np.float32)
            out = (x + np.float32(self.shift)).astype(np.float32)
            return _bf16_words(out) if words else out
        raise FormatError(f"norm_plus_one: cannot shift a {self.dtype} tensor")


def norm_plus_one(hp) -> Transform:
    return NormShift(1.0)


@contextmanager
def _quiet_overwrites():
    """GGUFWriter warns when a key is written twice; Gemma3Model overwrites shared keys on purpose (the
    value changes, the key keeps its place)."""
    log = logging.getLogger("gguf.gguf_writer")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def gemma_hparams(w: gguf.GGUFWriter, cfg: Config, hp) -> None:
    """GemmaModel.set_gguf_parameters (its own: no rope keys), in its order."""
    w.add_context_length(cfg.int("max_position_embeddings", required=True))
    w.add_embedding_length(hp.n_embd)
    w.add_block_count(hp.n_layer)
    w.add_feed_forward_length(hp.n_ff)
    w.add_head_count(hp.n_head)
    w.add_head_count_kv(hp.n_head_kv)
    w.add_layer_norm_rms_eps(_required_float(cfg, "rms_norm_eps"))
    w.add_key_length(cfg.int("head_dim", required=True))
    w.add_value_length(cfg.int("head_dim", required=True))


def gemma2_hparams(w: gguf.GGUFWriter, cfg: Config, hp) -> None:
    """Gemma2Model.set_gguf_parameters: Gemma's keys, then the soft-caps and the sliding window."""
    gemma_hparams(w, cfg, hp)
    w.add_attn_logit_softcapping(_required_float(cfg, "attn_logit_softcapping"))
    w.add_final_logit_softcapping(_required_float(cfg, "final_logit_softcapping"))
    w.add_sliding_window(cfg.int("sliding_window", required=True))


def gemma3_hparams(w: gguf.GGUFWriter, cfg: Config, hp) -> None:
    """Gemma3Model.set_gguf_parameters: the shared keys, then its own (some overwrite shared ones in place)."""
    shared_hparams(w, cfg, hp)
    with _quiet_overwrites():
        w.add_context_length(cfg.int("max_position_embeddings") or 131072)
        w.add_head_count(cfg.int("num_attention_heads") or 8)
        w.add_layer_norm_rms_eps(_float(cfg, "rms_norm_eps", 1e-6))
        w.add_key_length(cfg.int("head_dim") or 256)
        w.add_value_length(cfg.int("head_dim") or 256)
        rope = rope_parameters(cfg)
        params = rope.get("full_attention", rope)
        theta = cfg.float("rope_theta", params if isinstance(params, dict) else {}, "rope_scaling ")
        w.add_rope_freq_base(1_000_000.0 if theta is None else theta)
        if cfg.data.get("attn_logit_softcapping") is not None:
            raise FormatError(f"{cfg.path}: attn_logit_softcapping is {cfg.data['attn_logit_softcapping']!r}; "
                              f"Gemma 3 has none (the reference converter refuses it too)")
        if cap := _float(cfg, "final_logit_softcapping", None):
            w.add_final_logit_softcapping(cap)
        if cfg.data.get("sliding_window_pattern") != 1:
            w.add_sliding_window(cfg.int("sliding_window", required=True))
        w.add_head_count_kv(cfg.int("num_key_value_heads") or 4)


def _float(cfg: Config, key: str, default):
    v = cfg.float(key)
    return default if v is None else v


def _required_float(cfg: Config, key: str) -> float:
    v = cfg.float(key)
    if v is None:
        raise FormatError(f"{cfg.path}: lacks {key}")
    return v


def gemma3_layer_pattern(cfg: Config, hp) -> list[str]:
    """llama.cpp's gemma3 makes every sixth layer global (and the rest sliding) whatever the config says."""
    types = cfg.data.get("layer_types")
    if not isinstance(types, list):
        return []
    want = ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(len(types))]
    if types != want:
        return [f"{cfg.path}: layer_types is not Gemma 3's five sliding layers then one global; llama.cpp's "
                f"gemma3 uses that pattern, so its output would differ"]
    return []


def _attention_scale(n_layer_27b: int):
    def check(cfg: Config, hp) -> list[str]:
        """llama.cpp scales queries by 1/sqrt(head_dim), or 1/sqrt(hidden/heads) for the 27B layer count,
        and never reads query_pre_attn_scalar: a config whose scalar is neither runs differently there."""
        q = cfg.float("query_pre_attn_scalar")
        if q is None:
            return []
        used = hp.n_embd // hp.n_head if hp.n_layer == n_layer_27b else hp.head_dim
        if q != used:
            return [f"{cfg.path}: query_pre_attn_scalar is {q:g}, but llama.cpp scales attention by "
                    f"1/sqrt({used}) for this model, so its output would differ"]
        return []
    return check


#: the reference's Gemma models drop lm_head.weight whatever tie_word_embeddings says
_SKIP = SKIPPED_SUFFIXES + ("lm_head.weight",)


class Gemma(Family, hf=("GemmaForCausalLM",), model_types=("gemma",)):
    arch = MODEL_ARCH.GEMMA
    tokenizer = "gemma"
    skip = _SKIP
    transforms = {("norm.weight",): norm_plus_one}
    own_hparams = gemma_hparams
    # transformers 4.57's GemmaConfig defaults for keys the conversion writes
    defaults = {"gemma": {"max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "head_dim": 256,
                          "num_key_value_heads": 16}}


class Gemma2(Family, hf=("Gemma2ForCausalLM",), model_types=("gemma2",)):
    arch = MODEL_ARCH.GEMMA2
    tokenizer = "gemma2"
    skip = _SKIP
    transforms = {("norm.weight",): norm_plus_one}
    own_hparams = gemma2_hparams
    checks = (_attention_scale(46),)
    # transformers 4.57's Gemma2Config defaults for keys the conversion writes
    defaults = {"gemma2": {"max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "head_dim": 256,
                           "num_key_value_heads": 4, "attn_logit_softcapping": 50.0,
                           "final_logit_softcapping": 30.0, "sliding_window": 4096, "rope_theta": 10000.0}}


class Gemma3(Family, hf=("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"), model_types=("gemma3_text",)):
    arch = MODEL_ARCH.GEMMA3
    tokenizer = "gemma3"
    skip = _SKIP
    transforms = {("norm.weight",): norm_plus_one}
    own_hparams = gemma3_hparams
    checks = (gemma3_layer_pattern, _attention_scale(62))
    # transformers 4.57's Gemma3TextConfig defaults for keys the conversion writes
    defaults = {"gemma3_text": {"max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "head_dim": 256,
                                "num_attention_heads": 8, "num_key_value_heads": 4, "rope_theta": 1_000_000.0,
                                "rope_local_base_freq": 10_000.0, "sliding_window": 4096}}
