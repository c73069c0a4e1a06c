"""Qwen2, Qwen3 (q/k norms) and Qwen3-MoE (experts stacked into ffn_*_exps), as convert_hf_to_gguf's
Qwen2Model, Qwen3Model and Qwen3MoeModel convert them. No q/k permutation: llama.cpp runs these with
NeoX-style rope, the HF layout."""

from __future__ import annotations

import gguf
from gguf import MODEL_ARCH

from qtool.archs.base import Experts, Family, Split
from qtool.archs.config import Config
from qtool.formats.source import read_json
from qtool.errors import FormatError


def pooling_type(w: gguf.GGUFWriter, cfg: Config, hp, folder) -> None:
    """TextModel._try_set_pooling_type: the sentence-transformers pooling of modules.json, if any."""
    modules_path = folder / "modules.json"
    if modules_path.is_file():
        modules = read_json(modules_path, "sentence-transformers modules")
        if not isinstance(modules, list):
            raise FormatError(f"{modules_path}: is not a list of modules")
        path = next((m.get("path") for m in modules if isinstance(m, dict)
                     and str(m.get("type", "")).endswith("Pooling")), None)
        if path is not None:
            pool_path = folder / str(path) / "config.json"
            pooling = read_json(pool_path, "pooling config")
            if not isinstance(pooling, dict):
                raise FormatError(f"{pool_path}: is not a JSON object")
            modes = {"mean": gguf.PoolingType.MEAN, "cls": gguf.PoolingType.CLS, "lasttoken": gguf.PoolingType.LAST}
            if pooling.get("pooling_mode_mean_tokens"):
                kind = gguf.PoolingType.MEAN
            elif pooling.get("pooling_mode_cls_token"):
                kind = gguf.PoolingType.CLS
            elif pooling.get("pooling_mode_lasttoken"):
                kind = gguf.PoolingType.LAST
            elif pooling.get("pooling_mode") in modes:
                kind = modes[pooling["pooling_mode"]]
            else:
                raise FormatError(f"{pool_path}: pooling is none of mean, cls, lasttoken")
            w.add_pooling_type(kind)
    classifier = cfg.data.get("classifier_pooling")
    if classifier is not None:
        modes = {"mean": gguf.PoolingType.MEAN, "cls": gguf.PoolingType.CLS}
        if classifier not in modes:
            raise FormatError(f"{cfg.path}: classifier_pooling is {classifier!r}, not cls or mean")
        w.add_classifier_pooling_type(modes[classifier])


def expert_feed_forward_length(w: gguf.GGUFWriter, cfg: Config, hp, folder) -> None:
    if (v := cfg.int("moe_intermediate_size")) is not None:
        w.add_expert_feed_forward_length(v)
    if (v := cfg.int("shared_expert_intermediate_size")) is not None:
        w.add_expert_shared_feed_forward_length(v)


def moe_layers_only(cfg: Config, hp) -> list[str]:
    """llama.cpp's qwen3moe has an expert FFN in every layer and renormalizes the top-k weights."""
    problems = []
    step = cfg.data.get("decoder_sparse_step", 1)
    dense = cfg.data.get("mlp_only_layers") or []
    if step != 1 or dense:
        problems.append(f"{cfg.path}: decoder_sparse_step {step} / mlp_only_layers {dense}: llama.cpp's qwen3moe "
                        f"expects experts in every layer")
    if cfg.data.get("norm_topk_prob", True) is not True:
        problems.append(f"{cfg.path}: norm_topk_prob is false; llama.cpp's qwen3moe always renormalizes the "
                        f"chosen experts' weights, so its output will differ")
    return problems


def _heads(config):
    return config.get("num_attention_heads")


#: transformers 4.57's Qwen2Config / Qwen3Config / Qwen3MoeConfig defaults for keys the conversion writes
_COMMON = {"max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 10000.0}


class Qwen2(Family, hf=("Qwen2ForCausalLM", "Qwen2Model"), model_types=("qwen2",)):
    arch = MODEL_ARCH.QWEN2
    tokenizer = "qwen2"
    keys = (pooling_type,)
    defaults = {"qwen2": {**_COMMON, "num_key_value_heads": _heads}}


class Qwen3(Family, hf=("Qwen3ForCausalLM", "Qwen3Model"), model_types=("qwen3",)):
    arch = MODEL_ARCH.QWEN3
    tokenizer = "qwen2"
    keys = (pooling_type,)
    defaults = {"qwen3": {**_COMMON, "num_key_value_heads": _heads, "head_dim": 128}}


class Qwen3Moe(Family, hf=("Qwen3MoeForCausalLM",), model_types=("qwen3_moe",)):
    arch = MODEL_ARCH.QWEN3MOE
    tokenizer = "gpt2"  # Qwen2MoeModel keeps TextModel.set_vocab
    experts = Experts(pattern=r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(down_proj|gate_proj|up_proj)\.weight",
                      merged="model.layers.{bid}.mlp.experts.{proj}.weight",
                      projections=("down_proj", "gate_proj", "up_proj"))
    # transformers 5 stores the experts already stacked: gate and up fused, no ".weight"
    renames = {"mlp.experts.down_proj": "mlp.experts.down_proj.weight",
               "mlp.experts.gate_up_proj": "mlp.experts.gate_up_proj.weight"}
    splits = (Split("mlp.experts.gate_up_proj.weight", (("mlp.experts.gate_proj.weight", 0),
                                                        ("mlp.experts.up_proj.weight", 1))),)
    keys = (expert_feed_forward_length,)
    checks = (moe_layers_only,)
    defaults = {"qwen3_moe": {**_COMMON, "num_key_value_heads": 4, "decoder_sparse_step": 1,
                              "moe_intermediate_size": 768, "num_experts_per_tok": 8, "num_experts": 128,
                              "norm_topk_prob": False}}
