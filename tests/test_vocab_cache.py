"""formats.vocab_cache: the ``qtool`` command keeps what reading a folder's tokenizer added to the metadata and
takes it back for the same folder: the same keys, values, types, notes and warnings as reading it again; any
edited file, other config.json, architecture, kind or pre-tokenizer is read again; a damaged entry is read
again; library callers and QTOOL_VOCAB_CACHE=0 never use it."""

from __future__ import annotations

import json
import logging
import os
import types

import gguf
import pytest

from conftest import ROOT, run_qtool
from qtool.archs import metadata
from qtool.archs.metadata import HFMeta
from qtool.formats import gguf_in, gguf_out, vocab, vocab_cache

TOKS = ROOT / "fixtures" / "tokenizers"
V = gguf.GGUFValueType


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """The cache on, in a folder of the test's; yields the list of folders actually read."""
    monkeypatch.setenv("QTOOL_VOCAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("QTOOL_VOCAB_CACHE", raising=False)
    monkeypatch.setitem(vocab_cache._state, "enabled", False)
    vocab_cache.enable()
    reads = []
    real = vocab.add_tokenizer

    def counted(meta, folder, *args, **kwargs):
        reads.append(folder)
        return real(meta, folder, *args, **kwargs)

    monkeypatch.setattr(vocab, "add_tokenizer", counted)
    return reads


def _folder(tmp_path, name="smollm2"):
    folder = tmp_path / name
    folder.mkdir()
    for f in (TOKS / name).iterdir():
        if f.is_file():
            (folder / f.name).write_bytes(f.read_bytes())
    return folder


def _meta(folder, config=None, *, arch="llama", kind="llama", pre=None) -> HFMeta:
    meta = HFMeta()
    meta.add("general.architecture", arch, V.STRING)
    metadata.add_tokenizer(meta, folder, types.SimpleNamespace(data=config or {"vocab_size": 49152}), kind, pre)
    return meta


def _same(a: HFMeta, b: HFMeta) -> None:
    assert list(a.kv) == list(b.kv)
    assert a.kv == b.kv and a.types == b.types and a.sub_types == b.sub_types
    assert (a.problems, a.notes, a.loadable) == (b.problems, b.notes, b.loadable)


def test_the_same_folder_is_read_once(tmp_path, cache):
    folder = _folder(tmp_path)
    first = _meta(folder)
    second = _meta(folder)
    assert cache == [folder]
    _same(first, second)
    tokens = second.kv["tokenizer.ggml.tokens"]
    assert len(tokens) == 49152 and "tokenizer.ggml.merges" in second.kv
    # string arrays come back with their GGUF bytes, which the writer copies (a tokenizer.json read in bulk
    # gave its tokens as such records in the first place)
    assert isinstance(tokens, (gguf_in.PackedStrings, gguf_in.StringRecords))
    assert isinstance(first.kv["tokenizer.ggml.tokens"], gguf_in.StringRecords)
    assert tokens.packed == gguf_out._pack_strings(list(first.kv["tokenizer.ggml.tokens"]))


def test_anything_else_is_read_again(tmp_path, cache):
    folder = _folder(tmp_path)
    _meta(folder)
    _meta(folder, {"vocab_size": 49152, "bos_token_id": 1})  # another config.json
    _meta(folder, arch="mistral")
    _meta(folder, kind="gpt2")
    _meta(folder, pre="llama-bpe")
    cfg = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    edited = _meta(folder)
    assert len(cache) == 6
    assert edited.kv["tokenizer.chat_template"] == cfg["chat_template"]
    (folder / "notes.txt").write_text("a new file")
    _meta(folder)
    assert len(cache) == 7
    # and each is kept: the same calls again read nothing
    _same(edited, _meta(folder))
    _meta(folder, {"vocab_size": 49152, "bos_token_id": 1})
    assert len(cache) == 8
    _meta(folder, {"vocab_size": 49152, "bos_token_id": 1})
    _meta(folder)
    assert len(cache) == 8


def test_warnings_are_logged_again(tmp_path, cache, caplog):
    folder = _folder(tmp_path)
    tok = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    tok["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = True  # no known pre-tokenizer
    (folder / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    messages = []
    for _ in range(2):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="qtool"):
            assert _meta(folder).kv["tokenizer.ggml.pre"] == "default"
        messages.append([(r.name, r.levelno, r.getMessage()) for r in caplog.records if r.name.startswith("qtool")])
    assert len(cache) == 1
    assert messages[0] == messages[1] and "--pre-tokenizer NAME" in messages[0][0][2]


def test_a_damaged_entry_is_read_again(tmp_path, cache):
    folder = _folder(tmp_path)
    first = _meta(folder)
    [entry] = vocab_cache.folder().glob("*.pkl")
    entry.write_bytes(entry.read_bytes()[:-100])
    _same(first, _meta(folder))
    assert len(cache) == 2


def test_off_for_library_callers_and_by_the_variable(tmp_path, cache, monkeypatch):
    folder = _folder(tmp_path)
    monkeypatch.setitem(vocab_cache._state, "enabled", False)
    _meta(folder)
    _meta(folder)
    assert len(cache) == 2 and not vocab_cache.folder().exists()
    monkeypatch.setenv("QTOOL_VOCAB_CACHE", "0")
    vocab_cache.enable()
    _meta(folder)
    assert len(cache) == 3 and not vocab_cache.folder().exists()


def test_command_converts_the_same_from_the_cache(tmp_path):
    """The command itself (a process of its own, the session's cache folder): a folder converted twice gives
    the same file, the second time from the kept entry."""
    folder = tmp_path / "m"
    folder.mkdir()
    for f in (ROOT / "fixtures" / "tiny-llama").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    outs = []
    before = set(vocab_cache.folder().glob("*.pkl"))
    for i in range(2):
        out = tmp_path / f"m{i}.gguf"
        r = run_qtool("convert", folder, "--type", "Q8_0", "-o", out)
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
        if i == 0:
            made = set(vocab_cache.folder().glob("*.pkl")) - before
            assert len(made) == 1
            [entry] = made
            stamp = entry.stat().st_mtime_ns
    assert outs[0] == outs[1]
    assert entry.stat().st_mtime_ns >= stamp  # used (touched), not written anew


def test_a_large_file_is_keyed_by_size_and_time(tmp_path, cache, monkeypatch):
    """A file of the folder over _HASHED_BYTES (not a tokenizer: an exported model of another format) is not
    read whole for the key: its size and modification time stand for it."""
    folder = _folder(tmp_path)
    big = folder / "model.extra"
    big.write_bytes(b"a" * 1000)
    monkeypatch.setattr(vocab_cache, "_HASHED_BYTES", 500)
    _meta(folder)
    stamp = big.stat()
    big.write_bytes(b"b" * 1000)  # other bytes, same size and time: the same key
    os.utime(big, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    _meta(folder)
    assert len(cache) == 1
    os.utime(big, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1))
    _meta(folder)
    assert len(cache) == 2


def test_keys_without_python_311(tmp_path, cache, monkeypatch):
    """qtool runs on Python 3.10 (pyproject), which has no hashlib.file_digest: a folder is kept and taken back
    without it."""
    import hashlib

    monkeypatch.delattr(hashlib, "file_digest", raising=False)
    folder = _folder(tmp_path)
    first = _meta(folder)
    again = _meta(folder)
    assert cache == [folder]
    _same(first, again)
