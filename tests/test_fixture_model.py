"""The tiny-llama fixtures: reproducible to the byte, statistically like a trained model, and — the proof
that qtool's reader, names, q/k row order, metadata and tokenizer are right — loadable by llama.cpp, whose
logits match a plain numpy forward pass of the Hugging Face weights."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from conftest import ROOT, need_oracle

from qtool.formats.safetensors import SafetensorsFile, widen
from qtool.formats.source import open_model
from qtool.testing import client

FIXTURES = ROOT / "fixtures"
TINY, TINY_F32 = FIXTURES / "tiny-llama", FIXTURES / "tiny-llama-f32"
FILES = ("config.json", "tokenizer.json", "model.safetensors")


def make_model():
    spec = importlib.util.spec_from_file_location("make_model", FIXTURES / "make_model.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_model", mod)
    spec.loader.exec_module(mod)
    return mod


def hf_weights(folder: Path) -> dict[str, np.ndarray]:
    f = SafetensorsFile(folder / "model.safetensors")
    return {n: widen(f.bytes_of(n), e.dtype, e.shape) for n, e in f.entries.items()}


def test_regenerating_gives_identical_bytes(tmp_path):
    make_model().make(tmp_path)
    for folder in (TINY, TINY_F32):
        for name in FILES:
            committed = (folder / name).read_bytes()
            fresh = (tmp_path / folder.name / name).read_bytes()
            assert fresh == committed, f"{folder.name}/{name} differs from a fresh generation"


def test_sizes_and_config():
    cfg = json.loads((TINY / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["intermediate_size"], cfg["vocab_size"], cfg["rms_norm_eps"]) == (256, 2, 4, 2, 768, 320, 1e-5)
    assert cfg["tie_word_embeddings"] is False
    total = sum((f / n).stat().st_size for f in (TINY, TINY_F32) for n in FILES)
    assert total < 12_000_000


def test_statistics_look_trained():
    w = hf_weights(TINY)
    mm = make_model()
    q = w["model.layers.0.self_attn.q_proj.weight"].astype(np.float64)
    z = (q - q.mean()) / q.std()
    assert (z ** 4).mean() > 4.0  # heavy tails: a Gaussian's kurtosis is 3
    col = np.abs(q).mean(axis=0)
    outliers = list(mm.OUTLIER_CHANNELS)
    rest = np.delete(col, outliers)
    assert col[outliers].min() > 4 * rest.max()  # the outlier input channels stand out in every row
    for name in ("model.layers.0.input_layernorm.weight", "model.layers.1.post_attention_layernorm.weight",
                 "model.norm.weight"):
        g = np.delete(w[name], outliers)
        assert abs(g.mean() - 1.0) < 0.02 and g.std() < 0.1, name
    emb = w["model.embed_tokens.weight"]
    assert 0.01 < emb.std() < 0.04
    assert not np.array_equal(w["lm_head.weight"], emb)  # untied


def test_tokenizer_merges_are_consistent():
    tok = json.loads((TINY / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    assert len(vocab) == 318 and sorted(vocab.values()) == list(range(318))
    for a, b in tok["model"]["merges"]:
        assert a in vocab and b in vocab and a + b in vocab
    assert [t["id"] for t in tok["added_tokens"]] == [318, 319]


def write_gguf(source, path: Path) -> None:
    w = gguf.GGUFWriter(path, source.architecture)
    for key, value in source.metadata.items():
        if key == "general.architecture":  # GGUFWriter writes it itself
            continue
        w.add_key_value(key, value, source.metadata_types[key], sub_type=source.metadata_sub_types.get(key))
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    for t in source.tensors:
        w.add_tensor(t.name, source.load(t.name))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def reference_logits(folder: Path, tokens: list[int]) -> np.ndarray:
    """A float64 forward pass of the HF llama, in HF's own layout (rotate-half RoPE on unpermuted q/k)."""
    cfg = json.loads((folder / "config.json").read_text())
    W = {k: v.astype(np.float64) for k, v in hf_weights(folder).items()}
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    D, eps, n = cfg["hidden_size"] // H, cfg["rms_norm_eps"], len(tokens)

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    angle = np.arange(n)[:, None] / cfg["rope_theta"] ** (np.arange(0, D, 2) / D)[None]
    cos, sin = np.cos(np.tile(angle, 2))[:, None], np.sin(np.tile(angle, 2))[:, None]

    def rope(x):
        return x * cos + np.concatenate([-x[..., D // 2:], x[..., :D // 2]], -1) * sin

    x = W["model.embed_tokens.weight"][tokens]
    causal = np.tril(np.ones((n, n), bool))[None]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, W[p + "input_layernorm.weight"])
        q = rope((h @ W[p + "self_attn.q_proj.weight"].T).reshape(n, H, D))
        k = np.repeat(rope((h @ W[p + "self_attn.k_proj.weight"].T).reshape(n, KV, D)), H // KV, axis=1)
        v = np.repeat((h @ W[p + "self_attn.v_proj.weight"].T).reshape(n, KV, D), H // KV, axis=1)
        s = np.where(causal, np.einsum("thd,shd->hts", q, k) / np.sqrt(D), -np.inf)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        x = x + np.einsum("hts,shd->thd", a, v).reshape(n, H * D) @ W[p + "self_attn.o_proj.weight"].T
        h = rms(x, W[p + "post_attention_layernorm.weight"])
        g = h @ W[p + "mlp.gate_proj.weight"].T
        x = x + (g / (1 + np.exp(-g)) * (h @ W[p + "mlp.up_proj.weight"].T)) @ W[p + "mlp.down_proj.weight"].T
    return rms(x, W["model.norm.weight"]) @ W["lm_head.weight"].T


@pytest.mark.oracle
def test_llama_cpp_loads_and_matches_a_numpy_forward_pass(tmp_path):
    need_oracle()
    path = tmp_path / "tiny-llama-f32.gguf"
    with open_model(TINY_F32) as src:
        assert src.loadable, src.problems
        write_gguf(src, path)
    text = b"The quick brown fox jumps over the lazy dog."
    first = client.run(path, tokenize=[(text, True, True), (b"the", False, True)], vocab_only=True)
    tokens = first.tokens[0]
    assert tokens[0] == 318  # add_bos_token
    res = client.run(path, detokenize=[tokens[1:]], logits=[tokens], f32_cache=True, n_ctx=64)
    assert res.pieces[0] == text
    assert len(tokens) - 1 < len(text)  # the merges were used
    assert first.tokens[1] == [json.loads((TINY / "tokenizer.json").read_text())["model"]["vocab"]["the"]]
    got = res.logits[0]
    assert np.isfinite(got).all()
    want = reference_logits(TINY_F32, tokens)
    err = np.abs(got - want).max()
    assert err < 1e-3 * np.abs(want).max(), f"llama.cpp logits differ from the reference by up to {err}"
    assert (got.argmax(-1) == want.argmax(-1)).all()
