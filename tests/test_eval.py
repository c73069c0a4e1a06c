"""`qtool eval`: KL divergence, perplexity and flips of a quantized GGUF against the original, in llama.cpp.

The bundled model (fixtures/tiny-llama-f32) is converted by qtool to F32, Q8_0 and Q4_K_M; `qtool eval` runs
in a child process (llama.cpp never runs in the pytest process), and its figures for one window are
recomputed here from the logits that qtool.testing.client brings back for the same tokens.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, need_oracle, run_qtool
from qtool.analysis import eval as E

FIXTURE = ROOT / "fixtures" / "tiny-llama-f32"
CTX = 64

#: English prose, tokenized by the fixture's byte-level BPE vocabulary to about 1,900 tokens (29 windows of 64)
TEXT = (
    "The quick brown fox jumps over the lazy dog while the farmer counts his sheep in the morning light. "
    "A quantized model keeps fewer bits per weight than the original, and the question is how much of its "
    "judgement survives: which word it would put next, and how sure it is of it. Perplexity tells how "
    "surprised a model is by a text; the Kullback-Leibler divergence tells how far its whole distribution "
    "over the next token has moved from the original's, position by position. "
) * 5




def run_eval(*args) -> dict:
    p = run_qtool("eval", *args, "--json", "--threads", "2")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


# --------------------------------------------------------------------------------------------------
# the figures, without llama.cpp
# --------------------------------------------------------------------------------------------------

def _logits(seed: int, n: int = 40, v: int = 50) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = (rng.standard_normal((n, v)) * 3).astype(np.float32)
    quant = (ref + rng.standard_normal((n, v)) * 0.5).astype(np.float32)
    return ref, quant, rng.integers(0, v, n)


def test_kl_of_identical_logits_is_zero():
    ref, _, targets = _logits(0)
    s = E.score_full(ref, ref.copy(), targets)
    assert np.all(s.kld == 0) and s.same_top.all()
    f = E.figures(s)
    assert f["kld_max"] == 0 and f["flips"] == 0 and f["ppl_ratio"] == 1


def test_kl_matches_a_direct_computation():
    ref, quant, targets = _logits(1)
    p = np.exp(ref.astype(np.float64))
    p /= p.sum(axis=1, keepdims=True)
    q = np.exp(quant.astype(np.float64))
    q /= q.sum(axis=1, keepdims=True)
    expect = np.sum(p * np.log(p / q), axis=1)
    s = E.score_full(ref, quant, targets)
    np.testing.assert_allclose(s.kld, expect, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(s.nll_quant, -np.log(q[np.arange(len(targets)), targets]), rtol=1e-12)
    assert E.figures(s)["flips"] == int(np.sum(ref.argmax(1) != quant.argmax(1))) > 0


def test_top_k_is_a_lower_bound_and_exact_when_k_covers_all_but_one():
    ref, quant, targets = _logits(2)
    full = E.score_full(ref, quant, targets)
    almost = E.score_topk(E.TopK.of(ref, targets, ref.shape[1] - 1), quant, targets)
    np.testing.assert_allclose(almost.kld, full.kld, rtol=1e-9, atol=1e-13)
    for k in (1, 5, 20):
        s = E.score_topk(E.TopK.of(ref, targets, k), quant, targets)
        assert np.all(s.kld <= full.kld + 1e-12) and np.all(s.kld >= -1e-12), k
        np.testing.assert_array_equal(s.nll_reference, full.nll_reference)
        np.testing.assert_array_equal(s.same_top, full.same_top)


@pytest.mark.parametrize("text", ["kld_mean>0.05", "summary.kld_p99>=1", "window.flips>3", "windows.ppl_ratio<0.5"])
def test_gates_parse(text):
    g = E.parse_gate(text)
    assert g.field in E.FIELDS and g.summary == (not text.startswith("window"))


@pytest.mark.parametrize("text", ["rel_rmse>0.05", "kld>1", "error.kld_mean>1", "summary.n_tensors>1", "kld_mean"])
def test_gates_refuse_unknown_fields(text):
    with pytest.raises(E.UsageError, match="--fail-if"):
        E.parse_gate(text)


def test_missing_llama_cpp_python_is_one_line_exit_2(monkeypatch, capsys, tmp_path):
    from qtool.cli import app

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp...` now raises ImportError
    monkeypatch.setitem(sys.modules, "llama_cpp.llama_cpp", None)
    (tmp_path / "t.txt").write_text(TEXT)
    with pytest.raises(SystemExit) as e:
        app.main(["eval", str(tmp_path / "q.gguf"), "--reference", str(tmp_path / "r.gguf"),
                  "--text", str(tmp_path / "t.txt")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'qtool[eval]'" in err and "Traceback" not in err, err


# --------------------------------------------------------------------------------------------------
# in llama.cpp, on the bundled model
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    need_oracle()
    from qtool.convert import convert

    d = tmp_path_factory.mktemp("eval")
    out = {t: convert(FIXTURE, t, d / f"tiny-{t}.gguf").output for t in ("F32", "Q8_0", "Q4_K_M")}
    (d / "text.txt").write_text(TEXT)
    out["text"] = d / "text.txt"
    out["dir"] = d
    return out


@pytest.fixture(scope="module")
def reports(files) -> dict[str, dict]:
    """qtool eval of each file against F32 (Q4_K_M's run also saves the reference's logits, full and top-k)."""
    common = ("--reference", files["F32"], "--text", files["text"], "--ctx", CTX)
    return {
        "F32": run_eval(files["F32"], *common),
        "Q8_0": run_eval(files["Q8_0"], *common, "--save-logits", files["dir"] / "ref-k8.logits", "--top-k", 8),
        "Q4_K_M": run_eval(files["Q4_K_M"], *common, "--save-logits", files["dir"] / "ref.logits"),
    }


@pytest.mark.oracle
def test_json_shape(reports):
    doc = reports["Q4_K_M"]
    assert doc["ctx"] == CTX and doc["scored_from"] == CTX // 2 and doc["n_vocab"] == 320
    assert doc["n_windows"] == doc["text_tokens"] // CTX == len(doc["windows"]) >= 20
    for i, w in enumerate(doc["windows"]):
        assert w["index"] == i and w["start"] == i * CTX and w["n_positions"] == CTX - 1 - CTX // 2
        assert set(w) == {"index", "start", *E.FIELDS}
    assert set(doc["summary"]) == set(E.FIELDS)
    assert doc["summary"]["n_positions"] == sum(w["n_positions"] for w in doc["windows"])
    assert doc["summary"]["flips"] == sum(w["flips"] for w in doc["windows"])


@pytest.mark.oracle
def test_f32_against_itself_is_zero(reports):
    s = reports["F32"]["summary"]
    assert s["kld_mean"] == s["kld_max"] == 0 and s["flips"] == 0 and s["top1_agreement"] == 1
    assert s["ppl_quant"] == s["ppl_reference"]


@pytest.mark.oracle
def test_fewer_bits_diverge_more(reports):
    q8, q4 = reports["Q8_0"]["summary"], reports["Q4_K_M"]["summary"]
    assert 0 < q8["kld_mean"] < q4["kld_mean"], (q8, q4)
    assert q8["kld_p99"] < q4["kld_p99"] and q8["flips"] < q4["flips"]
    # the reference is the same run each time
    assert q8["ppl_reference"] == q4["ppl_reference"] == reports["F32"]["summary"]["ppl_reference"]


@pytest.mark.oracle
@pytest.mark.parametrize("preset", ["Q8_0", "Q4_K_M"])
def test_one_window_recomputed_from_the_client(preset, files, reports):
    """Window 1's figures from logits llama.cpp gives qtool.testing.client for the same tokens."""
    from qtool.testing import client

    tokens = client.tokenize(files["F32"], TEXT.encode(), add_special=True, parse_special=False, vocab_only=True)
    assert tokens[0] == 318  # BOS, added by the vocabulary
    window = [318, *tokens[CTX + 1:2 * CTX]]  # window 1, its first token replaced by BOS
    first = CTX // 2
    targets = np.array(tokens[CTX + first + 1:2 * CTX])
    ref = client.logits(files["F32"], window, n_ctx=CTX)[first:CTX - 1]
    quant = client.logits(files[preset], window, n_ctx=CTX)[first:CTX - 1]

    def log_probs(x):
        top = x.max(axis=1, keepdims=True)
        return x - (top + np.log(np.sum(np.exp(x - top), axis=1, keepdims=True)))

    lp, lq = log_probs(ref), log_probs(quant)
    kld = np.einsum("ij,ij->i", np.exp(lp), lp - lq)
    rows = np.arange(len(targets))
    expect = {
        "n_positions": len(targets),
        "ppl_reference": float(np.exp(-lp[rows, targets].mean())),
        "ppl_quant": float(np.exp(-lq[rows, targets].mean())),
        "kld_mean": float(kld.mean()), "kld_median": float(np.sort(kld)[len(kld) // 2]),
        "kld_p99": float(np.quantile(kld, 0.99)), "kld_max": float(kld.max()),
        "flips": int(np.sum(ref.argmax(1) != quant.argmax(1))),
    }
    got = reports[preset]["windows"][1]
    assert len(targets) % 2 == 1  # an odd count: the median is one value
    for key, value in expect.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (key, got[key], value)
    assert got["top1_agreement"] == pytest.approx(1 - expect["flips"] / len(targets))


@pytest.mark.oracle
def test_saved_logits_give_the_same_figures(files, reports):
    again = run_eval(files["Q4_K_M"], "--reference", files["dir"] / "ref.logits")
    assert again["windows"] == reports["Q4_K_M"]["windows"]
    assert again["summary"] == reports["Q4_K_M"]["summary"]
    assert again["reference_logits"] == str(files["dir"] / "ref.logits")
    # the text may be given again; it must be the same text
    with_text = run_eval(files["Q4_K_M"], "--reference", files["dir"] / "ref.logits", "--text", files["text"])
    assert with_text["summary"] == reports["Q4_K_M"]["summary"]
    other = files["dir"] / "other.txt"
    other.write_text(TEXT.upper())
    p = run_qtool("eval", files["Q4_K_M"], "--reference", files["dir"] / "ref.logits", "--text", other)
    assert p.returncode == 2 and "is not the text" in p.stderr and p.stderr.count("\n") == 1, p.stderr
    # another quantization against the same saved reference
    q8 = run_eval(files["Q8_0"], "--reference", files["dir"] / "ref.logits")
    assert q8["windows"] == reports["Q8_0"]["windows"]


@pytest.mark.oracle
def test_saved_top_k_logits(files, reports):
    full = reports["Q8_0"]
    topk = run_eval(files["Q8_0"], "--reference", files["dir"] / "ref-k8.logits")
    assert topk["top_k"] == 8
    for a, b in zip(topk["windows"], full["windows"]):
        assert a["kld_mean"] <= b["kld_mean"] + 1e-12 and a["kld_max"] <= b["kld_max"] + 1e-12
        assert (a["ppl_reference"], a["flips"]) == (b["ppl_reference"], b["flips"])
        assert a["ppl_quant"] == pytest.approx(b["ppl_quant"], rel=1e-12)
    size_full = (files["dir"] / "ref.logits").stat().st_size
    size_k = (files["dir"] / "ref-k8.logits").stat().st_size
    assert size_k < size_full / 8


@pytest.mark.oracle
def test_saved_logits_damaged_or_not_logits(files, reports):
    data = (files["dir"] / "ref.logits").read_bytes()
    cut = files["dir"] / "cut.logits"
    cut.write_bytes(data[:-100])
    p = run_qtool("eval", files["Q8_0"], "--reference", cut)
    assert p.returncode == 2 and "truncated" in p.stderr and p.stderr.count("\n") == 1, p.stderr


@pytest.mark.oracle
def test_fail_if(files):
    common = (files["Q4_K_M"], "--reference", files["F32"], "--text", files["text"], "--ctx", CTX, "--windows", 3,
              "--json")
    p = run_qtool("eval", *common, "--fail-if", "kld_mean>0.001", "--fail-if", "window.flips>1000")
    assert p.returncode == 1, p.stderr
    assert json.loads(p.stdout)["n_windows"] == 3  # the report is still one JSON document
    lines = p.stderr.strip().splitlines()
    assert lines[0].startswith("check failed: kld_mean>0.001: the whole text has kld_mean=")
    assert lines[-1] == "qtool: error: 1 of 2 check(s) failed: kld_mean>0.001"
    p = run_qtool("eval", *common, "--fail-if", "window.kld_max>0")
    assert p.returncode == 1 and "3 window(s)" in p.stderr, p.stderr
    p = run_qtool("eval", *common, "--fail-if", "kld_mean>100", "--fail-if", "top1_agreement<0")
    assert p.returncode == 0, p.stderr
    p = run_qtool("eval", *common, "--fail-if", "rel_rmse>0.1")
    assert p.returncode == 2 and "unknown field" in p.stderr and p.stderr.count("\n") == 1, p.stderr


@pytest.mark.oracle
def test_other_vocabulary_refused(files, reports):
    from qtool.convert import convert

    d = files["dir"] / "other-vocab"
    shutil.copytree(FIXTURE, d)
    tok = json.loads((d / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = [k for k, v in vocab.items() if v in (0, 1)]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # same size, two byte tokens swapped
    (d / "tokenizer.json").write_text(json.dumps(tok))
    other = convert(d, "F32", files["dir"] / "other-vocab.gguf").output
    for reference in (files["F32"], files["dir"] / "ref.logits"):
        p = run_qtool("eval", other, "--reference", reference, "--text", files["text"], "--ctx", CTX)
        assert p.returncode == 2 and "vocabular" in p.stderr and p.stderr.count("\n") == 1, p.stderr


@pytest.mark.oracle
def test_text_too_short(files, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("too short")
    p = run_qtool("eval", files["Q8_0"], "--reference", files["F32"], "--text", short, "--ctx", CTX)
    assert p.returncode == 2 and "needs at least 64" in p.stderr and p.stderr.count("\n") == 1, p.stderr


@pytest.mark.oracle
def test_file_llama_cpp_cannot_load_is_one_line(files):
    cut = files["dir"] / "cut.gguf"
    cut.write_bytes(files["Q8_0"].read_bytes()[:100_000])
    p = run_qtool("eval", cut, "--reference", files["F32"], "--text", files["text"], "--ctx", CTX)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith(f"qtool: error: {cut}: llama.cpp could not load it: ") and "bounds" in p.stderr
