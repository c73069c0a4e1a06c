"""qtool's metadata against the reference converter's, key by key.

fixtures/archs/<case>.reference.json holds what llama.cpp's own convert_hf_to_gguf.py (vendored in the
llama-cpp-python 0.3.36 sdist, run once by fixtures/archs/make_reference.py with torch and transformers)
wrote for a tiny folder: every key with its GGUF type and value (long arrays as length + sha256 + ends), and
every tensor's name, shape and type. Here the same folder is rebuilt from the golden's own config.json
(hf_models_more.write_folder; a changed generator is caught as a stale golden, not as a qtool bug),
converted by ``qtool convert --type F32`` and described the same way. Every key must have the reference's
type and value, every tensor its name, shape and type, and nothing may be extra. The order is that of
llama_model_quantize(reference, F32), recorded in the golden too (``llama_quantize_f32``): qtool convert is
convert_hf_to_gguf.py followed by llama-quantize, which moves general.quantization_version and
general.file_type to the end and writes the tensors in its own order, with every value unchanged.

Cases whose family or tokenizer qtool cannot yet convert as the reference does are strict xfails with the
reason: they flip to failures (XPASS) the moment they match, and then the mark goes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from qtool.testing import hf_models_more as more

GOLDEN = ROOT / "fixtures" / "archs"
CASES = sorted(p.name.removesuffix(".reference.json") for p in GOLDEN.glob("*.reference.json"))

#: case -> why qtool's metadata does not equal the reference's yet
XFAIL: dict[str, str] = {}


def _param(case: str):
    """A case, strict-xfail where XFAIL names it."""
    marks = [pytest.mark.xfail(strict=True, reason=XFAIL[case])] if case in XFAIL else []
    return pytest.param(case, marks=marks, id=case)


def _convert(folder: Path, out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "qtool", "convert", str(folder), "--type", "F32", "-o", str(out),
                        "--quiet"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, f"qtool convert exit {r.returncode}: {r.stderr.strip()[-2000:]}"


def _show(v) -> str:
    s = json.dumps(v, ensure_ascii=False)
    return s if len(s) <= 160 else s[:157] + "..."


def compare(golden: dict, got: dict) -> list[str]:
    """Every difference between the reference's description and qtool's, one line each."""
    problems = []
    ref_meta = {m["key"]: m for m in golden["metadata"]}
    our_meta = {m["key"]: m for m in got["metadata"]}
    for key, m in ref_meta.items():
        if key not in our_meta:
            problems.append(f"missing key {key} ({m['type']}{'[' + m['item_type'] + ']' if 'item_type' in m else ''}"
                            f" = {_show(m['value'])})")
            continue
        o = our_meta[key]
        if (o["type"], o.get("item_type")) != (m["type"], m.get("item_type")):
            problems.append(f"{key}: type {o['type']}/{o.get('item_type')}, reference {m['type']}/{m.get('item_type')}")
        if o["value"] != m["value"]:
            problems.append(f"{key}: {_show(o['value'])}, reference {_show(m['value'])}")
    for key in our_meta.keys() - ref_meta.keys():
        problems.append(f"extra key {key} = {_show(our_meta[key]['value'])}")
    key_order = golden["llama_quantize_f32"]["key_order"]
    if not problems and list(our_meta) != key_order:
        problems.append(f"key order {list(our_meta)}, llama-quantize's {key_order}")

    ref_t = [(t["name"], t["shape"], t["type"]) for t in golden["tensors"]]
    our_t = [(t["name"], t["shape"], t["type"]) for t in got["tensors"]]
    ref_by, our_by = {t[0]: t for t in ref_t}, {t[0]: t for t in our_t}
    for name in ref_by.keys() - our_by.keys():
        problems.append(f"missing tensor {name} {ref_by[name][1]} {ref_by[name][2]}")
    for name in our_by.keys() - ref_by.keys():
        problems.append(f"extra tensor {name} {our_by[name][1]} {our_by[name][2]}")
    for name in ref_by.keys() & our_by.keys():
        if ref_by[name] != our_by[name]:
            problems.append(f"tensor {name}: {our_by[name][1:]}, reference {ref_by[name][1:]}")
    tensor_order = golden["llama_quantize_f32"]["tensor_order"]
    if not problems and [t[0] for t in our_t] != tensor_order:
        problems.append(f"tensor order {[t[0] for t in our_t]}, llama-quantize's {tensor_order}")
    return problems


_CONVERTED: dict[str, tuple[dict, dict, dict]] = {}


def converted(case: str, tmp_path_factory) -> tuple[dict, dict, dict]:
    """(golden, facts of the rebuilt folder, description of qtool's F32 GGUF with tensor sha256), once per case."""
    if case not in _CONVERTED:
        golden = json.loads((GOLDEN / f"{case}.reference.json").read_text(encoding="utf-8"))
        tmp = tmp_path_factory.mktemp(case)
        folder = more.write_folder(tmp / case, golden["family"], golden["tokenizer"], golden["config"],
                                   dtype=golden.get("dtype", "F32"))
        facts = more.folder_facts(folder)
        assert {k: facts[k] for k in ("files", "safetensors")} == {k: golden[k] for k in ("files", "safetensors")}, (
            f"the folder hf_models_more writes for {case} is no longer the one the reference converted: rerun "
            f"fixtures/archs/make_reference.py")
        out = tmp / f"{case}.gguf"
        _convert(folder, out)
        _CONVERTED[case] = golden, facts, more.describe_gguf(out, data=True)
    return _CONVERTED[case]


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_metadata_equals_reference(case, tmp_path_factory):
    golden, _, got = converted(case, tmp_path_factory)
    problems = compare(golden, got)
    assert not problems, (f"{case}: {len(problems)} difference(s) from convert_hf_to_gguf.py:\n  "
                          + "\n  ".join(problems))


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_tensor_data_equals_reference(case, tmp_path_factory):
    """Every tensor's bytes equal the reference converter's F32 output (sha256 per tensor): the renames,
    permutations, norm shifts (in the stored precision), stacked experts and generated tensors are the
    reference's to the bit. Needs the very weights the reference converted: numpy's seeded generator gives
    them unless a numpy release changed its stream, which is then said."""
    golden, facts, got = converted(case, tmp_path_factory)
    if facts["weights_sha256"] != golden["weights_sha256"]:
        pytest.skip(f"numpy {np.__version__} seeds other weights than the ones the reference converted")
    ours = {t["name"]: t["sha256"] for t in got["tensors"]}
    bad = [name for name, sha in golden["tensor_sha256"].items() if ours.get(name) != sha]
    assert not bad, f"{case}: {len(bad)} tensor(s) whose bytes differ from the reference's: {bad[:8]}"


def test_compare_catches_differences():
    """The comparison itself: a changed value, type, missing key, key order and tensor shape are each found."""
    golden = json.loads((GOLDEN / "llama3.reference.json").read_text(encoding="utf-8"))
    q = golden["llama_quantize_f32"]
    assert q["same_values"]
    meta = {m["key"]: m for m in golden["metadata"]}
    tensors = {t["name"]: t for t in golden["tensors"]}
    in_order = {"metadata": [meta[k] for k in q["key_order"]], "tensors": [tensors[n] for n in q["tensor_order"]]}
    assert compare(golden, in_order) == []
    got = json.loads(json.dumps(in_order))
    got["metadata"][4]["value"] = 12345
    got["metadata"][5]["type"] = "INT32"
    del got["metadata"][6]
    got["tensors"][0]["shape"] = [1, 2]
    found = compare(golden, got)
    assert len(found) == 4, found
    swapped = json.loads(json.dumps(in_order))
    swapped["metadata"][0], swapped["metadata"][1] = swapped["metadata"][1], swapped["metadata"][0]
    assert [p.split(" ")[0] for p in compare(golden, swapped)] == ["key"]
