"""Hugging Face folders: GGUF names, llama q/k row order, the metadata convert_hf_to_gguf.py would write,
and malformed configs, tokenizers and weight sets refused with the file named. (Per-family conversions,
lying configs and llama.cpp runs: test_archs.py; tokenizer details: the vocab tests.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, edit_config, refuses
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

from qtool.formats.hf import HFSource, rope_row_order
from qtool.formats.safetensors import SafetensorsFile, write_safetensors
from qtool.formats.source import widen
from qtool.formats.source import open_model

FIXTURES = ROOT / "fixtures"
TINY, TINY_F32 = FIXTURES / "tiny-llama", FIXTURES / "tiny-llama-f32"
RNG = np.random.default_rng(5)


def hf_weights(folder: Path) -> dict[str, np.ndarray]:
    f = SafetensorsFile(folder / "model.safetensors")
    return {n: widen(f.bytes_of(n), e.dtype, e.shape) for n, e in f.entries.items()}


def copy_model(tmp_path: Path, src: Path = TINY_F32) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


# -- the fixture model --------------------------------------------------------------------------------

GGUF_NAMES = ["token_embd.weight"] + [
    f"blk.{i}.{n}.weight" for i in range(2)
    for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
] + ["output_norm.weight", "output.weight"]


def test_names_shapes_and_types():
    with open_model(TINY) as src:
        assert isinstance(src, HFSource) and src.format == "safetensors" and src.architecture == "llama"
        assert sorted(t.name for t in src.tensors) == sorted(GGUF_NAMES)
        assert src.unmapped == [] and src.skipped == []
        info = {t.name: t for t in src.tensors}
        assert info["blk.1.attn_k.weight"].source_name == "model.layers.1.self_attn.k_proj.weight"
        assert info["blk.1.attn_k.weight"].shape == (128, 256)
        assert info["blk.0.ffn_down.weight"].shape == (256, 768)
        assert info["output.weight"].shape == (320, 256)
        assert all(t.qtype == T.BF16 and t.nbytes == 2 * t.n_elements for t in src.tensors)
        assert src.path == TINY and {p.name for p in src.files} == {"config.json", "model.safetensors", "tokenizer.json"}
    with open_model(TINY_F32) as src:
        assert all(t.qtype == T.F32 and t.nbytes == 4 * t.n_elements for t in src.tensors)


def test_bf16_and_f32_folders_hold_the_same_values():
    with open_model(TINY) as bf, open_model(TINY_F32) as f32:
        for t in bf.tensors:
            np.testing.assert_array_equal(bf.load(t.name), f32.load(t.name), err_msg=t.name)


def test_q_and_k_rows_in_ggml_rope_order():
    """Head by head, GGUF row 2i is HF row i and GGUF row 2i+1 is HF row i + head_dim/2."""
    hf = hf_weights(TINY_F32)
    with open_model(TINY_F32) as src:
        for layer in range(2):
            for proj, gguf_name, heads in (("q_proj", "attn_q", 4), ("k_proj", "attn_k", 2)):
                w = hf[f"model.layers.{layer}.self_attn.{proj}.weight"]
                got = src.load(f"blk.{layer}.{gguf_name}.weight")
                hd = w.shape[0] // heads
                want = np.empty_like(w)
                for h in range(heads):
                    block = w[h * hd:(h + 1) * hd]
                    want[h * hd:(h + 1) * hd:2] = block[:hd // 2]
                    want[h * hd + 1:(h + 1) * hd:2] = block[hd // 2:]
                np.testing.assert_array_equal(got, want)
                raw = src.raw(f"blk.{layer}.{gguf_name}.weight")  # the stored bytes get the same order
                np.testing.assert_array_equal(raw.view(np.float32), want)
        # everything else passes through untouched
        np.testing.assert_array_equal(src.load("blk.0.attn_v.weight"), hf["model.layers.0.self_attn.v_proj.weight"])
        np.testing.assert_array_equal(src.raw("blk.0.attn_v.weight").view(np.float32),
                                      hf["model.layers.0.self_attn.v_proj.weight"])


def test_bf16_raw_is_permuted_too():
    with open_model(TINY) as src:
        bits = src.raw("blk.0.attn_q.weight").view(np.uint16).astype(np.uint32) << 16
        np.testing.assert_array_equal(bits.view(np.float32), src.load("blk.0.attn_q.weight"))


def test_rope_row_order_is_a_permutation():
    order = rope_row_order(24, 3)
    assert sorted(order.tolist()) == list(range(24))
    assert order[:8].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_metadata_as_convert_hf_to_gguf_writes_it():
    with open_model(TINY) as src:
        m, t = src.metadata, src.metadata_types
        assert src.loadable and src.problems == []
        expected = {
            "general.architecture": ("llama", V.STRING),
            "general.type": ("model", V.STRING),
            "general.name": ("Tiny Llama", V.STRING),  # gguf-py's Metadata heuristics on the folder name
            "general.size_label": ("1.7M", V.STRING),
            "llama.block_count": (2, V.UINT32),
            "llama.context_length": (256, V.UINT32),
            "llama.embedding_length": (256, V.UINT32),
            "llama.feed_forward_length": (768, V.UINT32),
            "llama.attention.head_count": (4, V.UINT32),
            "llama.attention.head_count_kv": (2, V.UINT32),
            "llama.rope.freq_base": (10000.0, V.FLOAT32),
            "llama.attention.layer_norm_rms_epsilon": (1e-5, V.FLOAT32),
            "llama.vocab_size": (320, V.UINT32),
            "llama.rope.dimension_count": (64, V.UINT32),
            # transformers' LlamaConfig gives head_dim = hidden_size / heads when config.json has none
            "llama.attention.key_length": (64, V.UINT32),
            "llama.attention.value_length": (64, V.UINT32),
            "tokenizer.ggml.model": ("gpt2", V.STRING),
            "tokenizer.ggml.bos_token_id": (318, V.UINT32),
            "tokenizer.ggml.eos_token_id": (319, V.UINT32),
            "tokenizer.ggml.add_bos_token": (True, V.BOOL),
        }
        for key, (value, vtype) in expected.items():
            assert m[key] == value and t[key] == vtype, key
        assert list(m)[:3] == ["general.architecture", "general.type", "general.name"]
        tokens = m["tokenizer.ggml.tokens"]
        assert len(tokens) == 320 and src.metadata_sub_types["tokenizer.ggml.tokens"] == V.STRING
        assert tokens[ord("a")] == "a" and tokens[32] == "\u0120" and tokens[10] == "\u010a"
        assert tokens[318:] == ["<|begin_of_text|>", "<|end_of_text|>"]
        types = m["tokenizer.ggml.token_type"]
        assert src.metadata_sub_types["tokenizer.ggml.token_type"] == V.INT32
        assert types[:318] == [1] * 318 and types[318:] == [3, 3]  # NORMAL, then CONTROL
        merges = m["tokenizer.ggml.merges"]
        assert len(merges) == 62 and all(len(x.split(" ")) == 2 for x in merges)
        for merge in merges:  # every merge makes a token of the vocabulary
            assert merge.replace(" ", "") in tokens


def make_folder(tmp_path, tensors, config=None, tokenizer=True):
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    cfg = {"architectures": ["LlamaForCausalLM"], "hidden_size": 16, "num_hidden_layers": 1,
           "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 32, "vocab_size": 320,
           "rms_norm_eps": 1e-6}
    cfg.update(config or {})
    (folder / "config.json").write_text(json.dumps(cfg))
    if tokenizer:
        shutil.copy(TINY / "tokenizer.json", folder / "tokenizer.json")
    write_safetensors(folder / "model.safetensors", tensors)
    return folder


def small_tensors(**extra):
    t = {"model.embed_tokens.weight": RNG.standard_normal((320, 16)).astype(np.float32),
         "model.layers.0.self_attn.q_proj.weight": RNG.standard_normal((16, 16)).astype(np.float32),
         "model.layers.0.self_attn.k_proj.weight": RNG.standard_normal((8, 16)).astype(np.float32),
         "lm_head.weight": RNG.standard_normal((320, 16)).astype(np.float32)}
    t.update(extra)
    return t


def test_tied_embeddings_keep_a_stored_head(tmp_path):
    # as LlamaModel: a stored lm_head.weight is written even when tied (llama.cpp then uses it); a tied
    # folder without one has no output.weight (llama.cpp falls back to token_embd)
    folder = make_folder(tmp_path, small_tensors(), {"tie_word_embeddings": True})
    with open_model(folder) as src:
        assert "output.weight" in [t.name for t in src.tensors] and src.skipped == []
    t = small_tensors()
    del t["lm_head.weight"]
    folder = make_folder(tmp_path, t, {"tie_word_embeddings": True})
    with open_model(folder) as src:
        names = [t.name for t in src.tensors]
        assert "output.weight" not in names and "token_embd.weight" in names


def test_unknown_names_kept_and_buffers_skipped(tmp_path):
    extra = {"model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(4, np.float32),
             "model.layers.0.mystery.weight": np.ones((2, 4), np.float32),
             "model.layers.0.self_attn.q_proj.bias": np.arange(16, dtype=np.float32)}
    folder = make_folder(tmp_path, small_tensors(**extra))
    with open_model(folder) as src:
        names = [t.name for t in src.tensors]
        assert "model.layers.0.mystery.weight" in names
        assert src.unmapped == ["model.layers.0.mystery.weight"]
        assert not src.loadable and "'model.layers.0.mystery.weight'" in src.problems[0]
        assert src.skipped == ["model.layers.0.self_attn.rotary_emb.inv_freq"]
        # the q bias is reordered like the q rows: 2 heads of 8
        assert src.load("blk.0.attn_q.bias").tolist() == [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]
        assert src.raw("blk.0.attn_q.bias").view(np.float32).tolist() == src.load("blk.0.attn_q.bias").tolist()


def test_sharded_folder_reads_like_one_file(tmp_path):
    w = hf_weights(TINY_F32)
    folder = tmp_path / "sharded"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(TINY_F32 / name, folder / name)
    names = list(w)
    half = len(names) // 2
    write_safetensors(folder / "model-00001-of-00002.safetensors", {n: w[n] for n in names[:half]})
    write_safetensors(folder / "model-00002-of-00002.safetensors", {n: w[n] for n in names[half:]})
    weight_map = {n: f"model-0000{1 if i < half else 2}-of-00002.safetensors" for i, n in enumerate(names)}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with open_model(folder) as sharded, open_model(TINY_F32) as single:
        assert [t.name for t in sharded.tensors] == [t.name for t in single.tensors]
        for t in single.tensors:
            np.testing.assert_array_equal(sharded.load(t.name), single.load(t.name))
        assert sharded.metadata["general.name"] == "Sharded"
    with open_model(folder / "model.safetensors.index.json") as via_index:  # config beside it: mapped
        assert via_index.architecture == "llama" and "blk.0.attn_q.weight" in [t.name for t in via_index.tensors]


def test_weights_file_named_directly(tmp_path):
    with open_model(TINY / "model.safetensors") as src:
        assert isinstance(src, HFSource) and src.path == TINY / "model.safetensors"
        assert "blk.1.ffn_up.weight" in [t.name for t in src.tensors]


def test_unknown_architecture_keeps_names(tmp_path):
    folder = make_folder(tmp_path, small_tensors(), {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    with open_model(folder) as src:
        assert src.architecture is None and not src.loadable
        assert src.unmapped == [t.name for t in src.tensors] and "lm_head.weight" in src.unmapped
        assert "'GPT2LMHeadModel' is not one qtool can convert" in src.problems[0]
        assert "LlamaForCausalLM" in src.problems[0] and "Qwen3MoeForCausalLM" in src.problems[0]
        np.testing.assert_array_equal(src.load("model.layers.0.self_attn.q_proj.weight"),
                                      hf_weights(folder)["model.layers.0.self_attn.q_proj.weight"])


def test_qwen2_maps_without_permutation(tmp_path):
    folder = make_folder(tmp_path, small_tensors(), {"architectures": ["Qwen2ForCausalLM"]})
    with open_model(folder) as src:
        assert src.architecture == "qwen2" and src.metadata["qwen2.block_count"] == 1
        np.testing.assert_array_equal(src.load("blk.0.attn_q.weight"),
                                      hf_weights(folder)["model.layers.0.self_attn.q_proj.weight"])


def test_model_type_alone(tmp_path):
    folder = make_folder(tmp_path, small_tensors(), {"model_type": "llama"})
    edit_config(folder, architectures=None)  # removed: only model_type names the architecture
    with open_model(folder) as src:
        assert src.architecture == "llama"
        w = hf_weights(folder)["model.layers.0.self_attn.q_proj.weight"]
        np.testing.assert_array_equal(src.load("blk.0.attn_q.weight"), w[rope_row_order(16, 2)])


# -- metadata corner cases ----------------------------------------------------------------------------


def test_no_tokenizer_is_not_loadable(tmp_path):
    folder = make_folder(tmp_path, small_tensors(), tokenizer=False)
    with open_model(folder) as src:
        assert not src.loadable and str(folder) in src.problems[0]
        assert "tokenizer.ggml.tokens" not in src.metadata
        assert src.metadata["llama.block_count"] == 1  # the rest is still there


def test_rope_scaling(tmp_path):
    folder = make_folder(tmp_path, small_tensors(), {"rope_scaling": {"type": "linear", "factor": 4.0}})
    with open_model(folder) as src:
        assert src.metadata["llama.rope.scaling.type"] == "linear"
        assert src.metadata["llama.rope.scaling.factor"] == 4.0 and src.loadable
        assert "rope_freqs.weight" not in [t.name for t in src.tensors]
    edit_config(folder, rope_scaling={"rope_type": "llama3", "factor": 8.0, "rope_theta": 500000.0})
    with open_model(folder) as src:  # llama3: no scaling keys, a generated rope_freqs tensor (test_archs.py)
        assert src.loadable and "llama.rope.scaling.type" not in src.metadata
        assert src.metadata["llama.rope.freq_base"] == 500000.0
        assert src.tensors[0].name == "rope_freqs.weight" and src.tensors[0].shape == (4,)


def test_head_dim_gives_key_and_value_length(tmp_path):
    folder = make_folder(tmp_path, small_tensors(), {"head_dim": 8})
    with open_model(folder) as src:
        m = src.metadata
        assert m["llama.attention.key_length"] == m["llama.attention.value_length"] == 8
        assert m["llama.rope.dimension_count"] == 8


# -- malformed folders --------------------------------------------------------------------------------


def test_config_malformed(tmp_path):
    folder = copy_model(tmp_path)
    cfg = folder / "config.json"
    cfg.write_text("{not json")
    refuses(folder, "not valid JSON", name=cfg)
    cfg.write_text("[1]")
    refuses(folder, "not a JSON object", name=cfg)
    cfg.write_bytes(b'{"a": "\xff"}')
    refuses(folder, "not UTF-8", name=cfg)


def test_config_values_wrong(tmp_path):
    folder = copy_model(tmp_path)
    edit_config(folder, num_hidden_layers=None)
    refuses(folder, "lacks n_layers / num_hidden_layers", name=folder / "config.json")
    edit_config(folder, num_hidden_layers="2")
    refuses(folder, "num_hidden_layers is '2'", name=folder / "config.json")
    edit_config(folder, num_hidden_layers=2, rms_norm_eps="small")
    refuses(folder, "rms_norm_eps", name=folder / "config.json")
    edit_config(folder, rms_norm_eps=1e-5, rope_scaling=[1, 2])
    refuses(folder, "rope_scaling", name=folder / "config.json")


def test_heads_do_not_divide_rows(tmp_path):
    folder = copy_model(tmp_path)
    edit_config(folder, num_attention_heads=6)
    refuses(folder, "'model.layers.0.self_attn.q_proj.weight'", "256 rows", "2 x 6 heads",
            name=folder / "model.safetensors")
    edit_config(folder, num_attention_heads=3)
    refuses(folder, "num_key_value_heads is 2, which does not divide num_attention_heads 3",
            name=folder / "config.json")
    edit_config(folder, num_attention_heads=4, num_key_value_heads=0)
    refuses(folder, "num_key_value_heads is 0", name=folder / "config.json")


def test_no_safetensors_weights(tmp_path):
    folder = copy_model(tmp_path)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\0")
    refuses(folder, "no safetensors weights", "pytorch_model.bin")


def test_weights_malformed(tmp_path):
    folder = copy_model(tmp_path)
    w = folder / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    refuses(folder, "past the end", name=w)


def test_tokenizer_malformed(tmp_path):
    folder = copy_model(tmp_path)
    tok = folder / "tokenizer.json"
    tok.write_text("{")
    refuses(folder, name=tok)


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
@pytest.mark.parametrize("offset", [0, 1])
def test_widening_a_big_tensor_in_parallel_equals_numpys(dtype, offset):
    """Above 256k elements widen() runs a parallel kernel: every half/bfloat16 bit pattern (NaNs and
    subnormals included) widens to NumPy's float32 bits, also from an odd byte address."""
    from qtool.formats.source import _WIDEN_IN_KERNEL

    codes = np.tile(np.arange(1 << 16, dtype=np.uint32).astype(np.uint16), 5)
    codes = np.random.default_rng(3).permutation(np.concatenate([codes, codes[:1000]]))  # a short last chunk
    assert codes.size > _WIDEN_IN_KERNEL
    stored = np.zeros(codes.nbytes + offset, dtype=np.uint8)
    stored[offset:] = codes.view(np.uint8)
    got = widen(stored[offset:], dtype, (1, codes.size))
    want = codes.view(np.float16).astype(np.float32) if dtype == "F16" else \
        (codes.astype(np.uint32) << np.uint32(16)).view(np.float32)
    assert got.dtype == np.float32 and got.shape == (1, codes.size)
    assert np.array_equal(got.reshape(-1).view(np.uint32), want.view(np.uint32))
