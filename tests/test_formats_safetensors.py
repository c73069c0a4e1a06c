"""safetensors in: exact round trips, and every way a file can lie, each refused with the file named."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from conftest import refuses
from gguf import GGMLQuantizationType as T

from qtool.errors import FormatError
from qtool.formats.safetensors import SafetensorsSource, widen, write_safetensors
from qtool.formats.source import open_model

RNG = np.random.default_rng(7)


def raw_file(path, header, data=b"", *, length=None):
    """A safetensors file from a header (dict, or bytes as they are) and a data area."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(text) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + text + data)
    return path


def entry(dtype="F32", shape=(2, 2), offsets=(0, 16)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


# -- reading what is there --------------------------------------------------------------------------


def test_round_trip_every_dtype_and_shape(tmp_path):
    a32 = RNG.standard_normal((3, 5, 8)).astype(np.float32)
    a16 = RNG.standard_normal((4, 6)).astype(np.float16)
    bf_bits = RNG.integers(0, 1 << 16, size=(2, 16), dtype=np.uint16)
    vec = RNG.standard_normal(7).astype(np.float32)
    empty = np.zeros((0, 4), np.float32)
    scalar = np.array(3.5, np.float32)
    p = tmp_path / "m.safetensors"
    write_safetensors(p, {"b.f16": a16, "a.f32": a32, "c.bf16": ("BF16", bf_bits), "vec": vec,
                          "empty": empty, "scalar": scalar}, metadata={"format": "pt"})
    with open_model(p) as src:
        assert isinstance(src, SafetensorsSource) and src.format == "safetensors"
        assert src.architecture is None and not src.loadable
        assert [t.name for t in src.tensors] == ["b.f16", "a.f32", "c.bf16", "vec", "empty", "scalar"]  # file order
        assert src.unmapped == [t.name for t in src.tensors]
        assert src.file_metadata == {"format": "pt"}
        info = {t.name: t for t in src.tensors}
        assert info["a.f32"].shape == (3, 5, 8) and info["a.f32"].qtype == T.F32 and info["a.f32"].nbytes == a32.nbytes
        assert info["b.f16"].qtype == T.F16 and info["c.bf16"].qtype == T.BF16
        assert info["scalar"].shape == (1,)

        np.testing.assert_array_equal(src.load("a.f32"), a32)
        np.testing.assert_array_equal(src.load("b.f16"), a16.astype(np.float32))
        got = src.load("c.bf16")
        assert got.dtype == np.float32 and got.shape == (2, 16)
        np.testing.assert_array_equal(got.view(np.uint32), bf_bits.astype(np.uint32) << 16)  # NaNs included
        np.testing.assert_array_equal(src.load("vec"), vec)
        assert src.load("empty").shape == (0, 4)
        np.testing.assert_array_equal(src.load("scalar"), [3.5])

        r = src.raw("a.f32")
        assert r.dtype == np.uint8 and r.shape == (3, 5, 32)
        assert r.tobytes() == a32.tobytes()
        assert not r.flags.writeable and not r.flags.owndata  # a view of the map, not a copy
        assert src.raw("c.bf16").tobytes() == bf_bits.tobytes()
        assert src.raw("vec").shape == (28,)
        with pytest.raises(KeyError):
            src.load("nope")


def test_writing_to_a_loaded_tensor_never_reaches_the_file(tmp_path):
    # F32 loads are views of a copy-on-write map (no copy of the tensor); writes stay in this process
    a = RNG.standard_normal((2, 8)).astype(np.float32)
    p = write_safetensors_file(tmp_path, {"a": a})
    before = p.read_bytes()
    with open_model(p) as src:
        x = src.load("a")
        x[...] = 0
    assert p.read_bytes() == before
    with open_model(p) as src:
        np.testing.assert_array_equal(src.load("a"), a)


def write_safetensors_file(tmp_path, tensors, name="m.safetensors"):
    p = tmp_path / name
    write_safetensors(p, tensors)
    return p


def test_bf16_widening_is_exact():
    bits = np.array([0x0000, 0x8000, 0x3F80, 0xBF80, 0x7F80, 0xFF80, 0x7FC0, 0x0001, 0x7F7F], np.uint16)
    want = np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, 9.183549615799121e-41, 3.3895313892515355e38],
                    np.float32)
    got = widen(bits.view(np.uint8), "BF16", (9,))
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_writer_pads_header_to_8_bytes(tmp_path):
    p = write_safetensors_file(tmp_path, {"x": np.zeros(3, np.float32)})
    n = struct.unpack("<Q", p.read_bytes()[:8])[0]
    assert n % 8 == 0 and p.stat().st_size == 8 + n + 12


# -- lying files --------------------------------------------------------------------------------------


def test_too_short_for_the_length(tmp_path):
    p = tmp_path / "short.safetensors"
    p.write_bytes(b"\x10\x00\x00")
    refuses(p, "too short")
    p.write_bytes(b"")
    refuses(p, "too short")


def test_header_length_past_end(tmp_path):
    p = raw_file(tmp_path / "x.safetensors", {"a": entry()}, b"\0" * 16, length=10_000)
    refuses(p, "header length 10000", "past the end")


def test_header_length_beyond_cap(tmp_path):
    p = raw_file(tmp_path / "x.safetensors", b"{}", length=1 << 62)
    refuses(p, "exceeds")


def test_bad_json(tmp_path):
    refuses(raw_file(tmp_path / "x.safetensors", b'{"a": {"dtype": "F32",'), "not valid JSON")


def test_not_utf8(tmp_path):
    refuses(raw_file(tmp_path / "x.safetensors", b'{"\xff\xfe": 1}'), "not UTF-8")


def test_header_not_an_object(tmp_path):
    refuses(raw_file(tmp_path / "x.safetensors", b"[1, 2, 3]"), "not an object")


def test_duplicate_tensor_name(tmp_path):
    text = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, ' \
           b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}'
    refuses(raw_file(tmp_path / "x.safetensors", text, b"\0" * 8), "'a' twice")


def test_bad_metadata(tmp_path):
    refuses(raw_file(tmp_path / "x.safetensors", {"__metadata__": {"k": 1}}), "__metadata__")
    refuses(raw_file(tmp_path / "y.safetensors", {"__metadata__": ["k"]}), "__metadata__")


def test_entry_not_an_object_or_incomplete(tmp_path):
    refuses(raw_file(tmp_path / "x.safetensors", {"a": [1, 2]}), "'a'", "not an object")
    refuses(raw_file(tmp_path / "y.safetensors", {"a": {"dtype": "F32", "shape": [1]}}), "'a'", "data_offsets")


def test_unsupported_dtype(tmp_path):
    p = raw_file(tmp_path / "x.safetensors", {"w": entry("I8", (4,), (0, 4))}, b"\0" * 4)
    msg = refuses(p)
    assert msg.startswith(f"unsupported dtype I8 for tensor 'w' in {p}"), msg
    refuses(raw_file(tmp_path / "y.safetensors", {"w": entry("Q4_WHAT", (4,), (0, 4))}, b"\0" * 4),
            "unsupported dtype Q4_WHAT")
    refuses(raw_file(tmp_path / "z.safetensors", {"w": entry(7, (4,), (0, 4))}, b"\0" * 4), "not a string")


@pytest.mark.parametrize("shape", [[2, "2"], [2.0, 2], [True, 4], "22", None])
def test_shape_not_integers(tmp_path, shape):
    p = raw_file(tmp_path / "x.safetensors", {"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 16]}},
                 b"\0" * 16)
    refuses(p, "'w'", "shape")


def test_negative_shape(tmp_path):
    refuses(raw_file(tmp_path / "x.safetensors", {"w": entry(shape=(-2, -2))}, b"\0" * 16), "negative")


def test_huge_shape(tmp_path):
    p = raw_file(tmp_path / "x.safetensors", {"w": entry(shape=(1 << 40, 1 << 40))}, b"\0" * 16)
    refuses(p, "'w'", "spans 16 bytes")


@pytest.mark.parametrize("offsets,fragment", [
    ([0], "pair"), ([0, 16, 32], "pair"), (["0", "16"], "pair"), ([16, 0], "ascending"), ([-16, 0], "ascending"),
])
def test_bad_offsets(tmp_path, offsets, fragment):
    p = raw_file(tmp_path / "x.safetensors", {"w": {"dtype": "F32", "shape": [4], "data_offsets": offsets}},
                 b"\0" * 16)
    refuses(p, "'w'", fragment)


def test_offsets_outside_file(tmp_path):
    p = raw_file(tmp_path / "x.safetensors", {"w": entry(offsets=(8, 24))}, b"\0" * 16)
    refuses(p, "'w'", "past the end of the data area (16 bytes)")
    p = raw_file(tmp_path / "y.safetensors", {"w": entry(offsets=(1 << 62, (1 << 62) + 16))}, b"\0" * 16)
    refuses(p, "'w'", "past the end")


def test_span_not_shape_times_itemsize(tmp_path):
    p = raw_file(tmp_path / "x.safetensors", {"w": entry("F16", (2, 2), (0, 16))}, b"\0" * 16)
    refuses(p, "'w'", "spans 16 bytes", "needs 8")


def test_overlapping_tensors(tmp_path):
    header = {"a": entry(offsets=(0, 16)), "b": entry(offsets=(8, 24))}
    refuses(raw_file(tmp_path / "x.safetensors", header, b"\0" * 24), "'a'", "'b'", "overlap")
    # a zero-size tensor inside another's span shares no bytes: fine
    header = {"a": entry(offsets=(0, 16)), "e": entry(shape=(0, 2), offsets=(8, 8))}
    with open_model(raw_file(tmp_path / "y.safetensors", header, b"\0" * 16)) as src:
        assert [t.name for t in src.tensors] == ["a", "e"]


# -- shard sets ---------------------------------------------------------------------------------------


def make_shards(tmp_path, weight_map=None):
    a = RNG.standard_normal((2, 4)).astype(np.float32)
    b = RNG.standard_normal((3,)).astype(np.float16)
    c = RNG.standard_normal((4, 4)).astype(np.float32)
    write_safetensors(tmp_path / "model-00001-of-00002.safetensors", {"a": a, "b": b})
    write_safetensors(tmp_path / "model-00002-of-00002.safetensors", {"c": c})
    if weight_map is None:
        weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
                      "c": "model-00002-of-00002.safetensors"}
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 100}, "weight_map": weight_map}))
    return index, (a, b, c)


def test_index_reads_every_shard(tmp_path):
    index, (a, b, c) = make_shards(tmp_path)
    with open_model(index) as src:
        assert [t.name for t in src.tensors] == ["a", "b", "c"]
        np.testing.assert_array_equal(src.load("a"), a)
        np.testing.assert_array_equal(src.load("b"), b.astype(np.float32))
        np.testing.assert_array_equal(src.load("c"), c)
        assert sorted(f.name for f in src.files) == ["model-00001-of-00002.safetensors",
                                                     "model-00002-of-00002.safetensors"]


def test_index_names_a_missing_shard(tmp_path):
    index, _ = make_shards(tmp_path, {"a": "model-00001-of-00002.safetensors", "z": "model-00009.safetensors"})
    refuses(index, "shard model-00009.safetensors does not exist")


def test_index_names_a_tensor_not_in_its_shard(tmp_path):
    index, _ = make_shards(tmp_path, {"a": "model-00001-of-00002.safetensors",
                                      "zz": "model-00001-of-00002.safetensors"})
    refuses(index, "'zz'", "not in its shard")
    index, _ = make_shards(tmp_path, {"a": "model-00002-of-00002.safetensors",
                                      "c": "model-00002-of-00002.safetensors",
                                      "b": "model-00001-of-00002.safetensors"})
    refuses(index, "'a'", "it is in model-00001-of-00002.safetensors")


@pytest.mark.parametrize("shard", ["../model.safetensors", "/etc/passwd", "sub/x.safetensors", "", 3])
def test_index_shard_outside_folder(tmp_path, shard):
    index, _ = make_shards(tmp_path, {"a": shard})
    refuses(index, "not a file name beside the index")


def test_index_malformed(tmp_path):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text("{weight_map: }")
    refuses(index, "not valid JSON")
    index.write_text(json.dumps({"metadata": {}}))
    refuses(index, "no weight_map")
    index.write_text(json.dumps({"weight_map": ["a"]}))
    refuses(index, "no weight_map")


def test_tensor_stored_in_two_shards(tmp_path):
    index, _ = make_shards(tmp_path)
    write_safetensors(tmp_path / "model-00002-of-00002.safetensors", {"a": np.zeros(2, np.float32)})
    refuses(index, "'a' is stored twice")


def test_shard_itself_malformed(tmp_path):
    index, _ = make_shards(tmp_path)
    shard = tmp_path / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-4])  # truncated data
    with pytest.raises(FormatError, match="model-00002-of-00002.safetensors.*past the end"):
        open_model(index)


# -- dispatch -----------------------------------------------------------------------------------------


def test_open_model_dispatch_errors(tmp_path):
    with pytest.raises(FormatError, match="no such file"):
        open_model(tmp_path / "missing.safetensors")
    other = tmp_path / "weights.bin"
    other.write_bytes(b"\0" * 64)
    refuses(other, "not a .gguf")
    refuses(tmp_path, "neither a model folder")
