"""Presets and the per-tensor plan without llama.cpp: lookups, tables, and the rules' edge cases.
(tests/test_rules_vs_llama.py holds the plan to llama.cpp itself.)"""

from __future__ import annotations

import pytest
from gguf import GGMLQuantizationType as T
from gguf import LlamaFileType as F

from qtool.errors import FormatError, QuantError, UsageError
from qtool import plan as PL
from qtool.quantizers import presets as P
from qtool.testing.models import ModelSpec, TensorSpec

BRIEF_PRESETS = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S",
                 "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "F16", "BF16", "F32", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M",
                 "IQ1_S", "IQ1_M", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0",
                 "MXFP4_MOE", "Q1_0", "Q2_0", "COPY"]


# --------------------------------------------------------------------------------------------------
# The preset table
# --------------------------------------------------------------------------------------------------


def test_every_preset_is_listed():
    assert set(BRIEF_PRESETS) | {"Q3_K", "Q4_K", "Q5_K"} == set(P.PRESETS)


@pytest.mark.parametrize("name", [n for n in BRIEF_PRESETS if n not in ("COPY", "Q2_0")])
def test_ftype_is_gguf_pys_of_the_same_name(name):
    p = P.PRESETS[name]
    want = F.ALL_F32 if name == "F32" else F[f"MOSTLY_{name}"]
    assert p.ftype is want and PL.file_type(name) == int(want)
    assert p.description and p.alias_of is None


@pytest.mark.parametrize(("alias", "target"), [("Q3_K", "Q3_K_M"), ("Q4_K", "Q4_K_M"), ("Q5_K", "Q5_K_M")])
def test_aliases(alias, target):
    a, t = P.get_preset(alias), P.get_preset(target)
    assert a.alias_of == target and (a.ftype, a.base_type) == (t.ftype, t.base_type)


@pytest.mark.parametrize(("name", "base"), [
    # the family type, except where llama.cpp chose otherwise
    ("Q2_K_S", T.Q2_K), ("Q3_K_L", T.Q3_K), ("Q4_K_S", T.Q4_K), ("Q5_K_M", T.Q5_K), ("Q6_K", T.Q6_K),
    ("IQ2_S", T.IQ2_XS), ("IQ2_M", T.IQ2_S), ("IQ3_XS", T.IQ3_S), ("IQ3_M", T.IQ3_S), ("IQ1_M", T.IQ1_M),
    ("MXFP4_MOE", T.MXFP4), ("TQ1_0", T.TQ1_0), ("BF16", T.BF16), ("F32", T.F32), ("Q1_0", T.Q1_0),
])
def test_base_types(name, base):
    assert P.get_preset(name).default_type is base


def test_lookup_is_case_insensitive_and_numeric():
    assert P.get_preset("q4_k_m").name == "Q4_K_M"
    assert P.get_preset(" iq2_xxs ").name == "IQ2_XXS"
    assert P.get_preset("7").name == "Q8_0"
    assert P.get_preset("0").name == "F32"       # F32 comes before COPY in llama-quantize's list
    assert P.get_preset("15").name == "Q4_K"     # ... and the Q4_K alias before Q4_K_M
    assert P.get_preset(P.PRESETS["Q6_K"]) is P.PRESETS["Q6_K"]


@pytest.mark.parametrize(("bad", "hint"), [("Q4_K_X", "Q4_K_M"), ("IQ2_XSS", "IQ2_XS"), ("q8", "Q8_0"),
                                            ("MXFP4", "MXFP4_MOE")])
def test_unknown_preset_lists_close_matches(bad, hint):
    with pytest.raises(UsageError, match=hint) as e:
        P.get_preset(bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("qtype", sorted(P.TARGET_TYPES, key=int))
def test_plain_type_names(qtype):
    """Every ggml type llama.cpp can quantize to, given as --type: either a preset recording the file type
    llama.cpp's loader associates with that type, or a refusal."""
    if qtype in (T.MXFP4, T.NVFP4):
        with pytest.raises(UsageError, match="not a llama-quantize preset"):
            P.get_preset(qtype.name.lower())
        return
    p = P.get_preset(qtype.name.lower())
    assert int(p.ftype) == P._FTYPE_OF_TYPE[qtype]
    if qtype is T.IQ2_S:
        assert p.default_type is T.IQ2_XS  # llama.cpp's IQ2_S mixture is mostly IQ2_XS
    elif qtype not in (T.Q3_K, T.Q4_K, T.Q5_K):
        assert p.default_type is qtype


def test_imatrix_required_for_a_type():
    assert PL.imatrix_required(T.IQ2_XXS) and PL.imatrix_required(T.IQ1_M) and PL.imatrix_required(T.IQ3_XXS)
    assert not PL.imatrix_required(T.Q2_K) and not PL.imatrix_required(T.IQ3_S) and not PL.imatrix_required(T.Q4_K)


def test_unknown_numeric_ftype():
    with pytest.raises(UsageError, match="file type 5"):
        P.get_preset("5")  # Q4_2, long gone


def test_q2_0_has_qtools_own_names():
    """gguf-py 0.19 has neither the type (42) nor the file type (41): qtool names them itself."""
    p = P.get_preset("Q2_0")
    assert (int(p.ftype), p.ftype.name) == (41, "MOSTLY_Q2_0") and (int(p.base_type), p.base_type.name) == (42, "Q2_0")
    assert P.get_preset("41") is p and PL.file_type("Q2_0") == 41
    assert P.parse_ggml_type("q2_0") is p.base_type and P.block_size(p.base_type) == 64
    spec = ModelSpec(n_layer=1)
    plan = {pl.name: pl for pl in PL.plan_model("Q2_0", spec.metadata(), spec.tensors())}
    assert plan["blk.0.attn_q.weight"].qtype is p.base_type
    assert not PL.imatrix_required("Q2_0")


def test_parse_ggml_type():
    assert P.parse_ggml_type("q4_k") is T.Q4_K and P.parse_ggml_type("BF16") is T.BF16
    for bad in ("Q8_K", "q8_1", "I32"):
        with pytest.raises(UsageError, match="cannot quantize"):
            P.parse_ggml_type(bad)
    with pytest.raises(UsageError, match="Q4_K"):
        P.parse_ggml_type("q4k")


def test_parse_tensor_type():
    assert P.parse_tensor_type("ATTN_V=q8_0") == ("attn_v", T.Q8_0)  # the name is lower-cased
    assert P.parse_tensor_type(r"blk\.[0-3]\.ffn_down=Q6_K") == (r"blk\.[0-3]\.ffn_down", T.Q6_K)
    for bad in ("attn_v", "=q8_0", "attn_v=", "attn_v=q9_9", "(unclosed=q8_0"):
        with pytest.raises(UsageError):
            P.parse_tensor_type(bad)


# --------------------------------------------------------------------------------------------------
# Tables of the rules
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "n_dims"), [((256,), 1), ((1, 256), 1), ((4, 256), 2), ((8, 1, 256), 3),
                                               ((8, 4, 256), 3), ((1, 1, 1, 7), 1), ((2, 1, 1, 7), 4)])
def test_ggml_n_dims(shape, n_dims):
    assert PL.ggml_n_dims(shape) == n_dims


@pytest.mark.parametrize(("name", "shape", "why"), [
    ("blk.0.attn_q.weight", (64, 64), None),
    ("blk.0.ffn_up_exps.weight", (4, 64, 64), None),
    ("token_embd.weight", (100, 64), None),
    ("blk.0.attn_norm.weight", (64,), "1-D"),
    ("blk.0.attn_q.weight", (1, 64), "1-D"),  # one row: ggml counts it as 1-D
    ("blk.0.attn_q_norm.weight", (8, 64), "norm"),
    ("blk.0.attn_q.bias", (8, 64), "not a weight"),
    ("blk.0.ffn_gate_inp.weight", (8, 64), "expert router"),
    ("position_embd.weight", (512, 64), "position embedding"),
    ("token_types.weight", (2, 64), "token types"),
    ("blk.0.ssm_conv1d.weight", (4, 64), "conv1d"),
    ("blk.0.time_mix_w1.weight", (4, 64), "RWKV small weight"),
    ("v.blk.0.patch_embd.weight", (4, 64), "multimodal patch embedding"),
    ("abcde", (4, 64), None),  # llama.cpp's ends-with-"weight" test passes every 5-character name
    ("abcdef", (4, 64), "not a weight"),
])
def test_which_tensors_are_quantized(name, shape, why):
    assert PL.why_not_quantized(name, shape, "llama", False) == why


def test_leave_output_tensor_and_arch_exclusions():
    assert PL.why_not_quantized("output.weight", (100, 64), "llama", True) == "--leave-output-tensor"
    assert PL.why_not_quantized("output.weight", (100, 64), "llama", False) is None
    assert PL.why_not_quantized("blk.0.indexer.attn_k.weight", (64, 64), "glm5-next", False)
    assert PL.why_not_quantized("blk.0.indexer.attn_k.weight", (64, 64), "llama", False) is None


@pytest.mark.parametrize(("name", "cat"), [
    ("output.weight", "output"), ("token_embd.weight", "token_embd"), ("per_layer_token_embd.weight", "token_embd"),
    ("blk.3.attn_qkv.weight", "attn_qkv"), ("blk.3.attn_kv_b.weight", "attn_kv_b"), ("blk.3.attn_v.weight", "attn_v"),
    ("blk.3.attn_k.weight", "attn_k"), ("blk.3.attn_q.weight", "attn_q"), ("blk.3.attn_output.weight", "attn_output"),
    ("blk.3.ffn_up_exps.weight", "ffn_up"), ("blk.3.ffn_gate_shexp.weight", "ffn_gate"),
    ("blk.3.ffn_down.weight", "ffn_down"), ("blk.3.attn_q_a.weight", "other"), ("output_norm.weight", "other"),
])
def test_categories(name, cat):
    assert PL.category(name) == cat


@pytest.mark.parametrize(("qtype", "ncols", "want"), [
    (T.Q4_K, 256, T.Q4_K), (T.Q4_K, 640, T.Q5_0), (T.Q5_K, 640, T.Q5_1), (T.Q6_K, 640, T.Q8_0),
    (T.Q2_K, 640, T.Q4_0), (T.Q3_K, 640, T.Q4_0), (T.TQ1_0, 640, T.Q4_0), (T.TQ2_0, 96, T.Q4_0),
    (P.Q2_0, 96, T.Q4_0), (P.Q2_0, 48, T.F16), (P.Q2_0, 128, P.Q2_0),
    (T.IQ2_XXS, 640, T.IQ4_NL), (T.IQ4_XS, 640, T.IQ4_NL), (T.IQ3_S, 96, T.IQ4_NL),
    (T.Q4_K, 600, T.F16), (T.IQ1_S, 600, T.F16), (T.Q8_0, 600, T.F16), (T.IQ4_NL, 600, T.F16),
    (T.MXFP4, 48, T.F16), (T.Q4_0, 64, T.Q4_0), (T.F16, 7, T.F16),
])
def test_fallback(qtype, ncols, want):
    got, why = PL._fallback("t", ncols, qtype)
    assert got is want or got == want
    assert (why is None) == (got == qtype)


@pytest.mark.parametrize("qtype", [T.Q1_0, T.NVFP4])
def test_no_fallback_defined(qtype):
    with pytest.raises(QuantError, match="no fallback"):
        PL._fallback("blk.0.x.weight", 96, qtype)


def test_use_more_bits():
    assert [i for i in range(32) if PL._use_more_bits(i, 32)] == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29,
                                                                 30, 31]
    assert [i for i in range(8) if PL._use_more_bits(i, 8)] == [0, 3, 6, 7]


# --------------------------------------------------------------------------------------------------
# Model facts from metadata
# --------------------------------------------------------------------------------------------------


def test_model_facts():
    m = PL.ModelFacts.from_metadata({"general.architecture": "llama", "llama.block_count": 32,
                                    "llama.attention.head_count": [32] * 32,
                                    "llama.attention.head_count_kv": [8] * 32, "llama.expert_count": 8})
    assert (m.n_layer, m.n_head, m.n_head_kv, m.n_gqa, m.n_expert, m.is_70b) == (32, 32, 8, 4, 8, False)
    m = PL.ModelFacts.from_metadata({"general.architecture": "llama", "llama.block_count": 4,
                                    "llama.attention.head_count": 6})
    assert m.n_head_kv == 6 and m.n_gqa == 1 and m.n_expert == 0
    m = PL.ModelFacts.from_metadata({"general.architecture": "x", "x.block_count": 4,
                                    "x.attention.head_count": 6, "x.attention.head_count_kv": 0})
    assert m.n_gqa == 0
    for bad in ({}, {"general.architecture": "llama"},
                {"general.architecture": "llama", "llama.block_count": "many"}):
        with pytest.raises(FormatError):
            PL.ModelFacts.from_metadata(bad)


@pytest.mark.parametrize(("arch", "layers", "heads", "kv", "experts", "nextn", "is_70b"), [
    ("llama", 80, 64, 8, 0, 0, True), ("llama", 80, 64, 64, 0, 0, False), ("llama", 80, 64, 8, 8, 0, False),
    ("llama", 79, 64, 8, 0, 0, False), ("qwen2", 80, 64, 64, 0, 0, True), ("olmo", 80, 8, 8, 0, 0, True),
    ("deci", 80, 8, 8, 0, 0, True), ("jais2", 68, 8, 8, 0, 0, True), ("qwen2", 81, 8, 8, 0, 1, True),
    ("gemma", 80, 8, 1, 0, 0, False),
])
def test_seventy_b(arch, layers, heads, kv, experts, nextn, is_70b):
    meta = {"general.architecture": arch, f"{arch}.block_count": layers, f"{arch}.attention.head_count": heads,
            f"{arch}.attention.head_count_kv": kv, f"{arch}.expert_count": experts,
            f"{arch}.nextn_predict_layers": nextn}
    assert PL.ModelFacts.from_metadata(meta).is_70b is is_70b


# --------------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------------

SPEC = ModelSpec(n_layer=8, n_embd=256, n_ff=640, n_head=8, n_head_kv=2)


def _plan(preset, spec=SPEC, tensors=None, **opt):
    plans = PL.plan_model(preset, spec.metadata(), tensors if tensors is not None else spec.tensors(),
                         PL.PlanOptions(**opt))
    return {pl.name: pl for pl in plans}


def test_order_is_llama_quantize_order():
    spec = ModelSpec(n_layer=12, n_embd=256, n_ff=256)
    names = [pl.name for pl in PL.plan_model("Q8_0", spec.metadata(), reversed(spec.tensors()))]
    assert names[:3] == ["output.weight", "output_norm.weight", "token_embd.weight"]
    layers = [int(n.split(".")[1]) for n in names[3:]]
    assert layers == sorted(layers)  # 2 before 10, by number not by text
    assert names[3:10] == sorted(names[3:10])


def test_reasons_and_copies():
    plans = _plan("Q4_K_M")
    assert plans["blk.0.attn_norm.weight"].reason == "not quantized: 1-D"
    assert not plans["blk.0.attn_norm.weight"].quantize
    down = plans["blk.1.ffn_down.weight"]
    assert down.qtype is T.Q5_0 and down.reason == "fallback from Q4_K: 640 % 256 != 0"
    assert plans["blk.0.ffn_down.weight"].qtype is T.Q8_0  # use_more_bits -> Q6_K -> fallback
    assert plans["output.weight"].qtype is T.Q6_K and "output" in plans["output.weight"].reason
    assert plans["blk.1.attn_q.weight"].reason == "preset base"
    f32 = _plan("F32")
    assert all(not pl.quantize for pl in f32.values())
    assert f32["blk.0.attn_q.weight"].reason.startswith("already F32")


def test_tied_embeddings_follow_the_output_rules():
    tied = ModelSpec(n_layer=8, n_embd=256, n_ff=256, tied=True)
    assert _plan("Q4_K_M", tied)["token_embd.weight"].qtype is T.Q6_K
    assert _plan("Q4_K_M", ModelSpec(n_layer=8, n_embd=256, n_ff=256))["token_embd.weight"].qtype is T.Q4_K
    assert _plan("Q4_K_M", tied, output_tensor_type=T.Q8_0)["token_embd.weight"].qtype is T.Q8_0
    # token-embedding rules of the IQ and ternary presets
    untied = ModelSpec(n_layer=8, n_embd=256, n_ff=256)
    assert _plan("IQ2_XXS", untied)["token_embd.weight"].qtype is T.Q2_K
    assert _plan("IQ2_M", untied)["token_embd.weight"].qtype is T.IQ3_S
    assert _plan("TQ1_0", untied)["token_embd.weight"].qtype is T.Q4_K


def test_overrides():
    plans = _plan("Q4_K_M", tensor_types=[("attn_v", T.Q8_0), ("attn", T.Q5_K), ("attn_v", T.Q2_K)])
    assert plans["blk.0.attn_v.weight"].qtype is T.Q8_0 and plans["blk.0.attn_v.weight"].reason == "--tensor-type attn_v"
    assert plans["blk.0.attn_q.weight"].qtype is T.Q5_K  # first match wins
    assert plans["blk.0.ffn_up.weight"].qtype is T.Q4_K
    # an override is still subject to the fallback
    assert _plan("Q4_K_M", tensor_types=[("ffn_down", T.Q6_K)])["blk.3.ffn_down.weight"].qtype is T.Q8_0
    # F16/BF16/F32 presets take no --tensor-type, as in llama.cpp
    assert _plan("F16", tensor_types=[("attn_v", T.Q8_0)])["blk.0.attn_v.weight"].qtype is T.F16
    pure = _plan("Q4_K_M", pure=True)
    assert pure["output.weight"].qtype is T.Q4_K and pure["blk.0.attn_v.weight"].qtype is T.Q4_K
    assert pure["blk.0.ffn_down.weight"].qtype is T.Q5_0  # the fallback still applies
    left = _plan("Q4_K_M", leave_output_tensor=True)["output.weight"]
    assert not left.quantize and left.reason == "not quantized: --leave-output-tensor"
    embd = _plan("F16", token_embedding_type=T.Q8_0)["token_embd.weight"]
    assert embd.qtype is T.Q8_0 and embd.reason == "--token-embedding-type"


def test_misfit_type_options_are_refused():
    odd = ModelSpec(n_layer=2, n_embd=288, n_ff=256)
    with pytest.raises(QuantError, match=r"output\.weight.*288"):
        _plan("Q4_K_M", odd, output_tensor_type=T.Q5_K)
    with pytest.raises(QuantError, match=r"token_embd\.weight"):
        _plan("Q4_K_M", odd, token_embedding_type=T.Q2_K)
    with pytest.raises(QuantError, match="no fallback"):
        _plan("Q1_0", odd)


def test_bad_override_regex():
    with pytest.raises(UsageError, match="regex"):
        _plan("Q4_K_M", tensor_types=[("attn_(", T.Q8_0)])


def test_imatrix_dependent_rules():
    spec = ModelSpec(n_layer=16, n_embd=256, n_ff=256, n_head=8, n_head_kv=8)
    without, with_ = _plan("Q4_0", spec), _plan("Q4_0", spec, has_imatrix=True)
    assert [without[f"blk.{i}.ffn_down.weight"].qtype for i in (0, 1, 2)] == [T.Q4_0] * 3
    assert [with_[f"blk.{i}.ffn_down.weight"].qtype for i in (0, 1, 2)] == [T.Q4_1, T.Q4_1, T.Q4_0]
    assert _plan("IQ3_XXS", spec)["blk.0.attn_v.weight"].qtype is T.IQ3_S
    assert _plan("IQ3_XXS", spec, has_imatrix=True)["blk.0.attn_v.weight"].qtype is T.IQ3_XXS


def test_requantize_refused_unless_allowed():
    tensors = [TensorSpec(t.name, t.shape, T.Q8_0 if t.name == "blk.2.attn_q.weight" else t.qtype)
               for t in SPEC.tensors()]
    with pytest.raises(UsageError, match=r"blk\.2\.attn_q\.weight is already Q8_0.*allow-requantize"):
        _plan("Q4_K_M", tensors=tensors)
    assert _plan("Q4_K_M", tensors=tensors, allow_requantize=True)["blk.2.attn_q.weight"].qtype is T.Q4_K
    # a quantized tensor that keeps its type is copied: nothing to refuse
    copied = _plan("Q8_0", tensors=tensors)["blk.2.attn_q.weight"]
    assert not copied.quantize and copied.reason.startswith("already Q8_0")
    # F16 sources are not "quantized" for this rule
    f16 = [TensorSpec(t.name, t.shape, T.F16) for t in SPEC.tensors()]
    assert _plan("Q4_K_M", tensors=f16)["blk.2.attn_q.weight"].quantize


def test_moe_layer_comes_from_the_name():
    moe = ModelSpec(n_layer=4, n_embd=256, n_expert=8, n_expert_used=2)
    tensors = moe.tensors() + [TensorSpec("ffn_down_extra.weight", (256, 256))]
    with pytest.raises(QuantError, match="ffn_down_extra"):
        _plan("Q4_K_M", moe, tensors=tensors)
    tensors = moe.tensors() + [TensorSpec("blk.9.ffn_up.weight", (256, 256))]
    with pytest.raises(QuantError, match=r"layer 9 is outside \[0, 4\)"):
        _plan("Q3_K_M", moe, tensors=tensors)


NEEDS_IMATRIX = {"IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S", "IQ1_M", "IQ3_XXS", "IQ3_XS", "Q2_K_S"}


@pytest.mark.parametrize("name", sorted(P.PRESETS))
def test_imatrix_required(name):
    assert PL.imatrix_required(name) is (name in NEEDS_IMATRIX)


def test_check_imatrix():
    plans = list(_plan("Q2_K_S").values())
    needing = PL.tensors_needing_imatrix(plans)
    assert needing and all(pl.qtype is T.Q2_K for pl in needing)
    assert "output.weight" not in {pl.name for pl in needing}  # exempt, like the token embeddings
    with pytest.raises(UsageError, match="importance matrix"):
        PL.check_imatrix(plans, None)
    with pytest.raises(UsageError, match="importance matrix"):
        PL.check_imatrix(plans, [])  # everything filtered away is no imatrix
    PL.check_imatrix(plans, [pl.name for pl in needing])
    with pytest.raises(UsageError, match=needing[-1].name.replace(".", r"\.")):
        PL.check_imatrix(plans, [pl.name for pl in needing[:-1]])
    assert not PL.imatrix_required("Q4_K_M", list(_plan("Q4_K_M").values()))
    assert PL.imatrix_required("Q2_K_S", plans)


def test_copy_and_file_type():
    plans = _plan("COPY")
    assert all(not pl.quantize and pl.reason == "not quantized: COPY" for pl in plans.values())
    meta = {**SPEC.metadata(), "general.file_type": 15}
    assert PL.file_type("COPY", meta) == 15
    q8 = [TensorSpec(t.name, t.shape, T.Q8_0 if len(t.shape) > 1 else T.F32) for t in SPEC.tensors()]
    assert PL.file_type("COPY", SPEC.metadata(), q8) == int(F.MOSTLY_Q8_0) | 1024
    with pytest.raises(UsageError):
        PL.file_type("COPY")
