"""`qtool types`: every preset and storage type listed, with sizes from gguf and qtool's real abilities."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT

from qtool.formats.ggml_types import QUANT_SIZES, ggml_type_named
from qtool.quantizers import presets, registered



def _qtool(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "qtool", *args], capture_output=True, text=True, env=env)


def test_types_json_lists_presets_and_types_with_true_abilities():
    r = _qtool("types", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    listed = {p["name"]: p for p in doc["presets"]}
    assert set(listed) == set(presets.PRESETS)
    reg = registered()
    for name, row in listed.items():
        p = presets.PRESETS[name]
        assert row["file_type"] == int(p.ftype)
        assert row["quantize"] == (p.only_copy or p.base_type in reg)
        block, size = QUANT_SIZES[p.base_type]
        assert row["base_bpw"] == 8.0 * size / block
    assert listed["Q2_K_S"]["requires_imatrix"] and not listed["Q4_K_M"]["requires_imatrix"]
    types = {t["name"]: t for t in doc["types"]}
    assert types["Q4_K"]["bpw"] == 4.5 and types["Q6_K"]["bpw"] == 6.5625
    assert all(t["quantize"] == (ggml_type_named(name) in reg) for name, t in types.items())
    assert types["Q4_K"]["quantize"]
    # the reference build's Q2_0, which gguf-py 0.19 has no name for, from qtool's own table
    assert types["Q2_0"]["bpw"] == 2.25 and types["Q2_0"]["block_size"] == 64 and types["Q2_0"]["quantize"]
    assert listed["Q2_0"]["file_type"] == 41 and listed["Q2_0"]["quantize"]
    assert types["Q1_0"]["bpw"] == 1.125 and listed["Q1_0"]["quantize"]
    assert "Q8_K" not in types  # not a storage type anyone can write


def test_types_table_for_people():
    r = _qtool("types")
    assert r.returncode == 0, r.stderr
    assert "Q4_K_M" in r.stdout and "4.58G" in r.stdout and "\x1b[" not in r.stdout
