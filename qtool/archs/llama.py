"""Llama 1/2/3.x, Mistral, Mixtral, SmolLM, TinyLlama (convert_hf_to_gguf's LlamaModel): q/k rows permuted
for ggml's rope, ``rope_freqs`` generated for Llama 3's ``rope_type: llama3``, Mixtral's experts (w1/w2/w3)
stacked into ffn_*_exps, the vocabulary size and rope dimension written, SentencePiece or BPE tokenizers."""

from __future__ import annotations

import gguf
from gguf import MODEL_ARCH, MODEL_TENSOR

from qtool.archs.base import Experts, Family, permute_k, permute_q
from qtool.archs.config import Config
from qtool.archs.metadata import rope_parameters
from qtool.archs.transforms import llama3_rope_factors
from qtool.errors import FormatError


def rope_freqs_llama3(cfg: Config, hp):
    """rope_freqs.weight for ``rope_type: llama3`` (LlamaModel.generate_extra_tensors)."""
    rope = rope_parameters(cfg)
    params = rope.get("full_attention", rope)
    rope_type = params.get("rope_type")
    if not isinstance(rope_type, str) or rope_type.lower() != "llama3":
        return []
    values = {}
    for key, default in (("rope_theta", 10000.0), ("factor", 8.0), ("low_freq_factor", 1.0),
                         ("high_freq_factor", 4.0), ("original_max_position_embeddings", 8192)):
        v = params.get(key, default)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
            raise FormatError(f"{cfg.path}: rope_scaling {key} is {v!r}, not a positive number")
        values[key] = v
    if values["high_freq_factor"] == values["low_freq_factor"]:
        raise FormatError(f"{cfg.path}: rope_scaling high_freq_factor equals low_freq_factor "
                          f"({values['low_freq_factor']}): llama3 scaling divides by their difference")
    factors = llama3_rope_factors(values["rope_theta"], hp.head_dim, values["factor"], values["low_freq_factor"],
                                  values["high_freq_factor"], values["original_max_position_embeddings"])
    return [(MODEL_TENSOR.ROPE_FREQS, factors)]


def vocab_size(w: gguf.GGUFWriter, cfg: Config, hp, folder) -> None:
    w.add_vocab_size(cfg.int("vocab_size", required=True))


def rope_dimension_count(w: gguf.GGUFWriter, cfg: Config, hp, folder) -> None:
    w.add_rope_dimension_count(hp.head_dim)


def _head_dim(config):
    """LlamaConfig: head_dim, or hidden_size // num_attention_heads."""
    hidden, heads = config.get("hidden_size"), config.get("num_attention_heads")
    ok = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (hidden, heads))
    return hidden // heads if ok else None


def _heads(config):
    return config.get("num_attention_heads")


class Llama(Family, hf=("LlamaForCausalLM", "LLaMAForCausalLM", "MistralForCausalLM", "MixtralForCausalLM"),
            model_types=("llama", "mistral", "mixtral")):
    arch = MODEL_ARCH.LLAMA
    tokenizer = "llama"
    strip = ("language_model.", "text_model.")
    transforms = {("q_proj.weight", "q_proj.bias"): permute_q, ("k_proj.weight", "k_proj.bias"): permute_k}
    # Mixtral: w1 (gate), w2 (down), w3 (up) of each expert, stacked and renamed as the reference does
    experts = Experts(pattern=r"model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w1|w2|w3)\.weight",
                      merged="layers.{bid}.feed_forward.experts.{proj}.weight", projections=("w1", "w2", "w3"))
    shapes = {MODEL_TENSOR.FFN_GATE_EXP: ("n_expert", "n_ff", "n_embd"),  # Mixtral's experts are intermediate_size
              MODEL_TENSOR.FFN_UP_EXP: ("n_expert", "n_ff", "n_embd"),
              MODEL_TENSOR.FFN_DOWN_EXP: ("n_expert", "n_embd", "n_ff")}
    generate = (rope_freqs_llama3,)
    keys = (vocab_size, rope_dimension_count)
    # transformers 4.57's LlamaConfig / MistralConfig / MixtralConfig defaults for keys the conversion writes
    defaults = {
        "llama": {"head_dim": _head_dim, "max_position_embeddings": 2048, "num_key_value_heads": _heads,
                  "rms_norm_eps": 1e-6, "rope_theta": 10000.0},
        "mistral": {"max_position_embeddings": 131072, "num_key_value_heads": 8, "rms_norm_eps": 1e-6,
                    "rope_theta": 10000.0},
        "mixtral": {"max_position_embeddings": 131072, "num_key_value_heads": 8, "rms_norm_eps": 1e-5,
                    "rope_theta": 1000000.0, "num_local_experts": 8, "num_experts_per_tok": 2},
    }
