"""GGUF writer: exact round trip through gguf-py's reader, metadata arrays packed in bulk to gguf-py's own
bytes, temp file + rename, never over an input."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from qtool.errors import UsageError
from qtool.formats.gguf_in import GGUFSource
from qtool.formats.gguf_out import GGUFOut, _pack_array, check_output_path, pack_value
from qtool.quantizers import get


def _write(path, tensors, metadata=()):
    with GGUFOut(path, "llama") as out:
        for key, value, vtype in metadata:
            out.add_metadata(key, value, vtype)
        for name, shape, qtype, _ in tensors:
            out.add_tensor(name, shape, qtype)
        out.begin()
        for name, _, _, data in tensors:
            out.write(name, data)
        return out.commit()


def test_round_trip_bytes_shapes_types_and_metadata(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((8, 64)).astype(np.float32)
    b = rng.standard_normal((3, 4, 256)).astype(np.float32)
    norm = rng.standard_normal(64).astype(np.float32)
    qa, qb = get(T.F16).quantize(a), get(T.Q4_K).quantize(b)
    tensors = [("blk.0.attn_q.weight", a.shape, T.F16, qa), ("blk.0.ffn_gate_exps.weight", b.shape, T.Q4_K, qb),
               ("blk.0.attn_norm.weight", norm.shape, T.F32, norm)]
    meta = [("general.name", "tiny", GGUFValueType.STRING), ("llama.block_count", 1, GGUFValueType.UINT32),
            ("tokenizer.ggml.scores", [0.5, -1.0], GGUFValueType.ARRAY)]
    path = _write(tmp_path / "m.gguf", tensors, meta)

    r = GGUFReader(path)
    assert [t.name for t in r.tensors] == [t[0] for t in tensors]
    for (name, shape, qtype, data), t in zip(tensors, r.tensors):
        assert t.tensor_type == qtype
        assert tuple(int(n) for n in reversed(t.shape)) == tuple(shape)  # reader gives ggml (ne) order
        assert np.asarray(t.data).view(np.uint8).tobytes() == np.ascontiguousarray(data).view(np.uint8).tobytes()
    f = r.fields
    assert bytes(f["general.name"].parts[-1]).decode() == "tiny"
    assert int(f["llama.block_count"].parts[-1][0]) == 1
    assert f["llama.block_count"].types == [GGUFValueType.UINT32]
    assert f["general.architecture"].contents() == "llama"
    assert f["tokenizer.ggml.scores"].contents() == [0.5, -1.0]
    assert not list(tmp_path.glob("*.qtool-tmp"))


@pytest.mark.parametrize("alignment", [None, 32, 1, 64, 4096])
def test_whole_file_is_gguf_writers(tmp_path, alignment):
    """GGUFOut writes the bytes gguf-py's GGUFWriter writes for the same keys (every value type: scalars, strings
    as str and bytes, arrays given their element type or not, nested arrays, a key added twice) and tensors
    (several types, shapes of 1-4 dimensions, sizes that need padding), under each alignment."""
    rng = np.random.default_rng(5)
    tensors = [("token_embd.weight", (7, 64), T.Q8_0), ("blk.0.attn_norm.weight", (64,), T.F32),
               ("blk.0.ffn_gate_exps.weight", (3, 2, 256), T.Q4_K), ("x.odd", (1, 1, 1, 33), T.F16),
               ("output.weight", (5, 32), T.Q5_1)]
    data = {name: rng.integers(0, 256, get(qtype).nbytes(shape), dtype=np.uint8) for name, shape, qtype in tensors}
    meta = [("general.name", "tiny \u4e2d", V.STRING, None), ("general.raw", b"\xff\x00z", V.STRING, None),
            ("x.u8", 255, V.UINT8, None), ("x.i8", -128, V.INT8, None), ("x.u16", 65535, V.UINT16, None),
            ("x.i16", -2, V.INT16, None), ("x.u32", 2 ** 32 - 1, V.UINT32, None), ("x.i32", -7, V.INT32, None),
            ("x.f32", 0.1, V.FLOAT32, None), ("x.u64", 2 ** 64 - 1, V.UINT64, None), ("x.i64", -2 ** 63, V.INT64, None),
            ("x.f64", 0.1, V.FLOAT64, None), ("x.b", True, V.BOOL, None), ("x.b0", 0, V.BOOL, None),
            ("x.tokens", ["a", "\u0120b", "", "\U0001f600"], V.ARRAY, V.STRING),
            ("x.ids", [3, -1, 7], V.ARRAY, V.INT32), ("x.guessed", [1.5, 2.0], V.ARRAY, None),
            ("x.guessed_ints", [1, 2, 3], V.ARRAY, None), ("x.guessed_strings", ["p", "q"], V.ARRAY, None),
            ("x.nested", [[1, 2], [3]], V.ARRAY, V.ARRAY), ("x.bytes_array", b"\x01\x02", V.ARRAY, None),
            ("x.flags", [True, False], V.ARRAY, V.BOOL), ("x.u64s", [2 ** 63, 1], V.ARRAY, V.UINT64),
            ("general.name", "renamed", V.STRING, None)]  # added again: moves to the end
    theirs_path = tmp_path / "theirs.gguf"
    w = GGUFWriter(str(theirs_path), "llama")
    if alignment is not None and alignment != 32:
        w.add_custom_alignment(alignment)
    for key, value, vtype, sub in meta:
        w.kv_data[0].pop(key, None)
        w.add_key_value(key, value, vtype, sub_type=sub)
    for name, shape, qtype in tensors:
        w.add_tensor_info(name, shape, np.dtype(np.float32), data[name].nbytes, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, _, _ in tensors:
        w.write_tensor_data(data[name])
    w.close()

    ours_path = tmp_path / "ours.gguf"
    with GGUFOut(ours_path, "llama", alignment=alignment) as out:
        for key, value, vtype, sub in meta:
            out.add_metadata(key, value, vtype, sub)
        for name, shape, qtype in tensors:
            out.add_tensor(name, shape, qtype)
        offset = out.data_offset()
        out.begin()
        for name, _, _ in tensors:
            out.write(name, data[name])
        out.commit()
    assert ours_path.read_bytes() == theirs_path.read_bytes()
    assert GGUFReader(ours_path).tensors[0].data_offset == offset


@pytest.mark.parametrize("alignment", [0, 3, -32])
def test_an_alignment_that_is_not_a_power_of_two_is_refused(tmp_path, alignment):
    with pytest.raises(ValueError, match="power of two"):
        GGUFOut(tmp_path / "o.gguf", "llama", alignment=alignment)


def test_a_tensor_declared_twice_is_refused(tmp_path):
    with GGUFOut(tmp_path / "o.gguf", "llama") as out:
        out.add_tensor("w", (1, 32), T.F32)
        with pytest.raises(ValueError, match="Duplicated tensor name 'w'"):
            out.add_tensor("w", (1, 32), T.F32)


def test_failure_midway_leaves_no_file(tmp_path):
    x = np.zeros((2, 32), np.float32)
    target = tmp_path / "out.gguf"
    with pytest.raises(RuntimeError):
        with GGUFOut(target, "llama") as out:
            out.add_tensor("a", x.shape, T.F32)
            out.add_tensor("b", x.shape, T.F32)
            out.begin()
            out.write("a", x)
            raise RuntimeError("quantizer blew up")
    assert list(tmp_path.iterdir()) == []


def test_wrong_order_or_size_is_refused(tmp_path):
    x = np.zeros((2, 32), np.float32)
    with pytest.raises(RuntimeError, match="declared"):
        with GGUFOut(tmp_path / "o.gguf", "llama") as out:
            out.add_tensor("a", x.shape, T.F32)
            out.begin()
            out.write("a", x[:1])
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_replaced_only_on_success(tmp_path):
    target = tmp_path / "o.gguf"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with GGUFOut(target, "llama") as out:
            out.add_tensor("a", (1, 32), T.F32)
            out.begin()
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    _write(target, [("a", (1, 32), T.F32, np.ones((1, 32), np.float32))])
    assert GGUFReader(target).tensors[0].name == "a"


def test_refuses_to_overwrite_an_input(tmp_path):
    src = tmp_path / "model.gguf"
    src.write_bytes(b"x")
    with pytest.raises(UsageError, match="overwrite the input"):
        check_output_path(src, [src])
    link = tmp_path / "link.gguf"
    link.symlink_to(src)
    with pytest.raises(UsageError, match="overwrite the input"):
        check_output_path(link, [src])
    with pytest.raises(UsageError, match="does not exist"):
        check_output_path(tmp_path / "nope" / "o.gguf", [src])
    check_output_path(tmp_path / "other.gguf", [src])  # a fresh name is fine


V = GGUFValueType


def _arrays():
    rng = np.random.default_rng(2)
    pieces = list("abcxyz\u0120\u010a") + ["\u00e9", "\u4e2d", "\U0001f600"]
    vocab = ["".join(rng.choice(pieces, size=int(rng.integers(0, 9)))) for _ in range(20000)]
    return [
        (vocab, V.STRING), (vocab[:4] + ["a\0b", "", "\0"], V.STRING), (["x"], V.STRING),
        (["ok", b"\xff\xfe", bytearray(b"z")], V.STRING),  # bytes kept as they are (not UTF-8)
        (np.arange(-5, 5, dtype=np.int32), V.INT32), (list(range(20000)), V.INT32), ([True, 3], V.INT32),
        ([1, 2, 255], V.UINT8), ([-128, 127], V.INT8), ([1, 65535], V.UINT16), ([-3, 4], V.INT16),
        ([1, 2 ** 40], V.INT64), (np.arange(5, dtype=np.uint64), V.UINT64), ([0, 2 ** 32 - 1], V.UINT32),
        ([True, False, 2], V.BOOL), (np.array([1, 0, 2], np.uint8).view(bool), V.BOOL),
        (rng.standard_normal(20000).astype(np.float32), V.FLOAT32), ([0.1, 1e-30, 3, 1e-46], V.FLOAT32),
        ([0.5, 0.1], V.FLOAT64), (np.array([np.nan, -np.inf], np.float32), V.FLOAT32),
    ]


@pytest.mark.parametrize("i", range(len(_arrays())))
def test_bulk_array_packing_is_gguf_pys(i):
    """Each array packs in bulk (no per-element fallback) to exactly the bytes gguf-py's writer gives."""
    value, sub = _arrays()[i]
    listed = value.tolist() if isinstance(value, np.ndarray) else list(value)
    theirs = GGUFWriter(None, "llama")._pack_val(listed, V.ARRAY, True, sub)
    assert _pack_array(value, sub) is not None
    assert pack_value(value, V.ARRAY, sub) == theirs


def test_data_offset_counts_what_is_written(tmp_path):
    """data_offset() (string arrays counted, not packed) is where the written file's tensor data starts,
    with every array above as metadata: multi-byte UTF-8, NULs, empty strings, bytes elements."""
    path = tmp_path / "o.gguf"
    with GGUFOut(path, "llama", alignment=1) as out:  # no padding to hide a miscount in
        for i, (value, sub) in enumerate(_arrays()):
            out.add_metadata(f"x.a{i}", value, V.ARRAY, sub)
        out.add_metadata("x.s", "\u4e2d\U0001f600", V.STRING)
        out.add_tensor("w", (1, 32), T.F32)
        offset = out.data_offset()
        out.begin()
        out.write("w", np.ones((1, 32), np.float32))
        out.commit()
    assert GGUFReader(path).tensors[0].data_offset == offset


@pytest.mark.parametrize("value, sub", [([300], V.UINT8), ([1.5], V.INT32), ([1e40], V.FLOAT32),
                                        (["a", 1], V.STRING), (["\ud800"], V.STRING)])
def test_values_gguf_py_refuses_are_refused(value, sub):
    """What the bulk packer cannot vouch for goes to gguf-py's packing, which raises as before."""
    with pytest.raises(Exception) as theirs:
        GGUFWriter(None, "llama")._pack_val(value, V.ARRAY, True, sub)
    with pytest.raises(type(theirs.value)):
        pack_value(value, V.ARRAY, sub)


def test_vocabulary_and_empty_arrays_round_trip(tmp_path):
    vocab = _arrays()[0][0]
    meta = [("tokenizer.ggml.tokens", vocab, V.ARRAY, V.STRING),
            ("tokenizer.ggml.scores", np.linspace(0, 1, len(vocab), dtype=np.float32), V.ARRAY, V.FLOAT32),
            ("x.empty", [], V.ARRAY, V.INT32), ("x.none", [], V.ARRAY, V.STRING)]
    path = tmp_path / "v.gguf"
    with GGUFOut(path, "llama") as out:
        for key, value, vtype, sub in meta:
            out.add_metadata(key, value, vtype, sub)
        out.add_tensor("w", (1, 32), T.F32)
        out.begin()
        out.write("w", np.ones((1, 32), np.float32))
        out.commit()
    f = GGUFReader(path).fields
    assert f["tokenizer.ggml.tokens"].contents() == vocab
    assert f["x.empty"].contents() == [] and f["x.none"].contents() == []
    with GGUFSource(path) as src:
        assert src.metadata["tokenizer.ggml.tokens"] == vocab and src.metadata["x.none"] == []
        np.testing.assert_array_equal(src.metadata["tokenizer.ggml.scores"], meta[1][1])
        assert src.metadata_sub_types["x.empty"] == V.INT32 and src.metadata["x.empty"].size == 0


def _tokens_file(path, tokens):
    """A GGUF at ``path`` with ``tokens`` as its vocabulary and one small tensor."""
    with GGUFOut(path, "llama") as out:
        out.add_metadata("tokenizer.ggml.tokens", tokens, V.ARRAY, V.STRING)
        out.add_tensor("w", (1, 32), T.F32)
        out.begin()
        out.write("w", np.ones((1, 32), np.float32))
        out.commit()
    return path


def test_strings_read_from_a_gguf_are_copied_as_read_and_re_encoded_once_changed(tmp_path):
    """A string array read in bulk keeps the file's record bytes (PackedStrings.packed); writing it copies
    them, which must be what encoding the strings gives; any change to the list drops them."""
    from qtool.formats.gguf_in import PackedStrings
    from qtool.formats.gguf_out import _pack_strings, _strings_size

    vocab = [f"tok{i}" for i in range(300)] + ["\u4e2d\U0001f600", "", "a b", "\u0120x"] * 50
    with GGUFSource(_tokens_file(tmp_path / "in.gguf", vocab)) as src:
        tokens = src.metadata["tokenizer.ggml.tokens"]
        assert isinstance(tokens, PackedStrings) and tokens.packed is not None
        assert tokens == vocab
        assert _pack_strings(tokens) == tokens.packed == _pack_strings(list(vocab))
        assert _strings_size(tokens) == len(tokens.packed)
        out = _tokens_file(tmp_path / "out.gguf", tokens)
        assert GGUFReader(out).fields["tokenizer.ggml.tokens"].contents() == vocab
        for change in (lambda t: t.append("new"), lambda t: t.__setitem__(0, "zero"), lambda t: t.sort(),
                       lambda t: t.pop(), lambda t: t.extend(["x"]), lambda t: t.__delitem__(slice(0, 2))):
            copy = PackedStrings(tokens, tokens.packed)
            change(copy)
            assert copy.packed is None
            assert _pack_strings(copy) == _pack_strings(list(copy))
