"""`qtool convert` against llama.cpp itself (the llama-cpp-python 0.3.36 build): whole output files.

  * byte identity with llama_model_quantize for the presets qtool runs, on the fixture (from the Hugging
    Face folder and from an F32 GGUF of it) and on a deeper GQA model whose rows need the fallback types;
  * requantizing llama.cpp's own Q8_0 output, with and without --allow-requantize;
  * the real client: llama.cpp (in a child process, qtool.testing.client) loads qtool's Q8_0 / Q4_K_M files and its logits stay close to the
    F32 model's, while a deliberately damaged file does not;
  * the thread count does not change a byte.
"""

from __future__ import annotations

import ctypes
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, need_oracle, run_qtool
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, LlamaFileType

from qtool.convert import convert
from qtool.errors import QuantError
from qtool.formats.ggml_types import file_type_named
from qtool.plan import PlanOptions
from qtool.testing import client as llama_client
from qtool.testing.models import ModelSpec, write_model

pytestmark = pytest.mark.oracle
need_oracle()
import llama_cpp  # noqa: E402
lc = llama_cpp.llama_cpp

FIXTURE_F32 = ROOT / "fixtures" / "tiny-llama-f32"
FIXTURE_BF16 = ROOT / "fixtures" / "tiny-llama"


@ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
def _quiet(level, text, user_data):  # llama.cpp logs every tensor it quantizes and every load step
    pass


lc.llama_log_set(_quiet, None)

#: every preset qtool can run that llama-quantize can run on an F32 model without an importance matrix
PRESETS = ["Q4_K_M", "Q8_0", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q5_K_S", "Q5_K_M", "Q6_K",
           "Q4_0", "Q4_1", "Q5_0", "Q5_1", "F16", "BF16", "MXFP4_MOE", "TQ1_0", "TQ2_0", "IQ4_NL", "IQ4_XS", "IQ3_S", "IQ3_M",
           "Q1_0", "Q2_0"]

#: 8 layers (the n_layer/8 and n_layer/16 rules bite), GQA 4, rows of 288 (not a multiple of 256: the
#: k-quants fall back to Q5_0/Q5_1/Q8_0...) and ffn_down rows of 600 (not even a multiple of 32: F16)
FALLBACK_SPEC = ModelSpec(n_layer=8, n_embd=288, n_ff=600, n_head=8, n_head_kv=2, n_vocab=96)
FALLBACK_PRESETS = ["Q4_K_M", "Q3_K_M", "Q6_K", "Q2_0"]
MOE_SPEC = ModelSpec(n_layer=2, n_embd=256, n_ff=512, n_head=4, n_head_kv=2, n_expert=4, n_expert_used=2)
MOE_PRESETS = ["MXFP4_MOE", "Q4_K_M"]


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def llama_quantize(src: Path, dst: Path, preset: str, *, allow_requantize: bool = False) -> Path:
    """llama_model_quantize(src -> dst) with llama-quantize's defaults, 2 threads."""
    params = lc.llama_model_quantize_default_params()
    params.nthread = 2
    params.ftype = int(file_type_named("MOSTLY_" + preset) if preset != "F32" else LlamaFileType.ALL_F32)
    params.allow_requantize = allow_requantize
    rc = lc.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    assert rc == 0, f"llama_model_quantize({src.name} -> {preset}) failed with {rc}"
    return dst


def _fields(reader: GGUFReader) -> dict:
    return {k: (f.types, f.contents()) for k, f in reader.fields.items()}


def describe_difference(ours: Path, theirs: Path) -> str:
    """Why two GGUF files differ: sizes, first differing byte, metadata keys (order, type, value), tensor
    order, and the tensors whose type, shape or bytes differ (with their first differing byte)."""
    a, b = ours.read_bytes(), theirs.read_bytes()
    lines = [f"{ours.name}: {len(a)} bytes, {theirs.name} (llama.cpp): {len(b)} bytes"]
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.frombuffer(a[:n], np.uint8) != np.frombuffer(b[:n], np.uint8))
    if diff.size:
        lines.append(f"first differing byte at offset {int(diff[0])}, {diff.size} differing bytes in the "
                     f"common length")
    ra, rb = GGUFReader(ours), GGUFReader(theirs)
    fa, fb = _fields(ra), _fields(rb)
    if list(fa) != list(fb):
        lines.append(f"metadata key order differs: ours {list(fa)} vs {list(fb)}")
    for k in sorted(set(fa) | set(fb)):
        if fa.get(k) != fb.get(k):
            lines.append(f"key {k}: ours {str(fa.get(k))[:120]} vs {str(fb.get(k))[:120]}")
    ta, tb = {t.name: t for t in ra.tensors}, {t.name: t for t in rb.tensors}
    if list(ta) != list(tb):
        lines.append(f"tensor order differs: ours {list(ta)} vs {list(tb)}")
    moved = []
    for name in [n for n in ta if n in tb] + sorted(set(ta) ^ set(tb)):
        x, y = ta.get(name), tb.get(name)
        if x is None or y is None:
            lines.append(f"tensor {name}: only in {'theirs' if x is None else 'ours'}")
        elif x.tensor_type != y.tensor_type or list(x.shape) != list(y.shape):
            lines.append(f"tensor {name}: ours {x.tensor_type.name} {[int(d) for d in x.shape]}, "
                         f"theirs {y.tensor_type.name} {[int(d) for d in y.shape]}")
        else:
            xb, yb = np.asarray(x.data).view(np.uint8).ravel(), np.asarray(y.data).view(np.uint8).ravel()
            bad = np.flatnonzero(xb != yb)
            if bad.size:
                i = int(bad[0])
                lines.append(f"tensor {name} ({x.tensor_type.name}): {bad.size} of {xb.size} bytes differ, "
                             f"first at {i}: ours {xb[i:i + 8].tolist()} theirs {yb[i:i + 8].tolist()}")
            elif x.data_offset != y.data_offset:
                moved.append(name)
    if moved:
        lines.append(f"{len(moved)} tensor(s) with equal bytes start at other offsets, first {moved[0]}")
    return "\n  ".join(lines)


def assert_same_file(ours: Path, theirs: Path) -> None:
    if ours.read_bytes() != theirs.read_bytes():
        pytest.fail("files differ:\n  " + describe_difference(ours, theirs), pytrace=False)




# --------------------------------------------------------------------------------------------------
# fixtures: each file is made once per module
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vs_llama")


@pytest.fixture(scope="module")
def f32_gguf(work) -> Path:
    return convert(FIXTURE_F32, "F32", work / "tiny-f32.gguf").output


@pytest.fixture(scope="module")
def llama_out(work, f32_gguf):
    """llama.cpp's output for a preset, made once from the F32 GGUF."""
    made: dict[str, Path] = {}

    def get(preset: str) -> Path:
        if preset not in made:
            made[preset] = llama_quantize(f32_gguf, work / f"llama-{preset}.gguf", preset)
        return made[preset]

    return get


# --------------------------------------------------------------------------------------------------
# whole-file byte identity
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("source", ["hf-folder", "f32-gguf"])
def test_fixture_same_file_as_llama(preset, source, work, f32_gguf, llama_out):
    src = FIXTURE_F32 if source == "hf-folder" else f32_gguf
    ours = convert(src, preset, work / f"qtool-{source}-{preset}.gguf", threads=2).output
    assert_same_file(ours, llama_out(preset))


@pytest.mark.parametrize("preset", ["Q4_K_M", "Q5_0", "Q6_K"])
def test_f16_gguf_same_file_as_llama(preset, work):
    # the usual input in the wild: an F16 GGUF from convert_hf_to_gguf; both sides widen F16 first
    f16 = work / "tiny-f16.gguf"
    if not f16.exists():
        convert(FIXTURE_F32, "F16", f16)
    theirs = llama_quantize(f16, work / f"llama-f16-{preset}.gguf", preset)
    ours = convert(f16, preset, work / f"qtool-f16-{preset}.gguf", threads=2).output
    assert_same_file(ours, theirs)


@pytest.mark.parametrize("preset", MOE_PRESETS)
def test_moe_model_same_file_as_llama(preset, work):
    # 3-D expert tensors (ffn_*_exps) quantized expert by expert; MXFP4_MOE puts only those in MXFP4
    src = work / "moe.gguf"
    if not src.exists():
        write_model(src, MOE_SPEC, seed=3)
    theirs = llama_quantize(src, work / f"llama-moe-{preset}.gguf", preset)
    ours = convert(src, preset, work / f"qtool-moe-{preset}.gguf", threads=2).output
    types = {t.name: t.tensor_type for t in GGUFReader(theirs).tensors}
    assert types["blk.0.ffn_up_exps.weight"] == (T.MXFP4 if preset == "MXFP4_MOE" else T.Q4_K)  # experts present
    assert_same_file(ours, theirs)


@pytest.fixture(scope="module")
def fallback_model(work) -> Path:
    return write_model(work / "fallback.gguf", FALLBACK_SPEC, seed=7)


@pytest.mark.parametrize("preset", FALLBACK_PRESETS)
def test_fallback_model_same_file_as_llama(preset, work, fallback_model):
    theirs = llama_quantize(fallback_model, work / f"llama-fallback-{preset}.gguf", preset)
    ours = convert(fallback_model, preset, work / f"qtool-fallback-{preset}.gguf", threads=2).output
    # the model must really exercise the fallbacks, or this test proves less than it says
    types = {t.name: t.tensor_type for t in GGUFReader(theirs).tensors}
    assert types["blk.0.ffn_down.weight"] == T.F16  # rows of 600: no quantized block fits
    assert any(t in (T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_0, T.Q4_1) for t in types.values())
    assert_same_file(ours, theirs)


# --------------------------------------------------------------------------------------------------
# requantizing
# --------------------------------------------------------------------------------------------------


def test_requantize_q8_0_to_q4_0_same_file_as_llama(work, llama_out):
    q8 = llama_out("Q8_0")
    theirs = llama_quantize(q8, work / "llama-requant-Q4_0.gguf", "Q4_0", allow_requantize=True)
    ours = convert(q8, "Q4_0", work / "qtool-requant-Q4_0.gguf", threads=2,
                   options=PlanOptions(allow_requantize=True)).output
    assert_same_file(ours, theirs)


def test_requantize_refused_without_the_flag(work, llama_out):
    q8 = llama_out("Q8_0")
    out = work / "refused-Q4_0.gguf"
    r = run_qtool("convert", q8, "--type", "Q4_0", "-o", out)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qtool: error: "), r.stderr
    assert ".weight" in lines[0] and "Q8_0" in lines[0] and "--allow-requantize" in lines[0], lines[0]
    assert "Traceback" not in r.stderr
    assert not out.exists()
    assert not list(work.glob(".refused-Q4_0.gguf*"))


# --------------------------------------------------------------------------------------------------
# non-finite input: llama.cpp's loader validates every tensor it reads, copied ones too
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nonfinite_models(work) -> dict[str, tuple[Path, str]]:
    """{case: (model, tensor with the bad value)}: NaN in a quantized weight, Inf in a norm (never
    quantized, only copied)."""
    out = {}
    for case, tensor, row, col, value in (("nan-in-weight", "blk.1.ffn_up.weight", 37, 5, np.nan),
                                          ("inf-in-norm", "blk.1.ffn_norm.weight", None, 5, np.inf)):
        path = write_model(work / f"{case}.gguf", ModelSpec(n_layer=2, n_vocab=64), seed=3)
        r = GGUFReader(path, "r+")
        t = next(t for t in r.tensors if t.name == tensor)
        t.data[(row, col) if row is not None else col] = value
        r.data.flush()
        del r
        out[case] = (path, tensor)
    return out


@pytest.mark.parametrize("preset", ["Q4_K_M", "F16", "F32", "COPY"])
@pytest.mark.parametrize("case", ["nan-in-weight", "inf-in-norm"])
def test_nonfinite_input_refused_like_llama(case, preset, work, nonfinite_models):
    model, tensor = nonfinite_models[case]
    params = lc.llama_model_quantize_default_params()
    params.nthread = 2
    params.ftype = int(LlamaFileType.ALL_F32 if preset in ("F32", "COPY") else LlamaFileType["MOSTLY_" + preset])
    params.only_copy = preset == "COPY"
    theirs = work / f"llama-{case}-{preset}.gguf"
    assert lc.llama_model_quantize(str(model).encode(), str(theirs).encode(), ctypes.byref(params)) != 0
    ours = work / f"qtool-{case}-{preset}.gguf"
    with pytest.raises(QuantError, match=rf"^{re.escape(tensor)}: row \d+ holds a non-finite value"):
        convert(model, preset, ours)
    assert not ours.exists() and not list(work.glob(f".{ours.name}*"))


# --------------------------------------------------------------------------------------------------
# the real client: llama.cpp loads and runs what qtool writes
# --------------------------------------------------------------------------------------------------

#: token ids of the fixture's byte-level vocabulary (bos 318, then bytes and merges)
TOKENS = [318, 84, 104, 101, 32, 113, 117, 105, 99, 107, 260, 271, 32, 98, 114, 111]

#: Relative L2 error of the logits at every position. The fixture is built to be hard (heavy tails,
#: outlier input channels), so quantization costs it more than it would a trained model. Measured:
#:   llama.cpp on the F32 file vs a numpy forward pass of the HF weights         0.0007
#:   Q8_0 / Q4_K_M vs the F32 file (what the weights lost)                       0.060 / 0.41
#:   Q8_0 / Q4_K_M vs numpy on the file's own dequantized weights (what llama.cpp
#:     adds by quantizing activations for its dot products)                     0.025 / 0.050
#:   a damaged Q8_0 or Q4_K_M file (q rows permuted within heads, or ffn block
#:     scales doubled), against either                                          0.85 - 1.34
BOUND_VS_F32 = {"Q8_0": 0.15, "Q4_K_M": 0.6}
BOUND_VS_OWN_WEIGHTS = {"Q8_0": 0.07, "Q4_K_M": 0.12}
BOUND_F32_VS_HF = 5e-3


def logits(path: Path) -> np.ndarray:
    """llama.cpp's logits for TOKENS at every position, float64 [n_tokens, n_vocab] (in a child process)."""
    out = llama_client.logits(path, TOKENS, n_ctx=64)
    assert out.shape == (len(TOKENS), 320)
    assert np.isfinite(out).all(), f"{path.name}: non-finite logits"
    return out


def rel_error(x: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def hf_forward(cfg: dict, w: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    """The Hugging Face Llama forward pass in float64 numpy (rotate-half RoPE on HF-ordered q/k rows, GQA,
    SiLU MLP, RMSNorm): logits [n_tokens, n_vocab]. Written from the transformers model, not from qtool."""
    d, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, eps, n = d // nh, cfg["rms_norm_eps"], len(tokens)
    w = {k: np.asarray(v, np.float64) for k, v in w.items()}

    def rms(x, g):
        return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * g

    ang = np.arange(n)[:, None] * cfg["rope_theta"] ** (-np.arange(0, hd, 2) / hd)[None]
    cos, sin = np.cos(np.concatenate([ang, ang], -1))[:, None], np.sin(np.concatenate([ang, ang], -1))[:, None]

    def rope(x):  # [n, heads, hd]
        return x * cos + np.concatenate([-x[..., hd // 2:], x[..., : hd // 2]], -1) * sin

    x = w["model.embed_tokens.weight"][tokens]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q = rope((h @ w[p + "self_attn.q_proj.weight"].T).reshape(n, nh, hd))
        k = rope((h @ w[p + "self_attn.k_proj.weight"].T).reshape(n, nkv, hd))
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(n, nkv, hd)
        k, v = np.repeat(k, nh // nkv, 1), np.repeat(v, nh // nkv, 1)
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        x = x + np.einsum("hqk,khd->qhd", s, v).reshape(n, d) @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        g = h @ w[p + "mlp.gate_proj.weight"].T
        x = x + (g / (1 + np.exp(-g)) * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
    return rms(x, w["model.norm.weight"]) @ w["lm_head.weight"].T


_HF_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
             "ffn_norm": "post_attention_layernorm"}


def hf_weights_of(path: Path, cfg: dict) -> dict[str, np.ndarray]:
    """A GGUF's tensors dequantized (gguf-py's numpy dequantizers) and put back into HF names and HF row
    order: convert_hf_to_gguf interleaves the two rotary halves of each q/k head, this undoes it."""
    from gguf.quants import dequantize

    out = {}
    for t in GGUFReader(path).tensors:
        a = dequantize(np.asarray(t.data), t.tensor_type).astype(np.float64)
        top = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
               "output_norm.weight": "model.norm.weight"}
        if t.name in top:
            out[top[t.name]] = a
            continue
        _, layer, kind, _ = t.name.split(".")
        if kind in ("attn_q", "attn_k"):
            heads = cfg["num_attention_heads"] if kind == "attn_q" else cfg["num_key_value_heads"]
            hd = cfg["hidden_size"] // cfg["num_attention_heads"]
            a = a.reshape(heads, hd // 2, 2, -1).swapaxes(1, 2).reshape(a.shape)
        out[f"model.layers.{layer}.{_HF_NAMES[kind]}.weight"] = a
    return out


@pytest.fixture(scope="module")
def client(work):
    """qtool's F32 / Q8_0 / Q4_K_M files of the BF16 fixture, and what llama.cpp computes on the F32 one."""
    import json

    cfg = json.loads((FIXTURE_BF16 / "config.json").read_text())
    files = {t: convert(FIXTURE_BF16, t, work / f"client-{t}.gguf").output for t in ("F32", "Q8_0", "Q4_K_M")}
    return cfg, files, logits(files["F32"])


def test_client_f32_matches_the_hf_model(client):
    from safetensors.numpy import load_file

    cfg, files, f32 = client
    # the F32 fixture holds the BF16 fixture's values widened (numpy cannot read bfloat16 itself)
    weights = load_file(str(FIXTURE_F32 / "model.safetensors"))
    err = rel_error(f32, hf_forward(cfg, weights, TOKENS))
    assert err < BOUND_F32_VS_HF, f"llama.cpp on qtool's F32 file is {err:.5f} off the HF model's logits"


@pytest.mark.parametrize("preset", ["Q8_0", "Q4_K_M"])
def test_client_logits_close_to_f32(preset, client):
    cfg, files, f32 = client
    q = logits(files[preset])
    err = rel_error(q, f32)
    assert err < BOUND_VS_F32[preset], f"{preset}: logits {err:.4f} off F32's, bound {BOUND_VS_F32[preset]}"
    # llama.cpp computes what the file's weights say: its logits are near a numpy forward pass over the
    # file's own dequantized weights (the rest is llama.cpp quantizing activations for its dot products)
    own = rel_error(q, hf_forward(cfg, hf_weights_of(files[preset], cfg), TOKENS))
    assert own < BOUND_VS_OWN_WEIGHTS[preset], \
        f"{preset}: logits {own:.4f} off the file's own weights, bound {BOUND_VS_OWN_WEIGHTS[preset]}"


#: per base type: block bytes and the offset of the f16 super-block scale d in a block
_SCALE_AT = {T.Q8_0: (34, 0), T.Q4_K: (144, 0)}


def _corrupt(src: Path, dst: Path, how: str, cfg: dict) -> Path:
    """A copy of a qtool file with one kind of damage a buggy writer could do."""
    shutil.copyfile(src, dst)
    r = GGUFReader(dst, "r+")
    for t in r.tensors:
        if how == "permuted-q-rows" and ".attn_q." in t.name:
            # rows of attn_q in the wrong order within each head, as a wrong rope permutation leaves them
            rows = np.array(t.data).reshape(cfg["num_attention_heads"], -1, t.data.shape[-1])
            t.data[...] = rows[:, ::-1].reshape(t.data.shape)
        elif how == "wrong-scales" and ".ffn_" in t.name and t.tensor_type in _SCALE_AT:
            # every block's scale doubled (f16 exponent + 1)
            size, at = _SCALE_AT[t.tensor_type]
            blocks = t.data.reshape(-1, size)
            d = blocks[:, at:at + 2].copy().view(np.float16) * np.float16(2)
            blocks[:, at:at + 2] = d.view(np.uint8)
    r.data.flush()
    del r
    return dst


@pytest.mark.parametrize("how", ["permuted-q-rows", "wrong-scales"])
@pytest.mark.parametrize("preset", ["Q8_0", "Q4_K_M"])
def test_client_bounds_catch_a_broken_file(preset, how, work, client):
    cfg, files, f32 = client
    broken = _corrupt(files[preset], work / f"broken-{preset}-{how}.gguf", how, cfg)
    assert broken.read_bytes() != files[preset].read_bytes()
    q = logits(broken)
    err = rel_error(q, f32)
    assert err > 1.3 * BOUND_VS_F32[preset], f"{preset} {how}: a broken file is only {err:.4f} off F32's"
    # against the weights the file was meant to hold, the damage stands out by an order of magnitude
    own = rel_error(q, hf_forward(cfg, hf_weights_of(files[preset], cfg), TOKENS))
    assert own > 5 * BOUND_VS_OWN_WEIGHTS[preset], f"{preset} {how}: a broken file is only {own:.4f} off"


# --------------------------------------------------------------------------------------------------
# threads
# --------------------------------------------------------------------------------------------------


def test_thread_count_does_not_change_a_byte(work):
    files = []
    for n in (1, 2):
        out = work / f"threads-{n}.gguf"
        r = run_qtool("convert", FIXTURE_F32, "--type", "Q4_K_M", "-o", out, "--threads", str(n), "-q")
        assert r.returncode == 0, r.stderr
        files.append(out)
    assert files[0].read_bytes() == files[1].read_bytes(), describe_difference(*files)
