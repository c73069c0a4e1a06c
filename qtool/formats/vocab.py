"""The tokenizer of a Hugging Face model folder as GGUF ``tokenizer.ggml.*`` key/values.

Today: a byte-level BPE tokenizer from tokenizer.json (llama.cpp's "gpt2" tokenizer model), its special
tokens and flags from tokenizer_config.json, and the chat template.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from gguf import GGUFValueType, TokenType

from qtool.errors import FormatError

if TYPE_CHECKING:
    from qtool.formats.hf_meta import HFMeta

V = GGUFValueType


def _read_json(path: Path, what: str) -> Any:
    from qtool.formats.hf_meta import read_json

    return read_json(path, what)


def _int(path: Path, config: dict[str, Any], key: str) -> int | None:
    v = config.get(key)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise FormatError(f"{path}: {key} is {v!r}, not a positive integer")
    return v


# -- tokenizer ----------------------------------------------------------------------------------------

#: The pre-tokenizer split patterns llama.cpp knows by name, as tokenizer.json spells them.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")


def add_tokenizer(meta: HFMeta, folder: Path, config: dict[str, Any]) -> None:
    path = folder / "tokenizer.json"
    if not path.is_file():
        has_spm = (folder / "tokenizer.model").is_file()
        meta.cannot_load(f"{folder}: no tokenizer.json" + (" (qtool does not read SentencePiece tokenizer.model)"
                                                           if has_spm else ""))
        return
    tok = _read_json(path, "tokenizer")
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
    n_vocab = _int(folder / "config.json", config, "vocab_size") or max(by_id, default=-1) + 1
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
    tok_config = _read_json(tok_config_path, "tokenizer config") if tok_config_path.is_file() else {}
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
