"""`qtool inspect` end to end: the JSON schema, every figure against numpy over gguf-py's own
(de)quantization (an independent path from qtool's registry), notes for unmatched tensors, the tables,
the histogram, what-if, and one-line usage errors."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import gguf
import numpy as np
import pytest
from conftest import ROOT, write_gguf_py
from gguf import GGMLQuantizationType as T

from qtool.cli.app import main
from qtool.testing.data import hard_rows

ERROR_KEYS = {"rmse", "rel_rmse", "max_abs", "sqnr_db", "cosine", "p50", "p95", "p99"}
SIGN_KEYS = {"nonzero", "collapsed", "flipped", "collapsed_frac", "flipped_frac"}
OUTLIER_KEYS = {"crest", "kurtosis", "beyond_3sigma", "beyond_6sigma", "outlier_channels", "scale_dominated_blocks"}
TENSOR_KEYS = {"name", "type", "shape", "n_elements", "n_bytes", "bpw"}


def write_gguf(path: Path, tensors: dict[str, tuple[np.ndarray, T]], n_vocab: int = 320) -> None:
    """A GGUF file quantized by gguf-py's numpy quantizers (not qtool's)."""
    def setup(w):
        w.add_block_count(2)
        w.add_context_length(256)
        w.add_token_list([f"tok{i}" for i in range(n_vocab)])
        w.add_token_scores([0.0] * n_vocab)

    write_gguf_py(path, tensors, setup)


def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    g = lambda *s: (rng.standard_normal(s) * 0.02).astype(np.float32)  # noqa: E731
    t = {"token_embd.weight": g(40, 64)}
    for b in range(2):
        t[f"blk.{b}.attn_norm.weight"] = (1 + g(64)).astype(np.float32)
        t[f"blk.{b}.attn_q.weight"] = np.clip(hard_rows(64, 64, seed=b), -50, 50)
        down = g(64, 128)
        down[:, 9] *= 30  # an outlier channel
        down[5] = 0  # a zero row
        t[f"blk.{b}.ffn_down.weight"] = down
    t["output.weight"] = g(40, 64)
    return t


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inspect")
    w = weights()
    write_gguf(d / "ref.gguf", {k: (v, T.F32) for k, v in w.items()})
    quant = {k: (v, T.F32 if v.ndim == 1 else T.Q4_0 if "attn" in k else T.Q8_0) for k, v in w.items()}
    write_gguf(d / "q.gguf", quant)
    # a quantized file with a tensor the reference lacks and one whose shape differs
    odd = dict(quant)
    odd["blk.1.extra.weight"] = (w["output.weight"], T.Q8_0)
    odd["output.weight"] = (w["output.weight"][:32], T.Q8_0)
    write_gguf(d / "odd.gguf", odd)
    from safetensors.numpy import save_file

    save_file({k: v for k, v in w.items()}, str(d / "ref.safetensors"))
    return {"dir": d, "ref": d / "ref.gguf", "q": d / "q.gguf", "odd": d / "odd.gguf",
            "st": d / "ref.safetensors", "weights": w, "quant": quant}


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        main(["inspect", *map(str, argv)])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def strict_json(text: str):
    def no_constant(name):
        raise AssertionError(f"{name} in JSON")

    return json.loads(text, parse_constant=no_constant)


def dequantized(model, name) -> np.ndarray:
    arr, qtype = model["quant"][name]
    if qtype == T.F32:
        return arr
    return gguf.quants.dequantize(gguf.quants.quantize(arr, qtype), qtype).astype(np.float32)


# -- v1: the listing ----------------------------------------------------------------------------------


def test_header_listing_json(model, capsys):
    code, out, err = run(capsys, model["q"], "--no-stats", "--json")
    assert code == 0 and err == ""
    doc = strict_json(out)
    assert set(doc) == {"file", "format", "metadata", "tensors", "summary"}
    assert doc["format"] == "gguf"
    assert doc["metadata"]["tokenizer.ggml.tokens"] == "[320 strings]"
    assert doc["metadata"]["general.architecture"] == "llama"
    by = {t["name"]: t for t in doc["tensors"]}
    assert list(by) == list(model["quant"])  # file order
    for t in doc["tensors"]:
        assert set(t) == TENSOR_KEYS
        arr, qtype = model["quant"][t["name"]]
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        assert t["type"] == qtype.name and t["shape"] == list(arr.shape) and t["n_elements"] == arr.size
        assert t["n_bytes"] == arr.size // block * size
        assert t["bpw"] == pytest.approx(8 * size / block)
    s = doc["summary"]
    assert s["n_tensors"] == len(by) and s["n_elements"] == sum(a.size for a, _ in model["quant"].values())
    assert s["types"]["Q8_0"]["n_tensors"] == 4 and s["types"]["Q4_0"]["n_tensors"] == 2
    assert s["types"]["F32"]["bpw"] == 32.0


def test_header_listing_table(model, capsys):
    code, out, _ = run(capsys, model["q"], "--no-stats")
    assert code == 0
    assert "[320 strings]" in out and "blk.1.ffn_down.weight" in out and "Q4_0" in out
    assert re.search(r"model: 8 tensors", out)


def test_safetensors_input(model, capsys):
    code, out, _ = run(capsys, model["st"], "--json")
    assert code == 0
    doc = strict_json(out)
    assert doc["format"] == "safetensors" and doc["reference"] is None
    t = {t["name"]: t for t in doc["tensors"]}["blk.0.ffn_down.weight"]
    assert t["type"] == "F32" and t["bpw"] == 32.0 and t["error"] is None
    x = model["weights"]["blk.0.ffn_down.weight"]
    assert t["sign"] == {"zero_frac": pytest.approx(np.mean(x == 0))}
    assert t["outliers"]["outlier_channels"]["worst"][0] == 9


# -- the microscope -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def microscope(model):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "qtool", "inspect", str(model["q"]), "--reference", str(model["ref"]),
                        "--json"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return strict_json(r.stdout)


def test_microscope_schema(microscope):
    doc = microscope
    assert set(doc) == {"file", "format", "reference", "metadata", "tensors", "summary"}
    assert doc["reference"].endswith("ref.gguf")
    for t in doc["tensors"]:
        assert set(t) == TENSOR_KEYS | {"error", "sign", "outliers"}, t["name"]
        assert set(t["error"]) == ERROR_KEYS
        assert set(t["sign"]) == SIGN_KEYS
        assert set(t["outliers"]) == OUTLIER_KEYS
        assert set(t["outliers"]["outlier_channels"]) == {"count", "worst"}
    s = doc["summary"]
    assert {"n_tensors", "n_elements", "n_bytes", "bpw", "types", "layers", "skipped", "reference_only"} <= set(s)
    assert ERROR_KEYS | SIGN_KEYS | OUTLIER_KEYS <= set(s)
    assert [l["layer"] for l in s["layers"]] == [0, 1]
    assert s["skipped"] == [] and s["reference_only"] == []


def test_microscope_figures_match_numpy(model, microscope):
    for t in microscope["tensors"]:
        x = model["weights"][t["name"]].astype(np.float64)
        q = dequantized(model, t["name"]).astype(np.float64)
        d = q - x
        e, s = t["error"], t["sign"]
        assert e["rmse"] == pytest.approx(math.sqrt(np.mean(d * d)), rel=1e-9, abs=1e-300)
        assert e["rel_rmse"] == pytest.approx(np.linalg.norm(d) / np.linalg.norm(x), rel=1e-9, abs=1e-300)
        assert e["max_abs"] == pytest.approx(np.abs(d).max(), rel=1e-12, abs=1e-300)
        assert e["p99"] == pytest.approx(np.percentile(np.abs(d), 99), rel=1e-6, abs=1e-300)
        if np.all(d == 0):  # the F32 norms: an exact copy
            assert e["sqnr_db"] is None and e["rel_rmse"] == 0.0
        else:
            assert e["sqnr_db"] == pytest.approx(10 * math.log10(np.sum(x * x) / np.sum(d * d)), rel=1e-9)
        assert e["cosine"] == pytest.approx(np.dot(x.ravel(), q.ravel()) / np.linalg.norm(x) / np.linalg.norm(q), rel=1e-12)
        assert s["nonzero"] == np.count_nonzero(x)
        assert s["collapsed"] == np.count_nonzero((x != 0) & (q == 0))
        assert s["flipped"] == np.count_nonzero(x * q < 0)
        o = t["outliers"]
        flat = x.ravel()
        kurt = np.mean((flat - flat.mean()) ** 4) / flat.std() ** 4 - 3
        assert o["kurtosis"] == pytest.approx(kurt, rel=1e-9)
        assert o["crest"] == pytest.approx(np.abs(flat).max() / math.sqrt(np.mean(flat ** 2)), rel=1e-9)
    down = {t["name"]: t for t in microscope["tensors"]}["blk.0.ffn_down.weight"]
    assert down["outliers"]["outlier_channels"] == {"count": 1, "worst": [9]}
    q4 = {t["name"]: t for t in microscope["tensors"]}["blk.0.attn_q.weight"]
    assert q4["sign"]["collapsed_frac"] > 0.2  # hard rows with spikes lose many small weights in Q4_0


def test_microscope_summary_is_element_weighted(microscope):
    ts = microscope["tensors"]
    n = np.array([t["n_elements"] for t in ts], float)
    rel = np.array([t["error"]["rel_rmse"] for t in ts])
    assert microscope["summary"]["rel_rmse"] == pytest.approx(np.dot(n, rel) / n.sum(), rel=1e-12)
    layer0 = [t for t in ts if t["name"].startswith("blk.0.")]
    n0 = np.array([t["n_elements"] for t in layer0], float)
    c0 = np.array([t["sign"]["collapsed_frac"] for t in layer0])
    got = microscope["summary"]["layers"][0]
    assert got["collapsed_frac"] == pytest.approx(np.dot(n0, c0) / n0.sum(), rel=1e-12)
    assert got["n_tensors"] == 3


def test_safetensors_reference_gives_the_same_figures(model, microscope, capsys):
    code, out, _ = run(capsys, model["q"], "--reference", model["st"], "--json")
    assert code == 0
    doc = strict_json(out)
    assert [t["error"] for t in doc["tensors"]] == [t["error"] for t in microscope["tensors"]]


def test_unmatched_and_mismatched_tensors_are_noted_not_fatal(model, capsys):
    code, out, err = run(capsys, model["odd"], "-r", model["ref"], "--json")
    assert code == 0
    doc = strict_json(out)
    skipped = {s["name"]: s["reason"] for s in doc["summary"]["skipped"]}
    assert skipped["blk.1.extra.weight"] == "not in the reference"
    assert "shape [32, 64] but [40, 64]" in skipped["output.weight"]
    t = {t["name"]: t for t in doc["tensors"]}
    assert t["output.weight"]["error"] is None and t["blk.1.extra.weight"]["sign"] is None
    assert t["token_embd.weight"]["error"]["rel_rmse"] > 0
    assert "blk.1.extra.weight: not in the reference" in err and "output.weight: shape" in err
    assert doc["summary"]["n_tensors"] == 9


def test_microscope_table_sorted_top(model, microscope, capsys):
    code, out, _ = run(capsys, model["q"], "-r", model["ref"], "--sort", "rel_rmse", "--top", "3")
    assert code == 0
    worst = sorted(microscope["tensors"], key=lambda t: -t["error"]["rel_rmse"])[:3]
    rows = [line for line in out.splitlines() if re.match(r"^│ \S+\.weight", line)]
    names = [r.split("│")[1].strip() for r in rows]
    assert names[:3] == [t["name"] for t in worst]
    assert "tensors (3 of 8)" in out and "per layer" in out and "model: 8 tensors" in out
    assert "collapsed %" in out and "kurtosis" in out


def test_tensor_regex_and_histogram(model, capsys):
    code, out, _ = run(capsys, model["q"], "-r", model["ref"], "--tensor", r"ffn_down", "--json")
    assert [t["name"] for t in strict_json(out)["tensors"]] == ["blk.0.ffn_down.weight", "blk.1.ffn_down.weight"]
    code, out, _ = run(capsys, model["q"], "-r", model["ref"], "--tensor", "blk.0.attn_q.weight", "--histogram")
    assert code == 0
    assert "|q-x| of blk.0.attn_q.weight (4,096 values" in out
    counts = [int(m.replace(",", "")) for m in re.findall(r"│\S*\s+([\d,]+)\s+[\d.]+%", out)]
    assert sum(counts) == 4096
    code, out, _ = run(capsys, model["q"], "-r", model["ref"], "--tensor", "blk.0.attn_q.weight", "--histogram",
                       "--json")
    h = strict_json(out)["histogram"]
    q = dequantized(model, "blk.0.attn_q.weight")
    d = np.abs(q.astype(np.float64) - model["weights"]["blk.0.attn_q.weight"])
    assert h["tensor"] == "blk.0.attn_q.weight" and h["zeros"] == np.count_nonzero(d == 0)
    assert h["zeros"] + h["below"] + sum(h["counts"]) + h["above"] == d.size


def test_without_reference_figures_are_of_the_weights(model, capsys):
    code, out, _ = run(capsys, model["q"], "--json")
    doc = strict_json(out)
    t = {t["name"]: t for t in doc["tensors"]}["blk.0.attn_q.weight"]
    q = dequantized(model, "blk.0.attn_q.weight")
    assert t["error"] is None and t["sign"]["zero_frac"] == pytest.approx(np.mean(q == 0))
    assert "zero_frac" in doc["summary"] and "rel_rmse" not in doc["summary"]


# -- what-if ------------------------------------------------------------------------------------------


def test_what_if_json_matches_an_independent_quantization(model, capsys):
    code, out, err = run(capsys, model["ref"], "--what-if", "q8_0,Q4_0", "--json")
    assert code == 0, err
    doc = strict_json(out)
    assert doc["what_if"] == ["Q8_0", "Q4_0"]
    names = [t["name"] for t in doc["tensors"]]
    assert "blk.0.attn_norm.weight" not in names and "blk.0.ffn_down.weight" in names
    for t in doc["tensors"]:
        x = model["weights"][t["name"]]
        for qtype in (T.Q8_0, T.Q4_0):
            c = t["candidates"][qtype.name]
            q = gguf.quants.dequantize(gguf.quants.quantize(x, qtype), qtype).astype(np.float64)
            d = q - x
            # gguf-py's numpy quantizers round like ggml but are not byte-identical on every tie
            assert c["rel_rmse"] == pytest.approx(np.linalg.norm(d) / np.linalg.norm(x), rel=1e-3)
            nz = np.count_nonzero(x)
            assert c["collapsed_frac"] == pytest.approx(np.count_nonzero((x != 0) & (q == 0)) / nz, abs=2e-3)
            assert c["bpw"] == {"Q8_0": 8.5, "Q4_0": 4.5}[qtype.name]
    s = doc["summary"]["types"]
    assert s["Q4_0"]["rel_rmse"] > s["Q8_0"]["rel_rmse"] > 0
    assert s["Q4_0"]["bpw"] == 4.5 and s["Q4_0"]["n_tensors"] == len(names)


def test_what_if_table(model, capsys):
    code, out, _ = run(capsys, model["ref"], "--what-if", "Q8_0,Q4_0", "--sort", "Q4_0:rel_rmse")
    assert code == 0
    assert "per type, whole model" in out and "Q8_0" in out and "8.500" in out


def test_what_if_types_not_registered(model, capsys):
    from qtool.quantizers import registered

    missing = next((t for t in T if t not in registered() and t.name.startswith("IQ")), None)
    code, out, err = run(capsys, model["ref"], "--what-if", f"Q4_0,NOPE{'' if missing is None else ',' + missing.name}")
    assert code == 2 and out == ""
    assert "unknown type NOPE" in err and "registered types: " in err and "Q4_0" in err
    if missing is not None and not registered()[T.Q4_0].requires_imatrix:
        assert missing.name in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


# -- errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--histogram"], "--histogram needs --tensor"),
    (["--tensor", "(", "--json"], "not a regular expression"),
    (["--tensor", "nothing-like-this"], "matches none"),
    (["--sort", "bogus"], "unknown field 'bogus'"),
    (["--sort", "rel_rmse"], "needs --reference"),
    (["--what-if", "Q4_0", "--reference", "REF"], "--what-if"),
    (["--no-stats", "--reference", "REF"], "--no-stats"),
])
def test_usage_errors_are_one_line(model, capsys, argv, message):
    argv = [str(model["ref"]) if a == "REF" else a for a in argv]
    code, out, err = run(capsys, model["q"], *argv)
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_bad_file_is_a_format_error(model, capsys, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 12)
    code, out, err = run(capsys, bad)
    assert code == 2 and out == "" and err.startswith("qtool: error:") and "Traceback" not in err


def test_bundled_model_if_present(capsys):
    root = ROOT / "fixtures" / "tiny-llama"
    if not root.exists():
        pytest.skip("fixtures/tiny-llama not committed yet")
    code, out, err = run(capsys, root, "--json")
    assert code == 0, err
    doc = strict_json(out)
    assert doc["tensors"] and all(t["outliers"] is not None for t in doc["tensors"])
    # its tokenizer.json's tokens and merges (read in bulk, as string records) summarised as any array is
    meta = doc["metadata"]
    assert meta["tokenizer.ggml.tokens"] == "[320 strings]" and meta["tokenizer.ggml.merges"] == "[62 strings]"
    code, out, err = run(capsys, root)
    assert code == 0 and re.search(r"tokenizer\.ggml\.tokens\s+│\s+\[320 strings\]", out), out


def test_nan_in_the_weights_is_reported_not_fatal(model, capsys, tmp_path):
    w = model["weights"]
    bad = w["blk.0.ffn_down.weight"].copy()
    bad[3, 4] = np.nan
    write_gguf(tmp_path / "nan.gguf", {"blk.0.ffn_down.weight": (bad, T.F32), "output.weight": (w["output.weight"], T.F32)})
    code, out, err = run(capsys, model["q"], "-r", tmp_path / "nan.gguf", "--tensor", "ffn_down|output", "--json")
    assert code == 0, err
    t = {t["name"]: t for t in strict_json(out)["tensors"]}  # strict: NaN figures come out as null
    assert t["blk.0.ffn_down.weight"]["error"]["rel_rmse"] is None
    assert t["output.weight"]["error"]["rel_rmse"] > 0
    code, out, err = run(capsys, tmp_path / "nan.gguf", "--what-if", "Q8_0", "--json")
    assert code == 0
    doc = strict_json(out)
    c = {t["name"]: t["candidates"]["Q8_0"] for t in doc["tensors"]}
    assert c["blk.0.ffn_down.weight"] is None and c["output.weight"]["rel_rmse"] > 0
    assert "blk.0.ffn_down.weight: Q8_0:" in err and "non-finite" in err


def test_what_if_follows_llama_cpps_rule_for_which_tensors_to_quantize(model, capsys):
    from qtool.analysis.whatif import why_kept

    assert why_kept("blk.0.attn_q.weight", (64, 64), "llama") is None
    assert why_kept("blk.0.attn_norm.weight", (64,), "llama") is not None
    assert why_kept("blk.0.ffn_norm.weight", (4, 64), "llama") is not None  # 2-D but a norm
    assert why_kept("blk.0.attn_q.bias", (64, 64), "llama") is not None  # not a weight
    # llama.cpp keeps the expert router and position embeddings, though they are 2-D weights
    assert why_kept("blk.0.ffn_gate_inp.weight", (8, 64), "llama") is not None
    assert why_kept("position_embd.weight", (128, 64), "gpt2") is not None
    code, out, _ = run(capsys, model["ref"], "--what-if", "Q8_0", "--json")
    kept = {k["name"] for k in strict_json(out)["summary"]["kept"]}
    assert kept == {"blk.0.attn_norm.weight", "blk.1.attn_norm.weight"}
