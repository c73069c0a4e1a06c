"""Tiny random-weight Hugging Face folders, one per architecture family, and a float64 numpy forward pass of
each written from the transformers model definition (modeling_llama.py, modeling_mixtral.py,
modeling_qwen2.py, modeling_qwen3.py, modeling_qwen3_moe.py), never from qtool's conversion.

Table-driven: ``FAMILIES[name]`` is a :class:`HFFamily` with the config.json keys of the real checkpoints
(small sizes), the HF tensors, and the forward pass. ``write(folder, name, **config_changes)`` writes
config.json, model.safetensors (F32) and the tiny byte-level BPE tokenizer.json of fixtures/tiny-llama;
``logits(folder, tokens)`` runs the forward pass of the folder's own weights.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from qtool.formats.safetensors import SafetensorsFile, write_safetensors
from qtool.formats.source import widen

TOKENIZER = Path(__file__).resolve().parents[2] / "fixtures" / "tiny-llama" / "tokenizer.json"
N_VOCAB = 320  # the fixture tokenizer's 318 tokens and 2 specials


@dataclass(frozen=True)
class HFFamily:
    config: Callable[[], dict[str, Any]]                                          # config.json
    tensors: Callable[[dict, np.random.Generator], dict[str, np.ndarray]]         # HF name -> float32
    forward: Callable[[dict, dict[str, np.ndarray], list[int]], np.ndarray]       # float64 [n, n_vocab]


# -- shared pieces of the transformers definitions -------------------------------------------------------


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """LlamaRMSNorm / Qwen2RMSNorm / Qwen3RMSNorm: x * rsqrt(mean(x^2) + eps) * weight."""
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


def inv_freq(cfg: dict, dim: int) -> np.ndarray:
    """ROPE_INIT_FUNCTIONS: default, or llama3's (_compute_llama3_parameters), float64."""
    base = cfg.get("rope_theta", 10000.0)
    freq = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    rs = cfg.get("rope_scaling") or {}
    if rs.get("rope_type", rs.get("type")) != "llama3":
        return freq
    factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / low, old / high
    wavelen = 2 * math.pi / freq
    scaled = np.where(wavelen > low_wavelen, freq / factor, freq)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled)


def rope(x: np.ndarray, cfg: dict, dim: int) -> np.ndarray:
    """apply_rotary_pos_emb with rotate_half, positions 0..n-1; x is [n, heads, dim]."""
    n = x.shape[0]
    angle = np.arange(n, dtype=np.float64)[:, None] * inv_freq(cfg, dim)[None]
    emb = np.concatenate([angle, angle], -1)
    cos, sin = np.cos(emb)[:, None], np.sin(emb)[:, None]
    rotated = np.concatenate([-x[..., dim // 2:], x[..., :dim // 2]], -1)
    return x * cos + rotated * sin


def attention(h: np.ndarray, W: dict, p: str, cfg: dict, *, bias: bool, qk_norm: bool) -> np.ndarray:
    """LlamaAttention / Qwen2Attention (q, k, v biases) / Qwen3Attention (q_norm, k_norm per head)."""
    n = h.shape[0]
    H, KV = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    D = cfg.get("head_dim") or cfg["hidden_size"] // H

    def proj(name):
        y = h @ W[p + f"self_attn.{name}.weight"].T
        return y + W[p + f"self_attn.{name}.bias"] if bias else y

    q, k, v = proj("q_proj").reshape(n, H, D), proj("k_proj").reshape(n, KV, D), proj("v_proj").reshape(n, KV, D)
    if qk_norm:
        q = rms_norm(q, W[p + "self_attn.q_norm.weight"], cfg["rms_norm_eps"])
        k = rms_norm(k, W[p + "self_attn.k_norm.weight"], cfg["rms_norm_eps"])
    q, k = rope(q, cfg, D), rope(k, cfg, D)
    k, v = np.repeat(k, H // KV, axis=1), np.repeat(v, H // KV, axis=1)
    causal = np.tril(np.ones((n, n), bool))[None]
    s = np.where(causal, np.einsum("thd,shd->hts", q, k) / math.sqrt(D), -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    return np.einsum("hts,shd->thd", a, v).reshape(n, H * D) @ W[p + "self_attn.o_proj.weight"].T


def mlp(h: np.ndarray, W: dict, p: str) -> np.ndarray:
    """LlamaMLP: down(silu(gate(h)) * up(h))."""
    return (silu(h @ W[p + "gate_proj.weight"].T) * (h @ W[p + "up_proj.weight"].T)) @ W[p + "down_proj.weight"].T


def routed_experts(h: np.ndarray, logits: np.ndarray, k: int, renormalize: bool, expert) -> np.ndarray:
    """A softmax router's top-k experts (stable order on ties), their probabilities renormalized to sum 1
    if asked, summed over ``expert(e, x)`` for each row x of h."""
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    top = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    w = np.take_along_axis(probs, top, -1)
    if renormalize:
        w = w / w.sum(-1, keepdims=True)
    out = np.zeros_like(h)
    for t in range(h.shape[0]):
        for j in range(k):
            out[t] += w[t, j] * expert(top[t, j], h[t])
    return out


def sparse_moe(h: np.ndarray, W: dict, p: str, cfg: dict) -> np.ndarray:
    """Qwen3MoeSparseMoeBlock: softmax router, top-k, optional renormalization, weighted experts."""
    return routed_experts(h, h @ W[p + "mlp.gate.weight"].T, cfg["num_experts_per_tok"],
                          bool(cfg.get("norm_topk_prob")),
                          lambda e, x: mlp(x[None], W, p + f"mlp.experts.{e}.")[0])


def mixtral_moe(h: np.ndarray, W: dict, p: str, cfg: dict) -> np.ndarray:
    """MixtralSparseMoeBlock: softmax router, top-k, always renormalized; experts w2(silu(w1 h) * w3 h)."""
    def expert(e: int, x: np.ndarray) -> np.ndarray:
        e = p + f"block_sparse_moe.experts.{e}."
        return W[e + "w2.weight"] @ (silu(W[e + "w1.weight"] @ x) * (W[e + "w3.weight"] @ x))

    return routed_experts(h, h @ W[p + "block_sparse_moe.gate.weight"].T, cfg["num_experts_per_tok"], True, expert)


def decoder(cfg: dict, W: dict, tokens: list[int], *, bias=False, qk_norm=False, moe=False) -> np.ndarray:
    """The decoder-only stack shared by the Llama and Qwen models: pre-norm attention and MLP blocks."""
    eps = cfg["rms_norm_eps"]
    x = W["model.embed_tokens.weight"][tokens]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        x = x + attention(rms_norm(x, W[p + "input_layernorm.weight"], eps), W, p, cfg, bias=bias, qk_norm=qk_norm)
        h = rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
        x = x + (mixtral_moe(h, W, p, cfg) if moe == "mixtral" else sparse_moe(h, W, p, cfg) if moe
                 else mlp(h, W, p + "mlp."))
    head = W["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else W["lm_head.weight"]
    return rms_norm(x, W["model.norm.weight"], eps) @ head.T


# -- the families ---------------------------------------------------------------------------------------


def _dense_tensors(cfg: dict, rng: np.random.Generator, *, bias=False, qk_norm=False, moe=False) -> dict:
    E, F, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    H, KV = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    D = cfg.get("head_dim") or E // H

    def w(*shape, scale=None):
        return (rng.standard_normal(shape) * (scale or 1 / math.sqrt(shape[-1]))).astype(np.float32)

    def norm(n):
        return (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    t = {"model.embed_tokens.weight": w(V, E, scale=1.0)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = norm(E)
        t[p + "self_attn.q_proj.weight"] = w(H * D, E)
        t[p + "self_attn.k_proj.weight"] = w(KV * D, E)
        t[p + "self_attn.v_proj.weight"] = w(KV * D, E)
        if bias:
            for name, rows in (("q_proj", H * D), ("k_proj", KV * D), ("v_proj", KV * D)):
                t[p + f"self_attn.{name}.bias"] = w(rows, scale=0.5)
        if qk_norm:
            t[p + "self_attn.q_norm.weight"] = norm(D)
            t[p + "self_attn.k_norm.weight"] = norm(D)
        t[p + "self_attn.o_proj.weight"] = w(E, H * D)
        t[p + "post_attention_layernorm.weight"] = norm(E)
        if moe == "mixtral":
            t[p + "block_sparse_moe.gate.weight"] = w(cfg["num_local_experts"], E, scale=1.0)
            for x in range(cfg["num_local_experts"]):
                e = p + f"block_sparse_moe.experts.{x}."
                t[e + "w1.weight"], t[e + "w2.weight"], t[e + "w3.weight"] = w(F, E), w(E, F), w(F, E)
        elif moe:
            X, FX = cfg["num_experts"], cfg["moe_intermediate_size"]
            t[p + "mlp.gate.weight"] = w(X, E, scale=1.0)
            for x in range(X):
                t[p + f"mlp.experts.{x}.gate_proj.weight"] = w(FX, E)
                t[p + f"mlp.experts.{x}.up_proj.weight"] = w(FX, E)
                t[p + f"mlp.experts.{x}.down_proj.weight"] = w(E, FX)
        else:
            t[p + "mlp.gate_proj.weight"] = w(F, E)
            t[p + "mlp.up_proj.weight"] = w(F, E)
            t[p + "mlp.down_proj.weight"] = w(E, F)
        t[p + "self_attn.rotary_emb.inv_freq"] = (1.0 / 10000 ** (np.arange(0, D, 2) / D)).astype(np.float32)
    t["model.norm.weight"] = norm(E)
    if not cfg.get("tie_word_embeddings"):
        t["lm_head.weight"] = w(V, E)
    return t


def _llama_config() -> dict:
    # the keys of a Llama 3.2 config.json, small
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False,
            "attention_dropout": 0.0, "bos_token_id": 318, "eos_token_id": 319, "head_dim": 16,
            "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 128,
            "max_position_embeddings": 512, "mlp_bias": False, "num_attention_heads": 4, "num_hidden_layers": 2,
            "num_key_value_heads": 2, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
            "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                             "original_max_position_embeddings": 32, "rope_type": "llama3"},
            "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "float32", "use_cache": True,
            "vocab_size": N_VOCAB}


def _mistral_config() -> dict:
    # Mistral 7B v0.1's keys, small: no head_dim, sliding_window, rope_theta 1e4, plain rope
    return {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "bos_token_id": 318,
            "eos_token_id": 319, "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02,
            "intermediate_size": 160, "max_position_embeddings": 1024, "num_attention_heads": 8,
            "num_hidden_layers": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
            "sliding_window": 4096, "tie_word_embeddings": False, "torch_dtype": "float32", "use_cache": True,
            "vocab_size": N_VOCAB}


def _mixtral_config() -> dict:
    # Mixtral 8x7B's keys, small: 4 experts of intermediate_size, 2 per token
    return {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "attention_dropout": 0.0,
            "bos_token_id": 318, "eos_token_id": 319, "hidden_act": "silu", "hidden_size": 64,
            "initializer_range": 0.02, "intermediate_size": 48, "max_position_embeddings": 32768,
            "num_attention_heads": 4, "num_experts_per_tok": 2, "num_hidden_layers": 2, "num_key_value_heads": 2,
            "num_local_experts": 4, "output_router_logits": False, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
            "router_aux_loss_coef": 0.02, "sliding_window": None, "tie_word_embeddings": False,
            "torch_dtype": "float32", "use_cache": True, "vocab_size": N_VOCAB}


def _qwen2_config() -> dict:
    # Qwen2.5-0.5B's keys, small (tied embeddings, biases on q/k/v)
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "attention_dropout": 0.0,
            "bos_token_id": 318, "eos_token_id": 319, "hidden_act": "silu", "hidden_size": 64,
            "initializer_range": 0.02, "intermediate_size": 96, "max_position_embeddings": 32768,
            "max_window_layers": 2, "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
            "torch_dtype": "float32", "use_cache": True, "use_sliding_window": False, "vocab_size": N_VOCAB}


def _qwen3_config() -> dict:
    # Qwen3-0.6B's keys, small: head_dim 32 is not hidden_size / heads (as 128 is not 1024 / 16 there)
    return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "attention_bias": False,
            "attention_dropout": 0.0, "bos_token_id": 318, "eos_token_id": 319, "head_dim": 32,
            "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 96,
            "max_position_embeddings": 40960, "max_window_layers": 2, "num_attention_heads": 4,
            "num_hidden_layers": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_scaling": None,
            "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True, "torch_dtype": "float32",
            "use_cache": True, "use_sliding_window": False, "vocab_size": N_VOCAB}


def _qwen3_moe_config() -> dict:
    # Qwen3-30B-A3B's keys, small: 4 experts, 2 per token
    return {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "attention_bias": False,
            "attention_dropout": 0.0, "bos_token_id": 318, "decoder_sparse_step": 1, "eos_token_id": 319,
            "head_dim": 16, "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02,
            "intermediate_size": 192, "max_position_embeddings": 40960, "max_window_layers": 2,
            "mlp_only_layers": [], "moe_intermediate_size": 32, "norm_topk_prob": True, "num_attention_heads": 4,
            "num_experts": 4, "num_experts_per_tok": 2, "num_hidden_layers": 2, "num_key_value_heads": 2,
            "output_router_logits": False, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0,
            "router_aux_loss_coef": 0.001, "sliding_window": None, "tie_word_embeddings": False,
            "torch_dtype": "float32", "use_cache": True, "use_sliding_window": False, "vocab_size": N_VOCAB}


FAMILIES: dict[str, HFFamily] = {
    "llama3": HFFamily(_llama_config, lambda c, r: _dense_tensors(c, r),
                       lambda c, W, t: decoder(c, W, t)),
    "mistral": HFFamily(_mistral_config, lambda c, r: _dense_tensors(c, r),
                        lambda c, W, t: decoder(c, W, t)),
    "mixtral": HFFamily(_mixtral_config, lambda c, r: _dense_tensors(c, r, moe="mixtral"),
                        lambda c, W, t: decoder(c, W, t, moe="mixtral")),
    "qwen2": HFFamily(_qwen2_config, lambda c, r: _dense_tensors(c, r, bias=True),
                      lambda c, W, t: decoder(c, W, t, bias=True)),
    "qwen3": HFFamily(_qwen3_config, lambda c, r: _dense_tensors(c, r, qk_norm=True),
                      lambda c, W, t: decoder(c, W, t, qk_norm=True)),
    "qwen3_moe": HFFamily(_qwen3_moe_config, lambda c, r: _dense_tensors(c, r, qk_norm=True, moe=True),
                          lambda c, W, t: decoder(c, W, t, qk_norm=True, moe=True)),
}


def _changed(cfg: dict, changes: dict) -> dict:
    cfg = dict(cfg)
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    return cfg


def write(folder: str | Path, name: str, *, seed: int = 0, claims: dict | None = None,
          **config_changes: Any) -> Path:
    """Write the tiny ``name`` model into ``folder``: config keys changed (None: removed) for the weights
    and config.json alike, then ``claims`` changed in config.json only (a config that lies)."""
    fam = FAMILIES[name]
    cfg = _changed(fam.config(), config_changes)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = fam.tensors(cfg, np.random.default_rng(seed))
    (folder / "config.json").write_text(json.dumps(_changed(cfg, claims or {}), indent=2) + "\n")
    write_safetensors(folder / "model.safetensors", tensors, metadata={"format": "pt"})
    shutil.copy(TOKENIZER, folder / "tokenizer.json")
    return folder


def weights(folder: str | Path) -> dict[str, np.ndarray]:
    """The folder's HF tensors as float64."""
    f = SafetensorsFile(Path(folder) / "model.safetensors")
    return {n: widen(f.bytes_of(n), e.dtype, e.shape).astype(np.float64) for n, e in f.entries.items()}


def logits(folder: str | Path, name: str, tokens: list[int]) -> np.ndarray:
    """The transformers model's logits for ``tokens`` (positions 0..n-1), float64 [n, n_vocab]."""
    cfg = json.loads((Path(folder) / "config.json").read_text())
    return FAMILIES[name].forward(cfg, weights(folder), list(tokens))
