"""The tokenizer of a Hugging Face model folder as GGUF ``tokenizer.*`` key/values, as the reference build's
convert_hf_to_gguf.py writes them (llama-cpp-python 0.3.36's vendored llama.cpp).

Tokenizer kinds, each one of the reference's vocabulary writers:

=============  ==================================================================================================
``gpt2``       byte-level BPE from tokenizer.json (``_set_vocab_gpt2``): tokens and types, ``tokenizer.ggml.pre``
               from the sha256 of the ids its check text encodes to, merges
``spm``        SentencePiece ``tokenizer.model`` (``_set_vocab_sentencepiece``): pieces, scores, types (byte
               fallback tokens, control, unused), added tokens from added_tokens.json and tokenizer_config.json
``llama_hf``   a SentencePiece-style BPE (byte fallback) in tokenizer.json (``_set_vocab_llama_hf``)
``bert``       WordPiece (``BertModel.set_vocab``): "##" continuations lose their prefix, word starts gain "▁"
``phi3``       Phi-3's SentencePiece variant (``Phi3MiniModel.set_vocab``)
=============  ==================================================================================================

A family asks for a *recipe*: its set_vocab, which tries kinds in the reference's order and adds its own keys
(``RECIPES``: ``llama`` tries spm, llama_hf, then gpt2; ``qwen2`` spm then gpt2; ``gemma*`` spm with no space
prefix; ...). ``bpe`` and ``wordpiece`` are other names for ``gpt2`` and ``bert``.

Special token ids, the add_bos/add_eos/add_sep flags, merges and the chat template (tokenizer_config.json,
else chat_template.jinja, else chat_template.json) come from gguf-py's ``SpecialVocab``, as in the reference,
with its reading of tokenizer.json/tokenizer_config.json replaced by the reference's own: gguf 0.19.0 on PyPI
is older than the gguf-py vendored in the reference build and writes no add_bos/add_eos for a ByteLevel
post-processor (llama.cpp then adds a BOS the model never saw, e.g. for the first Llama 3 tokenizer.json),
lets tokenizer_config.json overrule the post-processor, and lacks the ``tokenizer.ggml.normalizer.*`` keys.
Keys and value types come from gguf-py's ``GGUFWriter`` methods (recorded on a writer with no file, then
handed to the caller's metadata), so every name is gguf.Keys' (``unknown_token_id``, ``padding_token_id``,
``seperator_token_id``, ...).

``tokenizer.ggml.pre``: the reference's table of check-text hashes (``PRE_BY_HASH``). A hash it lacks (the
reference refuses such a model) gets the name of a pre-tokenizer whose definition is exactly one llama.cpp
implements (GPT-2's, SmolLM's, Llama 3's), with a note; otherwise "default" and a one-line warning on the
``qtool`` logger naming the file and ``--pre-tokenizer NAME`` (``add_tokenizer(pre_tokenizer=)``).

Where the reference calls ``transformers.AutoTokenizer``, qtool uses the ``tokenizers`` package (the Rust
library behind it) and reproduces the few things transformers adds: the post-processor the Llama and Gemma
tokenizer classes rebuild from add_bos_token/add_eos_token, and the decode round trip of added tokens.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
from gguf import GGUFValueType, GGUFWriter, TokenType

from qtool.errors import FormatError, UsageError
from qtool.formats import tokjson
from qtool.formats.gguf_in import StringRecords
from qtool.formats.source import map_bytes, read_json

if TYPE_CHECKING:
    from qtool.archs.metadata import HFMeta

V = GGUFValueType
log = logging.getLogger(__name__)

def check_pre_tokenizer(name: str | None) -> None:
    """UsageError unless ``name`` is None or a pre-tokenizer llama.cpp knows (for tokenizer.ggml.pre)."""
    if name is not None and name not in PRE_NAMES:
        raise UsageError(f"pre-tokenizer {name!r} is not one llama.cpp knows; one of {', '.join(sorted(PRE_NAMES))}")


class NotThisKind(Exception):
    """The folder lacks what this vocabulary kind reads (the reference's FileNotFoundError/TypeError)."""


# -- the entry point ----------------------------------------------------------------------------------------


def add_tokenizer(meta: HFMeta, folder: Path, config: dict[str, Any], kind: str = "auto", *,
                  pre_tokenizer: str | None = None) -> str | None:
    """Add the ``tokenizer.*`` keys of the tokenizer in ``folder`` to ``meta``; returns the kind written.

    ``kind``: a recipe name from ``RECIPES`` (a family's set_vocab in the reference), a single kind from
    ``KINDS``, or "auto" (the recipe of meta's ``general.architecture``, else spm, llama_hf, gpt2 in turn,
    with WordPiece folders as bert). Where the folder has no tokenizer the kind can read, ``meta`` is marked
    not loadable and None is returned. ``pre_tokenizer`` forces ``tokenizer.ggml.pre`` of BPE and WordPiece
    vocabularies.
    """
    folder = Path(folder)
    arch = meta.kv.get("general.architecture")
    recipe = _recipe(kind, folder, arch)
    check_pre_tokenizer(pre_tokenizer)
    src = _Folder(folder, config, pre_tokenizer, meta)
    out = _writer(arch)
    with _gguf_warnings(meta, folder):
        try:
            used = recipe(out, src)
        except NotThisKind as e:
            meta.cannot_load(str(e))
            return None
    for key, v in out.kv_data[0].items():
        value = v.value
        if v.type == V.ARRAY:
            if isinstance(value, np.ndarray):  # token types in bulk
                value = value.tolist()
            elif isinstance(value, list) and value and isinstance(value[0], int):  # TokenType members: plain ints
                value = [int(x) for x in value]
            meta.add(key, value, V.ARRAY, v.sub_type or _element_type(value))
        else:
            meta.add(key, value, v.type)
    return used


def _writer(arch: Any) -> GGUFWriter:
    """A GGUFWriter with no file: its add_* methods give every key its reference name and value type."""
    w = GGUFWriter(None, str(arch or "llama"))
    w.kv_data[0].clear()  # drop general.architecture: the caller writes it
    return w


def _element_type(values) -> GGUFValueType:
    if not len(values) or isinstance(values, StringRecords):
        return V.STRING
    return GGUFValueType.get_type(values[0])


@contextlib.contextmanager
def _gguf_warnings(meta: HFMeta, folder: Path) -> Iterator[None]:
    """gguf-py's warnings while reading the folder become notes of ``meta`` (not lines on stderr)."""
    records: list[logging.LogRecord] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("gguf")
    handler, propagate = _Keep(logging.WARNING), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        for r in records:
            msg = r.getMessage()
            if not msg.startswith("Duplicated key name"):  # a recipe's deliberate override (add_bos_token)
                meta.notes.append(f"{folder}: {msg}")


# -- the folder's tokenizer files ---------------------------------------------------------------------------


class _Folder:
    """The tokenizer files of one folder, each read (and checked) once, on first use."""

    def __init__(self, folder: Path, config: dict[str, Any], pre: str | None, meta: HFMeta):
        self.path, self.config, self.pre, self.meta = folder, config, pre, meta
        self._json: dict[str, Any] = {}
        self._hf = None
        self._check = None
        #: tokenizer.json's vocabulary and merges in bulk (tokjson), where it could be read so: its
        #: tok_json then holds model.vocab {} and model.merges []
        self.bulk: tokjson.BulkTokenizerJson | None = None

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    def json(self, name: str, what: str) -> dict[str, Any]:
        """A JSON object file of the folder ({} when absent)."""
        if name not in self._json:
            path = self.path / name
            data: Any = {}
            if path.is_file():
                if name == "tokenizer.json":
                    raw = map_bytes(path, what)
                    self.bulk = tokjson.read(raw)
                    data = self.bulk.rest if self.bulk is not None else read_json(path, what, raw)
                    del raw
                else:
                    data = read_json(path, what)
                if not isinstance(data, dict):
                    raise FormatError(f"{path}: {what} is not a JSON object")
            self._json[name] = data
        return self._json[name]

    @property
    def tok_json(self) -> dict[str, Any]:
        return self.json("tokenizer.json", "tokenizer")

    @property
    def tok_config(self) -> dict[str, Any]:
        return self.json("tokenizer_config.json", "tokenizer config")

    def vocab_size(self, n_tokens: int, keys: tuple[str, ...] = ("vocab_size",)) -> int:
        """config.json's vocabulary size (the reference pads the tokenizer's ``n_tokens`` up to it), else
        ``n_tokens``. A size far beyond the tokenizer's is refused before anything is sized by it."""
        for key in keys:
            if key in self.config:
                v = self.config[key]
                if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                    raise FormatError(f"{self.path / 'config.json'}: {key} is {v!r}, not a positive integer")
                if v > 2 * n_tokens + 65536:
                    raise FormatError(f"{self.path / 'config.json'}: {key} is {v}, but the tokenizer has "
                                      f"{n_tokens} tokens")
                return v
        return n_tokens

    def hf(self):
        """tokenizer.json loaded by the ``tokenizers`` package, as transformers' AutoTokenizer would set it up."""
        if self._hf is None:
            path = self.path / "tokenizer.json"
            tokenizers = _import("tokenizers", path)
            try:
                tok = tokenizers.Tokenizer.from_file(str(path))
            except Exception as e:  # noqa: BLE001 (the Rust side raises plain Exception)
                raise FormatError(f"{path}: the tokenizers package cannot read it: {_first_line(e)}") from None
            tok.no_padding()  # transformers' encode neither pads nor truncates unless asked
            tok.no_truncation()
            _as_transformers_loads(tok, self.tok_json, self.tok_config, tokenizers)
            self._hf = tok
        return self._hf

    def for_check_text(self):
        """A tokenizer that tokenizes CHECK_TEXT, and encodes each added token alone, as ``hf()`` does, built
        without loading every token and merge (0.13 s for 49k tokens, 0.39 s for Qwen2's 151k).

        For a plain BPE model (no byte fallback, dropout or affixes) the text, normalized and pre-tokenized
        as this tokenizer does it, has few distinct substrings: BPE only ever merges a pair into a substring
        of a piece, so the merges whose result is one (in their order) and the tokens that are one (with
        their ids) tokenize it the same. (A merge naming no token of the vocabulary goes unnoticed here, as
        in llama.cpp, which falls back to bytes.) Anything else: ``hf()``.
        """
        if self._check is None:
            self._check = _check_text_tokenizer(self) or self.hf()
        return self._check


def _check_text_tokenizer(f: _Folder):
    """_Folder.for_check_text's small tokenizer, or None where it does not apply."""
    tj = f.tok_json
    model = tj.get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE" or model.get("byte_fallback") \
            or model.get("dropout") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return None
    bulk = f.bulk
    if bulk is None:
        vocab, merges = model.get("vocab"), model.get("merges")
        if not isinstance(vocab, dict) or not isinstance(merges, list) or not merges:
            return None
    else:
        if bulk.merges is None or not len(bulk.merges):
            return None
        vocab, merges = tokjson.VocabView(bulk), None
    added = _added_ids_as_loaded(tj, vocab)
    if added is None:
        return None
    if bulk is None:
        try:
            if type(merges[0]) is str:  # "a b": byte-level tokens hold no space
                joined = [m.replace(" ", "", 1) for m in merges]
            else:
                joined = [a + b for a, b in merges]
        except (TypeError, ValueError, AttributeError):  # malformed: the whole load reports it
            return None
    path = f.path / "tokenizer.json"
    tokenizers = _import("tokenizers", path)
    import json

    try:
        bare = tokenizers.Tokenizer.from_str(json.dumps({**tj, "model": {**model, "vocab": {}, "merges": []}}))
        text = bare.normalizer.normalize_str(CHECK_TEXT) if bare.normalizer is not None else CHECK_TEXT
        pieces = [p for p, _ in bare.pre_tokenizer.pre_tokenize_str(text)] if bare.pre_tokenizer is not None \
            else [text]
    except Exception:  # noqa: BLE001 (the Rust side raises plain Exception): the whole load reports it
        return None
    subs = {p[i:j] for p in pieces for i in range(len(p)) for j in range(i + 1, len(p) + 1)}
    if bulk is None:
        kept = list(itertools.compress(merges, map(subs.__contains__, joined)))
        small_vocab = {t: i for t, i in vocab.items() if t in subs}
    else:  # the same, found by hash among the packed texts
        kept, small_vocab = bulk.merges_among(subs), bulk.vocab_among(subs)
    # the added tokens' texts as tokens of the small model too, so that each keeps its id there
    small_vocab |= added
    unk = model.get("unk_token")
    if isinstance(unk, str) and unk in vocab:  # a character the vocabulary lacks becomes it, as in the whole one
        small_vocab[unk] = vocab[unk]
    small = {**tj, "model": {**model, "vocab": small_vocab, "merges": kept}}
    try:
        tok = tokenizers.Tokenizer.from_str(json.dumps(small))
    except Exception:  # noqa: BLE001
        return None
    tok.no_padding()
    tok.no_truncation()
    _as_transformers_loads(tok, tj, f.tok_config, tokenizers)
    return tok


def _added_pairs(tok_json: dict) -> list[tuple[str, int]] | None:
    """tokenizer.json's added tokens as (content, id) in order; None unless each is that plain form."""
    added = tok_json.get("added_tokens") or []
    if not isinstance(added, list) or not all(
            isinstance(a, dict) and type(a.get("content")) is str and type(a.get("id")) is int for a in added):
        return None
    return [(a["content"], a["id"]) for a in added]


def _added_ids_as_loaded(tok_json: dict, vocab: dict) -> dict[str, int] | None:
    """The added tokens' ids where they are those loading the whole tokenizer gives them: a token of the
    vocabulary keeps its id, the others follow the vocabulary in order (how tokenizers saves them). None
    for any other layout, or a malformed entry."""
    pairs = _added_pairs(tok_json)
    if pairs is None:
        return None
    out: dict[str, int] = {}
    following = len(vocab)
    for content, i in pairs:
        if content in out:
            return None
        if content in vocab:
            if vocab[content] != i:
                return None
        elif i == following:
            following += 1
        else:
            return None
        out[content] = i
    return out


def _import(name: str, path: Path):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise FormatError(f"{path}: reading it needs the {name!r} package (pip install {name})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _content(entry: Any) -> str | None:
    """A special token as tokenizer_config.json gives it: a string or an AddedToken object."""
    if isinstance(entry, dict):
        entry = entry.get("content")
    return entry if isinstance(entry, str) else None


#: transformers tokenizer classes that rebuild the post-processor from add_bos_token/add_eos_token,
#: with their default bos/eos contents
_TEMPLATE_CLASSES = {"LlamaTokenizer": ("<s>", "</s>"), "CodeLlamaTokenizer": ("<s>", "</s>"),
                     "GemmaTokenizer": ("<bos>", "<eos>")}


def _as_transformers_loads(tok, tok_json: dict, tok_config: dict, tokenizers) -> None:
    """What transformers' tokenizer classes change in a loaded tokenizer.json (v4 behaviour).

    The Llama/CodeLlama/Gemma fast classes replace the post-processor by a template adding bos (default on)
    and eos (default off); GPT2TokenizerFast sets a top-level ByteLevel pre-tokenizer's add_prefix_space to
    its add_prefix_space argument (default False).
    """
    cls = tok_config.get("tokenizer_class")
    cls = cls[:-4] if isinstance(cls, str) and cls.endswith("Fast") else cls
    if cls in _TEMPLATE_CLASSES:
        bos = _content(tok_config.get("bos_token")) or _TEMPLATE_CLASSES[cls][0]
        eos = _content(tok_config.get("eos_token")) or _TEMPLATE_CLASSES[cls][1]
        add_bos = tok_config.get("add_bos_token", True) is not False
        add_eos = tok_config.get("add_eos_token", False) is True
        bos_id, eos_id = tok.token_to_id(bos), tok.token_to_id(eos)
        if (add_bos and bos_id is None) or (add_eos and eos_id is None):
            return
        single = (f"{bos}:0 " if add_bos else "") + "$A:0" + (f" {eos}:0" if add_eos else "")
        pair = single + (f" {bos}:1" if add_bos else "") + " $B:1" + (f" {eos}:1" if add_eos else "")
        specials = [(bos, bos_id)] if add_bos else []
        if add_eos and (eos, eos_id) not in specials:
            specials.append((eos, eos_id))
        tok.post_processor = tokenizers.processors.TemplateProcessing(single=single, pair=pair,
                                                                     special_tokens=specials)
    elif cls == "GPT2Tokenizer":
        pre = tok_json.get("pre_tokenizer")
        want = tok_config.get("add_prefix_space", False)
        if isinstance(pre, dict) and pre.get("type") == "ByteLevel" and isinstance(want, bool) \
                and pre.get("add_prefix_space", want) != want:
            tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(
                add_prefix_space=want, use_regex=pre.get("use_regex", True))


# -- recipes: one family's set_vocab each -------------------------------------------------------------------


def _recipe(kind: str, folder: Path, arch: Any) -> Callable[[GGUFWriter, _Folder], str]:
    kind = _ALIASES.get(kind, kind)
    if kind == "auto":
        kind = _ARCH_RECIPE.get(str(arch), "")
        if not kind:
            kind = "bert" if _is_wordpiece(folder) else "generic"
    if kind in RECIPES:
        return RECIPES[kind]
    if kind in KINDS:
        return lambda w, f: _first(w, f, (kind,))
    raise ValueError(f"unknown tokenizer kind {kind!r}; one of auto, {', '.join(sorted({*RECIPES, *KINDS}))}")


def _is_wordpiece(folder: Path) -> bool:
    path = folder / "tokenizer.json"
    if not path.is_file():
        return False
    try:
        with open(path, encoding="utf-8") as fp:
            head = fp.read(1 << 20)
    except (OSError, UnicodeDecodeError):
        return False
    return re.search(r'"type"\s*:\s*"WordPiece"', head) is not None


def _first(w: GGUFWriter, f: _Folder, kinds: tuple[str, ...]) -> str:
    """The first kind in ``kinds`` that finds its files (the reference's try/except chains)."""
    why = []
    for kind in kinds:
        try:
            KINDS[kind](w, f)
            return kind
        except NotThisKind as e:
            why.append(str(e))
    raise NotThisKind("; ".join(why))


def _recipe_llama(w: GGUFWriter, f: _Folder) -> str:
    """LlamaModel.set_vocab (also Mistral, SmolLM, TinyLlama)."""
    add_prefix = f.tok_config.get("add_prefix_space")
    if add_prefix is not None:
        if not isinstance(add_prefix, bool):
            raise FormatError(f"{f.path / 'tokenizer_config.json'}: add_prefix_space is {add_prefix!r}, "
                              f"not true/false")
        w.add_add_space_prefix(add_prefix)
    used = _first(w, f, ("spm", "llama_hf", "gpt2"))
    vocab_size = f.config.get("vocab_size", 32000)
    if vocab_size == 32016:  # CodeLlama's infill tokens
        sv = _special_vocab(f, load_merges=False, special_token_types=["prefix", "suffix", "middle", "eot"])
        for typ, tid in (("prefix", 32007), ("suffix", 32008), ("middle", 32009), ("eot", 32010)):
            sv._set_special_token(typ, tid)
        _add_special(w, f, sv)
    if vocab_size == 49152:  # the reference turns bos off for every llama with this vocabulary size
        w.add_add_bos_token(False)
    return used


def _recipe_qwen2(w: GGUFWriter, f: _Folder) -> str:
    """Qwen2Model.set_vocab (Qwen3 and Qwen3-MoE inherit it)."""
    return _first(w, f, ("spm", "gpt2"))


def _recipe_gemma(w: GGUFWriter, f: _Folder) -> str:
    """GemmaModel.set_vocab: SentencePiece, CodeGemma's infill/eot ids, no space prefix."""
    used = _first(w, f, ("spm",))
    sv = _special_vocab(f, load_merges=False, special_token_types=["prefix", "suffix", "middle", "fsep", "eot"])
    for typ, tid in (("prefix", 67), ("suffix", 69), ("middle", 68), ("fsep", 70), ("eot", 107)):
        sv._set_special_token(typ, tid)
    sv.chat_template = None
    _add_special(w, f, sv)
    w.add_add_space_prefix(False)
    return used


def _recipe_gemma2(w: GGUFWriter, f: _Folder) -> str:
    used = _first(w, f, ("spm",))
    w.add_add_space_prefix(False)
    return used


def _recipe_gemma3(w: GGUFWriter, f: _Folder) -> str:
    if f.has("tokenizer.model"):
        used = _first(w, f, ("spm",))
        w.add_add_space_prefix(False)
        return used
    return _first(w, f, ("gpt2",))


def _recipe_phi3(w: GGUFWriter, f: _Folder) -> str:
    if f.tok_config.get("tokenizer_class") == "GPT2Tokenizer":
        return _first(w, f, ("gpt2",))
    return _first(w, f, ("phi3",))


def _recipe_generic(w: GGUFWriter, f: _Folder) -> str:
    return _first(w, f, ("spm", "llama_hf", "gpt2"))


# -- kinds --------------------------------------------------------------------------------------------------


def _special_vocab(f: _Folder, **kwargs):
    """The folder's special tokens, flags, merges and chat template (the reference's SpecialVocab)."""
    try:
        return _special_vocab_class()(f.path, folder=f, **kwargs)
    except (OSError, ValueError, TypeError, AttributeError, KeyError, IndexError) as e:
        raise FormatError(f"{f.path}: special tokens: {_first_line(e)}") from None


def _add_special(w: GGUFWriter, f: _Folder, sv) -> None:
    sv.add_to_gguf(w, quiet=True)


@functools.cache
def _special_vocab_class():
    """gguf.SpecialVocab with its tokenizer.json/tokenizer_config.json reading as the reference build's gguf-py
    does it. gguf 0.19.0 on PyPI is older than the reference's copy and differs where it matters:

    - a ByteLevel post-processor means add_bos_token = add_eos_token = false (PyPI: no key, and llama.cpp then
      adds a BOS for llama-bpe/smaug-bpe vocabularies that the model never saw);
    - where post-processor and tokenizer_config.json disagree on add_*_token, the post-processor wins (PyPI:
      the config);
    - a template's leading special token that is neither bos nor cls becomes both, if they are unset;
    - BertNormalizer/Lowercase/StripAccents give tokenizer.ggml.normalizer.lowercase / .strip_accents.

    The rest (config.json ids, merges.txt, the id range check, writing through GGUFWriter) is gguf-py's own.
    """
    from gguf import SpecialVocab

    class ReferenceSpecialVocab(SpecialVocab):
        normalizer_lowercase: bool | None = None
        normalizer_strip_accents: bool | None = None

        def __init__(self, path: Path, *, folder: _Folder | None = None, **kwargs):
            self.folder = folder  # its tokenizer files, already read and checked (else they are read here)
            super().__init__(path, **kwargs)

        def _try_load_from_tokenizer_json(self, path: Path) -> bool:
            tok_path, cfg_path = path / "tokenizer.json", path / "tokenizer_config.json"
            if self.folder is not None:
                tok = self.folder.tok_json if tok_path.is_file() else None
                cfg = dict(self.folder.tok_config) if cfg_path.is_file() else None  # filled in below
            else:
                tok = read_json(tok_path, "tokenizer") if tok_path.is_file() else None
                cfg = read_json(cfg_path, "tokenizer config") if cfg_path.is_file() else None
            if tok is not None and not isinstance(tok, dict):
                raise FormatError(f"{tok_path}: tokenizer is not a JSON object")
            if cfg is not None and not isinstance(cfg, dict):
                raise FormatError(f"{cfg_path}: tokenizer config is not a JSON object")
            added: list = []
            if tok is not None:
                if self.load_merges:
                    bulk = self.folder.bulk if self.folder is not None else None
                    self.merges = _merges_of(tok_path, (tok.get("model") or {}).get("merges")) if bulk is None \
                        else bulk.merge_records()
                if tok.get("normalizer"):
                    self._read_normalizer(tok["normalizer"])
                added = tok.get("added_tokens") or []
            if tok:
                self._read_post_processor(tok, cfg)
            if not cfg:
                return True
            self._read_chat_template(path, cfg)
            for typ in self.special_token_types:
                flag = cfg.get(f"add_{typ}_token")
                if isinstance(flag, bool):
                    self.add_special_token.setdefault(typ, flag)  # the post-processor's word wins
                content = _content(cfg.get(f"{typ}_token"))
                if content is None:
                    continue
                tid = next((a.get("id") for a in added if isinstance(a, dict) and a.get("content") == content),
                           None)
                self._set_special_token(typ, tid)
            return True

        def _read_post_processor(self, tok: dict, cfg: dict | None) -> None:
            """bos/eos/sep flags from the post-processor; fills cfg's missing bos/cls/eos/sep/eot as the
            reference does (its raw entries compared, as there)."""
            def get(key):
                return (cfg or {}).get(key)

            bos, cls, eos, sep = get("bos_token"), get("cls_token"), get("eos_token"), get("sep_token")
            if not bos and cls and cfg:
                cfg["bos_token"] = bos = cls
            if not eos and sep and cfg:
                cfg["eos_token"] = eos = sep
            post = tok.get("post_processor")
            if not post:
                return
            add = self.add_special_token
            for proc in post.get("processors", [post]):
                kind = proc.get("type")
                if kind == "ByteLevel":
                    add.setdefault("bos", False)
                    add.setdefault("eos", False)
                elif kind == "RobertaProcessing":
                    add["bos"] = add["eos"] = add["sep"] = True
                    if not cls and cfg:
                        cfg["cls_token"] = cls = proc.get("cls", [bos])[0]
                    if not sep and cfg:
                        cfg["sep_token"] = sep = proc.get("sep", [eos])[0]
                elif kind == "TemplateProcessing":
                    single, pair = proc.get("single", []), proc.get("pair", [])
                    first = last = None
                    if len(single) > 1:
                        first = single[0].get("SpecialToken", {}).get("id")
                        if first:
                            if not cfg:
                                bos = first
                            elif first not in (bos, cls):
                                if not bos:
                                    cfg["bos_token"] = bos = first
                                if not cls:
                                    cfg["cls_token"] = cls = first
                            add["bos"] = first in (bos, cls)
                        last = single[-1].get("SpecialToken", {}).get("id")
                        if last:
                            if not cfg:
                                eos = last
                            elif last != eos:
                                # the template ends with another token than eos: eos moves to eot (or eom)
                                for extra in ("eot", "eom"):
                                    if extra not in self.special_token_types:
                                        self.special_token_types = (*self.special_token_types, extra)
                                        cfg[f"{extra}_token"] = eos
                                        break
                                cfg["eos_token"] = eos = last
                            add["eos"] = last == eos
                    if pair:
                        start = 1 if first and pair[0].get("SpecialToken", {}).get("id") == first else 0
                        stop = -1 if last and pair[-1].get("SpecialToken", {}).get("id") == last else None
                        pair = pair[start:stop]
                        if pair and pair[0].get("Sequence", {}).get("id") == "A" \
                                and pair[-1].get("Sequence", {}).get("id") == "B" and pair[1:-1]:
                            between = pair[1:-1]
                            add_sep = False
                            entry = between[0].get("SpecialToken", {}).get("id")
                            if entry and entry in (sep, eos) and not last:
                                add_sep = True
                            if len(between) == 2:
                                entry = between[1].get("SpecialToken", {}).get("id")
                                if entry and entry in (sep, eos):
                                    add_sep = True
                            add["sep"] = add_sep
                            if add_sep and not sep and cfg:
                                cfg["sep_token"] = eos

        def _read_chat_template(self, path: Path, cfg: dict) -> None:
            """tokenizer_config's chat_template, else chat_template.jinja (with additional_chat_templates/*.jinja:
            a named list), else chat_template.json's."""
            alt = None
            jinja, js = path / "chat_template.jinja", path / "chat_template.json"
            if jinja.is_file():
                alt = _read_text(jinja)
                more = sorted((path / "additional_chat_templates").glob("*.jinja"))
                if more:
                    alt = [{"name": "default", "template": alt}] + [
                        {"name": p.stem, "template": _read_text(p)} for p in more]
            elif js.is_file():
                data = read_json(js, "chat template")
                alt = data.get("chat_template") if isinstance(data, dict) else None
            template = cfg.get("chat_template", alt)
            if template is None or isinstance(template, (str, list)):
                self.chat_template = template

        def _read_normalizer(self, node: Any) -> None:
            if not isinstance(node, dict):
                return
            kind = node.get("type")
            if kind == "Lowercase":
                self.normalizer_lowercase = True
            elif kind == "StripAccents":
                self.normalizer_strip_accents = True
            elif kind == "BertNormalizer":
                if "lowercase" in node:
                    self.normalizer_lowercase = node["lowercase"]
                if "strip_accents" in node:
                    self.normalizer_strip_accents = node["strip_accents"]
            elif kind == "Sequence":
                for sub in node.get("normalizers", []):
                    self._read_normalizer(sub)

        def add_to_gguf(self, gw: GGUFWriter, quiet: bool = False) -> None:
            super().add_to_gguf(gw, quiet=quiet)
            for key, value in (("tokenizer.ggml.normalizer.lowercase", self.normalizer_lowercase),
                               ("tokenizer.ggml.normalizer.strip_accents", self.normalizer_strip_accents)):
                if value is not None and key not in gw.kv_data[0]:
                    gw.add_bool(key, value)

    return ReferenceSpecialVocab


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise FormatError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise FormatError(f"{path}: is not UTF-8 text") from None


def _merges_of(path: Path, merges: Any) -> list[str]:
    """tokenizer.json's merges as GGUF writes them: "a b"; the pair form's spaces as U+0120 + ..."""
    if not merges:
        return []
    if not isinstance(merges, list):
        raise FormatError(f"{path}: model.merges is not a list")
    kinds = set(map(type, merges))  # (the type and length tests in C: a generator over 50k merges took ~30 ms)
    if kinds == {str}:
        return list(merges)
    if kinds == {list} and set(map(len, merges)) == {2}:
        try:
            joined = list(map(" ".join, merges))
        except TypeError:  # a part that is not a string: the loop below names it
            joined = None
        if joined is not None and "\n".join(joined).count(" ") == len(joined):
            return joined  # one space in each: no part holds one (the usual case, ~2x faster than shifting)
        g = "\u0120"  # the reference shifts a space inside a pair's part by 256 code points, to U+0120
        try:
            return [f"{a.replace(' ', g)} {b.replace(' ', g)}" for a, b in merges]
        except AttributeError:  # a part that is not a string: the loop below names it
            pass
    out = []
    for m in merges:
        # the reference shifts a space inside a pair's part by 256 code points, to U+0120
        if type(m) is list and len(m) == 2 and type(m[0]) is str and type(m[1]) is str:
            out.append(f"{m[0].replace(' ', chr(0x120))} {m[1].replace(' ', chr(0x120))}")
        else:
            raise FormatError(f"{path}: merge {m!r} is neither \"a b\" nor a pair of strings")
    return out


def _kind_gpt2(w: GGUFWriter, f: _Folder) -> None:
    """_set_vocab_gpt2: byte-level BPE from tokenizer.json."""
    path = f.path / "tokenizer.json"
    if not path.is_file():
        raise NotThisKind(f"{f.path}: no tokenizer.json" + (" (vocab.json/merges.txt alone: qtool reads "
                                                            "tokenizer.json)" if f.has("vocab.json") else ""))
    model = f.tok_json.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("vocab"), dict):
        raise FormatError(f"{path}: has no model.vocab object")
    if model.get("type") != "BPE" or not (_mentions(f.tok_json.get("pre_tokenizer"), "ByteLevel")
                                          or _mentions(f.tok_json.get("decoder"), "ByteLevel")):
        raise NotThisKind(f"{path}: not a byte-level BPE tokenizer (model type {model.get('type')!r})")
    tokens, types, pre = _hf_vocab_base(f)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    _add_special(w, f, _special_vocab(f, load_merges=True))


def _kind_bert(w: GGUFWriter, f: _Folder) -> None:
    """BertModel.set_vocab: WordPiece in llama.cpp's phantom-space form."""
    path = f.path / "tokenizer.json"
    if not path.is_file():
        raise NotThisKind(f"{f.path}: no tokenizer.json" + (" (vocab.txt alone: qtool reads tokenizer.json)"
                                                            if f.has("vocab.txt") else ""))
    model = f.tok_json.get("model")
    if not isinstance(model, dict) or model.get("type") != "WordPiece":
        raise NotThisKind(f"{path}: not a WordPiece tokenizer (model type "
                          f"{model.get('type') if isinstance(model, dict) else None!r})")
    tokens, types, pre = _hf_vocab_base(f)
    type_count = f.config.get("type_vocab_size", 1)
    if not isinstance(type_count, int) or isinstance(type_count, bool) or type_count < 0:
        raise FormatError(f"{f.path / 'config.json'}: type_vocab_size is {type_count!r}, not an integer")
    w.add_token_type_count(type_count)
    tokens = [t if ty == TokenType.CONTROL else t[2:] if t.startswith("##") else "\u2581" + t
              for t, ty in zip(tokens, types)]
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    _add_special(w, f, _special_vocab(f, n_vocab=len(tokens)))


def _hf_vocab_base(f: _Folder) -> tuple[list[str], list[int], str]:
    """get_vocab_base: every id below the vocabulary size, added tokens typed control or user-defined."""
    tok = f.for_check_text()
    if f.bulk is not None:
        out = _hf_vocab_bulk(f, tok)
        if out is not None:
            return out
    path = f.path / "tokenizer.json"
    vocab = _vocab_with_added(f.tok_json, f.bulk)
    if vocab is None:
        vocab = tok.get_vocab(with_added_tokens=True)
    n_vocab = f.vocab_size(len(vocab))
    if vocab and max(vocab.values()) >= n_vocab:
        top = max(vocab, key=vocab.__getitem__)
        raise FormatError(f"{path}: token id {vocab[top]} ({top!r}) is outside config.json's vocab_size {n_vocab}")
    pre = _pre_name(f, tok)
    by_id = {i: t for t, i in vocab.items()}
    added = tok.get_added_tokens_decoder()
    added_ids = {a.content: i for i, a in sorted(added.items())}
    cleanup = f.tok_config.get("clean_up_tokenization_spaces") is True
    tokens: list[str] = list(map(by_id.get, range(n_vocab)))
    types: list[int] = [TokenType.NORMAL] * n_vocab
    for i in [i for i, text in enumerate(tokens) if text is None]:
        tokens[i] = f"[PAD{i}]"
        types[i] = TokenType.UNUSED
    # the few ids whose token is an added token's text (each at most once: by_id inverts vocab)
    for i in sorted({i for i in map(vocab.get, added_ids) if i is not None and i < n_vocab and tokens[i] in added_ids}):
        tokens[i], types[i] = _added_token(f, tok, added, added_ids, i, tokens[i], cleanup)
    return tokens, types, pre


def _added_token(f: _Folder, tok, added: dict, added_ids: dict, i: int, text: str, cleanup: bool) -> tuple[str, int]:
    """The text and type id ``i`` gets where its token is an added token's text ``text``."""
    a = added.get(i) or added[added_ids[text]]
    if not a.normalized:  # llama.cpp takes added tokens as already normalized text
        ids = tok.encode(text, add_special_tokens=False).ids
        if ids != [i]:  # not matched whole as the added token (the model took part): the whole tokenizer
            ids = f.hf().encode(text, add_special_tokens=False).ids
        text = (tok if ids == [i] else f.hf()).decode(ids, skip_special_tokens=False)
        if cleanup:
            text = _clean_up_spaces(text)
    if a.special or _looks_special(text):
        return text, TokenType.CONTROL
    return text.replace("\u2581", " "), TokenType.USER_DEFINED


def _hf_vocab_bulk(f: _Folder, tok) -> tuple[StringRecords, np.ndarray, str] | None:
    """_hf_vocab_base from tokenizer.json's packed vocabulary (f.bulk), the tokens as string records and
    their types as an int32 array: the same tokens, types and order without a Python string per token.
    None where the added tokens are not the plain form _vocab_with_added reads, or two texts share an id
    (the dict's last-one-wins order decides there)."""
    bulk = f.bulk
    path = f.path / "tokenizer.json"
    pairs = _added_pairs(f.tok_json)
    if pairs is None:
        return None
    # get_vocab(with_added_tokens=True): the vocabulary, each added token's id replacing its text's
    ids = bulk.ids.copy()
    extra: dict[str, int] = {}  # added texts the vocabulary lacks, in order
    for content, i in pairs:
        k = bulk.find(content)
        if k >= 0:
            ids[k] = i
        else:
            extra[content] = i
    n_base = ids.size
    all_ids = np.concatenate([ids, np.fromiter(extra.values(), np.int64, len(extra))])
    n_vocab = f.vocab_size(all_ids.size)
    if all_ids.size and int(all_ids.max()) >= n_vocab:
        k = int(np.argmax(all_ids))
        top = bulk.vocab.text(k) if k < n_base else list(extra)[k - n_base]
        raise FormatError(f"{path}: token id {all_ids[k]} ({top!r}) is outside config.json's vocab_size {n_vocab}")
    if all_ids.size and np.bincount(all_ids, minlength=n_vocab).max() > 1:
        return None
    owner = np.full(n_vocab, -1, np.int64)  # id -> index in vocabulary order (the extras after it)
    owner[all_ids] = np.arange(all_ids.size)
    extra_texts = list(extra)

    def text_of(i: int) -> str | None:
        k = int(owner[i])
        return None if k < 0 else bulk.vocab.text(k) if k < n_base else extra_texts[k - n_base]

    def id_of(text: str) -> int | None:
        if text in extra:
            return extra[text]
        k = bulk.find(text)
        return None if k < 0 else int(ids[k])

    added = tok.get_added_tokens_decoder()
    added_ids = {a.content: i for i, a in sorted(added.items())}
    cleanup = f.tok_config.get("clean_up_tokenization_spaces") is True
    types = np.full(n_vocab, int(TokenType.NORMAL), np.int32)
    types[owner < 0] = int(TokenType.UNUSED)
    changed: dict[int, str] = {i: f"[PAD{i}]" for i in np.flatnonzero(owner < 0).tolist()}
    for i in sorted({i for i in map(id_of, added_ids) if i is not None and i < n_vocab
                     and text_of(i) in added_ids}):
        changed[i], types[i] = _added_token(f, tok, added, added_ids, i, text_of(i), cleanup)
    tokens = _token_records(bulk.vocab, owner, extra_texts, changed)
    if tokens is None:
        return None
    return tokens, types, _pre_name(f, tok)  # (last: the other way would note an unknown hash again)


def _token_records(vocab: tokjson.Texts, owner: np.ndarray, extra: list[str],
                   changed: dict[int, str]) -> StringRecords | None:
    """The GGUF records of the tokens by id: id i is vocab's string owner[i] (below len(vocab)), else the
    extra text owner[i] - len(vocab); ``changed`` replaces some. Where the vocabulary's ids run 0, 1, ... in
    file order and none of them changes (the usual tokenizer.json), its records are copied whole. None where
    a text cannot be UTF-8 (a lone surrogate)."""
    n_base = len(vocab)
    source = owner.copy()  # id -> entry: vocab's strings, then the extra texts, then the changed ones
    source[list(changed)] = n_base + len(extra) + np.arange(len(changed))
    try:
        raws = [t.encode("utf-8") for t in [*extra, *changed.values()]]
    except UnicodeEncodeError:  # a lone surrogate in an added token: the writer's own packing reports it
        return None
    tail = source[n_base:]
    if n_base <= source.size and np.array_equal(source[:n_base], np.arange(n_base)) and (tail >= n_base).all():
        more = b"".join(len(raws[j]).to_bytes(8, "little") + raws[j] for j in (tail - n_base).tolist())
        return StringRecords(vocab.records.tobytes() + more, source.size)
    more_starts = np.zeros(len(raws) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, raws), np.int64, len(raws)), out=more_starts[1:])
    data = np.concatenate([vocab.records, np.frombuffer(b"".join(raws), np.uint8)])
    starts = np.concatenate([vocab.starts[:-1] + 8, vocab.records.size + more_starts[:-1]])
    lengths = np.concatenate([vocab.lengths(), np.diff(more_starts)])
    return StringRecords(tokjson.gguf_records(data, starts[source], lengths[source]), owner.size)


def _vocab_with_added(tok_json: dict, bulk: tokjson.BulkTokenizerJson | None = None) -> dict[str, int] | None:
    """tokenizers' get_vocab(with_added_tokens=True) from the parsed tokenizer.json: model.vocab (from
    ``bulk`` where it was read so), then each added token's id (an added token's id wins, as there). The
    Rust call builds the same dict afresh (0.14 s for 150k tokens). None where the JSON is not that plain
    form: ask the tokenizer."""
    model = tok_json.get("model")
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if bulk is not None:
        vocab = dict(tokjson.VocabView(bulk).items())
    if not isinstance(vocab, dict) or not set(map(type, vocab.values())) <= {int}:
        return None
    pairs = _added_pairs(tok_json)
    if pairs is None:
        return None
    out = dict(vocab)
    out.update(pairs)
    return out


def _clean_up_spaces(text: str) -> str:
    """transformers' clean_up_tokenization."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                 (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


def _pre_name(f: _Folder, tok) -> str:
    """get_vocab_base_pre: the pre-tokenizer named by the hash of the check text's token ids.

    Where the hash is not in the reference's table (it would refuse the model), a pre-tokenizer whose
    definition is exactly one llama.cpp implements (GPT-2's byte-level split, SmolLM's digits + byte level,
    Llama 3's split) gets that name, with a note; anything else gets "default" and a warning that names
    ``--pre-tokenizer``.
    """
    if f.pre is not None:
        return f.pre
    ids = tok.encode(CHECK_TEXT).ids
    digest = hashlib.sha256(str(list(ids)).encode()).hexdigest()
    name = PRE_BY_HASH.get(digest)
    if name is not None:
        return name
    path = f.path / "tokenizer.json"
    name = _pre_by_definition(f.tok_json)
    if name is not None:
        f.meta.notes.append(f"{path}: pre-tokenizer not in llama.cpp's hash table (check-text hash "
                            f"{digest[:16]}...); its definition is {name!r}'s, so wrote that")
        return name
    msg = (f"{path}: pre-tokenizer not recognized (check-text hash {digest[:16]}...); wrote "
           f"tokenizer.ggml.pre = \"default\", which may split text unlike the model's tokenizer; "
           f"choose one with --pre-tokenizer NAME")
    log.warning(msg)
    f.meta.notes.append(msg)
    return "default"


_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _pre_by_definition(tok_json: dict[str, Any]) -> str | None:
    """The llama.cpp pre-tokenizer a tokenizer.json's definition is exactly, if it is one of three."""
    if tok_json.get("normalizer") is not None:
        return None
    pre = tok_json.get("pre_tokenizer")
    model = tok_json.get("model") or {}
    steps = pre.get("pretokenizers") if isinstance(pre, dict) and pre.get("type") == "Sequence" else [pre]
    if not isinstance(steps, list) or not all(isinstance(x, dict) for x in steps) or not steps:
        return None
    last = steps[-1]
    if last.get("type") != "ByteLevel" or last.get("add_prefix_space", False):
        return None
    regex = last.get("use_regex", True)
    if len(steps) == 1 and regex and not model.get("ignore_merges", False):
        return "gpt-2"
    if len(steps) == 2 and regex and steps[0] == {"type": "Digits", "individual_digits": True} \
            and not model.get("ignore_merges", False):
        return "smollm"
    if len(steps) == 2 and not regex and steps[0].get("type") == "Split" and model.get("ignore_merges", False) \
            and (steps[0].get("pattern") or {}).get("Regex") == _LLAMA3_SPLIT \
            and steps[0].get("behavior") == "Isolated" and not steps[0].get("invert", False):
        return "llama-bpe"
    return None


def _kind_spm(w: GGUFWriter, f: _Folder) -> None:
    """_set_vocab_sentencepiece."""
    _add_llama_vocab(w, f, *_spm_vocab(f, ("vocab_size_per_layer_input", "vocab_size")))


def _add_llama_vocab(w: GGUFWriter, f: _Folder, tokens: list[str], scores: list[float], types: list[int]) -> None:
    """A SentencePiece-style vocabulary (tokenizer.ggml.model "llama", pre "default") and its special tokens."""
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    _add_special(w, f, _special_vocab(f, n_vocab=len(tokens)))


def _load_spm(f: _Folder):
    path = f.path / "tokenizer.model"
    if not path.is_file():
        raise NotThisKind(f"{f.path}: no tokenizer.model")
    spm = _import("sentencepiece", path)
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(path))
    except (OSError, RuntimeError) as e:
        raise FormatError(f"{path}: not a SentencePiece model: {_first_line(e)}") from None
    return sp


def _spm_pieces(f: _Folder, sp, n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """The model's pieces padded to n_vocab with [PADi], then added_tokens.json's tokens as USER_DEFINED."""
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    scores = [-10000.0] * n_vocab
    types = [int(TokenType.UNUSED)] * n_vocab
    for i in range(min(sp.vocab_size(), n_vocab)):
        t = TokenType.NORMAL
        if sp.IsUnknown(i):
            t = TokenType.UNKNOWN
        elif sp.IsControl(i):
            t = TokenType.CONTROL
        elif sp.IsUnused(i):
            t = TokenType.UNUSED
        elif sp.IsByte(i):
            t = TokenType.BYTE
        tokens[i], scores[i], types[i] = sp.IdToPiece(i), sp.GetScore(i), int(t)
    for tid, text in _added_tokens_json(f).items():
        if tid < n_vocab:
            tokens[tid], scores[tid], types[tid] = text, -1000.0, int(TokenType.USER_DEFINED)
    return tokens, scores, types


def _added_tokens_json(f: _Folder) -> dict[int, str]:
    data = f.json("added_tokens.json", "added tokens")
    out = {}
    for text, tid in data.items():
        if not isinstance(tid, int) or isinstance(tid, bool) or tid < 0:
            raise FormatError(f"{f.path / 'added_tokens.json'}: token {text!r} has id {tid!r}")
        out[tid] = text
    return out


def _added_tokens_decoder(f: _Folder) -> list[tuple[int, str, bool]]:
    """tokenizer_config.json's added_tokens_decoder: (id, content, special)."""
    entries = f.tok_config.get("added_tokens_decoder") or {}
    path = f.path / "tokenizer_config.json"
    if not isinstance(entries, dict):
        raise FormatError(f"{path}: added_tokens_decoder is not an object")
    out = []
    for key, data in entries.items():
        try:
            tid = int(key)
        except ValueError:
            raise FormatError(f"{path}: added_tokens_decoder key {key!r} is not a token id") from None
        if not isinstance(data, dict) or not isinstance(data.get("content"), str) or tid < 0:
            raise FormatError(f"{path}: added_tokens_decoder[{key!r}] has no string content")
        out.append((tid, data["content"], bool(data.get("special"))))
    return out


def _spm_vocab(f: _Folder, size_keys: tuple[str, ...]) -> tuple[list[str], list[float], list[int]]:
    """_create_vocab_sentencepiece: pieces, then added_tokens.json, then tokenizer_config's added tokens."""
    sp = _load_spm(f)
    n_vocab = f.vocab_size(sp.vocab_size(), size_keys)
    if n_vocab < sp.vocab_size():
        f.meta.notes.append(f"{f.path / 'tokenizer.model'}: {sp.vocab_size()} pieces, config.json's vocabulary "
                            f"{n_vocab}: pieces from id {n_vocab} on left out (as the reference does)")
    tokens, scores, types = _spm_pieces(f, sp, n_vocab)
    for tid, text, special in _added_tokens_decoder(f):
        if tid >= n_vocab:
            continue
        if special or _looks_special(text):
            types[tid] = int(TokenType.CONTROL)
        else:
            text = text.replace("\u2581", " ")
            types[tid] = int(TokenType.USER_DEFINED)
        tokens[tid], scores[tid] = text, -1000.0
    return tokens, scores, types


def _kind_phi3(w: GGUFWriter, f: _Folder) -> None:
    """Phi3MiniModel.set_vocab's SentencePiece path: added tokens from tokenizer_config and tokenizer.json,
    typed by their special flag only."""
    sp = _load_spm(f)
    n_vocab = f.vocab_size(sp.vocab_size())
    tokens, scores, types = _spm_pieces(f, sp, n_vocab)
    later = [(tid, text, special) for tid, text, special in _added_tokens_decoder(f)]
    if f.has("tokenizer.json"):
        for a in f.tok_json.get("added_tokens") or []:
            if isinstance(a, dict) and isinstance(a.get("content"), str) and _is_id(a.get("id")):
                later.append((a["id"], a["content"], bool(a.get("special"))))
    for tid, text, special in later:
        if tid >= n_vocab:
            raise FormatError(f"{f.path}: added token {text!r} has id {tid}, outside the vocabulary ({n_vocab})")
        tokens[tid], scores[tid] = text, -1000.0
        types[tid] = int(TokenType.CONTROL if special else TokenType.USER_DEFINED)
    _add_llama_vocab(w, f, tokens, scores, types)


def _is_id(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _kind_llama_hf(w: GGUFWriter, f: _Folder) -> None:
    """_set_vocab_llama_hf (gguf-py's LlamaHfVocab): a byte-fallback BPE in tokenizer.json, read as
    SentencePiece-style pieces with score -1000."""
    path = f.path / "tokenizer.json"
    if not path.is_file():
        raise NotThisKind(f"{f.path}: no tokenizer.json or tokenizer.model")
    model = f.tok_json.get("model")
    decoder = f.tok_json.get("decoder")
    if not isinstance(model, dict) or model.get("type") != "BPE" or not model.get("byte_fallback", False) \
            or not isinstance(decoder, dict) or decoder.get("type") != "Sequence":
        raise NotThisKind(f"{path}: not a byte-fallback BPE")
    tok = f.hf()
    n_base = tok.get_vocab_size(with_added_tokens=False)
    vocab = tok.get_vocab(with_added_tokens=True)
    added = sorted(((i, a.content) for i, a in tok.get_added_tokens_decoder().items()), key=lambda x: x[0])
    added_list = [(i, text) for i, text in added if i >= n_base]
    specials = {t: vocab[t] for t in _transformers_special_tokens(f) if t in vocab}
    special_ids = set(specials.values())
    by_id = {i: t for t, i in vocab.items()}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_base):
        text = by_id.get(i)
        if text is None:
            raise FormatError(f"{path}: no token with id {i} below the base vocabulary size {n_base}")
        tokens.append(text)
        types.append(int(TokenType.BYTE if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text) else
                         TokenType.CONTROL if i in special_ids else TokenType.NORMAL))
    for i, text in added_list:
        tokens.append(text)
        types.append(int(TokenType.CONTROL if text in specials else TokenType.USER_DEFINED))
    _add_llama_vocab(w, f, tokens, [-1000.0] * len(tokens), types)


def _transformers_special_tokens(f: _Folder) -> list[str]:
    """transformers' all_special_tokens: the named special tokens and additional_special_tokens, from
    tokenizer_config.json overridden by special_tokens_map.json, with the Llama classes' defaults."""
    cls = f.tok_config.get("tokenizer_class")
    cls = cls[:-4] if isinstance(cls, str) and cls.endswith("Fast") else cls
    named: dict[str, str | None] = {}
    if cls in ("LlamaTokenizer", "CodeLlamaTokenizer"):
        named.update(bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    extra: list[str] = []
    for source in (f.tok_config, f.json("special_tokens_map.json", "special tokens map")):
        for key in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
            if key in source:
                named[key] = _content(source[key])
        more = source.get("additional_special_tokens")
        if isinstance(more, list):
            extra = [c for c in map(_content, more) if c is not None]
    out: list[str] = []
    for t in [*named.values(), *extra]:
        if t is not None and t not in out:
            out.append(t)
    return out


def _mentions(node: Any, type_name: str) -> bool:
    if isinstance(node, dict):
        return node.get("type") == type_name or any(_mentions(v, type_name) for v in node.values())
    if isinstance(node, list):
        return any(_mentions(v, type_name) for v in node)
    return False


def _looks_special(text: str) -> bool:
    """The reference's does_token_look_special: added tokens that act as control tokens though not marked."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
            or (text.startswith("<unused") and text.endswith(">")))


KINDS: dict[str, Callable[[GGUFWriter, _Folder], None]] = {
    "gpt2": _kind_gpt2, "spm": _kind_spm, "llama_hf": _kind_llama_hf, "bert": _kind_bert, "phi3": _kind_phi3,
}
RECIPES: dict[str, Callable[[GGUFWriter, _Folder], str]] = {
    "llama": _recipe_llama, "qwen2": _recipe_qwen2, "gemma": _recipe_gemma, "gemma2": _recipe_gemma2,
    "gemma3": _recipe_gemma3, "phi3": _recipe_phi3, "generic": _recipe_generic,
}
_ALIASES = {"bpe": "gpt2", "wordpiece": "bert", "sentencepiece": "spm"}
#: the recipe "auto" picks per GGUF architecture name (the reference's set_vocab of that family)
_ARCH_RECIPE = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen2", "qwen3moe": "qwen2", "gemma": "gemma",
                "gemma2": "gemma2", "gemma3": "gemma3", "phi3": "phi3", "bert": "bert"}


# -- facts from the reference build -------------------------------------------------------------------------

#: The text get_vocab_base_pre encodes; the sha256 of ``str(ids)`` names the pre-tokenizer.
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\U0001f680 (normal) \U0001f636\u200d\U0001f32b"
    "\ufe0f (multiple emojis concatenated) \u2705 \U0001f999\U0001f999 3 33 333 3333 33333 333333 3333333"
    " 33333333 3.3 3..3 3...3 \u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7\u179f\u17c1\u179f\u17a2"
    "\u17b6\u1785\U0001f601 ?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e ------======= \u043d"
    "\u0435\u0449\u043e \u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 ''''''```````"
    "\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D yo"
    "u like some tea? We'Ve a'lL"
)

#: sha256 of the check text's ids -> tokenizer.ggml.pre (where the reference lists a hash twice, its later
#: entry wins, as in its chain of ifs)
PRE_BY_HASH: dict[str, str] = {
    "b6e8e1518dc4305be2fe39c313ed643381c4da5db34a98f6a04c093f8afbe99b": "chatglm-bpe",
    "81d72c7348a9f0ebe86f23298d37debe0a5e71149e29bd283904c02262b27516": "chatglm-bpe",
    "a1336059768a55c99a734006ffb02203cd450fed003e9a71886c88acf24fdbc2": "glm4",
    "9ca2dd618e8afaf09731a7cf6e2105b373ba6a1821559f258b272fe83e6eb902": "glm4",
    "cdf5f35325780597efd76153d4d1c16778f766173908894c04afc20108536267": "glm4",
    "1431a23e583c97432bc230bff598d103ddb5a1f89960c8f1d1051aaa944d0b35": "minerva-7b",
    "7e57df22b1fe23a7b1e1c7f3dc4e3f96d43a4eb0836d0c6bdc3436d7b2f1c664": "hunyuan",
    "bba3b3366b646dbdded5dbc42d59598b849371afc42f7beafa914afaa5b70aa6": "hunyuan-dense",
    "e6ddf9c6686791c12d698d34c31ab9be1fea9af5a3d9a6909783ab382198ae1c": "hy_v4",
    "a6b57017d60e6edb4d88ecc2845188e0eb333a70357e45dcc9b53964a73bbae6": "falcon-h1",
    "60476e1243776c4fb1b993dbd7a5f15ac22f83c80afdf425fa5ae01c8d44ef86": "falcon-h1",
    "3eda48b4c4dc7de733d1a8b3e3b4a85243dbbf704da2ee9d42c6beced8897896": "falcon-h1",
    "48f8e02c0359c0bbdd82f26909171fac1c18a457bb47573ed1fe3bbb2c1cfd4b": "falcon-h1",
    "81212dc7cdb7e0c1074ca62c5aeab0d43c9f52b8a737be7b12a777c953027890": "kimi-k2",
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
    "1444df51289cfa8063b96f0e62b1125440111bc79a52003ea14b6eac7016fd5f": "qwen35",
    "66b8d4e19ab16c3bfd89bce5d785fb7e0155e8648708a1f42077cb9fe002c273": "grok-2",
    "b3d1dd861f1d4c5c0d2569ce36baf3f90fe8a102db3de50dd71ff860d91be3df": "jina-v2-de",
    "0fe1cf6eda062318a1af7270f3331a85c539a01778ff948e24388e949c5282f4": "gpt-2",
    "9e454714343b69b99b71795c1d27a68c2a1d15dab111f4d353109f966af29da7": "lfm2",
    "846deafc5b0fa786186fa4ae6c7b49903cf2f1d1895bdb80b9120d60be135252": "gemma4",
    "0a766d034107bc736a3f2dc4968fd62e54a3570f1454443e0c5a4cc6bd7941ed": "spark2_5",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",
    "8aeee3860c56296a157a1fe2fad249ec40aa59b1bb5709f4ade11c4e6fe652ed": "falcon",
    "0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f": "jina-v2-en",
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",
    "8e62295832751ca1e8f92f2226f403dea30dc5165e448b5bfa05af5340c64ec7": "bert-bge-large",
    "b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166": "olmo",
    "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34": "starcoder",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "32d85c31273f8019248f2559fed492d929ea28b17e51d81d3bb36fff23ca72b3": "stablelm2",
    "6221ad2852e85ce96f791f476e0b390cf9b474c9e3d1362f53a24a06dc8220ff": "refact",
    "9c2227e4dd922002fb81bde4fc02b0483ca4f12911410dee2255e4987644e3f8": "command-r",
    "d772b220ace2baec124bed8cfafce0ead7d6c38a4b65ef11261cf9d5d62246d1": "tiny_aya",
    "52df12b4c8d4176e7481aab4b6e8454d1fd0a210a04a574f6d4e067d10e23c3e": "cohere2moe",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "a8594e3edff7c29c003940395316294b2c623e09894deebbc65f33f1515df79e": "dbrx",
    "c7699093ba4255a91e702aa38a596aa81669f3525dae06c2953267dde580f448": "jina-v1-en",
    "171aeeedd6fb548d418a7461d053f11b6f1f1fc9b387bd66640d28a4b9f5c643": "jina-v2-es",
    "27949a2493fc4a9f53f5b9b029c82689cfbe5d3a1929bb25e043089e28466de6": "jina-v2-de",
    "a023e9fdc5a11f034d3ef515b92350e56fb2af1f66c6b6811a4444ea9bf8763d": "jina-v5-nano",
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",
    "c7ea5862a53e4272c035c8238367063e2b270d51faa48c0f09e9d5b54746c360": "poro-chat",
    "7967bfa498ade6b757b064f31e964dddbb80f8f9a4d68d4ba7998fcf281c531a": "jina-v2-code",
    "7fc505bd3104ca1083b150b17d088b59534ede9bde81f0dd2090967d7fe52cee": "viking",
    "b53802fb28e26d645c3a310b34bfe07da813026ec7c7716883404d5e0f8b1901": "jais",
    "bc5108ee1eb6a3d600cadd065f63190fbd0554dbc9e4bbd6a0d977970afc8d2a": "jais-2",
    "7b3e7548e4308f52a76e8229e4e6cc831195d0d1df43aed21ac6c93da05fec5f": "codeshell",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "3c30d3ad1d6b64202cd222813e7736c2db6e1bd6d67197090fc1211fbc612ae7": "bloom",
    "bc01ce58980e1db43859146dc51b1758b3b88729b217a74792e9f8d43e479d21": "gpt3-finnish",
    "4e2b24cc4770243d65a2c9ec19770a72f08cffc161adbb73fcbb6b7dd45a0aae": "exaone",
    "fcace8b9cac38ce847670c970cd5892031a753a1ef381abd1d9af00f713da085": "phi-2",
    "60824e3c0d9401f89943cbb2fff727f0e2d4c545ba4df2d6e4f09a6db0f5b450": "chameleon",
    "8b5a93ed704057481f240da0be7e7dca721d7f8f4755263b6807227a2cbeae65": "roberta-bpe",
    "ad851be1dba641f2e3711822f816db2c265f788b37c63b4e1aeacb9ee92de8eb": "gigachat",
    "d4c8f286ea6b520b3d495c4455483cfa2302c0cfcd4be05d781b6a8a0a7cdaf1": "megrez",
    "877081d19cf6996e2c4ff0e1236341e9b7bde288f5311a56a937f0afbbb3aeb5": "deepseek-v3",
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
    "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e": "gpt-4o",
    "7dec86086fcc38b66b7bc1575a160ae21cf705be7718b9d5598190d7c12db76f": "superbpe",
    "1994ffd01900cfb37395608534236ecd63f2bd5995d6cb1004dda1af50240f15": "trillion",
    "96a5f08be6259352137b512d4157e333e21df7edd3fcd152990608735a65b224": "bailingmoe",
    "d353350c764d8c3b39c763113960e4fb4919bea5fbf208a0e3b22e8469dc7406": "llama4",
    "0e9433cbbb161f89e264eb32e8e64bfe69e834973ffca5d41d3948a604a3e2a3": "pixtral",
    "d5f1dd6f980fec569fb218a81a7658ac45fc56b38c5a0adeb1c232fbe04ef5ec": "seed-coder",
    "b0a6b1c0bd5998ebd9df08611efde34a4ff03faed45ae09c43e6b31ebd4b94cf": "a.x-4.0",
    "f6791d196f87ce6b56a7d234be618e0d58f8cda3549416635b2bebcd22cd95c4": "midm-2.0",
    "169bf0296a13c4d9b7672313f749eb36501d931022de052aad6e36f2bf34dd51": "lfm2",
    "2085e1638f6c377a0aa4ead21b27bb4cb941bf800df86ed391011769c1758dfb": "exaone4",
    "a1e163ecab2e718a4c829d1148b6e86824ec36163bb71941c3dca9cd5ac25756": "mellum",
    "a0b64b4385f123663873756336c085744376d015ff328bb1d901598f63c44152": "modern-bert",
    "49fc0303c9e0d2c2c565c510f64b2d9b271276acdcdadff733249eda9f7d59df": "afmoe",
    "9b1be57e70d20d9501b2b3186e792d81181ae36ada3903c26f9fea418cf87206": "bailingmoe2",
    "53e325976a6e142379c19b09afcae354f2f496f147afa8f9e189a33fe4e3024e": "granite-docling",
    "f4f37b6c8eb9ea29b3eac6bb8c8487c5ab7885f8d8022e67edc1c68ce8403e95": "minimax-m2",
    "4a2e2abae11ca2b86d570fc5b44be4d5eb5e72cc8f22dd136a94b37da83ab665": "kormo",
    "9d70134b369a70e5735009b6de918f7581b5211f7c074d1f89f753aea8248af1": "youtu",
    "16389f0a1f51ee53e562ffd51c371dc508639ab0e4261502071836e50e223e91": "solar-open",
    "6c81ce329e0802883b22eabab0d3fa48357337ef1ecb45443828bf1f6254833f": "exaone-moe",
    "d30d75d9059f1aa2c19359de71047b3ae408c70875e8a3ccf8c5fba56c9d8af4": "qwen35",
    "b4b8ca1f9769494fbd956ebc4c249de6131fb277a4a3345a7a92c7dd7a55808d": "joyai-llm",
    "e4d54df1ebc1f2b91acd986c5b51aa50837d5faf7c7398e73c1f9e9ee5d19869": "kanana2",
    "862f827721df956049dff5ca81a57f29e575280bc622e290d3bf4e35eca29015": "f2llmv2",
    "62f6fb0a6fd5098caeabb19b07a5c1099cafc8b9c40eab6ea89ece4ec02fbc57": "sarvam-moe",
    "f728162c1315c26e40249849799b4ba3fe584c32084b4795b03eb295e63cb5af": "talkie",
    "36f3066e97b7f3994b379aaacde306c1444c6ae84e81a5ae3cd2b7ed3b8c42d4": "minicpm5",
    "f241072145675bf8322086f115aebad05e9f869557a238bf2150a2a417d1bf60": "granite-embed-multi-97m",
    "789696f5946cc0fc59371f39f6097cafed196b3acded6140432f26bbb1ae1669": "granite-embed-multi-311m",
    "9dcf830ee9990cdbf78cc523a5f7bd9ad8f3f9890c2d3581d2785ad10f07049d": "mellum2",
    "972da7b59cec44d1f0a490a86c96df53859e486e481563e5dddac155013d87ac": "laguna",
    "653660222fb704f61cbf2b618a8ae6502b7f8b20c980f9a5de07ed78e13319cd": "ufakzeka",
}

#: pre-tokenizer names llama.cpp 0.3.36 accepts for a BPE vocabulary (llama-vocab.cpp), and the names the
#: hash table gives (a WordPiece vocabulary's pre is not checked)
PRE_NAMES = frozenset({
    "a.x-4.0", "afmoe", "bailingmoe", "bailingmoe2", "bloom", "chameleon", "chatglm-bpe", "codeshell",
    "cohere2moe", "command-r", "dbrx", "deepseek-coder", "deepseek-llm", "deepseek-r1-qwen", "deepseek-v3",
    "default", "exaone", "exaone-moe", "exaone4", "f2llmv2", "falcon", "falcon-h1", "falcon3", "gemma4",
    "gigachat", "glm4", "glm5", "gpt-2", "gpt-4o", "gpt3-finnish", "granite-docling",
    "granite-embed-multi-311m", "granite-embed-multi-97m", "grok-2", "hunyuan", "hunyuan-dense", "hy_v4",
    "jais", "jais-2", "jina-de", "jina-es", "jina-v1-en", "jina-v2-code", "jina-v2-de", "jina-v2-es",
    "jina-v5-nano", "joyai-llm", "kanana2", "kimi-k2", "kormo", "laguna", "lfm2", "llada-moe", "llama-bpe",
    "llama-v3", "llama3", "llama4", "megrez", "mellum", "mellum2", "midm-2.0", "minerva-7b", "minicpm5",
    "minimax-m2", "modern-bert", "mpt", "olmo", "phi-2", "pixtral", "poro-chat", "qwen2", "qwen35", "refact",
    "roberta-bpe", "sarvam-moe", "seed-coder", "smaug-bpe", "smollm", "solar-open", "spark2_5", "stablelm2",
    "starcoder", "superbpe", "talkie", "tekken", "tiny_aya", "trillion", "ufakzeka", "viking", "whitespace",
    "youtu",
}) | frozenset(PRE_BY_HASH.values())
