"""`qtool convert --target-* --calibrate-text`: per-class error weights from measured KL divergence.

Without llama.cpp: mix.Calibration.apply with a given measure (weights K/E scaled to the proxy's total, the
options' errors multiplied, a class measuring 0 kept positive, the type each tensor is measured at). In
llama.cpp (qtool in a child process), on the bundled model: a calibrated dry run shows and records every
class with a positive weight in the order of its measured KL per proxy error, the predicted error is the
weighted one, a class's KL divergence is what `qtool eval` measures on that class alone quantized, the same
run gives the same map, and the option errors are one line each.
"""

from __future__ import annotations

import json
import sys

import pytest
from conftest import PROSE, ROOT, need_oracle, run_qtool
from gguf import GGMLQuantizationType as T

from qtool.analysis import mix as M

FIXTURE = ROOT / "fixtures" / "tiny-llama-f32"
CTX = 64
TEXT = PROSE * 5
Q4_K_M_SIZE = "1069888B"  # the bundled model's Q4_K_M file (README table)




# --------------------------------------------------------------------------------------------------
# the weights, with a given measure
# --------------------------------------------------------------------------------------------------

def _tensors() -> list[M.MixTensor]:
    out = []
    for layer in range(2):
        for cls, n in (("attn_q", 100), ("ffn_down", 300)):
            opts = [M.Option(t, t, b, b, r, n * r) for t, b, r in ((T.Q2_K, 10, 0.08), (T.Q4_K, 20, 0.02),
                                                                   (T.Q6_K, 30, 0.005))]
            out.append(M.MixTensor(f"blk.{layer}.{cls}.weight", (10, n // 10), n, opts))
    out.append(M.MixTensor("token_embd.weight", (8, 50), 400,
                           [M.Option(T.Q4_K, T.Q4_K, 20, 20, 0.01, 4.0)],
                           extra=[M.Option(T.Q2_K, T.Q2_K, 10, 10, 0.05, 20.0)]))
    return out


def test_weights_are_measured_kl_per_proxy_error():
    kld = {"attn_q": 0.30, "ffn_down": 0.06, "token_embd": 0.01}
    seen = {}

    def measure(cls, types):
        seen[cls] = types
        return kld[cls]

    tensors = _tensors()
    before = {t.name: [o.error for o in t.options + t.extra] for t in tensors}
    cal = M.Calibration("t.txt", measure)
    cal.chosen_type = T.Q2_K
    cal.apply(tensors, lambda t: T.Q2_K)
    assert [c.name for c in cal.classes] == ["attn_q", "ffn_down", "token_embd"]  # plan order
    assert seen["attn_q"] == {"blk.0.attn_q.weight": T.Q2_K, "blk.1.attn_q.weight": T.Q2_K}
    assert seen["token_embd"] == {"token_embd.weight": T.Q2_K}  # measured at the type though not a candidate
    proxy = {"attn_q": 2 * 100 * 0.08, "ffn_down": 2 * 300 * 0.08, "token_embd": 20.0}
    for c in cal.classes:
        assert c.proxy_error == pytest.approx(proxy[c.name]) and c.kld_mean == kld[c.name] and c.weight > 0
    scale = sum(proxy.values()) / sum(kld.values())
    for c in cal.classes:
        assert c.weight == pytest.approx(kld[c.name] / proxy[c.name] * scale)
    # at the calibration type, weighted and plain proxy errors add up the same
    assert sum(c.weight * c.proxy_error for c in cal.classes) == pytest.approx(sum(proxy.values()))
    w = {c.name: c.weight for c in cal.classes}
    for t in tensors:
        cls = M.tensor_class(t.name)
        assert [o.error for o in t.options + t.extra] == pytest.approx([e * w[cls] for e in before[t.name]])
    doc = cal.document()
    assert doc["type"] == "Q2_K" and [c["class"] for c in doc["classes"]] == ["attn_q", "ffn_down", "token_embd"]


def test_a_class_measuring_zero_stays_positive_and_last():
    tensors = _tensors()
    cal = M.Calibration("t.txt", lambda cls, types: {"attn_q": 0.2, "ffn_down": 0.0, "token_embd": 0.1}[cls])
    cal.apply(tensors, lambda t: T.Q2_K)
    w = {c.name: c.weight for c in cal.classes}
    assert 0 < w["ffn_down"] < w["token_embd"] and 0 < w["ffn_down"] < w["attn_q"]


def test_tensor_classes():
    assert [M.tensor_class(n) for n in ("blk.12.attn_q.weight", "token_embd.weight", "output.weight",
                                        "blk.0.ffn_down_exps.weight")] == ["attn_q", "token_embd", "output",
                                                                           "ffn_down_exps"]


def test_calibration_changes_the_choice():
    """Weighing attn_q 20x more than ffn_down moves bytes to attn_q at the same budget."""
    plain, weighted = _tensors()[:4], _tensors()[:4]
    budget = sum(t.options[1].cost for t in plain)
    M.search(plain, budget)
    cal = M.Calibration("t.txt", lambda cls, types: {"attn_q": 1.0, "ffn_down": 0.05}[cls])
    cal.apply(weighted, lambda t: T.Q2_K)
    M.search(weighted, budget)
    bytes_q = lambda ts: sum(t.chosen.cost for t in ts if "attn_q" in t.name)  # noqa: E731
    assert bytes_q(weighted) > bytes_q(plain)


# --------------------------------------------------------------------------------------------------
# in llama.cpp, on the bundled model
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    need_oracle()
    d = tmp_path_factory.mktemp("calibrate")
    (d / "text.txt").write_text(TEXT)
    p = run_qtool("convert", FIXTURE, "--target-size", Q4_K_M_SIZE, "--calibrate-text", d / "text.txt",
                  "--calibrate-ctx", CTX, "--dry-run", "--json", "--threads", "2")
    assert p.returncode == 0, p.stderr
    return d, json.loads(p.stdout), p.stderr


@pytest.mark.oracle
def test_every_class_weighed_positive_in_measured_order(calibrated):
    _, doc, err = calibrated
    mix = doc["mix"]
    cal = mix["calibration"]
    assert mix["measure"] == "KL-calibrated rel_mse" and cal["ctx"] == CTX
    classes = {c["class"]: c for c in cal["classes"]}
    assert set(classes) == {M.tensor_class(t["name"]) for t in mix["tensors"]}
    assert sorted(classes) == ["attn_k", "attn_output", "attn_q", "attn_v", "ffn_down", "ffn_gate", "ffn_up",
                               "output", "token_embd"]
    for c in classes.values():
        assert c["weight"] > 0 and c["kld_mean"] > 0 and c["proxy_error"] > 0
    ratio = {k: c["kld_mean"] / c["proxy_error"] for k, c in classes.items()}
    assert sorted(classes, key=lambda k: classes[k]["weight"]) == sorted(classes, key=ratio.get)
    for k, c in classes.items():
        assert c["class"] in err  # the dry run shows each class's measurement
    # the predicted error is the weighted one, recomputed from the chosen rel_mse and the class weights
    n = {t["name"]: t["n_elements"] for t in doc["tensors"]}
    num = sum(classes[M.tensor_class(t["name"])]["weight"] * n[t["name"]] * t["rel_mse"] for t in mix["tensors"])
    assert mix["predicted_error"] == pytest.approx(num / sum(n[t["name"]] for t in mix["tensors"]), rel=1e-9)


@pytest.mark.oracle
def test_shown_on_a_dry_run(calibrated):
    d = calibrated[0]
    p = run_qtool("convert", FIXTURE, "--target-size", Q4_K_M_SIZE, "--calibrate-text", d / "text.txt",
                  "--calibrate-ctx", CTX, "--calibrate-type", "Q3_K", "--dry-run", "--threads", "2")
    assert p.returncode == 0, p.stderr
    assert "KL calibration at Q3_K" in p.stdout and "(weight " in p.stdout and "KL-calibrated rel_mse" in p.stdout


@pytest.mark.oracle
def test_a_class_kl_is_what_eval_measures(calibrated, tmp_path):
    """attn_k alone at the calibration type against the all-F32 model, written and evaluated by hand."""
    d, doc, _ = calibrated
    cal = doc["mix"]["calibration"]
    kld = {c["class"]: c["kld_mean"] for c in cal["classes"]}
    low = cal["type"]
    assert run_qtool("convert", FIXTURE, "--type", "Q8_0", "--tensor-type", ".=F32", "-o",
                     tmp_path / "ref.gguf").returncode == 0
    p = run_qtool("convert", FIXTURE, "--type", "Q8_0", "--tensor-type", f"attn_k={low}", "--tensor-type", ".=F32",
                  "-o", tmp_path / "k.gguf")
    assert p.returncode == 0, p.stderr
    p = run_qtool("eval", tmp_path / "k.gguf", "-r", tmp_path / "ref.gguf", "--text", d / "text.txt", "--ctx", CTX,
                  "--json", "--threads", "2")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["summary"]["kld_mean"] == pytest.approx(kld["attn_k"], rel=1e-12)


@pytest.mark.oracle
def test_deterministic(calibrated):
    d, doc, _ = calibrated
    p = run_qtool("convert", FIXTURE, "--target-size", Q4_K_M_SIZE, "--calibrate-text", d / "text.txt",
                  "--calibrate-ctx", CTX, "--dry-run", "--json", "--threads", "1")
    assert p.returncode == 0, p.stderr
    again = json.loads(p.stdout)["mix"]
    assert again["calibration"] == doc["mix"]["calibration"]
    assert [(t["name"], t["type"]) for t in again["tensors"]] == [(t["name"], t["type"]) for t in doc["mix"]["tensors"]]


def test_option_errors_are_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "t.txt").write_text(TEXT)
    for args, words in (
        (["--type", "Q4_K_M", "--calibrate-text", tmp_path / "t.txt"], "--target-bpw or --target-size"),
        (["--target-bpw", "4.5", "--calibrate-text", tmp_path / "missing.txt"], "missing.txt"),
        (["--target-bpw", "4.5", "--calibrate-type", "Q2_K"], "--calibrate-type goes with --calibrate-text"),
    ):
        p = run_qtool("convert", FIXTURE, *args, "--dry-run")
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and words in p.stderr, p.stderr
    from qtool.cli import app

    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    monkeypatch.setitem(sys.modules, "llama_cpp.llama_cpp", None)
    with pytest.raises(SystemExit) as e:
        app.main(["convert", str(FIXTURE), "--target-bpw", "4.5", "--calibrate-text", str(tmp_path / "t.txt"),
                  "--dry-run"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'qtool[eval]'" in err, err
