"""The GGUF key/values for a Hugging Face model folder, as convert_hf_to_gguf.py writes them.

Covers what llama.cpp needs to load a llama-family model: the hyperparameters from config.json and a
byte-level BPE tokenizer from tokenizer.json (llama.cpp's "gpt2" tokenizer model). Where the folder does
not give enough for that (no tokenizer.json, a SentencePiece tokenizer, an architecture other than llama,
a RoPE scaling that needs generated tensors), the result says so (``loadable=False`` and the reasons in
``problems``) instead of guessing. The writer adds general.file_type and general.quantization_version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import MODEL_ARCH, GGUFValueType

from qtool.errors import FormatError
from qtool.formats import vocab
from qtool.formats.names import arch_name

V = GGUFValueType


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


def read_json(path: Path, what: str = "file") -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise FormatError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise FormatError(f"{path}: {what} is not UTF-8 text") from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise FormatError(f"{path}: {what} is not valid JSON ({getattr(e, 'msg', 'nested too deeply')})") from None


class _Config:
    """config.json with typed look-ups that name the file when a value has the wrong type."""

    def __init__(self, path: Path, data: dict[str, Any]):
        self.path, self.data = path, data

    def int(self, keys: list[str], *, required: bool = False) -> int | None:
        for k in keys:
            v = self.data.get(k)
            if v is None:
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise FormatError(f"{self.path}: {k} is {v!r}, not a positive integer")
            return v
        if required:
            raise FormatError(f"{self.path}: lacks {' / '.join(keys)}")
        return None

    def float(self, keys: list[str], section: dict[str, Any] | None = None) -> float | None:
        src = self.data if section is None else section
        for k in keys:
            v = src.get(k)
            if v is None:
                continue
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise FormatError(f"{self.path}: {k} is {v!r}, not a number")
            return float(v)
        return None


def block_count(config_path: Path, config: dict[str, Any]) -> int:
    return _Config(config_path, config).int(["n_layers", "num_hidden_layers", "n_layer", "num_layers"],
                                             required=True)


def build(folder: Path, config: dict[str, Any], arch: MODEL_ARCH | None, hf_class: str | None) -> HFMeta:
    """The GGUF key/values for the model in ``folder`` whose parsed config.json is ``config``."""
    meta = HFMeta()
    cfg = _Config(folder / "config.json", config)
    meta.tied_embeddings = config.get("tie_word_embeddings") is True
    if arch is None:
        meta.cannot_load(f"{cfg.path}: architecture {hf_class or config.get('model_type')!r} is not one qtool "
                         f"can convert")
        return meta
    a = arch_name(arch)
    meta.add("general.architecture", a, V.STRING)
    meta.add("general.type", "model", V.STRING)
    meta.add("general.name", folder.resolve().name, V.STRING)
    _hparams(meta, cfg, a)
    if arch == MODEL_ARCH.LLAMA:
        vocab_size = cfg.int(["vocab_size"])
        if vocab_size is None:
            meta.cannot_load(f"{cfg.path}: lacks vocab_size")
        else:
            meta.add(f"{a}.vocab_size", vocab_size, V.UINT32)
        heads = cfg.int(["num_attention_heads"])
        head_dim = cfg.int(["head_dim"])
        hidden = cfg.int(["hidden_size"])
        if head_dim is None and heads is not None and hidden is not None:
            head_dim = hidden // heads
        if head_dim is not None:
            meta.add(f"{a}.rope.dimension_count", head_dim, V.UINT32)
    else:
        meta.cannot_load(f"{cfg.path}: qtool writes llama.cpp-ready metadata only for llama-family models, "
                         f"not {a}")
    for key, why in (("embedding_length", "hidden_size"), ("attention.head_count", "num_attention_heads"),
                     ("feed_forward_length", "intermediate_size")):
        if f"{a}.{key}" not in meta.kv:
            meta.cannot_load(f"{cfg.path}: lacks {why}")
    vocab.add_tokenizer(meta, folder, config)
    return meta


def _hparams(meta: HFMeta, cfg: _Config, a: str) -> None:
    """TextModel.set_gguf_parameters' keys, in its order."""
    meta.add(f"{a}.block_count", block_count(cfg.path, cfg.data), V.UINT32)
    for key, names in (
        ("context_length", ["max_position_embeddings", "n_ctx", "n_positions", "max_length",
                            "max_sequence_length", "model_max_length"]),
        ("embedding_length", ["hidden_size", "n_embd", "dim"]),
        ("feed_forward_length", ["intermediate_size", "n_inner", "hidden_dim"]),
        ("attention.head_count", ["num_attention_heads", "n_head", "n_heads"]),
        ("attention.head_count_kv", ["num_key_value_heads", "n_kv_heads"]),
    ):
        if (v := cfg.int(names)) is not None:
            meta.add(f"{a}.{key}", v, V.UINT32)

    rope = cfg.data.get("rope_parameters", cfg.data.get("rope_scaling")) or {}
    if not isinstance(rope, dict):
        raise FormatError(f"{cfg.path}: rope_scaling is {rope!r}, not an object")
    rope = rope.get("full_attention", rope)
    rope_type = rope.get("rope_type", rope.get("type"))
    factor = cfg.float(["factor"], rope)
    if rope_type == "linear" and factor is not None:
        meta.add(f"{a}.rope.scaling.type", "linear", V.STRING)
        meta.add(f"{a}.rope.scaling.factor", factor, V.FLOAT32)
    elif rope_type == "yarn" and factor is not None:
        meta.add(f"{a}.rope.scaling.type", "yarn", V.STRING)
        meta.add(f"{a}.rope.scaling.factor", factor, V.FLOAT32)
        orig = rope.get("original_max_position_embeddings")
        if not isinstance(orig, int) or isinstance(orig, bool):
            raise FormatError(f"{cfg.path}: yarn rope_scaling lacks original_max_position_embeddings")
        meta.add(f"{a}.rope.scaling.original_context_length", orig, V.UINT32)
        for key, names in (("yarn_ext_factor", ["extrapolation_factor"]),
                           ("yarn_attn_factor", ["attention_factor", "attn_factor"]),
                           ("yarn_beta_fast", ["beta_fast"]), ("yarn_beta_slow", ["beta_slow"])):
            if (v := cfg.float(names, rope)) is not None:
                meta.add(f"{a}.rope.scaling.{key}", v, V.FLOAT32)
    elif rope_type not in (None, "default"):
        meta.cannot_load(f"{cfg.path}: rope_scaling type {rope_type!r} needs tensors or keys qtool does not "
                         f"generate")

    theta = cfg.float(["rope_theta"], rope)
    if theta is None:
        theta = cfg.float(["global_rope_theta", "rope_global_theta", "rope_theta_global", "rope_theta",
                           "rotary_emb_base"])
    if theta is not None:
        meta.add(f"{a}.rope.freq_base", theta, V.FLOAT32)
    if (eps := cfg.float(["rms_norm_eps", "norm_eps"])) is not None:
        meta.add(f"{a}.attention.layer_norm_rms_epsilon", eps, V.FLOAT32)
    if (eps := cfg.float(["layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"])) is not None:
        meta.add(f"{a}.attention.layer_norm_epsilon", eps, V.FLOAT32)
    if (head_dim := cfg.int(["head_dim"])) is not None:
        meta.add(f"{a}.attention.key_length", head_dim, V.UINT32)
        meta.add(f"{a}.attention.value_length", head_dim, V.UINT32)
