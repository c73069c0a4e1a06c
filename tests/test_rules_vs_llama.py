"""plan_model against llama.cpp itself (the llama-cpp-python 0.3.36 build).

Two oracles:
  * llama_model_quantize on small F32 GGUF models written here: the output's tensor types (and order, and
    general.file_type) must be what plan_model says, for every preset it can run, with and without an
    importance matrix, with the overrides, and it must refuse where plan_model/check_imatrix refuse.
  * llama_quant_compute_types, llama.cpp's own planning entry point (llama-ext.h, exported from libllama as
    C++ symbols), on mock models: no data and no quantizing, so it covers what cannot be run cheaply
    (80-layer 70B models, falcon, 8-expert MoE with the IQ presets, glm5-next, bailingmoe3).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
from conftest import need_oracle
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader

from qtool.errors import QuantError, UsageError
from qtool.formats.ggml_types import ggml_type
from qtool.formats.gguf_in import GGUFSource
from qtool import plan as PL
from qtool.quantizers import presets as P
from qtool.testing.models import ModelSpec, TensorSpec, write_gguf, write_model

pytestmark = pytest.mark.oracle
need_oracle()
import llama_cpp  # noqa: E402
lc = llama_cpp.llama_cpp


@ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
def _quiet(level, text, user_data):  # llama.cpp logs every tensor; keep test output readable
    pass


lc.llama_log_set(_quiet, None)

VARIANTS = {
    # 16 layers so the n_layer/16 rules bite; GQA 4
    "dense16_gqa4": ModelSpec(n_layer=16, n_embd=256, n_ff=256, n_head=8, n_head_kv=2, n_vocab=64),
    # tied embeddings (no output.weight), no GQA, ffn rows (640) a multiple of 128 but not of 256
    "tied_mha_ff640": ModelSpec(n_layer=8, n_embd=256, n_ff=640, n_head=4, n_head_kv=4, tied=True, n_vocab=64),
    # rows of 288 (not a multiple of 256) and 600 (not even of 32: F16)
    "odd_rows": ModelSpec(n_layer=8, n_embd=288, n_ff=600, n_head=8, n_head_kv=4, n_vocab=64),
    # 8-expert MoE: the expert counters go by the layer in the name, attn_v/k -> Q8_0. Expert rows of 64
    # keep it small: ffn_down_exps always falls back, but to a different type for each rule's choice (the
    # mock planner below runs the same model with 256-wide expert rows)
    "moe8": ModelSpec(n_layer=8, n_embd=256, n_ff=512, n_head=8, n_head_kv=4, n_expert=8, n_expert_used=2,
                      n_ff_exp=64, n_vocab=64),
    # small, for the slow IQ quantizers: 8 layers are enough for the n_layer/8 rules
    "imatrix_gqa4": ModelSpec(n_layer=8, n_embd=256, n_ff=256, n_head=8, n_head_kv=2, n_vocab=64),
    # fused attn_qkv, GQA 2
    "fused_qkv": ModelSpec(n_layer=8, n_embd=256, n_ff=256, n_head=8, n_head_kv=4, fused_qkv=True, n_vocab=64),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {name: write_model(d / f"{name}.gguf", spec, seed=i) for i, (name, spec) in enumerate(VARIANTS.items())}


# --------------------------------------------------------------------------------------------------
# Oracle 1: llama_model_quantize
# --------------------------------------------------------------------------------------------------


def _imatrix_array(tensors, keep=lambda name: True):
    """llama_model_imatrix_data for every quantizable tensor: ones, n_per_row * n_expert each."""
    entries, keepalive = [], []
    for t in tensors:
        if len(t.shape) < 2 or t.name.endswith("_norm.weight") or not keep(t.name):
            continue
        n = t.shape[-1] * (t.shape[0] if len(t.shape) == 3 else 1)
        buf = np.ones(n, dtype=np.float32)
        name = t.name.encode()
        keepalive += [buf, name]
        entries.append(lc.llama_model_imatrix_data(name, buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), n))
    entries.append(lc.llama_model_imatrix_data(None, None, 0))
    arr = (lc.llama_model_imatrix_data * len(entries))(*entries)
    return arr, keepalive


def _rule_params(opt: PL.PlanOptions) -> tuple[lc.llama_model_quantize_params, list]:
    """llama_model_quantize_params with ``opt``'s rule options (pure, output tensor, the type of
    output.weight and token_embd.weight, --tensor-type overrides), and the arrays it points into, which
    must outlive it."""
    params = lc.llama_model_quantize_default_params()
    params.pure = opt.pure
    params.quantize_output_tensor = not opt.leave_output_tensor
    if opt.output_tensor_type is not None:
        params.output_tensor_type = int(opt.output_tensor_type)
    if opt.token_embedding_type is not None:
        params.token_embedding_type = int(opt.token_embedding_type)
    keep = []
    if opt.tensor_types:
        tt = [lc.llama_model_tensor_override(rx.encode(), int(q)) for rx, q in opt.tensor_types]
        tt.append(lc.llama_model_tensor_override(None, 43))  # terminator (pattern NULL, GGML_TYPE_COUNT)
        arr = (lc.llama_model_tensor_override * len(tt))(*tt)
        keep.append(arr)
        params.tt_overrides = arr
    return params, keep


def llama_quantize(inp: Path, out: Path, preset: str, opt: PL.PlanOptions | None = None,
                   imatrix_tensors=None, imatrix_keep=lambda name: True) -> int:
    """Run llama.cpp's quantizer; returns its status (0 = done)."""
    p = P.get_preset(preset)
    opt = opt or PL.PlanOptions()
    params, keep = _rule_params(opt)
    params.ftype = int(p.ftype)
    params.nthread = 2
    params.only_copy = p.only_copy
    params.allow_requantize = opt.allow_requantize
    if imatrix_tensors is not None:
        arr, alive = _imatrix_array(imatrix_tensors, imatrix_keep)
        keep += [arr, alive]
        params.imatrix = arr
    if out.exists():
        out.unlink()
    return lc.llama_model_quantize(str(inp).encode(), str(out).encode(), ctypes.byref(params))


def read_types(path: Path) -> tuple[list[tuple[str, T]], int]:
    # qtool's reader: gguf-py's GGUFReader refuses the Q2_0 (type 42) files llama.cpp writes
    with GGUFSource(path) as src:
        return [(t.name, t.qtype) for t in src.tensors], int(src.metadata["general.file_type"])


def assert_same_plan(plans: list[PL.TensorPlan], got: list[tuple[str, T]], label: str) -> None:
    want = [(pl.name, pl.qtype) for pl in plans]
    assert [n for n, _ in got] == [n for n, _ in want], f"{label}: tensor order differs from llama-quantize"
    bad = [f"{n}: qtool {w.name} ({pl.reason}), llama.cpp {g.name}"
           for (n, w), (_, g), pl in zip(want, got, plans) if w != g]
    assert not bad, f"{label}: {len(bad)} of {len(want)} tensors differ, first: " + "; ".join(bad[:6])


def check_against_llama(tmp_path: Path, inp: Path, spec_meta, tensors, preset: str,
                        opt: PL.PlanOptions | None = None, with_imatrix: bool = False) -> list[PL.TensorPlan]:
    opt = opt or PL.PlanOptions()
    if with_imatrix:
        opt = PL.PlanOptions(**{**opt.__dict__, "has_imatrix": True})
    plans = PL.plan_model(preset, spec_meta, tensors, opt)
    out = tmp_path / "out.gguf"
    rc = llama_quantize(inp, out, preset, opt, imatrix_tensors=tensors if with_imatrix else None)
    assert rc == 0, f"llama.cpp refused {preset}"
    got, ftype = read_types(out)
    assert_same_plan(plans, got, f"{preset}{' +imatrix' if with_imatrix else ''}")
    assert ftype == PL.file_type(preset, spec_meta, tensors)
    return plans


def _runnable(preset: P.Preset) -> bool:
    return preset.alias_of is None


NO_IMATRIX = [p.name for p in P.PRESETS.values() if _runnable(p) and not PL.imatrix_required(p)]
NEEDS_IMATRIX = [p.name for p in P.PRESETS.values() if _runnable(p) and PL.imatrix_required(p)]


def test_preset_split_is_plausible():
    # the split above comes from imatrix_required; it must at least sort these well-known ones
    assert {"Q4_K_M", "Q2_K", "Q8_0", "IQ4_NL", "F16"} <= set(NO_IMATRIX)
    assert {"IQ2_XXS", "IQ1_S", "Q2_K_S", "IQ3_XXS", "IQ3_XS"} <= set(NEEDS_IMATRIX)


def _cases(variants, presets):
    """(variant, preset) params; the IQ quantizers are slow on the bigger models: marked slow (the mock
    planner below covers their rules quickly)."""
    out = []
    for v in variants:
        for pr in presets:
            slow = pr.startswith(("IQ1", "IQ2")) or (v in ("moe8", "dense16_gqa4") and pr.startswith("IQ"))
            out.append(pytest.param(v, pr, id=f"{v}-{pr}", marks=[pytest.mark.slow] if slow else []))
    return out


@pytest.mark.parametrize(("variant", "preset"), _cases(VARIANTS, NO_IMATRIX))
def test_preset_matches_llama(models, tmp_path, variant, preset):
    spec = VARIANTS[variant]
    try:
        PL.plan_model(preset, spec.metadata(), spec.tensors())
    except QuantError:
        # Q1_0 (block 128) has no fallback: llama.cpp fails on such a row too
        assert preset == "Q1_0"
        assert llama_quantize(models[variant], tmp_path / "out.gguf", preset) != 0
        return
    check_against_llama(tmp_path, models[variant], spec.metadata(), spec.tensors(), preset)


@pytest.mark.parametrize(("variant", "preset"), _cases(
    ["imatrix_gqa4", "tied_mha_ff640"], NEEDS_IMATRIX + ["Q4_0", "Q5_0", "IQ4_NL", "IQ4_XS", "Q4_K_M"]))
def test_preset_with_imatrix_matches_llama(models, tmp_path, variant, preset):
    spec = VARIANTS[variant]
    check_against_llama(tmp_path, models[variant], spec.metadata(), spec.tensors(), preset, with_imatrix=True)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["IQ2_XXS", "IQ2_M", "IQ3_XXS", "IQ1_M"])
def test_iq_presets_on_moe_with_imatrix(models, tmp_path, preset):
    spec = VARIANTS["moe8"]
    check_against_llama(tmp_path, models["moe8"], spec.metadata(), spec.tensors(), preset, with_imatrix=True)


OVERRIDES = {
    "output_q4_0": PL.PlanOptions(output_tensor_type=T.Q4_0),
    "embd_q8_0": PL.PlanOptions(token_embedding_type=T.Q8_0),
    "both": PL.PlanOptions(output_tensor_type=T.Q5_K, token_embedding_type=T.F16),
    "pure": PL.PlanOptions(pure=True),
    "leave_output": PL.PlanOptions(leave_output_tensor=True),
    "tensor_types": PL.PlanOptions(tensor_types=[("attn_v", T.Q8_0), (r"blk\.[0-3]\.ffn_down", T.Q2_K),
                                                ("ffn", T.Q5_0), ("output", T.IQ4_NL)]),
    "tensor_types_pure": PL.PlanOptions(pure=True, tensor_types=[("ffn_up", T.Q6_K)]),
}


@pytest.mark.parametrize("override", list(OVERRIDES))
@pytest.mark.parametrize("variant", ["dense16_gqa4", "tied_mha_ff640", "odd_rows"])
@pytest.mark.parametrize("preset", ["Q4_K_M", "Q3_K_S", "Q4_0", "F16"])
def test_overrides_match_llama(models, tmp_path, variant, preset, override):
    spec = VARIANTS[variant]
    opt = OVERRIDES[override]
    if variant == "odd_rows" and override == "both":
        # Q5_K does not fit 288-wide rows; llama.cpp applies no fallback to --output-tensor-type and aborts
        # the process, plan_model raises QuantError instead (test_presets.py)
        pytest.skip("llama.cpp aborts on a misfit --output-tensor-type")
    check_against_llama(tmp_path, models[variant], spec.metadata(), spec.tensors(), preset, opt)


# --------------------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", NEEDS_IMATRIX)
def test_imatrix_refusal_matches_llama(models, tmp_path, preset):
    spec = VARIANTS["dense16_gqa4"]
    plans = PL.plan_model(preset, spec.metadata(), spec.tensors())
    with pytest.raises(UsageError):
        PL.check_imatrix(plans, None)
    assert llama_quantize(models["dense16_gqa4"], tmp_path / "out.gguf", preset) != 0


def test_missing_imatrix_entry_matches_llama(models, tmp_path):
    # Q2_K_S: its Q2_K tensors need importance data, its Q4_K ffn_down and Q6_K output do not
    spec = VARIANTS["imatrix_gqa4"]
    plans = PL.plan_model("Q2_K_S", spec.metadata(), spec.tensors(), PL.PlanOptions(has_imatrix=True))
    by_name = {pl.name: pl for pl in plans}
    missing = "blk.3.ffn_up.weight"
    assert by_name[missing].needs_imatrix and not by_name["blk.0.ffn_down.weight"].needs_imatrix
    with pytest.raises(UsageError, match=missing.replace(".", r"\.")):
        PL.check_imatrix(plans, [t.name for t in spec.tensors() if t.name != missing])
    rc = llama_quantize(models["imatrix_gqa4"], tmp_path / "out.gguf", "Q2_K_S",
                        imatrix_tensors=spec.tensors(), imatrix_keep=lambda n: n != missing)
    assert rc != 0
    # without the entries for tensors that do not need one, both go ahead
    spare = {"output.weight", "blk.0.ffn_down.weight"}
    PL.check_imatrix(plans, [t.name for t in spec.tensors() if t.name not in spare])
    rc = llama_quantize(models["imatrix_gqa4"], tmp_path / "out.gguf", "Q2_K_S",
                        imatrix_tensors=spec.tensors(), imatrix_keep=lambda n: n not in spare)
    assert rc == 0


@pytest.fixture(scope="module")
def quantized_input(models, tmp_path_factory) -> Path:
    """dense16_gqa4 quantized to Q8_0 by llama.cpp: an input whose weights are already quantized."""
    out = tmp_path_factory.mktemp("q8") / "q8.gguf"
    assert llama_quantize(models["dense16_gqa4"], out, "Q8_0") == 0
    return out


def _tensors_of(path: Path) -> tuple[dict, list[TensorSpec]]:
    r = GGUFReader(path)
    meta = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        v = f.contents()
        meta[k] = v
    tensors = [TensorSpec(t.name, tuple(int(d) for d in reversed(t.shape)), T(t.tensor_type)) for t in r.tensors]
    return meta, tensors


@pytest.mark.parametrize("preset", ["Q4_K_M", "Q6_K", "Q8_0", "F16"])
def test_requantize_matches_llama(quantized_input, tmp_path, preset):
    meta, tensors = _tensors_of(quantized_input)
    assert any(t.qtype == T.Q8_0 for t in tensors)
    out = tmp_path / "out.gguf"
    refuses = any(P.is_quantized(pl.source_type) and pl.quantize
                  for pl in PL.plan_model(preset, meta, tensors, PL.PlanOptions(allow_requantize=True)))
    if refuses:
        with pytest.raises(UsageError, match="allow-requantize"):
            PL.plan_model(preset, meta, tensors)
        assert llama_quantize(quantized_input, out, preset) != 0
    else:  # Q8_0 -> Q8_0 copies everything: nothing to refuse
        PL.plan_model(preset, meta, tensors)
        assert llama_quantize(quantized_input, out, preset) == 0
    opt = PL.PlanOptions(allow_requantize=True)
    plans = PL.plan_model(preset, meta, tensors, opt)
    assert llama_quantize(quantized_input, out, preset, opt) == 0
    got, ftype = read_types(out)
    assert_same_plan(plans, got, f"requantize {preset}")
    assert ftype == PL.file_type(preset)


def test_copy_keeps_file_type(quantized_input, tmp_path):
    meta, tensors = _tensors_of(quantized_input)
    out = tmp_path / "out.gguf"
    assert llama_quantize(quantized_input, out, "COPY") == 0
    got, ftype = read_types(out)
    assert_same_plan(PL.plan_model("COPY", meta, tensors), got, "COPY")
    assert ftype == PL.file_type("COPY", meta, tensors) == int(P.F.MOSTLY_Q8_0)


def test_copy_without_file_type_records_the_guess(models, tmp_path):
    # our test models carry no general.file_type: llama.cpp guesses ALL_F32 and writes it with the guessed bit
    spec = VARIANTS["odd_rows"]
    assert llama_quantize(models["odd_rows"], tmp_path / "out.gguf", "COPY") == 0
    _, ftype = read_types(tmp_path / "out.gguf")
    assert ftype == PL.file_type("COPY", spec.metadata(), spec.tensors()) == 1024


def test_seventy_b_layer_count_matches_llama(tmp_path):
    """llama's loader calls an 80-layer GQA model 70B, which bumps attn_v: a real file with only the
    tensors that matter (80 attn_v and the embeddings) keeps it cheap."""
    meta = ModelSpec(n_layer=80, n_head=8, n_head_kv=2).metadata()
    tensors = [TensorSpec("token_embd.weight", (64, 256)), TensorSpec("output.weight", (64, 256))]
    tensors += [TensorSpec(f"blk.{i}.attn_v.weight", (64, 256)) for i in range(80)]
    inp = write_gguf(tmp_path / "in.gguf", meta, tensors)
    assert PL.ModelFacts.from_metadata(meta).is_70b
    for preset in ("Q3_K_S", "Q4_K_S", "Q2_K"):
        plans = check_against_llama(tmp_path, inp, meta, tensors, preset)
        assert any("70B" in pl.reason for pl in plans)


# --------------------------------------------------------------------------------------------------
# Oracle 2: llama_quant_compute_types on mock models
# --------------------------------------------------------------------------------------------------


class _Desc(ctypes.Structure):
    _fields_ = [("architecture", ctypes.c_char_p)] + [(n, ctypes.c_uint32) for n in (
        "n_embd", "n_ff", "n_layer", "n_head", "n_head_kv", "n_expert", "n_embd_head_k", "n_embd_head_v")]


class _GgmlInit(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


_SYMBOLS = {
    "model": "_Z31llama_quant_model_from_metadataPK22llama_quant_model_desc",
    "init": "_Z16llama_quant_initPK11llama_modelPK27llama_model_quantize_params",
    "free": "_Z16llama_quant_freeP19quantize_state_impl",
    "compute": "_Z25llama_quant_compute_typesP19quantize_state_impl11llama_ftypePP11ggml_tensorP9ggml_typem",
}


@pytest.fixture(scope="module")
def planner():
    libdir = Path(llama_cpp.__file__).parent / "lib"
    try:
        llama = ctypes.CDLL(str(libdir / "libllama.so"))
        ggml = ctypes.CDLL(str(libdir / "libggml-base.so"))
        f = {k: llama[v] for k, v in _SYMBOLS.items()}
    except (OSError, AttributeError) as e:
        pytest.skip(f"llama.cpp's planning entry points are not exported here: {e}")
    f["model"].restype = ctypes.c_void_p
    f["model"].argtypes = [ctypes.POINTER(_Desc)]
    f["init"].restype = ctypes.c_void_p
    f["init"].argtypes = [ctypes.c_void_p, ctypes.POINTER(lc.llama_model_quantize_params)]
    f["free"].argtypes = [ctypes.c_void_p]
    f["compute"].argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p),
                             ctypes.POINTER(ctypes.c_int), ctypes.c_size_t]
    llama.llama_model_free.argtypes = [ctypes.c_void_p]
    ggml.ggml_init.restype = ctypes.c_void_p
    ggml.ggml_init.argtypes = [_GgmlInit]
    ggml.ggml_new_tensor.restype = ctypes.c_void_p
    ggml.ggml_new_tensor.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int64)]
    ggml.ggml_set_name.restype = ctypes.c_void_p
    ggml.ggml_set_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    ggml.ggml_free.argtypes = [ctypes.c_void_p]

    def run(spec: ModelSpec, tensors: list[TensorSpec], preset: str, opt: PL.PlanOptions) -> list[T]:
        """llama.cpp's types for ``tensors`` (which must be in llama-quantize's order)."""
        p = P.get_preset(preset)
        ctx = ggml.ggml_init(_GgmlInit(len(tensors) * 1024 + (1 << 16), None, True))
        desc = _Desc(spec.arch.encode(), spec.n_embd, spec.n_ff, spec.n_layer, spec.n_head, spec.n_head_kv,
                     spec.n_expert, spec.head_dim, spec.head_dim)
        model = f["model"](ctypes.byref(desc))
        params, keep = _rule_params(opt)  # the overrides are compiled by llama_quant_init: set before
        qs = f["init"](model, ctypes.byref(params))
        try:
            ptrs = []
            for t in tensors:
                ne = (ctypes.c_int64 * 4)(*reversed(t.shape), *([1] * (4 - len(t.shape))))
                ptr = ggml.ggml_new_tensor(ctx, int(t.qtype), len(t.shape), ne)
                ggml.ggml_set_name(ptr, t.name.encode())
                ptrs.append(ptr)
            arr = (ctypes.c_void_p * len(ptrs))(*ptrs)
            res = (ctypes.c_int * len(ptrs))()
            f["compute"](qs, int(p.ftype), arr, res, len(ptrs))
            return [ggml_type(v) for v in res]
        finally:
            f["free"](qs)
            llama.llama_model_free(model)
            ggml.ggml_free(ctx)

    return run


MOCKS = {
    "llama70b": ModelSpec(n_layer=80, n_embd=256, n_ff=512, n_head=8, n_head_kv=1),
    "llama80_mha": ModelSpec(n_layer=80, n_embd=256, n_ff=512, n_head=8, n_head_kv=8),
    "falcon": ModelSpec(arch="falcon", n_layer=16, n_embd=256, n_ff=1024, n_head=8, n_head_kv=1),
    "falcon_qkv": ModelSpec(arch="falcon", n_layer=8, n_embd=256, n_ff=1024, n_head=8, n_head_kv=2,
                            fused_qkv=True, tied=True),
    "moe8": ModelSpec(n_layer=8, n_embd=256, n_ff=512, n_head=8, n_head_kv=4, n_expert=8, n_expert_used=2,
                      n_ff_exp=256, n_vocab=64),
    "moe4_gqa1": ModelSpec(n_layer=8, n_embd=256, n_head=4, n_head_kv=4, n_expert=4, n_expert_used=2),
    "dense16_gqa4": VARIANTS["dense16_gqa4"],
    "tied_mha_ff640": VARIANTS["tied_mha_ff640"],
    "odd_rows": VARIANTS["odd_rows"],
    "fused_qkv": VARIANTS["fused_qkv"],
    "qwen2_32": ModelSpec(arch="qwen2", n_layer=32, n_embd=256, n_ff=768, n_head=8, n_head_kv=2),
    "per_layer_embd": VARIANTS["imatrix_gqa4"],
    "glm5_next": ModelSpec(arch="glm5-next", n_layer=4, n_embd=256, n_ff=512, n_head=8, n_head_kv=8),
    "bailingmoe3": ModelSpec(arch="bailingmoe3", n_layer=4, n_embd=256, n_head=8, n_head_kv=8, n_expert=4,
                             n_expert_used=2),
}


def _mock_tensors(name: str, spec: ModelSpec) -> list[TensorSpec]:
    tensors = spec.tensors()
    if name == "glm5_next":
        tensors += [TensorSpec(f"blk.{i}.{n}.weight", (256, 256)) for i in range(spec.n_layer)
                    for n in ("attn_q_a", "attn_q_b", "attn_kv_a_mqa", "indexer.attn_k")]
    if name == "per_layer_embd":
        tensors.append(TensorSpec("per_layer_token_embd.weight", (spec.n_vocab, 256 * 4)))
    if name == "bailingmoe3":  # a 3-D tensor that is not an expert FFN
        tensors += [TensorSpec(f"blk.{i}.attn_k_b.weight", (4, 256, 256)) for i in range(spec.n_layer)]
    return tensors


ALL_PRESETS = [p.name for p in P.PRESETS.values() if _runnable(p) and not p.only_copy]


@pytest.mark.parametrize("mock", list(MOCKS))
def test_all_presets_match_llama_planner(planner, mock):
    spec = MOCKS[mock]
    meta = spec.metadata()
    tensors = _mock_tensors(mock, spec)
    failures = []
    for preset in ALL_PRESETS:
        try:
            plans = PL.plan_model(preset, meta, tensors)
        except QuantError:
            assert preset in ("Q1_0",) and spec.n_embd % 128, f"{mock}/{preset}: plan_model failed"
            continue
        got = planner(spec, [TensorSpec(pl.name, pl.shape, pl.source_type) for pl in plans], preset,
                      PL.PlanOptions())
        bad = [f"{pl.name}: qtool {pl.qtype.name} ({pl.reason}), llama.cpp {g.name}"
               for pl, g in zip(plans, got) if pl.qtype != g]
        if bad:
            failures.append(f"{preset}: {len(bad)} differ, first: {'; '.join(bad[:3])}")
    assert not failures, "\n".join(failures)


MOCK_OVERRIDES = {
    **OVERRIDES,
    # per_layer_token_embd follows --token-embedding-type unless a --tensor-type names it
    "per_layer_named": PL.PlanOptions(token_embedding_type=T.Q8_0, tensor_types=[("per_layer", T.Q5_0)]),
    "per_layer_unnamed": PL.PlanOptions(token_embedding_type=T.Q8_0, tensor_types=[("attn_k", T.Q5_0)]),
    "tied_output_pure": PL.PlanOptions(output_tensor_type=T.Q8_0, pure=True),
}


@pytest.mark.parametrize("override", list(MOCK_OVERRIDES))
@pytest.mark.parametrize("mock", ["moe8", "falcon_qkv", "llama70b", "per_layer_embd"])
def test_overrides_match_llama_planner(planner, mock, override):
    spec, opt = MOCKS[mock], MOCK_OVERRIDES[override]
    tensors = _mock_tensors(mock, spec)
    for preset in ("Q4_K_M", "IQ2_XS", "IQ3_M", "MXFP4_MOE", "Q8_0", "BF16"):
        plans = PL.plan_model(preset, spec.metadata(), tensors, opt)
        got = planner(spec, [TensorSpec(pl.name, pl.shape, pl.source_type) for pl in plans], preset, opt)
        assert [pl.qtype for pl in plans] == got, f"{mock}/{preset}/{override}"
