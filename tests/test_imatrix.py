"""Importance matrices: both formats, the values llama-quantize derives, filtering, sizes, metadata, and
malformed files (each must fail with a FormatError naming the file, never allocate what a header claims)."""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFValueType

from qtool.errors import FormatError, QuantError, UsageError
from qtool.formats.imatrix import Imatrix, load_imatrix, quantize_metadata
from qtool.testing.models import write_imatrix_dat, write_imatrix_gguf

RNG = np.random.default_rng(7)


def _f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# legacy .dat
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def dat_entries():
    return {
        "blk.0.attn_q.weight": (3, _f32(RNG.random(64) * 10)),
        "blk.0.ffn_down_exps.weight": (7, _f32(RNG.random(4 * 32) * 100)),  # 4 experts x 32 columns
        "blk.1.attn_k.weight": (0, _f32([0.5, 1.5, 2.5, 1e30])),              # ncall 0: used as stored
        "output.weight": (-2, _f32([4.0, 8.0])),                               # negative: as stored too
    }


def test_legacy_values_are_divided_by_ncall(tmp_path, dat_entries):
    path = write_imatrix_dat(tmp_path / "m.dat", dat_entries, chunk_count=42, dataset="wiki.train.raw")
    m = load_imatrix(path)
    assert m.is_legacy and m.chunk_size is None
    assert m.chunk_count == 42 and m.datasets == ["wiki.train.raw"]
    assert sorted(m.entries) == sorted(dat_entries)
    for name, (ncall, stored) in dat_entries.items():
        got = m.entries[name]
        assert got.dtype == np.float32 and got.shape == stored.shape
        if ncall > 0:
            # float32 division, element by element, as C++ divides a float by an int64 converted to float
            want = np.array([np.float32(v) / np.float32(ncall) for v in stored], dtype=np.float32)
        else:
            want = stored
        np.testing.assert_array_equal(got, want, err_msg=name)
        assert m.counts[name].tolist() == [ncall]


def test_legacy_as_llama_imatrix_writes_it(tmp_path):
    # llama-imatrix stores (sum/count) * ncall with ncall = ceil(count / chunk_size); reading gives the mean
    sums = _f32(RNG.random(256) * 50)
    count, chunk = 2048, 512
    ncall = (count + chunk - 1) // chunk
    stored = (sums / np.float32(count)) * np.float32(ncall)
    m = load_imatrix(write_imatrix_dat(tmp_path / "m.dat", {"blk.0.ffn_up.weight": (ncall, stored)}, 4, "d.txt"))
    np.testing.assert_allclose(m.entries["blk.0.ffn_up.weight"], sums / count, rtol=1e-6)


def test_legacy_without_trailer(tmp_path, dat_entries):
    m = load_imatrix(write_imatrix_dat(tmp_path / "m.dat", dat_entries))
    assert m.chunk_count == 0 and m.datasets == []
    assert quantize_metadata(m).keys() == {"quantize.imatrix.file", "quantize.imatrix.entries_count"}


def test_legacy_trailer_is_read_as_far_as_it_goes(tmp_path):
    body = write_imatrix_dat(tmp_path / "b.dat", {"a.weight": (1, _f32([1.0]))}).read_bytes()
    # two bytes of a chunk count: llama.cpp's istream::read keeps the bytes it got
    p = tmp_path / "p.dat"
    p.write_bytes(body + b"\x05\x01")
    m = load_imatrix(p)
    assert m.chunk_count == 0x0105 and m.datasets == []
    # a dataset length past the end: no dataset, no error
    p.write_bytes(body + struct.pack("<ii", 9, 1000) + b"abc")
    m = load_imatrix(p)
    assert m.chunk_count == 9 and m.datasets == []
    # a zero-length or negative dataset length: none either
    for n in (0, -5):
        p.write_bytes(body + struct.pack("<ii", 9, n))
        assert load_imatrix(p).datasets == []
    # a name holding a NUL is read as a C string
    p.write_bytes(body + struct.pack("<ii", 3, 7) + b"ab\0cdef")
    assert load_imatrix(p).datasets == ["ab"]


def test_legacy_repeated_name_keeps_the_last(tmp_path):
    parts = [struct.pack("<i", 2)]
    for v in (1.0, 2.0):
        parts += [struct.pack("<i", 1), b"x", struct.pack("<ii", 1, 1), struct.pack("<f", v)]
    p = tmp_path / "r.dat"
    p.write_bytes(b"".join(parts))
    m = load_imatrix(p)
    assert list(m.entries) == ["x"] and m.entries["x"].tolist() == [2.0]


def test_legacy_name_is_a_c_string(tmp_path):
    p = tmp_path / "n.dat"
    p.write_bytes(struct.pack("<ii", 1, 6) + b"ab\0xyz" + struct.pack("<iif", 1, 1, 3.0))
    assert list(load_imatrix(p).entries) == ["ab"]


def _entry(name: bytes, ncall: int, nval: int, values: bytes | None = None) -> bytes:
    return struct.pack("<i", len(name)) + name + struct.pack("<ii", ncall, nval) + (
        values if values is not None else b"\0" * 4 * max(nval, 0))


@pytest.mark.parametrize(("label", "content"), [
    ("empty", b""),
    ("short count", b"\x01\x00"),
    ("zero entries", struct.pack("<i", 0)),
    ("negative entries", struct.pack("<i", -3)),
    ("huge entry count", struct.pack("<i", 2**31 - 1) + _entry(b"a", 1, 1)),
    ("negative name length", struct.pack("<ii", 1, -1) + b"\0" * 16),
    ("huge name length", struct.pack("<ii", 1, 2**31 - 1) + b"\0" * 16),
    ("zero values", struct.pack("<i", 1) + _entry(b"a", 1, 0)),
    ("negative values", struct.pack("<i", 1) + _entry(b"a", 1, -4)),
    ("huge value count", struct.pack("<i", 1) + _entry(b"a", 1, 2**31 - 1, b"\0" * 16)),
    ("lying entry count", struct.pack("<i", 2) + _entry(b"abcdefgh", 1, 4)),
])
def test_malformed_legacy(tmp_path, label, content):
    p = tmp_path / "bad.dat"
    p.write_bytes(content)
    with pytest.raises(FormatError) as e:
        load_imatrix(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_legacy_every_truncation_fails_or_keeps_all_entries(tmp_path, dat_entries):
    full = write_imatrix_dat(tmp_path / "m.dat", dat_entries, 3, "data").read_bytes()
    trailer = 4 + 4 + len(b"data")
    p = tmp_path / "cut.dat"
    for n in range(len(full)):
        p.write_bytes(full[:n])
        if n < len(full) - trailer:
            with pytest.raises(FormatError, match=str(p).replace(".", r"\.")):
                load_imatrix(p)
        else:  # the trailer is optional: every cut inside it still loads all entries
            assert sorted(load_imatrix(p).entries) == sorted(dat_entries), n


# --------------------------------------------------------------------------------------------------
# GGUF
# --------------------------------------------------------------------------------------------------


def test_gguf_values_are_sums_over_counts(tmp_path):
    sums2d = _f32(RNG.random(96) * 30)
    sums3d = _f32(RNG.random(4 * 16) * 30)
    counts3d = _f32([5, 0, 2.5, 1e6 + 0.25])  # expert 1 never ran; counts are rounded half away from zero
    path = write_imatrix_gguf(tmp_path / "m.gguf", {
        "blk.0.attn_v.weight": (sums2d, _f32([1234])),
        "blk.0.ffn_gate_exps.weight": (sums3d, counts3d),
    }, datasets=["a.txt", "b.txt"], chunk_count=17, chunk_size=512)
    m = load_imatrix(path)
    assert not m.is_legacy
    assert (m.datasets, m.chunk_count, m.chunk_size) == (["a.txt", "b.txt"], 17, 512)
    np.testing.assert_array_equal(m.entries["blk.0.attn_v.weight"], sums2d / np.float32(1234))
    assert m.counts["blk.0.ffn_gate_exps.weight"].tolist() == [5, 0, 3, 1000000]
    got = m.entries["blk.0.ffn_gate_exps.weight"].reshape(4, 16)
    per_expert = sums3d.reshape(4, 16)
    np.testing.assert_array_equal(got[0], per_expert[0] / np.float32(5))
    np.testing.assert_array_equal(got[1], np.ones(16, np.float32))
    np.testing.assert_array_equal(got[2], per_expert[2] / np.float32(3))
    np.testing.assert_array_equal(got[3], per_expert[3] / np.float32(1000000))


def test_gguf_sums_not_filling_whole_matrices_leave_zeros(tmp_path):
    # 10 sums over 3 counts: llama-quantize normalizes 3 x 3 and leaves the 10th at 0
    from gguf import GGUFWriter

    w = GGUFWriter(str(tmp_path / "odd.gguf"), arch="imatrix")
    w.add_array("imatrix.datasets", ["d"])
    w.add_uint32("imatrix.chunk_count", 1)
    w.add_uint32("imatrix.chunk_size", 1)
    w.add_tensor("t.in_sum2", np.arange(1, 11, dtype=np.float32))
    w.add_tensor("t.counts", _f32([1, 2, 4]))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    got = load_imatrix(tmp_path / "odd.gguf").entries["t"]
    want = _f32([1, 2, 3, 4 / 2, 5 / 2, 6 / 2, 7 / 4, 8 / 4, 9 / 4, 0])
    np.testing.assert_array_equal(got, want)


def _gguf(tmp_path: Path, name: str, *, meta=None, tensors=None) -> Path:
    from gguf import GGUFWriter

    w = GGUFWriter(str(tmp_path / name), arch="imatrix")
    defaults = {"imatrix.datasets": ["d"], "imatrix.chunk_count": 1, "imatrix.chunk_size": 1}
    for k, v in {**defaults, **(meta or {})}.items():
        if v is None:
            continue
        if isinstance(v, list):
            w.add_array(k, v)
        elif isinstance(v, str):
            w.add_string(k, v)
        elif isinstance(v, tuple):  # (writer method, value)
            getattr(w, v[0])(k, v[1])
        else:
            w.add_uint32(k, v)
    for tname, data in (tensors if tensors is not None else
                        {"a.in_sum2": _f32([1, 2]), "a.counts": _f32([1])}).items():
        w.add_tensor(tname, data)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return tmp_path / name


@pytest.mark.parametrize(("label", "kwargs", "match"), [
    ("no datasets key", {"meta": {"imatrix.datasets": None}}, "imatrix.datasets"),
    ("no chunk count", {"meta": {"imatrix.chunk_count": None}}, "imatrix.chunk_count"),
    ("no chunk size", {"meta": {"imatrix.chunk_size": None}}, "imatrix.chunk_size"),
    ("chunk count is a string", {"meta": {"imatrix.chunk_count": "7"}}, "UINT32"),
    ("chunk size is i64", {"meta": {"imatrix.chunk_size": ("add_int64", 5)}}, "UINT32"),
    ("no tensors", {"tensors": {}}, "no tensors"),
    ("sums without counts", {"tensors": {"a.in_sum2": _f32([1, 2])}}, "no .counts"),
    ("counts without sums", {"tensors": {"a.counts": _f32([1])}}, "no .in_sum2"),
    ("f16 sums", {"tensors": {"a.in_sum2": np.ones(2, np.float16), "a.counts": _f32([1])}}, "F32"),
    ("empty counts", {"tensors": {"a.in_sum2": _f32([1, 2]), "a.counts": np.zeros(0, np.float32)}}, None),
])
def test_malformed_gguf(tmp_path, label, kwargs, match):
    try:
        p = _gguf(tmp_path, "bad.gguf", **kwargs)
    except Exception as e:  # gguf-py refuses to write some of these itself
        pytest.skip(f"gguf-py cannot write it: {e}")
    with pytest.raises(FormatError, match=match) as e:
        load_imatrix(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_gguf_datasets_of_another_type_are_ignored(tmp_path):
    m = load_imatrix(_gguf(tmp_path, "d.gguf", meta={"imatrix.datasets": "just-a-string"}))
    assert m.datasets == [] and list(m.entries) == ["a"]


def test_gguf_ignores_other_tensors(tmp_path):
    p = _gguf(tmp_path, "o.gguf", tensors={"a.in_sum2": _f32([2, 4]), "a.counts": _f32([2]),
                                          "something.else": _f32([1, 2, 3])})
    m = load_imatrix(p)
    assert list(m.entries) == ["a"] and m.entries["a"].tolist() == [1.0, 2.0]


def test_gguf_truncated_and_garbled(tmp_path):
    full = write_imatrix_gguf(tmp_path / "m.gguf", {"blk.0.attn_q.weight": (_f32(np.ones(64)), _f32([2]))})
    data = full.read_bytes()
    p = tmp_path / "cut.gguf"
    for n in list(range(4, 64, 3)) + [len(data) - 40, len(data) - 100]:  # (the last 28 bytes are padding)
        p.write_bytes(data[:n])
        with pytest.raises(FormatError) as e:
            load_imatrix(p)
        assert str(p) in str(e.value)
    # a tensor count of 2^60: refused from the header, nothing allocated
    garbled = bytearray(data)
    garbled[8:16] = struct.pack("<Q", 1 << 60)
    p.write_bytes(bytes(garbled))
    with pytest.raises(FormatError):
        load_imatrix(p)


def test_missing_file_is_a_format_error(tmp_path):
    with pytest.raises(FormatError, match="nope.dat"):
        load_imatrix(tmp_path / "nope.dat")


# --------------------------------------------------------------------------------------------------
# What the quantizer asks of it
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path) -> Imatrix:
    return load_imatrix(write_imatrix_gguf(tmp_path / "s.gguf", {
        "token_embd.weight": (_f32(np.ones(8)), _f32([1])),
        "blk.0.attn_q.weight": (_f32(np.ones(16)), _f32([1])),
        "blk.0.attn_k.weight": (_f32(np.ones(16)), _f32([1])),
        "blk.1.attn_q.weight": (_f32(np.ones(16)), _f32([1])),
        "blk.0.ffn_up_exps.weight": (_f32(np.ones(4 * 16)), _f32([1, 1, 1, 1])),
    }))


def test_for_tensor(small):
    assert small.for_tensor("blk.0.attn_q.weight", (32, 16)).shape == (16,)
    assert small.for_tensor("blk.0.ffn_up_exps.weight", (4, 8, 16)).shape == (64,)
    assert small.for_tensor("blk.7.attn_q.weight", (32, 16)) is None
    with pytest.raises(QuantError, match=r"blk\.0\.attn_q\.weight.*16 values.*needs 32"):
        small.for_tensor("blk.0.attn_q.weight", (32, 32))
    with pytest.raises(QuantError, match="ffn_up_exps"):
        small.for_tensor("blk.0.ffn_up_exps.weight", (2, 8, 16))  # 2 experts, entry has 4
    # the token embeddings: a misfit entry is dropped quietly, as llama-quantize does
    assert small.for_tensor("token_embd.weight", (100, 16)) is None


def test_filter(small):
    assert sorted(small.filter(include=["attn_q"]).entries) == ["blk.0.attn_q.weight", "blk.1.attn_q.weight"]
    assert sorted(small.filter(include=["blk.1", "exps"]).entries) == ["blk.0.ffn_up_exps.weight",
                                                                      "blk.1.attn_q.weight"]
    left = small.filter(exclude=["blk.0.", "token"])
    assert sorted(left.entries) == ["blk.1.attn_q.weight"] and sorted(left.counts) == sorted(left.entries)
    assert len(small.filter(include=["nothing-matches"])) == 0
    assert len(small) == 5  # filtering makes a new object
    with pytest.raises(UsageError):
        small.filter(include=["a"], exclude=["b"])


def test_check_finite(tmp_path):
    m = load_imatrix(write_imatrix_dat(tmp_path / "f.dat", {"ok": (1, _f32([1, 2])), "bad": (1, _f32([1, np.inf]))}))
    with pytest.raises(FormatError, match="'bad'.*index 1"):
        m.check_finite()
    m.filter(exclude=["bad"]).check_finite()


def test_quantize_metadata(tmp_path):
    long_name = "d" * 200
    path = write_imatrix_dat(tmp_path / "m.dat", {"x": (1, _f32([1])), "y": (1, _f32([1]))}, 12, long_name)
    m = load_imatrix(str(path))
    md = quantize_metadata(m)
    assert list(md) == ["quantize.imatrix.file", "quantize.imatrix.dataset", "quantize.imatrix.entries_count",
                        "quantize.imatrix.chunks_count"]
    assert md["quantize.imatrix.file"] == (GGUFValueType.STRING, str(path))
    assert md["quantize.imatrix.dataset"] == (GGUFValueType.STRING, "d" * 127)
    assert md["quantize.imatrix.entries_count"] == (GGUFValueType.UINT32, 2)
    assert md["quantize.imatrix.chunks_count"] == (GGUFValueType.UINT32, 12)
    assert quantize_metadata(m.filter(include=["x"]))["quantize.imatrix.entries_count"][1] == 1
    assert quantize_metadata(m.filter(include=["zzz"])) == {}
    assert quantize_metadata(None) == {}


def test_quantize_metadata_cuts_bytes_not_characters(tmp_path):
    m = Imatrix("é" * 100, {"x": _f32([1])})  # 200 bytes: 63 whole characters fit in 127 bytes
    assert quantize_metadata(m)["quantize.imatrix.file"][1] == "é" * 63
    assert "quantize.imatrix.chunks_count" not in quantize_metadata(m)


# --------------------------------------------------------------------------------------------------
# A GGUF imatrix written by ggml's own gguf writer, laid out as llama-imatrix lays it out
# --------------------------------------------------------------------------------------------------


class _GgmlInit(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


@pytest.mark.oracle
def test_reads_a_file_written_by_ggml(tmp_path, oracle):
    lib = ctypes.CDLL(str(oracle.library_path()))
    lib.ggml_init.restype = ctypes.c_void_p
    lib.ggml_init.argtypes = [_GgmlInit]
    lib.ggml_new_tensor_2d.restype = ctypes.c_void_p
    lib.ggml_new_tensor_2d.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    lib.ggml_set_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.ggml_get_data.restype = ctypes.c_void_p
    lib.ggml_get_data.argtypes = [ctypes.c_void_p]
    lib.ggml_free.argtypes = [ctypes.c_void_p]
    lib.gguf_init_empty.restype = ctypes.c_void_p
    lib.gguf_set_val_str.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
    lib.gguf_set_val_u32.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32]
    lib.gguf_set_arr_str.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_size_t]
    lib.gguf_add_tensor.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.gguf_write_to_file.restype = ctypes.c_bool
    lib.gguf_write_to_file.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_bool]
    lib.gguf_free.argtypes = [ctypes.c_void_p]

    stats = {  # name -> (values [n_mat * n_per_row], counts [n_mat])
        "blk.0.attn_output.weight": (_f32(RNG.random(64) * 9), _f32([100])),
        "blk.0.ffn_down_exps.weight": (_f32(RNG.random(3 * 32) * 9), _f32([10, 0, 7])),
    }
    ctx = lib.ggml_init(_GgmlInit(1 << 20, None, False))
    g = lib.gguf_init_empty()
    try:
        lib.gguf_set_val_str(g, b"general.type", b"imatrix")
        ds = (ctypes.c_char_p * 1)(b"calibration.txt")
        lib.gguf_set_arr_str(g, b"imatrix.datasets", ds, 1)
        lib.gguf_set_val_u32(g, b"imatrix.chunk_count", 5)
        lib.gguf_set_val_u32(g, b"imatrix.chunk_size", 512)
        for name, (values, counts) in sorted(stats.items()):
            nmat = counts.size
            s = lib.ggml_new_tensor_2d(ctx, 0, values.size // nmat, nmat)
            c = lib.ggml_new_tensor_2d(ctx, 0, 1, nmat)
            lib.ggml_set_name(s, f"{name}.in_sum2".encode())
            lib.ggml_set_name(c, f"{name}.counts".encode())
            ctypes.memmove(lib.ggml_get_data(s), values.ctypes.data, values.nbytes)
            ctypes.memmove(lib.ggml_get_data(c), counts.ctypes.data, counts.nbytes)
            lib.gguf_add_tensor(g, s)
            lib.gguf_add_tensor(g, c)
        assert lib.gguf_write_to_file(g, str(tmp_path / "ggml.gguf").encode(), False)
    finally:
        lib.gguf_free(g)
        lib.ggml_free(ctx)

    m = load_imatrix(tmp_path / "ggml.gguf")
    assert (m.datasets, m.chunk_count, m.chunk_size) == (["calibration.txt"], 5, 512)
    np.testing.assert_array_equal(m.entries["blk.0.attn_output.weight"],
                                  stats["blk.0.attn_output.weight"][0] / np.float32(100))
    got = m.entries["blk.0.ffn_down_exps.weight"].reshape(3, 32)
    vals = stats["blk.0.ffn_down_exps.weight"][0].reshape(3, 32)
    np.testing.assert_array_equal(got[0], vals[0] / np.float32(10))
    np.testing.assert_array_equal(got[1], np.ones(32, np.float32))
    np.testing.assert_array_equal(got[2], vals[2] / np.float32(7))
    assert m.for_tensor("blk.0.ffn_down_exps.weight", (3, 16, 32)) is not None
