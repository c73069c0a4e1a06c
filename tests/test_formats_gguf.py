"""GGUF in: metadata and tensors as gguf-py wrote them, numpy-order shapes, the bulk string decoder equal
to gguf-py's reading and to a record-by-record walk, dequantizing above the reader (registry first, then
gguf-py), and every truncated or garbage file refused with a FormatError that names it."""

from __future__ import annotations

import struct
import subprocess
import sys

import gguf
import numpy as np
import pytest
from conftest import refuses
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

import qtool.quantizers
from qtool.analysis.weights import load_floats
from qtool.errors import FormatError, QuantError
from qtool.formats import gguf_in
from qtool.formats.gguf_in import GGUFSource
from qtool.formats.source import open_model

RNG = np.random.default_rng(11)


def q4_k_blocks(n_blocks: int) -> np.ndarray:
    """Random Q4_K blocks with finite, moderate fp16 scales (d, dmin)."""
    b = RNG.integers(0, 256, size=(n_blocks, 144), dtype=np.uint8)
    b[:, 0:2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    b[:, 2:4] = np.frombuffer(np.float16(0.002).tobytes(), np.uint8)
    return b


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A GGUF file written by gguf-py, with its float32 sources."""
    path = tmp_path_factory.mktemp("gguf") / "m.gguf"
    a = RNG.standard_normal((4, 64)).astype(np.float32)
    cube = RNG.standard_normal((2, 3, 32)).astype(np.float32)
    w = gguf.GGUFWriter(path, "llama")
    w.add_uint32("llama.block_count", 1)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_bool("x.flag", True)
    w.add_int64("x.big", -(1 << 40))
    w.add_string("general.name", "tiny")
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "\u0120c"])
    w.add_key_value("x.ints", [1, -2, 3], V.ARRAY, sub_type=V.INT32)
    w.add_key_value("x.floats", [0.5, 1.5], V.ARRAY, sub_type=V.FLOAT32)
    w.add_tensor("f32", a)
    w.add_tensor("cube", cube)
    w.add_tensor("f16", a.astype(np.float16))
    w.add_tensor("bf16", gguf.quants.quantize(a, T.BF16), raw_dtype=T.BF16)
    w.add_tensor("q8_0", gguf.quants.quantize(a, T.Q8_0), raw_dtype=T.Q8_0)
    w.add_tensor("q4_k", q4_k_blocks(4), raw_dtype=T.Q4_K)
    w.add_tensor("i32", np.arange(-6, 6, dtype=np.int32).reshape(3, 4))
    w.add_tensor("vec", a[0])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, a, cube


def test_metadata_values_and_types(model):
    path, _, _ = model
    with open_model(path) as src:
        assert isinstance(src, GGUFSource) and src.format == "gguf" and src.architecture == "llama"
        m, t = src.metadata, src.metadata_types
        assert m["general.architecture"] == "llama" and t["general.architecture"] == V.STRING
        assert m["llama.block_count"] == 1 and t["llama.block_count"] == V.UINT32
        assert m["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
        assert t["llama.attention.layer_norm_rms_epsilon"] == V.FLOAT32
        assert m["x.flag"] is True and t["x.flag"] == V.BOOL
        assert m["x.big"] == -(1 << 40) and t["x.big"] == V.INT64
        assert m["tokenizer.ggml.tokens"] == ["a", "b", "\u0120c"]
        assert t["tokenizer.ggml.tokens"] == V.ARRAY and src.metadata_sub_types["tokenizer.ggml.tokens"] == V.STRING
        assert m["x.ints"].tolist() == [1, -2, 3] and src.metadata_sub_types["x.ints"] == V.INT32
        assert m["x.floats"].dtype == np.float32 and m["x.floats"].tolist() == [0.5, 1.5]
        assert not any(k.startswith("GGUF.") for k in m)
        assert src.unmapped == [] and src.loadable


def test_tensor_infos_in_numpy_order(model):
    path, a, cube = model
    with open_model(path) as src:
        info = {t.name: t for t in src.tensors}
        assert [t.name for t in src.tensors] == ["f32", "cube", "f16", "bf16", "q8_0", "q4_k", "i32", "vec"]
        assert info["cube"].shape == (2, 3, 32)  # ggml ne = (32, 3, 2)
        assert info["q4_k"].shape == (4, 256) and info["q4_k"].qtype == T.Q4_K and info["q4_k"].nbytes == 4 * 144
        assert info["q8_0"].shape == (4, 64) and info["q8_0"].nbytes == 4 * 2 * 34
        assert info["vec"].shape == (64,)
        assert all(t.source_name == t.name for t in src.tensors)
        assert src.raw("cube").shape == (2, 3, 128)
        assert src.raw("q4_k").shape == (4, 144)
        assert src.raw("q8_0").shape == (4, 68)
        assert src.raw("vec").shape == (256,)
        assert src.raw("q4_k").tobytes() == gguf.GGUFReader(path).tensors[5].data.tobytes()


def test_load_every_type(model):
    path, a, cube = model
    with open_model(path) as src:
        np.testing.assert_array_equal(src.load("f32"), a)
        np.testing.assert_array_equal(src.load("cube"), cube)
        np.testing.assert_array_equal(src.load("f16"), a.astype(np.float16).astype(np.float32))
        bf = gguf.quants.dequantize(gguf.quants.quantize(a, T.BF16), T.BF16)
        np.testing.assert_array_equal(src.load("bf16"), bf)
        np.testing.assert_allclose(load_floats(src, "q8_0"), gguf.quants.dequantize(src.raw("q8_0"), T.Q8_0),
                                   rtol=1e-6)
        np.testing.assert_allclose(load_floats(src, "q4_k"), gguf.quants.dequantize(src.raw("q4_k"), T.Q4_K),
                                   rtol=1e-6)
        np.testing.assert_array_equal(src.load("i32"), np.arange(-6, 6, dtype=np.float32).reshape(3, 4))
        np.testing.assert_array_equal(src.load("vec"), a[0])
        for t in src.tensors:
            x = load_floats(src, t.name)
            assert x.dtype == np.float32 and x.shape == t.shape and x.flags.writeable


def test_reader_does_not_dequantize(model):
    """The reader gives a quantized tensor's bytes and type; dequantizing is the registry's business."""
    path, _, _ = model
    with open_model(path) as src:
        with pytest.raises(FormatError, match=r"'q4_k' is Q4_K, a quantized type"):
            src.load("q4_k")
    code = ("import sys; from qtool.formats.source import open_model\n"
            f"s = open_model({str(path)!r}); s.load('f32'); s.raw('q4_k')\n"
            "assert 'qtool.quantizers' not in sys.modules, 'the reader imported the registry'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registered_quantizer_is_used_first(model, monkeypatch):
    path, _, _ = model
    calls = []

    class Stub:
        def dequantize(self, data, *, name="tensor", threads=None):
            calls.append((name, data.shape))
            return np.full((data.shape[0], 64), 7.0, np.float32)

    monkeypatch.setattr(qtool.quantizers, "get", lambda qtype: Stub())
    with open_model(path) as src:
        np.testing.assert_array_equal(load_floats(src, "q8_0"), np.full((4, 64), 7.0, np.float32))
        np.testing.assert_array_equal(load_floats(src, "f32"), src.raw("f32").view(np.float32))  # plain: no call
    assert calls == [("q8_0", (4, 68))]


def test_gguf_py_when_no_quantizer(model, monkeypatch):
    path, _, _ = model

    def unregistered(qtype):
        raise QuantError(f"qtool has no quantizer for {qtype.name} yet")

    monkeypatch.setattr(qtool.quantizers, "get", unregistered)
    with open_model(path) as src:
        np.testing.assert_array_equal(load_floats(src, "q4_k"), gguf.quants.dequantize(src.raw("q4_k"), T.Q4_K))


def test_type_nobody_can_dequantize(tmp_path, monkeypatch):
    monkeypatch.setattr(qtool.quantizers, "get", lambda q: (_ for _ in ()).throw(QuantError("no")))
    p = tmp_path / "q81.gguf"
    w = gguf.GGUFWriter(p, "llama")
    w.add_tensor("t", np.zeros((2, 40), np.uint8), raw_dtype=T.Q8_1)  # 2 rows of one 32-element block
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open_model(p) as src:
        assert src.tensors[0].shape == (2, 32)
        with pytest.raises(FormatError, match=r"'t' is Q8_1, which neither qtool nor gguf-py"):
            load_floats(src, "t")


def test_folder_with_one_gguf(model, tmp_path):
    path, _, _ = model
    (tmp_path / "only.gguf").write_bytes(path.read_bytes())
    with open_model(tmp_path) as src:
        assert src.path == tmp_path / "only.gguf"
    (tmp_path / "second.gguf").write_bytes(path.read_bytes())
    refuses(tmp_path, "2 .gguf files")


# -- hand-built files, to put any byte anywhere -------------------------------------------------------


def s(text: str | bytes) -> bytes:
    b = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(b)) + b


def kv(key, vtype: int, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", vtype) + payload


def kv_u32(key, v):
    return kv(key, V.UINT32, struct.pack("<I", v))


def tinfo(name, ne, qtype: int, offset: int) -> bytes:
    return s(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne) + struct.pack("<IQ", qtype, offset)


def build(path, kvs=(), tensors=(), data=b"", *, version=3, magic=b"GGUF", alignment=32, n_kv=None,
          n_tensors=None):
    head = magic + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                               len(kvs) if n_kv is None else n_kv)
    head += b"".join(kvs) + b"".join(tensors)
    head += b"\0" * (-len(head) % alignment)
    path.write_bytes(head + data)
    return path


def f32_tensor(name="w", ne=(8, 2), offset=0):
    return tinfo(name, ne, T.F32, offset)


def test_hand_built_file_reads(tmp_path):
    data = np.arange(16, dtype=np.float32).tobytes()
    p = build(tmp_path / "ok.gguf", [kv("general.architecture", V.STRING, s("llama"))], [f32_tensor()], data)
    with open_model(p) as src:
        np.testing.assert_array_equal(src.load("w"), np.arange(16, dtype=np.float32).reshape(2, 8))


def test_invalid_utf8_string_kept_as_bytes(tmp_path):
    p = build(tmp_path / "b.gguf", [kv("tokenizer.ggml.tokens", V.ARRAY,
                                       struct.pack("<IQ", V.STRING, 2) + s(b"ok") + s(b"\xff\xfe"))])
    with open_model(p) as src:
        assert src.metadata["tokenizer.ggml.tokens"] == ["ok", b"\xff\xfe"]


def test_empty_array(tmp_path):
    p = build(tmp_path / "e.gguf", [kv("x", V.ARRAY, struct.pack("<IQ", V.INT16, 0))])
    with open_model(p) as src:
        assert src.metadata["x"].dtype == np.int16 and src.metadata["x"].size == 0
        assert src.metadata_types["x"] == V.ARRAY and src.metadata_sub_types["x"] == V.INT16


def test_empty_and_short(tmp_path):
    p = tmp_path / "e.gguf"
    p.write_bytes(b"")
    refuses(p, "too short")
    p.write_bytes(b"GGUF\x03\0\0\0")
    refuses(p, "too short")


def test_not_gguf(tmp_path):
    refuses(build(tmp_path / "x.gguf", magic=b"GGML"), "not a GGUF file")


@pytest.mark.parametrize("version", [1, 4, 0x7FFF])
def test_unsupported_version(tmp_path, version):
    refuses(build(tmp_path / "v.gguf", version=version), f"version {version}")


def test_big_endian(tmp_path):
    p = tmp_path / "be.gguf"
    p.write_bytes(b"GGUF" + struct.pack(">IQQ", 3, 0, 0) + b"\0" * 8)
    refuses(p, "big-endian")


def test_absurd_counts(tmp_path):
    refuses(build(tmp_path / "a.gguf", n_kv=1 << 60), "claims")
    refuses(build(tmp_path / "b.gguf", n_tensors=1 << 40), "claims")
    refuses(build(tmp_path / "c.gguf", [kv_u32("a", 1)], n_kv=2, alignment=1), "truncated")
    refuses(build(tmp_path / "d.gguf", [kv_u32("a", 1)], n_kv=2), "key 1 is empty")  # the padding


def test_hostile_lengths_do_not_hang(tmp_path):
    huge_array = kv("x", V.ARRAY, struct.pack("<IQ", V.UINT8, 1 << 62))
    refuses(build(tmp_path / "a.gguf", [huge_array]), "'x'", f"claims {1 << 62} elements")
    huge_strings = kv("y", V.ARRAY, struct.pack("<IQ", V.STRING, 1 << 20))
    refuses(build(tmp_path / "b.gguf", [huge_strings]), "truncated", "'y'")
    long_bytes = kv("z", V.ARRAY, struct.pack("<IQ", V.UINT32, 1000) + b"\0" * 40)
    refuses(build(tmp_path / "d.gguf", [long_bytes], alignment=1), "truncated", "'z'")
    long_string = s("k")[:0] + struct.pack("<Q", 1 << 62) + b"k"
    refuses(build(tmp_path / "c.gguf", [long_string]), "truncated")


def test_bad_value_types(tmp_path):
    refuses(build(tmp_path / "a.gguf", [kv("x", 99, b"\0" * 8)]), "'x'", "unknown value type 99")
    nested = kv("n", V.ARRAY, struct.pack("<IQ", V.ARRAY, 1) + struct.pack("<IQ", V.UINT8, 0))
    refuses(build(tmp_path / "b.gguf", [nested]), "array of arrays")
    refuses(build(tmp_path / "c.gguf", [kv_u32("a", 1), kv_u32("a", 2)]), "'a' appears twice")


def test_bad_alignment(tmp_path):
    refuses(build(tmp_path / "a.gguf", [kv_u32("general.alignment", 24)]), "not a power of two")
    refuses(build(tmp_path / "b.gguf", [kv("general.alignment", V.UINT64, struct.pack("<Q", 64))]), "not UINT32")


def test_bad_tensor_infos(tmp_path):
    d = b"\0" * 64
    refuses(build(tmp_path / "a.gguf", tensors=[tinfo("w", (8,), 200, 0)], data=d), "'w'", "unknown ggml type 200")
    refuses(build(tmp_path / "b.gguf", tensors=[tinfo("w", (), T.F32, 0)], data=d), "'w'", "0 dimensions")
    refuses(build(tmp_path / "c.gguf", tensors=[tinfo("w", (1,) * 5, T.F32, 0)], data=d), "5 dimensions")
    refuses(build(tmp_path / "d.gguf", tensors=[tinfo("w", (33, 1), T.Q8_0, 0)], data=d), "row of 33",
            "blocks of 32")
    refuses(build(tmp_path / "e.gguf", tensors=[f32_tensor(offset=4)], data=d), "offset 4", "alignment 32")
    refuses(build(tmp_path / "f.gguf", tensors=[tinfo("w", (1 << 40, 1 << 40), T.F32, 0)], data=d), "absurd shape")
    refuses(build(tmp_path / "g.gguf", tensors=[f32_tensor(), f32_tensor(offset=64)], data=d * 3),
            "'w' appears twice")
    refuses(build(tmp_path / "h.gguf", tensors=[s(b"\xff") + b"\1\0\0\0" + b"\x08" + b"\0" * 7 + b"\0" * 12],
                  data=d), "not UTF-8")


def test_tensor_data_outside_file(tmp_path):
    refuses(build(tmp_path / "a.gguf", tensors=[f32_tensor(ne=(8, 4))], data=b"\0" * 64), "'w'",
            "runs past the end")
    refuses(build(tmp_path / "b.gguf", tensors=[f32_tensor(offset=1 << 50)], data=b"\0" * 64), "past the end")


def test_overlapping_tensors(tmp_path):
    refuses(build(tmp_path / "a.gguf", tensors=[f32_tensor("a", (8, 2)), f32_tensor("b", (8, 2), offset=32)],
                  data=b"\0" * 128), "'a'", "'b'", "overlap")


def test_truncated_anywhere(model, tmp_path):
    """Every prefix of a valid file is refused with a FormatError (never another exception, never a hang)."""
    path, _, _ = model
    blob = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    data_start = min(t.data_offset for t in gguf.GGUFReader(path).tensors)
    lengths = list(range(0, data_start + 1)) + list(range(data_start + 1, len(blob), 97)) + [len(blob) - 1]
    for n in lengths:
        cut.write_bytes(blob[:n])
        with pytest.raises(FormatError) as e:
            open_model(cut)
        assert str(cut) in str(e.value), (n, str(e.value))


def test_garbage_and_mutants(model, tmp_path):
    """Random bytes after the magic, and single-byte mutations of a valid header: each either opens and
    loads, or is refused with a FormatError naming the file."""
    path, _, _ = model
    blob = bytearray(path.read_bytes())
    header_end = min(t.data_offset for t in gguf.GGUFReader(path).tensors)
    rng = np.random.default_rng(3)
    bad = tmp_path / "bad.gguf"
    opened = refused = 0
    for i in range(300):
        if i < 20:
            data = b"GGUF" + struct.pack("<I", 3) + rng.integers(0, 256, size=200, dtype=np.uint8).tobytes()
        else:
            m = bytearray(blob)
            pos = int(rng.integers(4, header_end))
            m[pos] = int(rng.integers(0, 256))
            data = bytes(m)
        bad.write_bytes(data)
        try:
            with open_model(bad) as src:
                for t in src.tensors:
                    load_floats(src, t.name)
            opened += 1
        except FormatError as e:
            assert str(bad) in str(e), str(e)
            refused += 1
    assert refused >= 20 and opened > 0  # garbage always fails; some mutations (of values) are harmless


def vocab_strings(n: int, seed: int) -> list[str]:
    """Token-like strings: byte-level BPE pieces, multi-byte UTF-8, empty strings, and strings that hold
    runs of NUL (false record starts for the bulk decoder)."""
    rng = np.random.default_rng(seed)
    alphabet = list("abcdefghijklmnopqrstuvwxyz\u0120\u010a.,'") + ["\u00e9", "\u4e2d", "\U0001f600", "\u0000"]
    out = ["".join(rng.choice(alphabet, size=int(rng.integers(1, 12)))) for _ in range(n)]
    for i in rng.choice(n, size=n // 50, replace=False):
        out[i] = ["", "\0" * 9, "x" + "\0" * 6 + "y", "\0\0\0\0\0\1"][i % 4]
    return out


def read_both(path):
    """(metadata, error) of the bulk decoder and of the record-by-record walk."""
    buf = path.read_bytes()
    results = []
    for bulk in (True, False):
        try:
            h = gguf_in.read_header(path, buf, np.frombuffer(buf, np.uint8), bulk=bulk)
            results.append(({k: (v.dtype.str, v.tolist()) if isinstance(v, np.ndarray) else v
                             for k, v in h.metadata.items()}, None))
        except FormatError as e:
            results.append((None, str(e)))
    return results


def test_big_vocabulary_reads_as_gguf_py_reads_it(tmp_path, monkeypatch):
    tokens = vocab_strings(30000, seed=5)
    merges = [f"{a} {b}" for a, b in zip(tokens[::2], tokens[1::2])]
    p = tmp_path / "vocab.gguf"
    w = gguf.GGUFWriter(p, "llama")
    w.add_array("tokenizer.ggml.tokens", tokens)
    w.add_key_value("tokenizer.ggml.token_type", [1, 2, 3] * 10000, V.ARRAY, sub_type=V.INT32)
    w.add_array("tokenizer.ggml.merges", merges)
    w.add_key_value("x.bytes", ["ok", b"\xc3(", "\u00e9"], V.ARRAY, sub_type=V.STRING)  # one not UTF-8
    w.add_key_value("x.one", [""], V.ARRAY, sub_type=V.STRING)
    w.add_string("x.after", "still in step")
    w.add_tensor("w", np.ones((2, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    walked = []
    walk = gguf_in._walk_records
    monkeypatch.setattr(gguf_in, "_walk_records", lambda c, key, n: walked.append(key) or walk(c, key, n))
    with open_model(p) as src:
        assert walked == ["x.bytes"]  # the only array decoded one by one: it holds a string that is not UTF-8
        m = src.metadata
        assert m["tokenizer.ggml.tokens"] == tokens and m["tokenizer.ggml.merges"] == merges
        assert m["x.bytes"] == ["ok", b"\xc3(", "\u00e9"] and m["x.one"] == [""] and m["x.after"] == "still in step"
        ref = gguf.GGUFReader(p).fields
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "x.bytes", "x.one"):
            f = ref[key]
            theirs = [bytes(f.parts[i]) for i in f.data]
            assert [v.encode() if isinstance(v, str) else v for v in m[key]] == theirs, key
        assert m["tokenizer.ggml.token_type"].tolist() == ref["tokenizer.ggml.token_type"].contents()
        np.testing.assert_array_equal(src.load("w"), np.ones((2, 32), np.float32))
    (bulk, e1), (walk, e2) = read_both(p)
    assert e1 is None and e2 is None and bulk == walk


def test_mutated_vocabulary_bulk_equals_walk(tmp_path):
    """Damage inside a string array: the bulk decoder gives what the record-by-record walk gives, the
    same strings or the same error."""
    tokens = vocab_strings(400, seed=9)
    blob = build(tmp_path / "v.gguf", [kv("tokenizer.ggml.tokens", V.ARRAY, struct.pack("<IQ", V.STRING, 400)
                                          + b"".join(s(t) for t in tokens)), kv_u32("x.after", 7)]).read_bytes()
    rng = np.random.default_rng(4)
    bad = tmp_path / "bad.gguf"
    outcomes = set()
    for i in range(200):
        m = bytearray(blob)
        for pos in rng.integers(24, len(blob) - 40, size=1 + i % 3):
            m[pos] = int(rng.integers(0, 256)) if i % 2 else 0
        bad.write_bytes(bytes(m))
        (bulk, e1), (walk, e2) = read_both(bad)
        assert e1 == e2 and bulk == walk, i
        outcomes.add(e1 is None)
    assert outcomes == {True, False}  # some damage is harmless, some is refused


def test_array_of_empty_strings(tmp_path):
    """All zeros: every offset looks like a record start; read right all the same (and without the bulk
    decoder's scratch growing with the zeros)."""
    p = build(tmp_path / "e.gguf", [kv("x", V.ARRAY, struct.pack("<IQ", V.STRING, 100000) + s("") * 100000),
                                    kv_u32("y", 3)])
    with open_model(p) as src:
        assert src.metadata["x"] == [""] * 100000 and src.metadata["y"] == 3
