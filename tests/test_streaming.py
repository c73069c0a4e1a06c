"""Streaming: converting or inspecting a model keeps the resident set near one tensor, not the model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from gguf import GGUFWriter

from qtool.formats.source import open_model

N_TENSORS, ROWS, COLS = 24, 512, 2048  # 24 tensors of 4 MiB: a 96 MiB model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("stream") / "m.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(N_TENSORS)
    w.add_embedding_length(COLS)
    w.add_head_count(16)
    w.add_head_count_kv(16)
    rng = np.random.default_rng(0)
    for i in range(N_TENSORS):
        w.add_tensor(f"blk.{i}.ffn_up.weight", (rng.standard_normal((ROWS, COLS)) * 0.02).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


#: the child's own peak resident set in KiB: VmHWM, not ru_maxrss, which Linux carries over fork+exec from the
#: (much bigger) pytest process, so that every child would look as big as it
_PEAK_KB = "[l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]"


def _rss_file_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")


def test_release_drops_a_consumed_tensors_pages(model):
    tensor_kb = ROWS * COLS * 4 // 1024
    with open_model(model) as src:
        before = _rss_file_kb()
        for t in src.tensors:
            src.load(t.name).sum()  # touch every page, as a quantizer does
            src.release(t.name)
        grown = _rss_file_kb() - before
        # without release the mapped model (96 MiB) stays resident; with it, at most about one tensor
        assert grown < 2 * tensor_kb, f"resident file pages grew by {grown} KiB over {N_TENSORS} tensors"
        x = src.load(src.tensors[0].name)  # released pages come back from the file, unchanged
        assert x.shape == (ROWS, COLS) and np.isfinite(x).all()


def test_convert_peak_memory_is_not_the_model(model, tmp_path):
    out = tmp_path / "o.gguf"
    code = (
        "import sys; from qtool.cli.app import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        f"print({_PEAK_KB})\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code, "convert", str(model), "--type", "Q8_0", "-o", str(out), "-q"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    peak_mib = int(r.stdout.strip().splitlines()[-1]) / 1024
    # the runtime a convert needs, without a model: the CLI imported, the Q8_0 kernel loaded and run once
    baseline = subprocess.run([sys.executable, "-c", "import numpy as np, qtool.cli.app; from qtool.quantizers import "
                               "get; get('Q8_0').quantize(np.ones((4, 32), np.float32)); import qtool.convert; "
                               f"print({_PEAK_KB})"], capture_output=True, text=True, env=env)
    base_mib = int(baseline.stdout.strip()) / 1024
    model_mib = model.stat().st_size / 2**20
    # the run may hold a few tensors' worth (input view, output bytes, numba/LLVM working memory) but not the model
    assert peak_mib - base_mib < 0.5 * model_mib, (peak_mib, base_mib, model_mib)


# -- a big tensor a slice of rows at a time ------------------------------------------------------------------


def _one_tensor_gguf(path: Path, a: np.ndarray, name: str = "blk.0.ffn_up.weight") -> Path:
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


class _Plan:
    def __init__(self, name, shape, qtype):
        from gguf import GGMLQuantizationType

        self.name, self.shape, self.qtype, self.quantize = name, shape, qtype, True
        self.source_type = GGMLQuantizationType.F32


class _Imatrix:
    def __init__(self, w):
        self.w = w

    def for_tensor(self, name, shape):
        return self.w


@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_K", "IQ4_NL"])
def test_slices_give_the_whole_tensors_bytes(tmp_path, monkeypatch, type_name):
    """A tensor bigger than the slice size is quantized in slices of rows; the bytes are those of the whole."""
    import qtool.convert as pipeline
    from gguf import GGMLQuantizationType
    from qtool.quantizers import get

    rng = np.random.default_rng(1)
    a = (rng.standard_t(4, (300, 512)) * 0.02).astype(np.float32)
    imp = (rng.random(512) + 0.01).astype(np.float32)
    qtype = GGMLQuantizationType[type_name]
    monkeypatch.setattr(pipeline, "_CHUNK_BYTES", 7 * 512 * 4)  # 7 rows a slice: the last one short
    with open_model(_one_tensor_gguf(tmp_path / "m.gguf", a)) as src:
        for imatrix in (None, imp):
            got = pipeline._tensor_bytes(src, _Plan("blk.0.ffn_up.weight", a.shape, qtype),
                                         None if imatrix is None else _Imatrix(imatrix), 2)
            whole = get(qtype).quantize(a, imatrix, threads=2)
            assert got.shape == whole.shape and np.array_equal(got, whole), (type_name, imatrix is not None)


def test_slices_of_experts_keep_each_experts_importance(tmp_path, monkeypatch):
    import qtool.convert as pipeline
    from gguf import GGMLQuantizationType
    from qtool.quantizers import get

    rng = np.random.default_rng(2)
    a = (rng.standard_normal((4, 40, 256)) * 0.02).astype(np.float32)
    imp = (rng.random((4, 256)) * np.array([[1], [10], [100], [1000]]) + 0.01).astype(np.float32)
    monkeypatch.setattr(pipeline, "_CHUNK_BYTES", 16 * 256 * 4)  # 16 rows a slice: slices end at each expert
    with open_model(_one_tensor_gguf(tmp_path / "m.gguf", a, "blk.0.ffn_up_exps.weight")) as src:
        got = pipeline._tensor_bytes(src, _Plan("blk.0.ffn_up_exps.weight", a.shape, GGMLQuantizationType.IQ4_XS),
                                     _Imatrix(imp), 2)
    whole = get(GGMLQuantizationType.IQ4_XS).quantize(a, imp, threads=2)
    assert np.array_equal(got, whole)


def test_a_bad_row_in_a_later_slice_is_named_by_its_row_in_the_tensor(tmp_path, monkeypatch):
    import qtool.convert as pipeline
    from gguf import GGMLQuantizationType
    from qtool.errors import QuantError

    a = np.ones((64, 256), dtype=np.float32)
    a[45, 17] = np.inf
    monkeypatch.setattr(pipeline, "_CHUNK_BYTES", 10 * 256 * 4)
    with open_model(_one_tensor_gguf(tmp_path / "m.gguf", a)) as src:
        with pytest.raises(QuantError, match=r"blk\.0\.ffn_up\.weight: row 45 holds a non-finite value \(inf\) at "
                                             r"column 17"):
            pipeline._tensor_bytes(src, _Plan("blk.0.ffn_up.weight", a.shape, GGMLQuantizationType.Q4_0), None, 1)


def _convert_peak_mib(model: Path, out: Path, setting: str, value: int, qtype: str = "Q8_0") -> float:
    """The peak RSS (MiB) of a child that sets qtool.convert.<setting> = value and converts ``model`` to
    ``qtype``."""
    code = (
        f"import sys; import qtool.convert; qtool.convert.{setting} = {value}\n"
        "from qtool.cli.app import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        f"print({_PEAK_KB})\n"
    )
    out.unlink(missing_ok=True)
    r = subprocess.run([sys.executable, "-c", code, "convert", str(model), "--type", qtype, "--pure", "-o", str(out),
                        "--quiet"], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip().splitlines()[-1]) / 1024


def test_one_big_tensor_is_not_resident_whole(tmp_path):
    """A 96 MiB tensor (a big vocabulary's embeddings, say) converts with its input pages dropped slice by
    slice: the peak is most of a tensor below the same run with one slice (8 MiB slices here)."""
    rows, cols = 6144, 4096
    rng = np.random.default_rng(0)
    model = _one_tensor_gguf(tmp_path / "big.gguf", (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32))

    def peak_mib(slice_bytes: int) -> float:
        return _convert_peak_mib(model, tmp_path / "o.gguf", "_CHUNK_BYTES", slice_bytes)

    peak_mib(8 << 20)  # the kernels compiled (or loaded from Numba's cache) before anything is compared
    whole, sliced = peak_mib(1 << 40), peak_mib(8 << 20)
    tensor_mib = rows * cols * 4 / 2**20
    assert whole - sliced > 0.6 * tensor_mib, (whole, sliced, tensor_mib)


# -- F16/BF16 widened into one reused buffer --------------------------------------------------------------


def test_a_half_tensor_widens_into_the_callers_buffer(monkeypatch):
    """load(into=) gives the same floats as a fresh load, as a view of the buffer where the tensor is stored as it
    is used (llama's permuted q/k are widened and permuted afresh)."""
    from qtool.formats import source as source_module

    monkeypatch.setattr(source_module, "_WIDEN_IN_KERNEL", 1)  # the bundled model's tensors are small
    buffer = np.full(1 << 18, np.nan, np.float32)
    with open_model(ROOT / "fixtures" / "tiny-llama") as src:
        for info in src.tensors:
            got = src.load(info.name, into=buffer)
            permuted = info.name.endswith(("attn_q.weight", "attn_k.weight"))
            assert np.shares_memory(got, buffer) != permuted, info.name
            np.testing.assert_array_equal(got, src.load(info.name))


def test_converting_through_one_buffer_writes_the_same_file(tmp_path, monkeypatch):
    from qtool import convert as pipeline
    from qtool.formats import source as source_module

    monkeypatch.setattr(source_module, "_WIDEN_IN_KERNEL", 1)
    reused = pipeline.convert(ROOT / "fixtures" / "tiny-llama", "Q4_K_M", tmp_path / "a.gguf").output
    monkeypatch.setattr(pipeline._Reused, "for_tensor", lambda self, info: None)
    fresh = pipeline.convert(ROOT / "fixtures" / "tiny-llama", "Q4_K_M", tmp_path / "b.gguf").output
    assert reused.read_bytes() == fresh.read_bytes()


def test_tensors_are_quantized_into_one_reused_buffer(tmp_path, monkeypatch):
    """convert quantizes every tensor into one growing uint8 buffer and writes the same file as with a fresh
    array per tensor."""
    from qtool import convert as pipeline

    model = ROOT / "fixtures" / "tiny-llama"
    calls = []
    real = pipeline._Reused.for_slice

    def for_slice(self, n):
        got = real(self, n)
        calls.append((self._dtype, got))
        return got

    monkeypatch.setattr(pipeline._Reused, "for_slice", for_slice)
    reused = pipeline.convert(model, "Q4_K_M", tmp_path / "a.gguf").output
    buffers = [b for dtype, b in calls if dtype == np.uint8]
    assert len(buffers) > 5 and len({b.__array_interface__["data"][0] for b in buffers}) < len(buffers)
    monkeypatch.setattr(pipeline._Reused, "for_slice", lambda self, n: None if self._dtype == np.uint8 else real(self, n))
    fresh = pipeline.convert(model, "Q4_K_M", tmp_path / "b.gguf").output
    assert reused.read_bytes() == fresh.read_bytes()


# -- F16/BF16 tensors widened and quantized a slice of rows at a time ------------------------------------------


def _bf16_gguf(path: Path, a: np.ndarray, name: str = "blk.0.ffn_up.weight") -> tuple[Path, np.ndarray]:
    """A one-tensor GGUF of ``a`` cut to BF16, and the float32 values it holds."""
    from gguf import GGMLQuantizationType

    words = (a.view(np.uint32) >> np.uint32(16)).astype(np.uint16)
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_tensor(name, words.view(np.uint8), raw_dtype=GGMLQuantizationType.BF16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, (words.astype(np.uint32) << np.uint32(16)).view(np.float32)


def test_a_half_tensor_is_widened_and_quantized_a_slice_at_a_time(tmp_path, monkeypatch):
    """A big BF16 tensor goes through a buffer of a few rows, slice by slice (no widening is bigger), to the bytes
    of the whole tensor quantized at once, with and without an importance vector; Q8_0 reads the words as they
    are (no widening at all)."""
    import qtool.convert as pipeline
    from gguf import GGMLQuantizationType
    from qtool.formats import source as source_module
    from qtool.quantizers import get

    rng = np.random.default_rng(3)
    path, floats = _bf16_gguf(tmp_path / "h.gguf", (rng.standard_t(4, (300, 512)) * 0.02).astype(np.float32))
    imp = (rng.random(512) + 0.01).astype(np.float32)
    monkeypatch.setattr(pipeline, "_SLICED_HALVES", 1)
    monkeypatch.setattr(pipeline, "_SLICE_FLOATS", 7 * 512)  # 7 rows a slice: 43 slices, the last one short
    monkeypatch.setattr(source_module, "_WIDEN_IN_KERNEL", 1)
    sizes, real = [], source_module.widen
    monkeypatch.setattr(source_module, "widen", lambda d, t, s, into=None: sizes.append(int(np.prod(s))) or
                        real(d, t, s, into))
    with open_model(path) as src:
        for name in ("Q8_0", "Q4_K", "IQ4_NL"):
            qtype = GGMLQuantizationType[name]
            for imatrix in (None, imp):
                sizes.clear()
                got = pipeline._tensor_bytes(src, _Plan("blk.0.ffn_up.weight", floats.shape, qtype),
                                             None if imatrix is None else _Imatrix(imatrix), 2, pipeline._Reused())
                assert np.array_equal(got, get(qtype).quantize(floats, imatrix, threads=2)), name
                if get(qtype).reads_bfloat16:  # Q8_0 quantizes the words as they are: nothing is widened
                    assert sizes == [], sizes
                else:
                    assert len(sizes) == 43 and max(sizes) == 7 * 512, sizes


def test_sources_give_half_words_of_tensors_stored_as_used(tmp_path):
    """halves(): the stored words of each F16/BF16 tensor, rearranged where the tensor is (llama's permuted q/k),
    which widen to what load() gives; None for F32 tensors."""
    from qtool.formats.source import widen

    path, floats = _bf16_gguf(tmp_path / "h.gguf", np.linspace(-1, 1, 64 * 32, dtype=np.float32).reshape(64, 32))
    with open_model(path) as src:
        words, dtype = src.halves("blk.0.ffn_up.weight")
        assert dtype == "BF16" and words.dtype == np.uint16 and words.shape == (64, 32)
        np.testing.assert_array_equal(widen(words, dtype, words.shape), floats)
    with open_model(ROOT / "fixtures" / "tiny-llama") as src:
        permuted = 0
        for info in src.tensors:
            h = src.halves(info.name)
            assert h is not None, info.name
            np.testing.assert_array_equal(widen(h[0], h[1], h[0].shape), src.load(info.name))
            permuted += info.name.endswith(("attn_q.weight", "attn_k.weight"))
        assert permuted > 0
    with open_model(_one_tensor_gguf(tmp_path / "f.gguf", floats)) as src:
        assert src.halves("blk.0.ffn_up.weight") is None


def test_converting_halves_in_slices_writes_the_same_file(tmp_path, monkeypatch):
    from qtool import convert as pipeline
    from qtool.formats import source as source_module
    from qtool.formats.source import ModelSource

    monkeypatch.setattr(source_module, "_WIDEN_IN_KERNEL", 1)
    monkeypatch.setattr(pipeline, "_SLICED_HALVES", 1)
    monkeypatch.setattr(pipeline, "_SLICE_FLOATS", 1000)
    sliced = pipeline.convert(ROOT / "fixtures" / "tiny-llama", "Q4_K_M", tmp_path / "a.gguf").output
    monkeypatch.setattr(ModelSource, "halves", lambda self, name: None)
    whole = pipeline.convert(ROOT / "fixtures" / "tiny-llama", "Q4_K_M", tmp_path / "b.gguf").output
    assert sliced.read_bytes() == whole.read_bytes()


def test_a_big_half_tensor_is_never_float32_whole(tmp_path):
    """A 6144 x 4096 BF16 tensor (96 MiB as float32) converts to Q4_0 through 8 MiB slices: the peak is most of the
    float32 tensor below the same run with the tensor widened whole. To Q8_0, whose kernel reads the words, it
    is never widened: as low with no slicing asked for."""
    rows, cols = 6144, 4096
    rng = np.random.default_rng(0)
    model, _ = _bf16_gguf(tmp_path / "big.gguf", (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32))

    def peak_mib(sliced_from: int, qtype: str) -> float:
        return _convert_peak_mib(model, tmp_path / "o.gguf", "_SLICED_HALVES", sliced_from, qtype)

    for qtype in ("Q4_0", "Q8_0"):
        peak_mib(1, qtype)  # the kernels compiled (or loaded from Numba's cache) before anything is compared
    whole, sliced = peak_mib(1 << 40, "Q4_0"), peak_mib(1 << 20, "Q4_0")
    assert whole - sliced > 0.6 * rows * cols * 4 / 2**20, (whole, sliced)
    as_stored = peak_mib(1 << 40, "Q8_0")
    assert whole - as_stored > 0.6 * rows * cols * 4 / 2**20, (whole, as_stored)


@pytest.mark.parametrize("case, family, tokenizer", [("gemma3_bf16", None, None), ("llama3_bf16", None, None),
                                                     ("qwen3_moe_bf16", "qwen3_moe", "smollm2")])
def test_every_half_tensor_in_slices_converts_to_the_same_file(tmp_path, monkeypatch, case, family, tokenizer):
    """With every tensor sliced (a few rows at a time) the file is the one widening whole gives: gemma's norm + 1
    (a transform of the values, so never through the words), llama's permuted q/k and stacked experts (moved
    as words)."""
    from qtool import convert as pipeline
    from qtool.formats import source as source_module
    from qtool.formats.source import ModelSource
    from qtool.testing import hf_models_more as more

    if family is None:
        folder = more.write_case(tmp_path / case, case)
    else:
        folder = more.write_folder(tmp_path / case, family, tokenizer, more.case_config(family), dtype="BF16")
    monkeypatch.setattr(source_module, "_WIDEN_IN_KERNEL", 1)
    monkeypatch.setattr(pipeline, "_SLICED_HALVES", 1)
    monkeypatch.setattr(pipeline, "_SLICE_FLOATS", 1000)
    from gguf import GGMLQuantizationType as T

    with open_model(folder) as src:
        stored = [t for t in src.tensors if t.qtype in (T.F16, T.BF16)]  # not rope_freqs, which is computed
        shifted = [t.name for t in stored if src.halves(t.name) is None]
    assert stored and bool(shifted) == (case == "gemma3_bf16"), shifted  # only the norms gemma adds 1 to
    for preset in ("Q8_0", "F32", "F16", "BF16"):  # (Q8_0, F16 and BF16 read the words as they are)
        sliced = pipeline.convert(folder, preset, tmp_path / f"a-{preset}.gguf").output.read_bytes()
        with monkeypatch.context() as m:
            m.setattr(ModelSource, "halves", lambda self, name: None)
            whole = pipeline.convert(folder, preset, tmp_path / f"b-{preset}.gguf").output.read_bytes()
        assert sliced == whole, preset
