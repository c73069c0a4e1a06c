"""The GGUF key/values of a Hugging Face folder, as convert_hf_to_gguf writes them, in its order:
general.* (gguf-py's own ``Metadata`` heuristics: model card, config, folder name; the size label from
the parameter count), the shared hyperparameters (``TextModel.set_gguf_parameters``), the family's keys,
then the tokenizer (qtool.formats.vocab).

Every key is written through gguf-py's ``GGUFWriter`` adders, so key names (``gguf.Keys``) and value
types are the reference's own. general.file_type and general.quantization_version are left to the
output writer (llama-quantize rewrites both at the end of the key list).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
from gguf import GGUFValueType

from qtool.archs.base import Family
from qtool.archs.config import Config
from qtool.archs.tensors import Hparams, Plan
from qtool.errors import FormatError


@dataclass
class HFMeta:
    kv: dict[str, Any] = field(default_factory=dict)
    types: dict[str, GGUFValueType] = field(default_factory=dict)
    sub_types: dict[str, GGUFValueType] = field(default_factory=dict)
    loadable: bool = True
    problems: list[str] = field(default_factory=list)   # why llama.cpp could not load it
    notes: list[str] = field(default_factory=list)      # loadable, but not all is as the original
    tied_embeddings: bool = False

    def add(self, key: str, value: Any, vtype: GGUFValueType, sub_type: GGUFValueType | None = None) -> None:
        self.kv[key] = value
        self.types[key] = vtype
        if sub_type is not None:
            self.sub_types[key] = sub_type

    def cannot_load(self, why: str) -> None:
        self.loadable = False
        self.problems.append(why)

    def take(self, writer: gguf.GGUFWriter) -> None:
        """Move what ``writer``'s adders recorded into this, in order."""
        for kv in writer.kv_data:
            for key, v in kv.items():
                self.add(key, v.value, v.type, v.sub_type)
            kv.clear()


def recorder(arch: str) -> gguf.GGUFWriter:
    """A GGUFWriter that writes nothing: its adders only record key, value and type."""
    return gguf.GGUFWriter(path=None, arch=arch)


def param_counts(plan: Plan) -> tuple[int, int, int, int]:
    """GGUFWriter.get_total_parameter_count over the planned tensors: (total, shared, expert, n_expert)."""
    total = shared = expert = expert_sum = n_expert_tensors = 0
    for p in plan.tensors:
        size = math.prod(p.shape)
        if "_exps." in p.name and len(p.shape) >= 3:
            count = p.shape[-2 if ".bias" in p.name else -3]
            expert += size // count
            expert_sum += count
            n_expert_tensors += 1
        else:
            shared += size
        total += size
    return total, shared, expert, (expert_sum // n_expert_tensors if n_expert_tensors else 0)


def general(w: gguf.GGUFWriter, folder: Path, plan: Plan | None) -> list[str]:
    """general.type and the general.* keys of ModelBase.prepare_metadata; returns notes."""
    notes: list[str] = []
    total, shared, expert, count = param_counts(plan) if plan is not None else (0, 0, 0, 0)
    w.add_type(gguf.GGUFType.MODEL)
    logger = logging.getLogger("metadata")  # gguf-py's metadata.py logs its heuristics there
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        md = gguf.Metadata.load(None, folder, None, total)
    except Exception as e:  # a model card gguf-py cannot parse: the folder name, as it would fall back to
        notes.append(f"{folder}: model card not read ({type(e).__name__}: {e}); general.name is the folder name")
        md = gguf.Metadata()
    finally:
        logger.setLevel(level)
    if md.name is None:
        md.name = folder.name
    if md.size_label is None and total > 0:
        md.size_label = gguf.size_label(total, shared, expert, count)
    md.set_gguf_meta_model(w)
    return notes


def hparams(w: gguf.GGUFWriter, cfg: Config, hp: Hparams) -> None:
    """TextModel.set_gguf_parameters, in its order (general.file_type left to the output writer)."""
    w.add_block_count(hp.n_layer)
    for keys, add in ((("max_position_embeddings", "n_ctx", "n_positions", "max_length", "max_sequence_length",
                        "model_max_length"), w.add_context_length),
                      (("hidden_size", "n_embd", "dim"), w.add_embedding_length),
                      (("prefix_dense_intermediate_size", "dense_intermediate_size", "intermediate_size",
                        "n_inner", "hidden_dim"), w.add_feed_forward_length),
                      (("num_attention_heads", "n_head", "n_heads"), w.add_head_count),
                      (("num_key_value_heads", "n_kv_heads"), w.add_head_count_kv)):
        if (v := cfg.int(keys)) is not None:
            add(v)
    if cfg.data.get("is_causal") is False:
        w.add_causal_attention(False)

    rope = rope_parameters(cfg)
    params = rope.get("full_attention", rope)
    if not isinstance(params, dict):
        raise FormatError(f"{cfg.path}: rope_scaling.full_attention is {params!r}, not an object")
    rope_type = params.get("rope_type")
    if rope_type is not None:
        if not isinstance(rope_type, str):
            raise FormatError(f"{cfg.path}: rope_scaling rope_type is {rope_type!r}, not a string")
        factor = cfg.float("factor", params, "rope_scaling ")
        if rope_type == "linear" and factor is not None:
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(factor)
        elif rope_type == "yarn" and factor is not None:
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(factor)
            orig = params.get("original_max_position_embeddings")
            if not isinstance(orig, int) or isinstance(orig, bool) or orig <= 0:
                raise FormatError(f"{cfg.path}: yarn rope_scaling original_max_position_embeddings is {orig!r}, "
                                  f"not a positive integer")
            w.add_rope_scaling_orig_ctx_len(orig)
            for keys, add in ((("extrapolation_factor",), w.add_rope_scaling_yarn_ext_factor),
                              (("attention_factor", "attn_factor"), w.add_rope_scaling_yarn_attn_factor),
                              (("beta_fast",), w.add_rope_scaling_yarn_beta_fast),
                              (("beta_slow",), w.add_rope_scaling_yarn_beta_slow)):
                if (v := cfg.float(keys, params, "rope_scaling ")) is not None:
                    add(v)
        elif rope_type in ("su", "longrope"):
            w.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
    if "mrope_section" in rope:
        section = list(rope["mrope_section"])
        w.add_rope_dimension_sections((section + [0, 0, 0, 0])[:4])
    if (theta := cfg.float("rope_theta", params, "rope_scaling ")) is not None:
        w.add_rope_freq_base(theta)
    sliding = rope.get("sliding_attention", {})
    if isinstance(sliding, dict) and (theta := cfg.float("rope_theta", sliding)) is not None:
        w.add_rope_freq_base_swa(theta)
    if (eps := cfg.float(("rms_norm_eps", "norm_eps"))) is not None:
        w.add_layer_norm_rms_eps(eps)
    if (eps := cfg.float(("layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"))) is not None:
        w.add_layer_norm_eps(eps)
    if (n := cfg.int(("num_local_experts", "num_experts", "n_routed_experts"), positive=False)) is not None:
        w.add_expert_count(n)
    if (n := cfg.int(("num_experts_per_tok", "num_experts_per_token", "top_k_experts"), positive=False)) is not None:
        w.add_expert_used_count(n)
    if (n := cfg.int("n_group", positive=False)) is not None:
        w.add_expert_group_count(n)
    if (n := cfg.int("topk_group", positive=False)) is not None:
        w.add_expert_group_used_count(n)
    key, func = cfg.find(("score_function", "scoring_func", "score_func", "moe_router_activation",
                          "moe_router_activation_func", "expert_selection_fn"))
    if func is not None:
        gating = {"sigmoid": gguf.ExpertGatingFuncType.SIGMOID, "softmax": gguf.ExpertGatingFuncType.SOFTMAX,
                  "sqrtsoftplus": getattr(gguf.ExpertGatingFuncType, "SQRTSOFTPLUS", None)}.get(func)
        if gating is None:
            raise FormatError(f"{cfg.path}: {key} is {func!r}, not a gating function llama.cpp knows")
        w.add_expert_gating_func(gating)
    if (head_dim := cfg.int("head_dim")) is not None:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)


def rope_parameters(cfg: Config) -> dict[str, Any]:
    """TextModel.__init__'s rope_parameters: rope_parameters/rope_scaling with the global values mirrored."""
    rope = cfg.data.get("rope_parameters", cfg.data.get("rope_scaling")) or {}
    if not isinstance(rope, dict):
        raise FormatError(f"{cfg.path}: rope_scaling is {rope!r}, not an object")
    rope = dict(rope)
    if "full_attention" not in rope and "sliding_attention" not in rope:
        _, local = cfg.find(("local_rope_theta", "rope_local_theta", "rope_theta_local", "swa_rope_theta",
                             "rope_local_base_freq"))
        _, theta = cfg.find(("global_rope_theta", "rope_global_theta", "rope_theta_global", "rope_theta",
                             "rotary_emb_base"))
        _, partial = cfg.find(("partial_rotary_factor", "rope_pct", "rope_percent"))
        _, orig = cfg.find(("original_max_position_embeddings",))
        if local is not None:
            rope["sliding_attention"] = {"rope_theta": local}
        if "rope_theta" not in rope and theta is not None:
            rope["rope_theta"] = theta
        if "rope_type" not in rope and rope.get("type") is not None:
            rope["rope_type"] = rope["type"]
        if "partial_rotary_factor" not in rope and partial is not None:
            rope["partial_rotary_factor"] = partial
        if "original_max_position_embeddings" not in rope and orig is not None:
            rope["original_max_position_embeddings"] = orig
    return rope


def build(folder: Path, cfg: Config, family: type[Family], hp: Hparams, plan: Plan, *,
          pre_tokenizer: str | None = None) -> HFMeta:
    """The key/values of a folder whose family is known (``pre_tokenizer``: see vocab.add_tokenizer)."""
    meta = HFMeta(tied_embeddings=cfg.data.get("tie_word_embeddings") is True)
    w = recorder(family.arch_name())
    meta.notes += general(w, folder, plan)
    (family.own_hparams or hparams)(w, cfg, hp)
    for add in family.keys:
        add(w, cfg, hp, folder)
    meta.take(w)
    add_tokenizer(meta, folder, cfg, family.tokenizer, pre_tokenizer)
    return meta


def add_tokenizer(meta: HFMeta, folder: Path, cfg: Config, kind: str, pre_tokenizer: str | None = None) -> None:
    """qtool.formats.vocab.add_tokenizer with the family's recipe (in the ``qtool`` command, what it added when
    the command last read the same folder: formats.vocab_cache)."""
    from qtool.formats import vocab_cache

    def read():
        from qtool.formats import vocab

        return vocab.add_tokenizer(meta, folder, cfg.data, kind=kind, pre_tokenizer=pre_tokenizer)

    vocab_cache.add_tokenizer(meta, folder, cfg.data, kind, pre_tokenizer, read)


def tensors_only(arch: str, folder: Path | None, n_layer: int, why: str) -> HFMeta:
    """The keys of a --tensors-only file: general.architecture is the HF class (no llama.cpp architecture,
    so llama.cpp refuses to run it), general.description says why, and the layer count the quantization
    rules read."""
    meta = HFMeta(loadable=False)
    w = recorder(arch)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(folder.name if folder is not None else arch)
    w.add_description(f"tensors only, not runnable: {why}")
    w.add_block_count(n_layer)
    meta.take(w)
    meta.problems.append(f"--tensors-only: {why}")
    return meta
