"""tokenizer.json read in bulk (formats.tokjson, kernels.jsontext): the same texts, ids and merges json.loads
gives, a fall back to json wherever the kernels cannot be sure, and the same tokenizer metadata either way."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from conftest import ROOT
from test_vocab import llama3_folder, meta_of, qwen2_folder

from qtool.formats import gguf_out, tokjson, vocab
from qtool.formats.gguf_in import StringRecords

TOKS = ROOT / "fixtures" / "tokenizers"


def _doc(vocab_json: str = '{"a": 0, "b": 1, "a b": 2}', merges_json: str | None = '["a b"]', **more) -> str:
    """A small tokenizer.json, its model's vocab and merges given as JSON text."""
    head = json.dumps({"version": "1.0", "added_tokens": [], **more})[:-1]
    model = '{"type": "BPE", "vocab": ' + vocab_json + (', "merges": ' + merges_json if merges_json else "") + "}"
    return head + ', "model": ' + model + "}"


def _agrees(raw: bytes) -> tokjson.BulkTokenizerJson:
    """Read in bulk, and checked against json.loads: texts and ids, merges, and the rest of the document."""
    bulk = tokjson.read(raw)
    assert bulk is not None
    whole = json.loads(raw.decode("utf-8"))
    model = whole["model"]
    assert bulk.vocab.strings() == list(model["vocab"])
    assert bulk.ids.tolist() == list(model["vocab"].values())
    merges = model.get("merges")
    if merges is None:
        assert bulk.merges is None
    else:
        got = [bulk.merges.text(k) for k in range(len(bulk.merges))]
        assert got == [m if isinstance(m, str) else " ".join(m) for m in merges]
        assert bulk.merge_form == (None if not merges else "str" if isinstance(merges[0], str) else "pair")
        rest_model = {**model, "vocab": {}, "merges": []}
    if merges is None:
        rest_model = {**model, "vocab": {}}
    assert bulk.rest == {**whole, "model": rest_model}
    return bulk


@pytest.mark.parametrize("name", ["gpt2", "smollm2", "all-minilm-l6-v2"])
def test_published_tokenizers_read_as_json_reads_them(name):
    _agrees((TOKS / name / "tokenizer.json").read_bytes())


@pytest.mark.parametrize("dump", [dict(indent=2, ensure_ascii=False), dict(ensure_ascii=True),
                                  dict(indent="\t", separators=(" ,", " : "), ensure_ascii=True)])
def test_any_layout_and_escaping_reads_the_same(dump):
    """The same tokenizer pretty-printed, with every non-ASCII character escaped (surrogate pairs for the
    astral ones), with odd spacing."""
    doc = json.loads((TOKS / "smollm2" / "tokenizer.json").read_text(encoding="utf-8"))
    doc["model"]["vocab"]["\U0001F600x"] = len(doc["model"]["vocab"])  # one astral character
    _agrees(json.dumps(doc, **dump).encode("utf-8"))


def test_qwen2_and_llama3_read_as_json_reads_them(tmp_path):
    _agrees((qwen2_folder(tmp_path) / "tokenizer.json").read_bytes())  # merges as pairs
    _agrees((llama3_folder(tmp_path / "l3", bos_template=False) / "tokenizer.json").read_bytes())


@pytest.mark.parametrize("vocab_json", [
    r'{"\"q\"": 0, "back\\slash": 1, "\/": 2, "\b\f\n\r\t": 3, "\u00e9t\u00C9": 4, "\u0000": 5, "\ud83d\ude00": 6,'
    r' "é€😀": 7, "": 8, " sp ace ": 9, "\u0120x": 10}',
    '{\n  "a" :\t0 ,\r\n  "b"\n:\n17\n}',  # every JSON space, anywhere
    '{}',
    '{"x": 123456789012345678}',  # 18 digits
])
def test_hard_texts_decode_as_json_decodes_them(vocab_json):
    bulk = _agrees(_doc(vocab_json).encode("utf-8"))
    for k in range(len(bulk.vocab)):  # each hash is the hash of its text's bytes, and finds it
        text = bulk.vocab.text(k)
        assert bulk.vocab.hashes[k] == tokjson.hash_texts([text.encode("utf-8")])[0]
        assert bulk.find(text) == k
    assert bulk.find("not there") == -1


@pytest.mark.parametrize("merges_json", [
    '["a b", "ab c", "x  y", "\\u0120 \\u0120", "t\\"q z"]',  # strings: the first space separates
    '[["a", "b"], ["ab", "c"], [ "\\u0120" ,\n"\\u00e9" ]]',
    '[]',
    None,  # a model without merges
])
def test_merges_decode_as_json_decodes_them(merges_json):
    bulk = _agrees(_doc(merges_json=merges_json).encode("utf-8"))
    if bulk.merges is not None and len(bulk.merges):
        joined = {m.replace(" ", "", 1) for m in (bulk.merges.text(k) for k in range(len(bulk.merges)))}
        wanted = {"ab", "abc", "x y"} & joined
        found = bulk.merges_among(wanted)
        assert {(m if isinstance(m, str) else " ".join(m)).replace(" ", "", 1) for m in found} == wanted


@pytest.mark.parametrize("vocab_json, merges_json, why", [
    (r'{"\ud800": 0}', '["a b"]', "a surrogate without its pair"),
    (r'{"\udc00\ud800": 0}', '["a b"]', "a low surrogate first"),
    ('{"a": -1}', '["a b"]', "a negative id"),
    ('{"a": 1.0}', '["a b"]', "a float id"),
    ('{"a": 1e2}', '["a b"]', "an exponent"),
    ('{"a": 1234567890123456789}', '["a b"]', "19 digits"),
    ('{"a": 0, "a": 1}', '["a b"]', "a text twice (json keeps the last)"),
    ('[["a", 0.0]]', '["a b"]', "a Unigram vocabulary (a list)"),
    ('{"a": 0}', '["a b", ["a", "b"]]', "mixed merge forms"),
    ('{"a": 0}', '[["a c", "b"]]', "a pair part holding a space"),
    ('{"a": 0}', '["ab"]', "a merge string without a space"),
    ('{"a": 0}', '[["a", "b", "c"]]', "a pair of three"),
])
def test_what_the_kernels_cannot_be_sure_of_goes_to_json(vocab_json, merges_json, why):
    raw = _doc(vocab_json, merges_json).encode("utf-8")
    json.loads(raw.decode("utf-8"))  # valid JSON: only json's own reading tells what it means
    assert tokjson.read(raw) is None, why


@pytest.mark.parametrize("raw, why", [
    (_doc('{"a": 01}').encode(), "a leading zero"),
    (_doc('{"a": 0,}').encode(), "a trailing comma"),
    (_doc('{"a\tb": 0}').encode(), "a raw control character in a string"),
    (_doc(r'{"\x": 0}').encode(), "an unknown escape"),
    (_doc(r'{"\u12": 0}').encode(), "a short \\u escape"),
    (_doc('{"a": 0}').encode()[:-3], "the end of the file"),
    (_doc('{"a": 0}').encode() + b" x", "text after the document"),
    (_doc('{"\xe9": 0}').encode("latin-1"), "bytes that are not UTF-8"),
    (_doc('{"a": 0}').encode().replace(b'"a"', b'"\xed\xa0\x80"'), "an encoded surrogate"),
    (_doc('{"a": 0}').encode().replace(b'"a"', b'"\xc0\xaf"'), "an overlong form"),
    (_doc('{"a": 0}').encode().replace(b'"a"', b'"\xf4\x90\x80\x80"'), "above U+10FFFF"),
    (_doc('{"a": 0}', '["a b"')[:-1].encode() + b"]", "an unclosed merges array"),
])
def test_malformed_text_goes_to_json_which_refuses_it(raw, why):
    with pytest.raises(ValueError):
        json.loads(raw.decode("utf-8"))
    assert tokjson.read(raw) is None, why


@pytest.mark.parametrize("raw, why", [
    (b'{"model": {"vocab": {"a": 0}}, "model": {"vocab": {"b": 0}}}', "model twice (json keeps the last)"),
    (b'{"mod\\u0065l": {"vocab": {"b": 0}}, "model": {"vocab": {"a": 0}}}', "an escaped key may spell model"),
    (b'{"model": {"voc\\u0061b": {"b": 0}, "vocab": {"a": 0}}}', "an escaped key may spell vocab"),
    (b'{"model": {"vocab": {"a": 0}, "vocab": {"b": 1}}}', "vocab twice"),
    (b'{"model": []}', "model is not an object"),
    (b'{"model": {"type": "BPE"}}', "no vocab"),
    (b'[]', "not an object"),
    (b'', "nothing"),
])
def test_structures_json_must_read(raw, why):
    assert tokjson.read(raw) is None, why


def _both(monkeypatch, folder, config=None, **kw):
    """The tokenizer metadata read in bulk, and read with json alone."""
    bulk = meta_of(folder, config, **kw)
    with monkeypatch.context() as m:
        m.setattr(tokjson, "read", lambda raw: None)
        plain = meta_of(folder, config, **kw)
    return bulk, plain


def _same_bytes(a, b):
    assert list(a.kv) == list(b.kv)
    for key in a.kv:
        assert a.types[key] == b.types[key] and a.sub_types.get(key) == b.sub_types.get(key), key
        if a.sub_types.get(key) == vocab.V.STRING:
            assert gguf_out._pack_strings(a.kv[key]) == gguf_out._pack_strings(list(b.kv[key])), key
        else:
            assert a.kv[key] == b.kv[key], key
    assert (a.problems, a.notes, a.loadable) == (b.problems, b.notes, b.loadable)


@pytest.mark.parametrize("name, config, kind", [
    ("smollm2", {"vocab_size": 49152}, "auto"),
    ("gpt2", {"vocab_size": 50257}, "gpt2"),
    ("all-minilm-l6-v2", {"vocab_size": 30522, "type_vocab_size": 2}, "bert"),
])
def test_metadata_is_the_same_read_either_way(monkeypatch, name, config, kind):
    bulk, plain = _both(monkeypatch, TOKS / name, config, kind=kind)
    assert bulk.kv["tokenizer.ggml.tokens"] and len(bulk.kv["tokenizer.ggml.tokens"]) == config["vocab_size"]
    _same_bytes(bulk, plain)


def test_qwen2_metadata_is_the_same_read_either_way(monkeypatch, tmp_path):
    bulk, plain = _both(monkeypatch, qwen2_folder(tmp_path), {"vocab_size": 151936}, arch="qwen2")
    assert isinstance(bulk.kv["tokenizer.ggml.tokens"], StringRecords)
    assert isinstance(bulk.kv["tokenizer.ggml.merges"], StringRecords)
    assert bulk.kv["tokenizer.ggml.tokens"][151935] == "[PAD151935]"  # config.json's padding
    _same_bytes(bulk, plain)


def test_added_tokens_holes_and_padding_the_same_read_either_way(monkeypatch, tmp_path):
    """Added tokens in and beyond the vocabulary (one not normalized, one special, one re-using a text), ids
    with a hole, config.json padding: the tokens, types and merges are the same as json's reading gives."""
    folder = tmp_path / "tok"
    folder.mkdir()
    tok = json.loads((TOKS / "smollm2" / "tokenizer.json").read_text(encoding="utf-8"))
    v = tok["model"]["vocab"]
    n = len(v)
    v[max(v, key=v.get)] = n + 3  # a hole: id n - 1 becomes [PAD...]
    tok["added_tokens"] += [
        {"id": n, "content": "<|extra|>", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True},
        {"id": n + 1, "content": "hello world", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": False},
        {"id": n + 2, "content": "▁plain", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": True, "special": False}]
    (folder / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False, indent=1), encoding="utf-8")
    (folder / "tokenizer_config.json").write_bytes((TOKS / "smollm2" / "tokenizer_config.json").read_bytes())
    bulk, plain = _both(monkeypatch, folder, {"vocab_size": n + 8})
    tokens = bulk.kv["tokenizer.ggml.tokens"]
    assert tokens[n - 1] == f"[PAD{n - 1}]" and tokens[n] == "<|extra|>" and tokens[n + 7] == f"[PAD{n + 7}]"
    _same_bytes(bulk, plain)


def test_an_id_beyond_the_vocabulary_size_is_the_same_error(monkeypatch, tmp_path):
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes((TOKS / "smollm2" / "tokenizer.json").read_bytes())
    errors = []
    for read in (tokjson.read, lambda raw: None):
        with monkeypatch.context() as m:
            m.setattr(tokjson, "read", read)
            with pytest.raises(vocab.FormatError) as e:
                meta_of(folder, {"vocab_size": 1000})
            errors.append(str(e.value))
    assert errors[0] == errors[1] and "outside config.json's vocab_size 1000" in errors[0]


def test_a_malformed_tokenizer_json_is_json_s_error(tmp_path):
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes(_doc('{"a": 0, }').encode())
    with pytest.raises(vocab.FormatError, match=r"tokenizer.json: tokenizer is not valid JSON"):
        meta_of(folder, {"vocab_size": 10}, kind="gpt2")


def test_string_records_read_back_what_they_hold():
    texts = ["", "a", "é€😀", "x\0y", "Ġthe"] * 50
    packed = gguf_out._pack_strings(texts)
    records = StringRecords(packed, len(texts))
    assert len(records) == len(texts) and records[2] == "é€😀" and list(records) == texts
    assert records == texts and records == StringRecords(packed, len(texts))
    again = pickle.loads(pickle.dumps(records))
    assert again.packed == packed and again == texts
    assert gguf_out._pack_strings(records) == packed and gguf_out._strings_size(records) == len(packed)
    odd = StringRecords(gguf_out._pack_strings(["ok"]) + b"\x02" + bytes(7) + b"\xff\xfe", 2)
    assert odd.tolist() == ["ok", b"\xff\xfe"]  # not UTF-8: kept as bytes, as a GGUF reader keeps it
    with pytest.raises(ValueError, match="not 3 string records"):
        StringRecords(packed[:40], 3).tolist()


def test_records_made_from_packed_texts_are_the_writer_s():
    texts = ["a", "", "é€😀", "x" * 300]
    raws = [t.encode() for t in texts]
    data = np.frombuffer(b"".join(raws), np.uint8)
    starts = np.cumsum([0] + [len(r) for r in raws[:-1]])
    lengths = np.array([len(r) for r in raws])
    order = np.array([3, 0, 2, 1, 2])
    assert tokjson.gguf_records(data, starts[order], lengths[order]) == \
        gguf_out._pack_strings([texts[i] for i in order])


def test_count_members_is_isin():
    from qtool.kernels import jsontext

    rng = np.random.default_rng(7)
    wanted = np.concatenate([rng.integers(0, 2**63, 300, dtype=np.uint64), np.array([0, 2**64 - 1], np.uint64)])
    # the same low bits (one table slot: probes run on), zero, the top value, and values absent
    values = np.concatenate([wanted, wanted + np.uint64(1 << 40), rng.integers(0, 2**63, 3000, dtype=np.uint64),
                             np.array([0, 2**64 - 1, 1], np.uint64)])
    rng.shuffle(values)
    for w in (wanted, wanted[wanted != 0], wanted[:1], (wanted & np.uint64(0xFFF)) | np.uint64(1 << 50)):
        table = np.empty(1 << (2 * w.size).bit_length(), np.uint64)
        out = np.empty(values.size, dtype=bool)
        assert jsontext.count_members(values, w, table, out) == np.isin(values, w).sum()
        assert (out == np.isin(values, w)).all()


def test_a_file_system_that_cannot_map_files_is_read(monkeypatch, tmp_path):
    import mmap

    from qtool.formats import source

    def refuse(*a, **k):
        raise OSError(19, "No such device")

    path = tmp_path / "tokenizer.json"
    path.write_bytes((TOKS / "gpt2" / "tokenizer.json").read_bytes())
    mapped = source.map_bytes(path)
    monkeypatch.setattr(mmap, "mmap", refuse)
    read = source.map_bytes(path)
    assert isinstance(read, bytes) and read == mapped[:]
    assert tokjson.read(read).vocab.strings() == tokjson.read(mapped).vocab.strings()
    with pytest.raises(vocab.FormatError, match="cannot read tokenizer"):
        source.map_bytes(tmp_path / "missing.json", "tokenizer")
