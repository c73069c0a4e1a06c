"""`--fail-if`: the expression parser, evaluation on tensors and the summary, and exit codes in a real
shell pipeline (the JSON on stdout must stay one parseable document when a check trips)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, write_gguf_py
from gguf import GGMLQuantizationType as T

from qtool.analysis import gates
from qtool.analysis import report as R
from qtool.errors import UsageError

REF_FIELDS = R.mode_fields(reference=True)
SELF_FIELDS = R.mode_fields(reference=False)


# -- parsing ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, field, op, number, summary", [
    ("rel_rmse>0.05", "rel_rmse", ">", 0.05, False),
    ("  collapsed_frac >= 1e-1 ", "collapsed_frac", ">=", 0.1, False),
    ("error.sqnr_db<20", "sqnr_db", "<", 20.0, False),
    ("summary.rel_rmse<=.5", "rel_rmse", "<=", 0.5, True),
    ("summary.n_tensors==3", "n_tensors", "==", 3.0, True),
    ("outliers.outlier_channels!=0", "outlier_channels", "!=", 0.0, False),
    ("kurtosis>-2.5E+1", "kurtosis", ">", -25.0, False),
    ("bpw<5", "bpw", "<", 5.0, False),
])
def test_parse(text, field, op, number, summary):
    g = gates.parse(text, REF_FIELDS)
    assert (g.field, g.op, g.threshold, g.summary) == (field, op, number, summary)


@pytest.mark.parametrize("text", [
    "rel_rmse > 0.05; import os", "rel_rmse>", ">0.05", "rel_rmse=>0.05", "rel_rmse>0x10", "rel_rmse>nan",
    "__import__('os')>1", "rel_rmse>1 or 1", "rel_rmse<>1", "",
])
def test_parse_rejects_anything_else(text):
    with pytest.raises(UsageError, match="expected FIELD OP NUMBER"):
        gates.parse(text, REF_FIELDS)


def test_unknown_field_lists_the_valid_ones():
    with pytest.raises(UsageError) as e:
        gates.parse("relrmse>0.05", REF_FIELDS)
    msg = str(e.value)
    assert "unknown field 'relrmse'" in msg
    for f in ("rel_rmse", "collapsed_frac", "flipped_frac", "crest", "scale_dominated_blocks"):
        assert f in msg
    with pytest.raises(UsageError, match="unknown field"):
        gates.parse("sign.rel_rmse>1", REF_FIELDS)  # wrong group
    with pytest.raises(UsageError, match="needs --reference"):
        gates.parse("collapsed_frac>0.1", SELF_FIELDS)
    with pytest.raises(UsageError, match="only reported without --reference"):
        gates.parse("zero_frac>0.1", REF_FIELDS)


# -- evaluation ---------------------------------------------------------------------------------------


def _entry(name, rel, collapsed, sqnr, n=1000):
    e = R.TensorEntry(name=name, type="Q4_0", shape=[n // 100, 100], n_elements=n, n_bytes=n // 2)
    e.error = {"rmse": rel, "rel_rmse": rel, "max_abs": rel, "sqnr_db": sqnr, "cosine": 1.0,
               "p50": 0.0, "p95": 0.0, "p99": 0.0}
    e.sign = {"nonzero": n, "collapsed": int(collapsed * n), "flipped": 0, "collapsed_frac": collapsed,
              "flipped_frac": 0.0}
    e.outliers = {"crest": 3.0, "kurtosis": math.nan, "beyond_3sigma": 0.0, "beyond_6sigma": 0.0,
                  "outlier_channels": {"count": 2, "worst": [1, 2]}, "scale_dominated_blocks": 0.0}
    return e


@pytest.fixture
def report():
    ts = [_entry("a", 0.02, 0.01, 30.0), _entry("b", 0.09, 0.20, 20.0, n=3000), _entry("c", 0.06, 0.0, math.nan)]
    skipped = R.TensorEntry(name="d", type="Q8_0", shape=[10, 100], n_elements=1000, n_bytes=1062)
    return R.Report(file="f", format="gguf", architecture=None, metadata={}, tensors=ts + [skipped], reference="r")


def test_evaluate_tensor_gates(report):
    g = [gates.parse(t, REF_FIELDS) for t in ("rel_rmse>0.05", "collapsed_frac>0.5", "sqnr_db<25",
                                               "kurtosis>0", "outlier_channels>=2")]
    failures = {f.gate.text: f.offenders for f in gates.evaluate(g, report)}
    assert failures["rel_rmse>0.05"] == [("b", 0.09), ("c", 0.06)]  # worst first; d has no figures
    assert "collapsed_frac>0.5" not in failures
    assert failures["sqnr_db<25"] == [("b", 20.0)]  # c's undefined SQNR does not trip
    assert "kurtosis>0" not in failures  # NaN never trips
    assert [n for n, _ in failures["outlier_channels>=2"]] == ["a", "b", "c"]


def test_evaluate_summary_gates(report):
    want = (0.02 * 1000 + 0.09 * 3000 + 0.06 * 1000) / 5000
    tripped = gates.evaluate([gates.parse(f"summary.rel_rmse>{want - 1e-9}", REF_FIELDS)], report)
    assert len(tripped) == 1 and tripped[0].offenders[0][1] == pytest.approx(want)
    assert gates.evaluate([gates.parse(f"summary.rel_rmse>{want + 1e-9}", REF_FIELDS)], report) == []
    assert len(gates.evaluate([gates.parse("summary.n_tensors==4", REF_FIELDS)], report)) == 1


# -- exit codes, end to end ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("gates")
    rng = np.random.default_rng(5)
    t = {"blk.0.attn_q.weight": (rng.standard_normal((32, 64)) * 0.02).astype(np.float32),
         "blk.0.ffn_up.weight": (rng.standard_normal((64, 64)) * 0.02).astype(np.float32)}
    for path, qtype in ((d / "ref.gguf", T.F32), (d / "q.gguf", T.Q4_0)):
        write_gguf_py(path, {name: (arr, qtype) for name, arr in t.items()})
    return d


def _pipeline(files, *checks):
    """qtool's exit code and the reader's, through `sh -c "qtool ... | python3 -c json.load"`."""
    fail_ifs = " ".join(f"--fail-if '{c}'" for c in checks)
    cmd = (f"{{ {sys.executable} -m qtool inspect {files / 'q.gguf'} --reference {files / 'ref.gguf'} --json "
           f"{fail_ifs}; echo $? > {files / 'rc'}; }} | "
           f"{sys.executable} -c 'import json,sys; d = json.load(sys.stdin); print(len(d[\"tensors\"]))'")
    r = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, cwd=ROOT)
    return int((files / "rc").read_text()), r


def test_gate_trips_in_a_pipeline(files):
    code, r = _pipeline(files, "rel_rmse>0.01", "collapsed_frac>0.9")
    assert code == 1
    assert r.returncode == 0 and r.stdout.strip() == "2"  # the report is still one JSON document
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("check failed: rel_rmse>0.01: 2 tensor(s): ")
    assert "blk.0.attn_q.weight" in lines[0] and "blk.0.ffn_up.weight" in lines[0]
    assert lines[-1] == "qtool: error: 1 of 2 check(s) failed: rel_rmse>0.01"
    assert "Traceback" not in r.stderr


def test_gates_hold_in_a_pipeline(files):
    code, r = _pipeline(files, "rel_rmse>0.5", "summary.collapsed_frac>0.9", "sqnr_db<5")
    assert code == 0 and r.returncode == 0 and r.stdout.strip() == "2" and r.stderr == ""


def test_bad_gate_is_a_usage_error_before_any_work(files):
    code, r = _pipeline(files, "rel_rmsee>0.1")
    assert code == 2
    assert "unknown field 'rel_rmsee'" in r.stderr and "valid fields" in r.stderr
    assert r.returncode != 0  # nothing on stdout for the reader to parse
