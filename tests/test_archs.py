"""The architecture registry (qtool.archs), family by family, on tiny random-weight Hugging Face folders with
the config keys of the real checkpoints (qtool.testing.hf_models):

  * what each family writes: architecture, keys, tensor names and shapes, stacked experts, rope_freqs;
  * config.json that lies (layers, heads, hidden size, vocabulary, experts): a one-line error naming the
    file and the key, at once, before anything is sized by the claim;
  * an architecture not in the registry: an error listing the supported ones; --tensors-only;
  * llama.cpp (through qtool.testing.client) runs each converted folder, and its logits stay within a tight
    bound of a float64 numpy forward pass of the HF weights written from the transformers definitions;
    the same conversion with one transform deliberately broken (Q not permuted, llama's permutation on
    Qwen, no rope_freqs, experts stacked in the wrong order) falls outside it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
from conftest import ROOT, edit_config, refuses
from gguf import GGUFReader, MODEL_ARCH_NAMES

from qtool import archs
from qtool.archs import llama as llama_mod
from qtool.archs.base import Family, Experts, permute_k, permute_q
from qtool.archs.transforms import StackExperts
from qtool.errors import UsageError
from qtool.formats.safetensors import write_safetensors
from qtool.formats.source import open_model
from qtool.testing import hf_models

FAMILIES = list(hf_models.FAMILIES)
MINE = ["llama3", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe"]  # this module's families in hf_models
TOKENS = [318, 5, 72, 101, 33, 250, 17, 99, 140, 7, 64, 201, 12, 300, 45, 88]
#: llama.cpp (float32, F32 KV cache) against the float64 forward pass: max |error| / max |logit|
BOUND = 1e-5


def folder_of(tmp_path: Path, name: str, **claims) -> Path:
    """The tiny ``name`` folder, its config.json claiming ``claims`` over what the weights are."""
    return hf_models.write(tmp_path / name, name, claims=claims)


# -- the registry ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("hf_name", archs.supported())
def test_every_registered_name_has_a_gguf_architecture(hf_name):
    family = archs.registered()[hf_name]
    assert issubclass(family, Family) and family.arch in MODEL_ARCH_NAMES
    assert archs.lookup({"architectures": [hf_name]}) is family


@pytest.mark.parametrize("arch", sorted({f.arch for f in archs.registered().values()} |
                                        {gguf.MODEL_ARCH.GEMMA3N, gguf.MODEL_ARCH.T5, gguf.MODEL_ARCH.BERT,
                                         gguf.MODEL_ARCH.DEEPSEEK2, gguf.MODEL_ARCH.FALCON}), ids=lambda a: a.name)
def test_name_map_answers_as_gguf_does(arch, monkeypatch):
    """tensors.NameMap looks each name up when asked; gguf's TensorNameMap formats them all first: the same answer
    for every key gguf's map holds (at 0, 1, 3 and 40 blocks, with and without .weight/.bias), and none for
    a block past the last, a number with a leading zero, and names no pattern has."""
    from gguf.tensor_mapping import TensorNameMap

    from qtool.archs.tensors import NameMap

    for n_blocks in (0, 1, 3, 40):
        # gguf's constructor adds the architecture's block patterns to its class's table: a fresh table each time
        monkeypatch.setattr(TensorNameMap, "block_mappings_cfg", dict(TensorNameMap.block_mappings_cfg))
        theirs, ours = TensorNameMap(arch, n_blocks), NameMap(arch, n_blocks)
        assert theirs.mapping
        for key, want in theirs.mapping.items():
            assert ours.get_type_and_name(key) == want, key
            assert ours.get_type_and_name(key + ".bias", try_suffixes=(".weight", ".bias")) == \
                (want[0], want[1] + ".bias"), key
        past = [k.format(bid=n_blocks) for ks in TensorNameMap.block_mappings_cfg.values() for k in ks if "{bid}" in k]
        for key in past + [k.replace(".1.", ".01.") for k in theirs.mapping if ".1." in k] + ["model.nothing", "x.3.y"]:
            assert ours.get_type_and_name(key, try_suffixes=(".weight",)) == \
                theirs.get_type_and_name(key, try_suffixes=(".weight",)), key


def test_registering_a_name_twice_is_refused():
    with pytest.raises(TypeError, match="registered twice"):
        class Again(Family, hf=("LlamaForCausalLM",)):  # noqa: F841
            arch = llama_mod.MODEL_ARCH.LLAMA


def test_lookup_by_model_type_and_text_config():
    assert archs.lookup({"model_type": "qwen3_moe"}).__name__ == "Qwen3Moe"
    assert archs.lookup({"architectures": ["X"], "text_config": {"architectures": ["Qwen2ForCausalLM"]}}).__name__ == "Qwen2"
    assert archs.lookup({"architectures": ["GPT2LMHeadModel"]}) is None


# -- what each family writes ----------------------------------------------------------------------------

EXPECTED = {
    # family: (architecture, tensors, keys that must hold)
    "llama3": ("llama", 22, {"llama.rope.dimension_count": 16, "llama.attention.key_length": 16,
                             "llama.vocab_size": 320, "llama.rope.freq_base": 500000.0,
                             "llama.context_length": 512}),
    "mistral": ("llama", 21, {"llama.rope.dimension_count": 8, "llama.attention.head_count": 8,
                              "llama.attention.head_count_kv": 2, "llama.vocab_size": 320}),
    "mixtral": ("llama", 23, {"llama.expert_count": 4, "llama.expert_used_count": 2, "llama.vocab_size": 320,
                              "llama.rope.freq_base": 1000000.0}),
    "qwen2": ("qwen2", 26, {"qwen2.attention.head_count_kv": 2, "qwen2.rope.freq_base": 1000000.0,
                            "qwen2.feed_forward_length": 96}),
    "qwen3": ("qwen3", 24, {"qwen3.attention.key_length": 32, "qwen3.attention.value_length": 32,
                            "qwen3.embedding_length": 64}),
    "qwen3_moe": ("qwen3moe", 27, {"qwen3moe.expert_count": 4, "qwen3moe.expert_used_count": 2,
                                   "qwen3moe.expert_feed_forward_length": 32, "qwen3moe.attention.key_length": 16}),
}


@pytest.mark.parametrize("name", MINE)
def test_family_metadata_and_tensors(tmp_path, name):
    arch, n_tensors, keys = EXPECTED[name]
    folder = folder_of(tmp_path, name)
    with open_model(folder) as src:
        assert src.architecture == arch and src.loadable, src.problems
        assert src.metadata["general.architecture"] == arch and src.metadata[f"{arch}.block_count"] == 2
        for k, v in keys.items():
            assert src.metadata[k] == v, k
        assert len(src.tensors) == n_tensors and src.unmapped == []
        assert all(s.endswith("rotary_emb.inv_freq") for s in src.skipped) and len(src.skipped) == 2
        assert "tokenizer.ggml.tokens" in src.metadata
        names = {t.name for t in src.tensors}
        assert ("output.weight" in names) != (name in ("qwen2", "qwen3"))  # those two are tied, as the real ones
        if name == "qwen2":
            assert {"blk.0.attn_q.bias", "blk.1.attn_v.bias"} <= names
        if name in ("qwen3", "qwen3_moe"):
            assert src.info("blk.1.attn_q_norm.weight").shape == (32 if name == "qwen3" else 16,)


def test_qwen3_moe_experts_are_stacked(tmp_path):
    folder = folder_of(tmp_path, "qwen3_moe")
    w = hf_models.weights(folder)
    with open_model(folder) as src:
        names = [t.name for t in src.tensors]
        assert not any(".experts." in n for n in names)
        for proj, gguf_name, shape in (("gate_proj", "ffn_gate_exps", (4, 32, 64)), ("up_proj", "ffn_up_exps", (4, 32, 64)),
                                       ("down_proj", "ffn_down_exps", (4, 64, 32))):
            info = src.info(f"blk.1.{gguf_name}.weight")
            assert info.shape == shape and info.nbytes == 4 * int(np.prod(shape))
            got = src.load(info.name)
            for x in range(4):
                np.testing.assert_array_equal(got[x], w[f"model.layers.1.mlp.experts.{x}.{proj}.weight"])
            np.testing.assert_array_equal(src.raw(info.name).view(np.float32).reshape(shape), got)
        assert src.info("blk.0.ffn_gate_inp.weight").shape == (4, 64)


def test_mixtral_experts_are_stacked(tmp_path):
    folder = folder_of(tmp_path, "mixtral")
    w = hf_models.weights(folder)
    with open_model(folder) as src:
        for wid, gguf_name, shape in (("w1", "ffn_gate_exps", (4, 48, 64)), ("w3", "ffn_up_exps", (4, 48, 64)),
                                      ("w2", "ffn_down_exps", (4, 64, 48))):
            got = src.load(f"blk.0.{gguf_name}.weight")
            assert got.shape == shape
            for x in range(4):
                np.testing.assert_array_equal(got[x], w[f"model.layers.0.block_sparse_moe.experts.{x}.{wid}.weight"])
        assert src.info("blk.1.ffn_gate_inp.weight").shape == (4, 64)


def test_qwen3_moe_fused_experts_read_like_per_expert_ones(tmp_path):
    """transformers 5 stores experts stacked (gate and up fused, names without .weight): same GGUF tensors."""
    per_expert = folder_of(tmp_path, "qwen3_moe")
    w = {k: v.astype(np.float32) for k, v in hf_models.weights(per_expert).items()}
    fused = {}
    for name, value in w.items():
        if ".mlp.experts." not in name:
            fused[name] = value
    for i in range(2):
        p = f"model.layers.{i}.mlp.experts."
        gate = np.stack([w[p + f"{x}.gate_proj.weight"] for x in range(4)])
        up = np.stack([w[p + f"{x}.up_proj.weight"] for x in range(4)])
        fused[p + "gate_up_proj"] = np.concatenate([gate, up], axis=1)
        fused[p + "down_proj"] = np.stack([w[p + f"{x}.down_proj.weight"] for x in range(4)])
    other = tmp_path / "fused"
    other.mkdir()
    for f in ("config.json", "tokenizer.json"):
        (other / f).write_bytes((per_expert / f).read_bytes())
    write_safetensors(other / "model.safetensors", fused)
    with open_model(per_expert) as a, open_model(other) as b:
        assert sorted(t.name for t in a.tensors) == sorted(t.name for t in b.tensors)
        for t in a.tensors:
            assert b.info(t.name).shape == t.shape
            np.testing.assert_array_equal(a.load(t.name), b.load(t.name), err_msg=t.name)


def test_llama3_rope_freqs(tmp_path):
    """rope_freqs holds inv_freq(default) / inv_freq(llama3) per rotary pair, written before the other tensors."""
    folder = folder_of(tmp_path, "llama3")
    cfg = json.loads((folder / "config.json").read_text())
    plain = hf_models.inv_freq({**cfg, "rope_scaling": None}, 16)
    want = plain / hf_models.inv_freq(cfg, 16)
    with open_model(folder) as src:
        assert src.tensors[0].name == "rope_freqs.weight" and src.tensors[0].shape == (8,)
        got = src.load("rope_freqs.weight")
        np.testing.assert_allclose(got, want, rtol=1e-6)
        assert got[0] == 1.0 and got[-1] == 8.0 and 1.0 < got[1] <= 8.0
        assert "llama.rope.scaling.type" not in src.metadata
    edit_config(folder, rope_scaling=None)
    with open_model(folder) as src:
        assert "rope_freqs.weight" not in [t.name for t in src.tensors]


# -- config.json that lies -----------------------------------------------------------------------------


def test_claimed_layer_count_is_checked_before_anything_is_sized(tmp_path):
    folder = folder_of(tmp_path, "llama3", num_hidden_layers=100000)
    t0 = time.perf_counter()
    msg = refuses(folder, "num_hidden_layers is 100000", "layers 0 to 1", "model.safetensors",
                  name=folder / "config.json")
    assert time.perf_counter() - t0 < 2.0, msg
    edit_config(folder, num_hidden_layers=1)
    refuses(folder, "num_hidden_layers is 1", "(2 layers)", name=folder / "config.json")


@pytest.mark.parametrize("name, changes, fragments", [
    ("llama3", {"hidden_size": 128}, ["hidden_size 128", "'model.embed_tokens.weight'", "[320, 64]"]),
    ("llama3", {"vocab_size": 32000}, ["vocab_size 32000", "'model.embed_tokens.weight'"]),
    ("llama3", {"vocab_size": 10 ** 12}, ["vocab_size 1000000000000"]),
    ("mistral", {"num_key_value_heads": 4}, ["num_key_value_heads 4", "k_proj"]),
    ("llama3", {"intermediate_size": 4096}, ["intermediate_size 4096", "gate_proj"]),
    ("qwen3", {"head_dim": 16}, ["head_dim 16", "q_proj"]),
    ("qwen3", {"num_attention_heads": 2, "num_key_value_heads": 1}, ["num_attention_heads 2", "q_proj"]),
    ("qwen2", {"num_attention_heads": 6, "num_key_value_heads": 2}, ["num_attention_heads 6", "q_proj"]),
    ("qwen3_moe", {"moe_intermediate_size": 64}, ["moe_intermediate_size 64", "experts"]),
    ("qwen3_moe", {"num_experts": 8}, ["num_experts is 8", "lacks expert 4"]),
    ("qwen3_moe", {"num_experts": 1000000, "num_experts_per_tok": 2}, ["num_experts is 1000000"]),
    ("qwen3_moe", {"num_experts": 2, "num_experts_per_tok": 2}, ["num_experts is 2", "holds expert 2"]),
    ("qwen3_moe", {"num_experts_per_tok": 5}, ["num_experts_per_tok is 5"]),
    ("mixtral", {"num_local_experts": 3}, ["num_local_experts is 3", "holds expert 3"]),
    ("mixtral", {"intermediate_size": 96}, ["intermediate_size 96", "experts"]),
])
def test_config_that_lies_is_named(tmp_path, name, changes, fragments):
    folder = folder_of(tmp_path, name, **changes)
    t0 = time.perf_counter()
    refuses(folder, *fragments, name=folder / "config.json")
    assert time.perf_counter() - t0 < 2.0


def test_qwen3_moe_that_llama_cpp_would_run_differently(tmp_path):
    """llama.cpp's qwen3moe renormalizes the top-k router weights and has experts in every layer."""
    for claims, fragment in (({"norm_topk_prob": False}, "norm_topk_prob is false"),
                             ({"mlp_only_layers": [1]}, "mlp_only_layers [1]"),
                             ({"norm_topk_prob": None}, "norm_topk_prob is false")):  # Qwen3MoeConfig's default
        with open_model(folder_of(tmp_path / str(len(fragment)) / fragment[:4], "qwen3_moe", **claims)) as src:
            assert not src.loadable and any(fragment in p for p in src.problems), src.problems


def test_lying_config_on_the_command_line(tmp_path):
    folder = folder_of(tmp_path, "llama3", num_hidden_layers=100000)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("QTOOL_DEBUG", None)
    r = subprocess.run([sys.executable, "-m", "qtool", "convert", str(folder), "--type", "Q8_0"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(folder / "config.json") in lines[0] and "num_hidden_layers" in lines[0], r.stderr
    assert not list(tmp_path.glob("*.gguf"))


def test_integer_buffers(tmp_path):
    folder = folder_of(tmp_path, "llama3")
    w = {k: v.astype(np.float32) for k, v in hf_models.weights(folder).items()}
    w["model.layers.0.self_attn.rotary_emb.inv_freq"] = ("I64", np.arange(8, dtype=np.int64))  # a buffer: dropped
    write_safetensors(folder / "model.safetensors", w)
    with open_model(folder) as src:
        assert "model.layers.0.self_attn.rotary_emb.inv_freq" in src.skipped and src.loadable
    w["model.layers.0.mystery"] = ("I64", np.arange(8, dtype=np.int64))  # not a buffer the family drops
    write_safetensors(folder / "model.safetensors", w)
    refuses(folder, "unsupported dtype I64", "'model.layers.0.mystery'", name=folder / "model.safetensors")


# -- architectures not in the registry -----------------------------------------------------------------


def unknown_folder(tmp_path: Path) -> Path:
    folder = folder_of(tmp_path, "llama3")
    edit_config(folder, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    w = {k: v.astype(np.float32) for k, v in hf_models.weights(folder).items()}
    w["transformer.h.0.attn.bias"] = ("BOOL", np.ones((4, 4), dtype=np.uint8))
    write_safetensors(folder / "model.safetensors", w)
    return folder


def test_unknown_architecture_lists_the_supported_ones(tmp_path):
    from qtool.convert import convert

    folder = unknown_folder(tmp_path)
    with pytest.raises(UsageError) as e:
        convert(folder, "Q8_0", tmp_path / "out.gguf")
    msg = str(e.value)
    assert "'GPT2LMHeadModel' is not one qtool can convert" in msg and "--tensors-only" in msg
    for hf_name in archs.supported():
        assert hf_name in msg
    assert not (tmp_path / "out.gguf").exists()


def test_tensors_only(tmp_path):
    from qtool.convert import convert

    folder = unknown_folder(tmp_path)
    result = convert(folder, "Q8_0", tmp_path / "out.gguf", tensors_only=True)
    r = GGUFReader(result.output)
    meta = {k: f.contents() for k, f in r.fields.items()}
    assert meta["general.architecture"] == "GPT2LMHeadModel"
    assert meta["general.description"].startswith("tensors only, not runnable")
    assert meta["GPT2LMHeadModel.block_count"] == 2
    assert not any(k.startswith("tokenizer.") for k in meta)
    names = {t.name for t in r.tensors}
    assert "model.layers.0.self_attn.q_proj.weight" in names and "transformer.h.0.attn.bias" not in names
    assert result.notes and "--tensors-only" in result.notes[0]
    # a known family keeps its GGUF names, still marked not runnable
    known = folder_of(tmp_path, "qwen2")
    result = convert(known, "Q8_0", tmp_path / "known.gguf", tensors_only=True)
    r = GGUFReader(result.output)
    assert r.fields["general.architecture"].contents() == "Qwen2ForCausalLM"
    assert "blk.0.attn_q.weight" in {t.name for t in r.tensors}


def test_tensors_only_on_the_command_line(tmp_path):
    folder = unknown_folder(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("QTOOL_DEBUG", None)

    def qtool(*args):
        return subprocess.run([sys.executable, "-m", "qtool", "convert", str(folder), "--type", "Q8_0", *args],
                              capture_output=True, text=True, env=env, timeout=300)

    r = qtool("-o", str(tmp_path / "refused.gguf"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "'GPT2LMHeadModel' is not one qtool can convert" in lines[0] and "Qwen2ForCausalLM" in lines[0]
    assert not (tmp_path / "refused.gguf").exists()
    r = qtool("--tensors-only", "-o", str(tmp_path / "t.gguf"))
    assert r.returncode == 0, r.stderr
    assert "tensors only" in r.stderr or "--tensors-only" in r.stderr
    assert GGUFReader(tmp_path / "t.gguf").fields["general.architecture"].contents() == "GPT2LMHeadModel"


# -- llama.cpp runs them --------------------------------------------------------------------------------

BROKEN = {
    # family: (what is broken, how)
    "llama3": [("Q rows not permuted", lambda mp: mp.setattr(llama_mod.Llama, "transforms",
                                                              {("k_proj.weight", "k_proj.bias"): permute_k})),
               ("no rope_freqs", lambda mp: mp.setattr(llama_mod.Llama, "generate", ()))],
    "mistral": [("K rows not permuted", lambda mp: mp.setattr(llama_mod.Llama, "transforms",
                                                               {("q_proj.weight", "q_proj.bias"): permute_q}))],
    "mixtral": [("experts stacked in the wrong order",
                 lambda mp: mp.setattr(StackExperts, "__call__", lambda self, a: np.stack(a[::-1], axis=0)))],
    "qwen2": [("llama's q/k permutation", lambda mp: mp.setattr(archs.qwen.Qwen2, "transforms",
                                                                 llama_mod.Llama.transforms))],
    "qwen3": [("llama's q/k permutation", lambda mp: mp.setattr(archs.qwen.Qwen3, "transforms",
                                                                 llama_mod.Llama.transforms))],
    "qwen3_moe": [("experts stacked in the wrong order",
                   lambda mp: mp.setattr(StackExperts, "__call__", lambda self, a: np.stack(a[::-1], axis=0))),
                  ("gate and up swapped", lambda mp: _swap_gate_up(mp))],
}


def _swap_gate_up(mp) -> None:
    """Stack each expert's up_proj as ffn_gate_exps and its gate_proj as ffn_up_exps."""
    orig = Experts.match

    def match(self, name):
        m = orig(self, name)
        return None if m is None else (m[0], m[1], {"gate_proj": "up_proj", "up_proj": "gate_proj"}.get(m[2], m[2]))

    mp.setattr(Experts, "match", match)


def llama_cpp_error(tmp_path: Path, folder: Path, name: str, tag: str) -> float:
    """max |llama.cpp - numpy| / max |numpy| over the logits of TOKENS, the folder converted to F32 GGUF."""
    from qtool.convert import convert
    from qtool.testing import client

    out = convert(folder, "F32", tmp_path / f"{name}-{tag}.gguf").output
    got = client.logits(out, TOKENS, f32_cache=True)
    want = hf_models.logits(folder, name, TOKENS)
    assert got.shape == want.shape and np.isfinite(got).all()
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.oracle
@pytest.mark.parametrize("name", MINE)
def test_llama_cpp_matches_the_forward_pass(tmp_path, name, oracle, monkeypatch):
    folder = folder_of(tmp_path, name)
    err = llama_cpp_error(tmp_path, folder, name, "ok")
    print(f"\n{name}: llama.cpp vs numpy float64, max error / max logit = {err:.2e}")
    assert err < BOUND, f"{name}: llama.cpp logits differ from the forward pass by {err:.2e} of the largest"
    for what, breaks in BROKEN[name]:
        with monkeypatch.context() as mp:
            breaks(mp)
            bad = llama_cpp_error(tmp_path, folder, name, "".join(c if c.isalnum() else "-" for c in what))
        print(f"{name} with {what}: {bad:.2e}")
        assert bad > 100 * BOUND, f"{name} with {what}: error {bad:.2e} is within the bound; the check is blind"


@pytest.mark.oracle
def test_llama_cpp_refuses_a_tensors_only_file(tmp_path, oracle):
    from qtool.convert import convert
    from qtool.testing import client

    out = convert(unknown_folder(tmp_path), "Q8_0", tmp_path / "t.gguf", tensors_only=True).output
    with pytest.raises(client.ClientFailed):
        client.logits(out, [1, 2, 3])
