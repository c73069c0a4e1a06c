"""`qtool imatrix`: an importance matrix computed from a text in llama.cpp, as llama-imatrix computes it.

Without llama.cpp: the eval callback (qtool.analysis.llama_runner.ActivationStats) on ggml tensors built here
from numpy arrays (dense, broadcast 3-D and expert multiplications, what it asks for, names, non-finite
sums), the ctypes layout against ggml.h where the reference source is at hand, and the GGUF writer against
qtool's reader. In llama.cpp (a child process: `qtool imatrix` itself): the bundled model's first-layer sums
recomputed in NumPy from its weights (rmsnorm of the token embeddings), the file read back, a conversion
with it byte for byte llama_model_quantize's given the same values, and the one-line errors.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PROSE, ROOT, need_oracle, run_qtool
from gguf import GGUFReader

from qtool.analysis import llama_runner as R
from qtool.formats.imatrix import load_imatrix, write_imatrix_gguf

FIXTURE = ROOT / "fixtures" / "tiny-llama-f32"
CTX = 64
TEXT = PROSE * 6




# --------------------------------------------------------------------------------------------------
# the callback, on tensors made here
# --------------------------------------------------------------------------------------------------

class Graph:
    """ggml tensors over numpy arrays (kept alive here), to hand to the callback as the scheduler would."""

    def __init__(self):
        self.keep = []

    def tensor(self, arr: np.ndarray | None = None, *, name: str = "", ne=None, gtype: int = R.GGML_TYPE_F32,
               op: int = 0, src=()) -> R.GGMLTensor:
        t = R.GGMLTensor()
        t.type, t.op = gtype, op
        t.name = name.encode()
        if arr is not None:
            ne = arr.shape[::-1]
            nb = arr.strides[::-1]
            t.data = arr.ctypes.data
            self.keep.append(arr)
        else:
            ne = ne or (1,)
            nb = [4] * len(ne)
        ne, nb = list(ne) + [1] * (4 - len(ne)), list(nb) + [nb[-1] * ne[-1]] * (4 - len(nb))
        for i in range(4):
            t.ne[i], t.nb[i] = ne[i], nb[i]
        for i, s in enumerate(src):
            t.src[i] = ctypes.pointer(s)
        self.keep.append(t)
        return t

    def matmul(self, weight: str, x: np.ndarray, *, w_ne=None, op=R.GGML_OP_MUL_MAT, ids=None, gtype=0):
        w = self.tensor(name=weight, ne=w_ne or (x.shape[-1], 4))
        src1 = self.tensor(x, gtype=gtype)
        src = (w, src1) if ids is None else (w, src1, self.tensor(ids, gtype=R.GGML_TYPE_I32))
        return self.tensor(op=op, src=src)


def feed(stats: R.ActivationStats, node: R.GGMLTensor) -> bool:
    """Ask, then (when wanted) collect, as ggml_backend_sched does."""
    addr = ctypes.addressof(node)
    return stats(addr, True, None) and stats(addr, False, None)


def test_dense_sums_in_row_order_float32():
    g, stats = Graph(), R.ActivationStats()
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((n, 24)) * 10 ** rng.uniform(-3, 3, 24)).astype(np.float32) for n in (16, 40)]
    for x in batches:
        assert feed(stats, g.matmul("blk.0.attn_q.weight", x))
    expect = np.zeros(24, np.float32)
    for row in np.concatenate(batches):
        expect += row * row  # float32, one row after another
    assert stats.error is None
    assert stats.sums["blk.0.attn_q.weight"].shape == (1, 24)
    assert np.array_equal(stats.sums["blk.0.attn_q.weight"][0], expect)
    assert stats.counts["blk.0.attn_q.weight"].tolist() == [56]
    assert stats.chunk_count(28) == 2 and stats.chunk_count(57) == 0


def test_what_the_callback_asks_for():
    g = Graph()
    x = np.ones((16, 8), np.float32)
    stats = R.ActivationStats()
    ask = lambda node: stats(ctypes.addressof(node), True, None)  # noqa: E731
    assert ask(g.matmul("blk.1.ffn_up.weight", x))
    assert not ask(g.matmul("blk.1.ffn_up.weight", x[:15]))           # batches under 16 rows
    assert not ask(g.matmul("blk.1.ffn_up.weight", x, gtype=1))       # src1 not F32
    assert not ask(g.matmul("output.weight", x))                       # output only with process_output
    assert R.ActivationStats(process_output=True)(ctypes.addressof(g.matmul("output.weight", x)), True, None)
    assert not ask(g.matmul("kq-0", x))                                # attention's own products
    assert not ask(g.tensor(x, op=R.GGML_OP_MUL_MAT - 1))              # another op (L2_NORM)
    node = g.matmul("blk.0.ffn_down.weight", x)
    node.src[0].contents.name = b"CPU#blk.0.ffn_down.weight#0"        # a scheduler copy's name
    assert feed(stats, node) and list(stats.sums) == ["blk.0.ffn_down.weight"]
    ids = np.zeros((1, 1), np.int32)
    assert ask(g.matmul("blk.0.ffn_up_exps.weight", np.ones((1, 1, 8), np.float32), op=R.GGML_OP_MUL_MAT_ID,
                        ids=ids, w_ne=(8, 4, 2)))                       # every expert product, any size


def test_broadcast_3d_weight_one_count():
    g, stats = Graph(), R.ActivationStats()
    x = np.random.default_rng(1).standard_normal((2, 4, 16, 8)).astype(np.float32)  # ne = [8, 16, 4, 2]
    assert feed(stats, g.matmul("blk.0.w.weight", x, w_ne=(8, 3, 2, 1)))          # 2 matrices on axis 2
    s = stats.sums["blk.0.w.weight"]
    assert s.shape == (2, 8) and stats.counts["blk.0.w.weight"].tolist() == [2 * 4 * 16 // 2]
    for m in range(2):
        expect = np.zeros(8, np.float32)
        for i3 in range(2):
            for i2 in (m, m + 2):
                for row in x[i3, i2]:
                    expect += row * row
        assert np.array_equal(s[m], expect)


def test_experts_by_routing_ids():
    g, stats = Graph(), R.ActivationStats()
    rng = np.random.default_rng(2)
    n_tokens, n_used, n_exp, ne0 = 6, 2, 4, 8
    x = rng.standard_normal((n_tokens, 1, ne0)).astype(np.float32)   # one row per token, broadcast to the slots
    ids = rng.integers(0, n_exp - 1, (n_tokens, n_used)).astype(np.int32)  # expert 3 never routed
    assert feed(stats, g.matmul("blk.0.ffn_up_exps.weight", x, op=R.GGML_OP_MUL_MAT_ID, ids=ids,
                                w_ne=(ne0, 5, n_exp)))
    expect, counts = np.zeros((n_exp, ne0), np.float32), np.zeros(n_exp, np.int64)
    for idx in range(n_used):
        for row in range(n_tokens):
            e = ids[row, idx]
            expect[e] += x[row, 0] * x[row, 0]
            counts[e] += 1
    assert np.array_equal(stats.sums["blk.0.ffn_up_exps.weight"], expect)
    assert stats.counts["blk.0.ffn_up_exps.weight"].tolist() == counts.tolist() and counts[3] == 0


def test_non_finite_sums_stop_the_graph():
    g, stats = Graph(), R.ActivationStats()
    x = np.ones((16, 8), np.float32)
    x[3, 2] = np.inf
    node = g.matmul("blk.0.attn_q.weight", x)
    assert stats(ctypes.addressof(node), True, None) and not stats(ctypes.addressof(node), False, None)
    assert isinstance(stats.error, R.QtoolError) and "blk.0.attn_q.weight" in str(stats.error)


def _header() -> Path | None:
    """ggml.h of the pinned build, under $QTOOL_LLAMA_CPP_SRC (.ci/run unpacks it from llama-cpp-python's sdist)."""
    root = os.environ.get("QTOOL_LLAMA_CPP_SRC", "")
    h = Path(root) / "ggml" / "include" / "ggml.h"
    return h if root and h.is_file() else None


def test_tensor_layout_matches_ggml_h():
    """GGMLTensor's fields in ggml.h's order, array sizes from its #defines, the op numbers from its enum
    (set QTOOL_LLAMA_CPP_SRC to llama.cpp's source of the pinned build; the run-time check against the loaded
    library is test_layout_matches_the_loaded_ggml)."""
    h = _header()
    if h is None:
        if os.environ.get("QTOOL_REQUIRE_ORACLE") == "1":
            pytest.fail("QTOOL_REQUIRE_ORACLE=1 but ggml.h of the pinned build is not under $QTOOL_LLAMA_CPP_SRC")
        pytest.skip("ggml.h of the pinned build not found (QTOOL_LLAMA_CPP_SRC)")
    src = h.read_text()
    defines = dict(re.findall(r"#\s*define\s+(GGML_MAX_\w+)\s+(\d+)", src))
    assert (R.GGML_MAX_DIMS, R.GGML_MAX_SRC, R.GGML_MAX_NAME, R.GGML_MAX_OP_PARAMS) == tuple(
        int(defines[k]) for k in ("GGML_MAX_DIMS", "GGML_MAX_SRC", "GGML_MAX_NAME", "GGML_MAX_OP_PARAMS"))
    body = re.search(r"struct ggml_tensor \{(.*?)\n    \};", src, re.S).group(1)
    body = re.sub(r"//[^\n]*", "", body)
    fields = re.findall(r"([A-Za-z_]\w*)\s*(?:\[[^\]]*\])?\s*;", body)
    assert fields == [f[0] for f in R.GGMLTensor._fields_]
    enum = re.search(r"enum ggml_op \{(.*?)\};", src, re.S).group(1)
    names = [m for m in re.findall(r"^\s*(GGML_OP_\w+)", re.sub(r"//[^\n]*", "", enum), re.M)]
    assert names.index("GGML_OP_MUL_MAT") == R.GGML_OP_MUL_MAT and names.index("GGML_OP_MUL_MAT_ID") == \
        R.GGML_OP_MUL_MAT_ID and names[0] == "GGML_OP_NONE"
    types = re.search(r"enum ggml_type \{(.*?)\};", src, re.S).group(1)
    assert re.search(r"GGML_TYPE_F32\s*=\s*0\b", types) and re.search(rf"GGML_TYPE_I32\s*=\s*{R.GGML_TYPE_I32}\b",
                                                                      types)
    assert ctypes.sizeof(R.GGMLTensor) == 336 and R.GGMLTensor.name.offset == 256 and R.GGMLTensor.src.offset == 152


def test_layout_matches_the_loaded_ggml():
    need_oracle()
    import llama_cpp.llama_cpp as lc  # the library only: ggml_tensor_overhead and ggml_op_name

    R.check_tensor_layout(lc)


# --------------------------------------------------------------------------------------------------
# the file
# --------------------------------------------------------------------------------------------------

def test_written_file_reads_back(tmp_path):
    rng = np.random.default_rng(3)
    sums = {"blk.0.attn_q.weight": rng.random((1, 32), np.float32),
            "blk.0.ffn_up_exps.weight": rng.random((3, 16), np.float32),
            "blk.1.w.weight": rng.random((2, 8), np.float32)}           # a dense 3-D weight: one count
    counts = {"blk.0.attn_q.weight": np.array([640]), "blk.0.ffn_up_exps.weight": np.array([5, 0, 7]),
              "blk.1.w.weight": np.array([40])}
    p = write_imatrix_gguf(tmp_path / "m.imatrix.gguf", sums, counts, datasets=["train.txt"], chunk_count=5,
                           chunk_size=128)
    im = load_imatrix(p)
    assert (im.datasets, im.chunk_count, im.chunk_size, im.is_legacy) == (["train.txt"], 5, 128, False)
    assert im.names() == sorted(sums)
    np.testing.assert_array_equal(im.entries["blk.0.attn_q.weight"], sums["blk.0.attn_q.weight"][0] / np.float32(640))
    e = im.entries["blk.0.ffn_up_exps.weight"].reshape(3, 16)
    np.testing.assert_array_equal(e[0], sums["blk.0.ffn_up_exps.weight"][0] / np.float32(5))
    assert (e[1] == 1).all()  # an expert never routed: 1.0, as llama-quantize reads it
    np.testing.assert_array_equal(im.entries["blk.1.w.weight"], sums["blk.1.w.weight"].reshape(-1) / np.float32(40))
    r = GGUFReader(p)
    assert [f for f in r.fields if not f.startswith("GGUF.")] == ["general.type", "imatrix.datasets",
                                                                  "imatrix.chunk_count", "imatrix.chunk_size"]
    assert r.fields["general.type"].contents() == "imatrix"
    shapes = {t.name: [int(n) for n in t.shape] for t in r.tensors}
    assert shapes["blk.0.attn_q.weight.in_sum2"] == [32] and shapes["blk.0.attn_q.weight.counts"] == [1]
    assert shapes["blk.0.ffn_up_exps.weight.in_sum2"] == [16, 3]
    assert shapes["blk.0.ffn_up_exps.weight.counts"] == [1, 3]
    assert shapes["blk.1.w.weight.in_sum2"] == [16]
    assert [t.name for t in r.tensors][:2] == ["blk.0.attn_q.weight.in_sum2", "blk.0.attn_q.weight.counts"]
    assert not list(tmp_path.glob(".*.tmp"))
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not mkstemp's private one


# --------------------------------------------------------------------------------------------------
# in llama.cpp, on the bundled model
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def computed(tmp_path_factory):
    need_oracle()
    from qtool.convert import convert

    d = tmp_path_factory.mktemp("imatrix_compute")
    model = convert(FIXTURE, "F32", d / "tiny-f32.gguf").output
    (d / "text.txt").write_text(TEXT)
    p = run_qtool("imatrix", model, "--text", d / "text.txt", "-o", d / "tiny.imatrix.gguf", "--ctx", CTX,
                  "--json", "--threads", "2")
    assert p.returncode == 0, p.stderr
    return d, model, json.loads(p.stdout)


@pytest.mark.oracle
def test_first_layer_sums_recomputed_in_numpy(computed):
    """blk.0's attention and gate/up inputs: rmsnorm of the token embeddings (with BOS at each chunk's start)."""
    from qtool.testing import client

    d, model, doc = computed
    r = GGUFReader(model)
    t = {x.name: np.array(x.data) for x in r.tensors}
    eps = float(r.fields["llama.attention.layer_norm_rms_epsilon"].contents())
    bos = int(r.fields["tokenizer.ggml.bos_token_id"].contents())
    tokens = client.tokenize(model, TEXT.encode(), add_special=True, parse_special=False, vocab_only=True)
    n_chunks = len(tokens) // CTX
    assert (doc["text_tokens"], doc["chunks"], doc["chunk_count"], doc["ctx"]) == (len(tokens), n_chunks,
                                                                                   n_chunks, CTX)
    ids = np.array(tokens[:n_chunks * CTX]).reshape(n_chunks, CTX)
    ids[:, 0] = bos
    x = t["token_embd.weight"].astype(np.float64)[ids.reshape(-1)]
    xn = x / np.sqrt(np.mean(x * x, axis=1, keepdims=True) + eps) * t["blk.0.attn_norm.weight"].astype(np.float64)
    expect = np.sum(xn * xn, axis=0)
    im = load_imatrix(d / "tiny.imatrix.gguf")
    assert im.counts["blk.0.attn_q.weight"].tolist() == [n_chunks * CTX]
    got = im.entries["blk.0.attn_q.weight"].astype(np.float64) * n_chunks * CTX
    np.testing.assert_allclose(got, expect, rtol=2e-5)
    # the same activations go into attn_k and attn_v
    assert np.array_equal(im.entries["blk.0.attn_k.weight"], im.entries["blk.0.attn_q.weight"])
    assert np.array_equal(im.entries["blk.0.attn_v.weight"], im.entries["blk.0.attn_q.weight"])
    assert np.array_equal(im.entries["blk.0.ffn_up.weight"], im.entries["blk.0.ffn_gate.weight"])


@pytest.mark.oracle
def test_file_reads_back_with_every_weight(computed):
    d, model, doc = computed
    im = load_imatrix(d / "tiny.imatrix.gguf")
    weights = {x.name: [int(n) for n in x.shape] for x in GGUFReader(model).tensors}
    want = sorted(n for n, s in weights.items() if n.startswith("blk.") and len(s) == 2)
    assert im.names() == want and doc["entries"] == len(want)
    for name in want:  # one value per input column of the weight, all positive
        assert im.entries[name].shape == (weights[name][0],) and (im.entries[name] > 0).all()
    assert (im.datasets, im.chunk_size) == ([str(d / "text.txt")], CTX)


@pytest.mark.oracle
def test_chunks_and_process_output(computed):
    d, model, _ = computed
    p = run_qtool("imatrix", model, "--text", d / "text.txt", "-o", d / "two.gguf", "--ctx", CTX, "--chunks", 2,
                  "--process-output", "--json", "--threads", "2")
    assert p.returncode == 0, p.stderr
    im = load_imatrix(d / "two.gguf")
    assert im.chunk_count == 2 and im.counts["blk.1.ffn_down.weight"].tolist() == [2 * CTX]
    assert "output.weight" in im.names() and im.entries["output.weight"].size == 256


@pytest.mark.oracle
@pytest.mark.parametrize("preset", ["Q4_K_M", "IQ4_XS", "IQ2_XS"])
def test_convert_with_it_equals_llama_model_quantize(computed, preset):
    """qtool convert --imatrix FILE is byte for byte llama_model_quantize given the values llama-quantize reads
    from FILE (in_sum2 / counts per entry)."""
    import llama_cpp as lc

    from qtool.convert import convert
    from qtool.quantizers import presets as P

    d, model, _ = computed
    values = load_imatrix(d / "tiny.imatrix.gguf").entries
    params = lc.llama_model_quantize_default_params()
    params.ftype = int(P.get_preset(preset).ftype)
    params.nthread = 2
    keep, entries = [], []
    for name, v in values.items():
        v = np.ascontiguousarray(v, dtype=np.float32)
        keep += [name.encode(), v]
        entries.append(lc.llama_model_imatrix_data(keep[-2], v.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                                   v.size))
    entries.append(lc.llama_model_imatrix_data(None, None, 0))
    params.imatrix = (lc.llama_model_imatrix_data * len(entries))(*entries)
    theirs = d / f"llama-{preset}.gguf"
    assert lc.llama_model_quantize(str(model).encode(), str(theirs).encode(), ctypes.byref(params)) == 0
    ours = convert(model, preset, d / f"qtool-{preset}.gguf", imatrix=d / "tiny.imatrix.gguf", threads=2).output
    a, b = GGUFReader(ours), GGUFReader(theirs)
    assert [(t.name, t.tensor_type) for t in a.tensors] == [(t.name, t.tensor_type) for t in b.tensors]
    bad = [t.name for t, u in zip(a.tensors, b.tensors) if not np.array_equal(t.data, u.data)]
    assert not bad, f"{preset}: {len(bad)} tensors differ from llama.cpp's, first {bad[:3]}"
    assert a.fields["quantize.imatrix.entries_count"].contents() == len(values)
    assert a.fields["quantize.imatrix.chunks_count"].contents() == computed[2]["chunk_count"]


def test_missing_llama_cpp_python_is_one_line_exit_2(monkeypatch, capsys, tmp_path):
    from qtool.cli import app

    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    monkeypatch.setitem(sys.modules, "llama_cpp.llama_cpp", None)
    (tmp_path / "t.txt").write_text(TEXT)
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(SystemExit) as e:
        app.main(["imatrix", str(tmp_path / "m.gguf"), "--text", str(tmp_path / "t.txt")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'qtool[eval]'" in err and "Traceback" not in err, err
    assert not (tmp_path / "m.imatrix.gguf").exists()


def test_unreadable_text_is_one_line(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    p = run_qtool("imatrix", tmp_path / "m.gguf", "--text", tmp_path / "missing.txt")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "missing.txt" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.oracle
def test_text_too_short_and_bad_options_are_one_line(computed, tmp_path):
    d, model, _ = computed
    (tmp_path / "short.txt").write_text("Too short to make two chunks.")
    p = run_qtool("imatrix", model, "--text", tmp_path / "short.txt", "-o", tmp_path / "x.gguf", "--ctx", CTX)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and f"at least {2 * CTX}" in p.stderr, p.stderr
    p = run_qtool("imatrix", model, "--text", d / "text.txt", "-o", tmp_path / "x.gguf", "--ctx", 8)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "--ctx 8" in p.stderr, p.stderr
    p = run_qtool("imatrix", model, "--text", d / "text.txt", "-o", model)
    assert p.returncode == 2 and "refusing to overwrite" in p.stderr, p.stderr
    assert not list(tmp_path.glob("x.gguf*")) and not list(tmp_path.glob(".x.gguf*"))


@pytest.mark.oracle
def test_experts_in_a_moe_model(tmp_path):
    """Qwen3-MoE (4 experts, 2 used): every token counts once for each expert it is routed to, the gate and up
    projections of the experts see the same rows, and each expert has its own values."""
    need_oracle()
    from qtool.convert import convert
    from qtool.testing import hf_models

    folder = hf_models.write(tmp_path / "moe", "qwen3_moe")
    model = convert(folder, "F32", tmp_path / "moe.gguf").output
    (tmp_path / "text.txt").write_text(TEXT)
    p = run_qtool("imatrix", model, "--text", tmp_path / "text.txt", "-o", tmp_path / "moe.imatrix.gguf",
                  "--ctx", 32, "--json", "--threads", "2")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    r = GGUFReader(model)
    n_exp = int(r.fields["qwen3moe.expert_count"].contents())
    n_used = int(r.fields["qwen3moe.expert_used_count"].contents())
    im = load_imatrix(tmp_path / "moe.imatrix.gguf")
    tokens = doc["tokens_evaluated"]
    for layer in range(2):
        names = [f"blk.{layer}.ffn_{k}_exps.weight" for k in ("gate", "up", "down")]
        counts = [im.counts[n] for n in names]
        assert all(c.size == n_exp for c in counts) and counts[0].sum() == tokens * n_used
        assert all(np.array_equal(c, counts[0]) for c in counts)
        gate, up = im.entries[names[0]], im.entries[names[1]]
        assert np.array_equal(gate, up) and gate.size == n_exp * 64
        per_expert = gate.reshape(n_exp, -1)
        assert len({row.tobytes() for row in per_expert}) == n_exp
        assert im.counts[f"blk.{layer}.ffn_gate_inp.weight"].tolist() == [tokens]
