"""Gemma, Gemma 2, Gemma 3 (text, and the text model of a multimodal checkpoint), Phi-3 and BERT, run in
llama.cpp.

Each tiny folder (qtool.testing.hf_models_more: the config keys of the real checkpoints, seeded random
weights; Gemma's sliding windows shorter than the prompt so that the window masks and the local rope base
matter) is converted to F32 GGUF by qtool and run in llama.cpp through qtool.testing.client; its logits
(BERT: its mean-pooled embedding) must stay within a tight bound of a float64 numpy forward pass of the HF
weights written from the transformers model definitions (checked against transformers 4.57.6 itself when
they were written: equal within the float32 rope tables transformers uses).

GELU: llama.cpp's CPU backend evaluates it through an F16 table of the tanh form (for BERT's erf GELU too),
which moves the outputs by a few 1e-4 of the largest. So the GELU families are held to two bounds: against
the exact transformers definition (GELU_BOUND), and, tightly, against the same definition with the GELU
evaluated as ggml does (BOUND_GGML_GELU; not 1e-5: an F16 table lookup jumps by one F16 step where float64
and float32 pre-activations round to neighbouring F16 values).

The same conversion with one transform deliberately broken (no norm shift, unshifted q/k norms, llama's
rope permutation on the fused qkv, gate and up swapped, CLS or last-token pooling for BERT's mean)
must fall far outside the bounds, so the check is not blind.

Phi-3's sliding window stays at the real 2047 here: llama.cpp 0.3.36's phi3 ignores the window ("Phi SWA
is currently disabled"), so a prompt longer than the window runs with full attention there.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import gguf
import numpy as np
import pytest

from qtool.archs import bert as bert_mod
from qtool.archs import gemma as gemma_mod
from qtool.archs import phi3 as phi3_mod
from qtool.archs.transforms import PermuteQK, Transform
from qtool.testing import hf_models_more as more

TOKENS = [2, 17, 100, 5, 250, 33, 44, 300, 12, 7, 99, 150, 64, 201, 3, 88]
#: llama.cpp (float32, F32 KV cache) against the float64 forward pass: max |error| / max |value|
BOUND = 1e-5
#: GELU families against the exact transformers definition (llama.cpp's GELU is an F16 table)
GELU_BOUND = 1e-3
#: GELU families against the definition with ggml's GELU
BOUND_GGML_GELU = 5e-5

#: case -> config changes for the run (Gemma: windows shorter than the 16 tokens)
RUNS = {
    "gemma": {},
    "gemma2": {"sliding_window": 5},
    "gemma3": {"sliding_window": 4},
    "gemma3_mm": {},  # the text model of a multimodal checkpoint (vision tower and projector dropped)
    "phi3": {},
    "phi3_partial": {},  # Phi-4-mini's shape: partial rotary, tied embeddings
    "bert": {},
}
GELU = {"gemma", "gemma2", "gemma3", "gemma3_mm", "bert"}


class SwapHalves(Transform):
    """gate | up rows read as up | gate (the broken fusion)."""

    name = "swap_halves"

    def shape(self, shapes, where):
        return shapes[0]

    def __call__(self, arrays):
        (a,) = arrays
        n = a.shape[0] // 2
        return np.concatenate([a[n:], a[:n]])


def _write_pooling(mode: gguf.PoolingType):
    def add(w, cfg, hp, folder):
        w.add_pooling_type(mode)
    return add


BROKEN = {
    "gemma": [("no norm shift", lambda mp: mp.setattr(gemma_mod.Gemma, "transforms", {}))],
    "gemma2": [("no norm shift", lambda mp: mp.setattr(gemma_mod.Gemma2, "transforms", {}))],
    "gemma3": [("no norm shift", lambda mp: mp.setattr(gemma_mod.Gemma3, "transforms", {})),
               ("q/k norms not shifted", lambda mp: mp.setattr(gemma_mod.Gemma3, "transforms", {
                   ("layernorm.weight", "model.norm.weight"): gemma_mod.norm_plus_one}))],
    "gemma3_mm": [("no norm shift", lambda mp: mp.setattr(gemma_mod.Gemma3, "transforms", {}))],
    "phi3": [("llama's rope permutation on the fused qkv", lambda mp: mp.setattr(phi3_mod.Phi3, "transforms", {
                 ("qkv_proj.weight",): lambda hp: PermuteQK(hp.n_head + 2 * hp.n_head_kv)})),
             ("gate and up swapped", lambda mp: mp.setattr(phi3_mod.Phi3, "transforms", {
                 ("gate_up_proj.weight",): lambda hp: SwapHalves()}))],
    "phi3_partial": [("rope over the whole head", lambda mp: mp.setattr(phi3_mod, "_rope_dims",
                                                                         lambda cfg, hp: hp.n_embd // hp.n_head))],
    "bert": [("CLS pooling for mean", lambda mp: mp.setattr(bert_mod.Bert, "keys", (
                 bert_mod.not_causal, _write_pooling(gguf.PoolingType.CLS)))),
             ("last-token pooling for mean", lambda mp: mp.setattr(bert_mod.Bert, "keys", (
                 bert_mod.not_causal, _write_pooling(gguf.PoolingType.LAST))))],
}


def run_error(tmp_path: Path, folder: Path, case: str, tag: str) -> tuple[float, float]:
    """max |llama.cpp - numpy| / max |numpy| for TOKENS, the folder converted to F32 GGUF by qtool: against
    the transformers definition, and against it with ggml's GELU."""
    from qtool.convert import convert
    from qtool.testing import client

    out = convert(folder, "F32", tmp_path / f"{case}-{tag}.gguf").output
    if case == "bert":
        got = client.embedding(out, TOKENS)[None]
    else:
        got = client.logits(out, TOKENS, f32_cache=True)
    errors = []
    for gelu in (contextlib.nullcontext(), more.ggml_gelu()):
        with gelu:
            want = more.forward(folder, more.CASES[case].family, TOKENS)
        assert got.shape == want.shape and np.isfinite(got).all(), (got.shape, want.shape)
        errors.append(float(np.abs(got - want).max() / np.abs(want).max()))
    return errors[0], errors[1]


@pytest.mark.oracle
@pytest.mark.parametrize("case", list(RUNS))
def test_llama_cpp_matches_the_forward_pass(tmp_path, case, oracle, monkeypatch):
    folder = more.write_case(tmp_path / case, case, **RUNS[case])
    err, err_ggml = run_error(tmp_path, folder, case, "ok")
    print(f"\n{case}: llama.cpp vs numpy float64, max error / max value = {err:.2e}"
          + (f" ({err_ggml:.2e} with ggml's GELU)" if case in GELU else ""))
    if case in GELU:
        assert err < GELU_BOUND, f"{case}: llama.cpp differs from the forward pass by {err:.2e} of the largest value"
        assert err_ggml < BOUND_GGML_GELU, f"{case}: {err_ggml:.2e} from the forward pass with ggml's GELU"
        bound = GELU_BOUND
    else:
        assert err < BOUND, f"{case}: llama.cpp differs from the forward pass by {err:.2e} of the largest value"
        bound = BOUND
    for what, breaks in BROKEN[case]:
        with monkeypatch.context() as mp:
            breaks(mp)
            bad, _ = run_error(tmp_path, folder, case, "".join(c if c.isalnum() else "-" for c in what))
        print(f"{case} with {what}: {bad:.2e}")
        assert bad > 20 * bound, f"{case} with {what}: error {bad:.2e} is within the bound; the check is blind"


def test_gemma_windows_are_shorter_than_the_prompt():
    """The Gemma runs above exercise the window masks: their windows are shorter than the prompt."""
    for case in ("gemma2", "gemma3"):
        assert RUNS[case]["sliding_window"] < len(TOKENS), case


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_norm_shift_as_the_reference(dtype):
    """norm_plus_one as convert_hf_to_gguf computes it: F32 and BF16 weights (widened to F32 before
    modify_tensors) shifted in float32, F16 weights in F16 (torch's half add, rounded to nearest even; checked
    once against torch 2.13 on 100,000 values, torch being no test dependency). On stored words the result is
    stored in the same dtype again (BF16: rounded to nearest even). tests/test_reference_meta checks the BF16
    case bit for bit against the reference's own output (gemma3_bf16)."""
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_normal(4000).astype(np.float32) * 0.3,
                        np.float32([0, -1, -0.5, 1e-8, 3.0, 65504.0, -2.0 ** -14])])
    t = gemma_mod.NormShift().for_dtype(dtype)

    def bf16(v):
        bits = v.view(np.uint32)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)

    if dtype == "F32":
        widen, words = x, x.view(np.uint32)
        want = want_words = x + np.float32(1)
        words_out = t([words]).view(np.float32)
    elif dtype == "F16":
        stored = x.astype(np.float16)
        widen, words = stored.astype(np.float32), stored.view(np.uint16)
        want = want_words = (widen + np.float32(1)).astype(np.float16).astype(np.float32)
        words_out = t([words]).view(np.float16).astype(np.float32)
    else:
        words = bf16(x)
        widen = (words.astype(np.uint32) << 16).view(np.float32)
        want = widen + np.float32(1)
        want_words = (bf16(want).astype(np.uint32) << 16).view(np.float32)
        words_out = (t([words]).astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(t([widen]), want)
    np.testing.assert_array_equal(words_out, want_words)


def test_bert_pooling_type_follows_1_pooling(tmp_path):
    """1_Pooling/config.json's mode is the GGUF pooling type (mean for all-MiniLM-L6-v2; CLS when it says so)."""
    from qtool.formats.source import open_model

    folder = more.write_case(tmp_path / "bert", "bert")
    with open_model(folder) as src:
        assert src.metadata["bert.pooling_type"] == int(gguf.PoolingType.MEAN)
        assert src.metadata["bert.attention.causal"] is False
        assert "embeddings.position_ids" in src.skipped
    pool = folder / "1_Pooling" / "config.json"
    cfg = json.loads(pool.read_text())
    cfg.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    pool.write_text(json.dumps(cfg))
    with open_model(folder) as src:
        assert src.metadata["bert.pooling_type"] == int(gguf.PoolingType.CLS)


@pytest.mark.oracle
def test_phi3_longrope_runs_as_the_forward_pass(tmp_path, oracle, monkeypatch):
    """Phi-3-mini-128k's scaling: llama.cpp takes rope_factors_short while its context fits the original
    4096 and rope_factors_long beyond, times the attention factor key; transformers takes the short factors
    while the sequence fits and the long ones beyond. A 512 context against the short factors, an 8192
    context against the long ones (the forward pass given the long factors as its short ones, the prompt
    being short); without the generated factor tensors the error is far outside the bound."""
    from qtool.convert import convert
    from qtool.testing import client

    folder = more.write_case(tmp_path / "phi3_longrope", "phi3_longrope")
    cfg = json.loads((folder / "config.json").read_text())
    W = more.weights(folder)
    short = more.forward(folder, "phi3", TOKENS)
    rs = cfg["rope_scaling"]
    long = more.MORE["phi3"].forward({**cfg, "rope_scaling": {**rs, "short_factor": rs["long_factor"]}}, W, TOKENS)
    assert np.abs(long - short).max() > 100 * BOUND * np.abs(short).max()  # the two factor sets differ here

    out = convert(folder, "F32", tmp_path / "lr.gguf").output
    res = client.run(out, logits=[TOKENS], n_ctx=512, f32_cache=True)
    err_short = float(np.abs(res.logits[0] - short).max() / np.abs(short).max())
    res = client.run(out, logits=[TOKENS], n_ctx=8192, f32_cache=True)
    err_long = float(np.abs(res.logits[0] - long).max() / np.abs(long).max())
    print(f"\nphi3 longrope: short factors {err_short:.2e}, long factors {err_long:.2e}")
    assert err_short < BOUND and err_long < BOUND, (err_short, err_long)

    with monkeypatch.context() as mp:
        mp.setattr(phi3_mod.Phi3, "generate", ())
        bad_out = convert(folder, "F32", tmp_path / "lr-bad.gguf").output
    bad = client.run(bad_out, logits=[TOKENS], n_ctx=8192, f32_cache=True).logits[0]
    err_bad = float(np.abs(bad - long).max() / np.abs(long).max())
    print(f"phi3 longrope without the factor tensors: {err_bad:.2e}")
    assert err_bad > 100 * BOUND


#: sizes at which the K-quant and legacy block rules apply (rows of 256) -- the config keys stay the real ones
WIDE = {"gemma2": {"hidden_size": 256, "intermediate_size": 512, "head_dim": 64, "query_pre_attn_scalar": 64},
        "gemma3": {"hidden_size": 256, "intermediate_size": 512, "head_dim": 64, "query_pre_attn_scalar": 64},
        "phi3": {"hidden_size": 256, "intermediate_size": 512},
        "bert": {"hidden_size": 256, "intermediate_size": 512}}


@pytest.mark.oracle
@pytest.mark.parametrize("preset", ["Q4_K_M", "Q8_0", "Q6_K"])
@pytest.mark.parametrize("case", list(WIDE))
def test_quantized_file_equals_llama_quantize(tmp_path, case, preset, oracle):
    """qtool convert FOLDER --type PRESET is byte for byte llama_model_quantize(F32 conversion, PRESET): the
    F32 conversion being the reference converter's (test_reference_meta: keys and tensor bytes), this is
    convert_hf_to_gguf.py --outtype f32 followed by llama-quantize, for the families' own tensors (fused
    attn_qkv and double-width ffn_up, the four Gemma norms, BERT's biases, token types and position table)."""
    import ctypes

    import llama_cpp as lc
    from gguf import LlamaFileType

    from qtool.convert import convert
    from qtool.formats.ggml_types import file_type_named

    folder = more.write_case(tmp_path / case, case, **WIDE[case])
    f32 = convert(folder, "F32", tmp_path / f"{case}-F32.gguf").output
    ours = convert(folder, preset, tmp_path / f"{case}-{preset}.gguf").output
    theirs = tmp_path / f"{case}-{preset}-llama.gguf"
    params = lc.llama_model_quantize_default_params()
    params.nthread = 2
    params.ftype = int(file_type_named("MOSTLY_" + preset))
    assert lc.llama_model_quantize(str(f32).encode(), str(theirs).encode(), ctypes.byref(params)) == 0
    a, b = Path(ours).read_bytes(), theirs.read_bytes()
    if a != b:
        ra, rb = gguf.GGUFReader(ours), gguf.GGUFReader(theirs)
        kinds = [(t.name, t.tensor_type.name, u.tensor_type.name) for t, u in zip(ra.tensors, rb.tensors)
                 if t.name != u.name or t.tensor_type != u.tensor_type or bytes(t.data) != bytes(u.data)]
        pytest.fail(f"{case} {preset}: {len(a)} vs {len(b)} bytes; differing tensors (name, ours, llama.cpp): "
                    f"{kinds[:6]}")
    assert LlamaFileType(int(gguf.GGUFReader(theirs).fields["general.file_type"].contents())).name.endswith(preset)
