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

from gguf import MODEL_ARCH, GGUFValueType, TokenType

from qtool.errors import FormatError
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
    _tokenizer(meta, folder, config)
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


# -- tokenizer ----------------------------------------------------------------------------------------

#: The pre-tokenizer split patterns llama.cpp knows by name, as tokenizer.json spells them.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")


def _tokenizer(meta: HFMeta, folder: Path, config: dict[str, Any]) -> None:
    path = folder / "tokenizer.json"
    if not path.is_file():
        has_spm = (folder / "tokenizer.model").is_file()
        meta.cannot_load(f"{folder}: no tokenizer.json" + (" (qtool does not read SentencePiece tokenizer.model)"
                                                           if has_spm else ""))
        return
    tok = read_json(path, "tokenizer")
    model = tok.get("model") if isinstance(tok, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("vocab"), dict):
        raise FormatError(f"{path}: has no model.vocab object")
    if model.get("type") != "BPE" or not (_mentions(tok.get("pre_tokenizer"), "ByteLevel")
                                          or _mentions(tok.get("decoder"), "ByteLevel")):
        meta.cannot_load(f"{path}: not a byte-level BPE tokenizer (model type {model.get('type')!r}); "
                         f"qtool writes only llama.cpp's gpt2-style tokenizer")
        return

    added = tok.get("added_tokens") or []
    if not isinstance(added, list) or not all(isinstance(t, dict) for t in added):
        raise FormatError(f"{path}: added_tokens is not a list of objects")
    by_id: dict[int, str] = {}
    for text, tid in model["vocab"].items():
        by_id[_token_id(path, text, tid)] = text
    special_ids: dict[int, bool] = {}
    for t in added:
        text, tid = t.get("content"), t.get("id")
        if not isinstance(text, str):
            raise FormatError(f"{path}: added token {t!r} has no string content")
        tid = _token_id(path, text, tid)
        by_id[tid] = text
        special_ids[tid] = t.get("special") is True
    n_vocab = _Config(folder / "config.json", config).int(["vocab_size"]) or max(by_id, default=-1) + 1
    if by_id and max(by_id) >= n_vocab:
        raise FormatError(f"{path}: token id {max(by_id)} ({by_id[max(by_id)]!r}) is outside config.json's "
                          f"vocab_size {n_vocab}")

    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(int(TokenType.UNUSED))
        elif i in special_ids:
            if special_ids[i] or _looks_special(text):
                types.append(int(TokenType.CONTROL))
            else:
                text = text.replace("\u2581", " ")
                types.append(int(TokenType.USER_DEFINED))
            tokens.append(text)
        else:
            tokens.append(text)
            types.append(int(TokenType.NORMAL))

    meta.add("tokenizer.ggml.model", "gpt2", V.STRING)
    meta.add("tokenizer.ggml.pre", _pre_name(meta, path, tok.get("pre_tokenizer")), V.STRING)
    meta.add("tokenizer.ggml.tokens", tokens, V.ARRAY, V.STRING)
    meta.add("tokenizer.ggml.token_type", types, V.ARRAY, V.INT32)
    merges = _merges(path, model.get("merges"))
    if merges:
        meta.add("tokenizer.ggml.merges", merges, V.ARRAY, V.STRING)
    else:
        meta.notes.append(f"{path}: no merges; llama.cpp will tokenize byte by byte")

    tok_config_path = folder / "tokenizer_config.json"
    tok_config = read_json(tok_config_path, "tokenizer config") if tok_config_path.is_file() else {}
    if not isinstance(tok_config, dict):
        raise FormatError(f"{tok_config_path}: is not a JSON object")
    _special_tokens(meta, added, tok, tok_config, config, n_vocab)


def _token_id(path: Path, text: str, tid: Any) -> int:
    if not isinstance(tid, int) or isinstance(tid, bool) or tid < 0:
        raise FormatError(f"{path}: token {text!r} has id {tid!r}, not a non-negative integer")
    return tid


def _mentions(node: Any, type_name: str) -> bool:
    if isinstance(node, dict):
        return node.get("type") == type_name or any(_mentions(v, type_name) for v in node.values())
    if isinstance(node, list):
        return any(_mentions(v, type_name) for v in node)
    return False


def _looks_special(text: str) -> bool:
    """convert_hf_to_gguf's guess at added tokens that act as control tokens though not marked special."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
            or (text.startswith("<unused") and text.endswith(">")))


def _pre_name(meta: HFMeta, path: Path, pre: Any) -> str:
    """llama.cpp's name for the pre-tokenizer, recognized from its definition (convert_hf_to_gguf.py hashes
    the output of the real tokenizer instead); "default" with a note when it is none qtool knows."""
    if isinstance(pre, dict) and pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"  # ByteLevel's own split is GPT-2's regex
    if isinstance(pre, dict) and pre.get("type") == "Sequence":
        steps = pre.get("pretokenizers") or []
        splits = [s for s in steps if isinstance(s, dict) and s.get("type") == "Split"]
        if len(splits) == 1 and (splits[0].get("pattern") or {}).get("Regex") == _LLAMA3_SPLIT:
            return "llama-bpe"
    meta.notes.append(f"{path}: pre-tokenizer not recognized; llama.cpp will split text by its default rules")
    return "default"


def _merges(path: Path, merges: Any) -> list[str]:
    if merges is None:
        return []
    if not isinstance(merges, list):
        raise FormatError(f"{path}: model.merges is not a list")
    out = []
    for m in merges:
        if isinstance(m, str):
            out.append(m)
        elif isinstance(m, list) and len(m) == 2 and all(isinstance(p, str) for p in m):
            # the pair form may hold spaces; GGUF's "a b" form marks them as U+0120+... like byte-level text
            out.append(" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in p) for p in m))
        else:
            raise FormatError(f"{path}: merge {m!r} is neither \"a b\" nor a pair of strings")
    return out


def _special_tokens(meta: HFMeta, added: list[dict], tok: dict, tok_config: dict, config: dict,
                    n_vocab: int) -> None:
    """bos/eos/... ids and the add_bos/add_eos flags, looked up as gguf-py's SpecialVocab does."""
    content: dict[str, str] = {}
    for typ in _SPECIAL_TYPES:
        entry = tok_config.get(f"{typ}_token")
        if isinstance(entry, dict):
            entry = entry.get("content")
        if isinstance(entry, str):
            content[typ] = entry
    add_flags: dict[str, bool] = {}
    post = tok.get("post_processor")
    for proc in (post.get("processors", [post]) if isinstance(post, dict) else []):
        if not isinstance(proc, dict) or proc.get("type") != "TemplateProcessing":
            continue
        single = proc.get("single") or []
        if len(single) > 1 and isinstance(single[0], dict):
            first = (single[0].get("SpecialToken") or {}).get("id")
            if first:
                content.setdefault("bos", first)
                add_flags["bos"] = first == content["bos"]
            last = (single[-1].get("SpecialToken") or {}).get("id") if isinstance(single[-1], dict) else None
            if last:
                content.setdefault("eos", last)
                add_flags["eos"] = last == content["eos"]

    ids: dict[str, int] = {}
    for typ in _SPECIAL_TYPES:
        if typ in content:
            found = next((t.get("id") for t in added if t.get("content") == content[typ]), None)
            if isinstance(found, int):
                ids[typ] = found
    for typ in _SPECIAL_TYPES:
        v = config.get(f"{typ}_token_id")
        if typ not in ids and isinstance(v, int) and not isinstance(v, bool):
            ids[typ] = v
    for typ, tid in ids.items():
        if 0 <= tid < n_vocab:
            meta.add(f"tokenizer.ggml.{typ}_token_id", tid, V.UINT32)
        else:
            meta.notes.append(f"{typ} token id {tid} is outside the vocabulary ({n_vocab}); left out")
    for typ in _SPECIAL_TYPES:
        if isinstance(v := tok_config.get(f"add_{typ}_token"), bool):
            add_flags[typ] = v
    for typ in ("bos", "eos", "sep"):
        if typ in add_flags:
            meta.add(f"tokenizer.ggml.add_{typ}_token", add_flags[typ], V.BOOL)
    template = tok_config.get("chat_template")
    if isinstance(template, str):
        meta.add("tokenizer.chat_template", template, V.STRING)
