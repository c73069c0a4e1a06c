"""Phi-3 (convert_hf_to_gguf's Phi3MiniModel): the fused projections stay fused, as llama.cpp's phi3 reads
them. ``qkv_proj`` becomes ``attn_qkv`` (rows q | k | v, split by llama.cpp at run time from the head counts)
and ``gate_up_proj`` becomes ``ffn_up`` of twice the feed-forward length (rows gate | up: llama.cpp takes the
first half as the gate). Its own hyperparameter keys (rope dimensions from partial_rotary_factor, the
original context length, the sliding window, 0 for none), the rope factor tensors of ``longrope`` scaling,
and the SentencePiece vocabulary with the added tokens of added_tokens.json / tokenizer_config.json.
"""

from __future__ import annotations

import math

import gguf
import numpy as np
from gguf import MODEL_ARCH, MODEL_TENSOR

from qtool.archs.base import Family
from qtool.archs.config import Config
from qtool.archs.metadata import rope_parameters
from qtool.errors import FormatError

T = MODEL_TENSOR


def _rope(cfg: Config) -> dict:
    rope = rope_parameters(cfg)
    params = rope.get("full_attention", rope)
    if not isinstance(params, dict):
        raise FormatError(f"{cfg.path}: rope_scaling.full_attention is {params!r}, not an object")
    return params


def _rope_dims(cfg: Config, hp) -> int:
    rot = _rope(cfg).get("partial_rotary_factor", 1.0)
    if not isinstance(rot, (int, float)) or isinstance(rot, bool) or not 0 < rot <= 1:
        raise FormatError(f"{cfg.path}: partial_rotary_factor is {rot!r}, not a number in (0, 1]")
    return int(rot * hp.n_embd) // hp.n_head


def _orig_ctx(cfg: Config) -> int:
    v = _rope(cfg).get("original_max_position_embeddings")
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise FormatError(f"{cfg.path}: original_max_position_embeddings is {v!r}, not a positive integer")
    return v


def phi3_hparams(w: gguf.GGUFWriter, cfg: Config, hp) -> None:
    """Phi3MiniModel.set_gguf_parameters (its own), in its order."""
    w.add_context_length(cfg.int(("n_positions", "max_position_embeddings"), required=True))
    w.add_rope_scaling_orig_ctx_len(_orig_ctx(cfg))
    w.add_embedding_length(hp.n_embd)
    w.add_feed_forward_length(hp.n_ff)
    w.add_block_count(hp.n_layer)
    w.add_head_count(hp.n_head)
    w.add_head_count_kv(cfg.int(("num_key_value_heads", "n_head_kv"), required=True))
    eps = cfg.float("rms_norm_eps")
    if eps is None:
        raise FormatError(f"{cfg.path}: lacks rms_norm_eps")
    w.add_layer_norm_rms_eps(eps)
    w.add_rope_dimension_count(_rope_dims(cfg, hp))
    theta = cfg.float("rope_theta", _rope(cfg), "rope_scaling ")
    if theta is None:
        raise FormatError(f"{cfg.path}: lacks rope_theta")
    w.add_rope_freq_base(theta)
    w.add_sliding_window(cfg.int("sliding_window", positive=False) or 0)


def _longrope(cfg: Config, hp) -> tuple[float, list, list] | None:
    """(attention factor, long factors, short factors) of ``longrope``/``su``/``yarn`` scaling, or None."""
    params = _rope(cfg)
    long_factors, short_factors = params.get("long_factor"), params.get("short_factor")
    if not long_factors:
        return None
    n_ctx = cfg.int(("n_positions", "max_position_embeddings"), required=True)
    orig = _orig_ctx(cfg)
    scale = n_ctx / orig
    kind = str(params.get("rope_type", params.get("type", ""))).lower()
    if kind in ("su", "longrope"):
        attn = math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0
    elif kind == "yarn":
        attn = 0.1 * math.log(scale) + 1.0 if scale > 1.0 else 1.0
    else:
        raise FormatError(f"{cfg.path}: rope_scaling type {kind!r} with long_factor is not one llama.cpp's phi3 "
                          f"knows (longrope, su, yarn)")
    half = _rope_dims(cfg, hp) / 2
    if not isinstance(short_factors, list) or len(long_factors) != len(short_factors) or len(long_factors) != half:
        raise FormatError(f"{cfg.path}: rope_scaling long_factor/short_factor must both have {half:g} values")
    return attn, long_factors, short_factors


def rope_factor_key(w: gguf.GGUFWriter, cfg: Config, hp, folder) -> None:
    """rope.scaling.attn_factor of long-context scaling. The reference adds it while generating the factor
    tensors, before any other key but general.architecture, so it goes there."""
    if (lr := _longrope(cfg, hp)) is None:
        return
    w.add_rope_scaling_attn_factors(lr[0])
    kv = w.kv_data[0]
    key = gguf.Keys.Rope.SCALING_ATTN_FACTOR.format(arch=gguf.MODEL_ARCH_NAMES[MODEL_ARCH.PHI3])
    items = list(kv.items())
    moved = [it for it in items if it[0] == key]
    rest = [it for it in items if it[0] != key]
    at = next((i + 1 for i, it in enumerate(rest) if it[0] == gguf.Keys.General.ARCHITECTURE), 0)
    kv.clear()
    kv.update(rest[:at] + moved + rest[at:])


def rope_factors(cfg: Config, hp):
    """rope_factors_long / rope_factors_short (Phi3MiniModel.generate_extra_tensors)."""
    lr = _longrope(cfg, hp)
    if lr is None:
        return []
    return [(T.ROPE_FACTORS_LONG, np.asarray(lr[1], dtype=np.float32)),
            (T.ROPE_FACTORS_SHORT, np.asarray(lr[2], dtype=np.float32))]


def sliding_window_ignored(cfg: Config, hp) -> list[str]:
    """llama.cpp 0.3.36's phi3 reads the sliding window but turns it off ("Phi SWA is currently disabled")."""
    window = cfg.data.get("sliding_window")
    if isinstance(window, int) and not isinstance(window, bool) and window > 0:
        return [f"{cfg.path}: sliding_window {window}: llama.cpp's phi3 runs full attention, so prompts longer "
                f"than {window} tokens attend further back there than in the original"]
    return []


class Phi3(Family, hf=("Phi3ForCausalLM",), model_types=("phi3",)):
    arch = MODEL_ARCH.PHI3
    tokenizer = "phi3"
    own_hparams = phi3_hparams
    keys = (rope_factor_key,)
    generate = (rope_factors,)
    checks = (sliding_window_ignored,)
    shapes = {T.ATTN_QKV: ("(n_head+2*n_head_kv)*head_dim", "n_embd"), T.FFN_UP: ("2*n_ff", "n_embd")}
    # transformers 4.57's Phi3Config defaults for keys the conversion writes
    defaults = {"phi3": {"max_position_embeddings": 4096, "original_max_position_embeddings": 4096,
                         "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                         "num_key_value_heads": lambda c: c.get("num_attention_heads")}}
