"""`qtool convert` end to end, as a user runs it: `python3 -m qtool` in a subprocess, so exit codes, stdout
and stderr are the real ones. Output naming, --dry-run and --json, piped output, every user error (one line,
exit 2, no traceback, nothing left behind), importance matrices (both formats, against ggml itself), and
the per-tensor overrides, each checked to change exactly the tensors it should.

The fixture is copied into a temporary folder first: nothing is ever written into fixtures/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, need_oracle
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from safetensors.numpy import load_file, save_file

from qtool.testing import ggml
from qtool.testing.models import write_imatrix_dat, write_imatrix_gguf

FIXTURE = ROOT / "fixtures" / "tiny-llama-f32"

#: types whose ggml quantizer takes an importance matrix (Q8_0 and the float types ignore it)
IMATRIX_TYPES = {T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1}


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def qtool(*args, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python3 -m qtool ARGS` with stdout and stderr piped, as a script or CI sees it."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color", "COLUMNS": "100"}
    for key in ("QTOOL_DEBUG", "FORCE_COLOR", "NO_COLOR"):
        full_env.pop(key, None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "qtool", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=full_env, timeout=300)


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return r


def usage_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    """The one-line `qtool: error: ...` of a user mistake (exit 2, no traceback); returns the message."""
    assert r.returncode == 2, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qtool: error: "), r.stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in: {lines[0]}"
    return lines[0]


def nothing_written(folder: Path, before: set[str]) -> None:
    """No output file and no temporary file appeared in ``folder``."""
    after = {p.name for p in folder.iterdir()}
    assert after == before, f"left behind: {sorted(after - before)}"


def tensors(path: Path) -> dict[str, tuple[T, bytes]]:
    """{name: (type, bytes)} in file order."""
    return {t.name: (T(t.tensor_type), np.asarray(t.data).tobytes()) for t in GGUFReader(path).tensors}


def metadata(path: Path) -> dict:
    return {k: f.contents() for k, f in GGUFReader(path).fields.items() if not k.startswith("GGUF.")}


def changed(a: Path, b: Path) -> set[str]:
    """Names of the tensors whose type or bytes differ between two files with the same tensors."""
    ta, tb = tensors(a), tensors(b)
    assert list(ta) == list(tb)
    return {n for n in ta if ta[n] != tb[n]}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*")}


# --------------------------------------------------------------------------------------------------
# module fixtures: the fixture copied once, and the runs several tests compare against
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("convert_cli")
    shutil.copytree(FIXTURE, d / "tiny-llama-f32")
    return d


@pytest.fixture(scope="module")
def model(work) -> Path:
    return work / "tiny-llama-f32"


@pytest.fixture(scope="module")
def f32_rows(work, model) -> dict[str, np.ndarray]:
    """Every tensor as the quantizers see it (GGUF names and row order), from qtool's F32 GGUF."""
    out = work / "f32.gguf"
    ok(qtool("convert", model, "--type", "F32", "-o", out, "-q"))
    return {t.name: np.array(t.data, dtype=np.float32) for t in GGUFReader(out).tensors}


@pytest.fixture(scope="module")
def runs(work, model):
    """run(name, *options) -> the output of `qtool convert MODEL -o <name>.gguf OPTIONS`, made once."""
    made: dict[str, Path] = {}

    def run(name: str, *options) -> Path:
        if name not in made:
            out = work / f"{name}.gguf"
            ok(qtool("convert", model, "-o", out, "-q", *options))
            made[name] = out
        return made[name]

    return run


# --------------------------------------------------------------------------------------------------
# where the output goes, and what is printed
# --------------------------------------------------------------------------------------------------


def test_default_output_beside_the_folder(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "tiny-llama-f32")
    r = ok(qtool("convert", tmp_path / "tiny-llama-f32", "--type", "Q8_0"))
    out = tmp_path / "tiny-llama-f32-Q8_0.gguf"
    assert out.is_file()
    assert r.stdout.startswith(f"wrote {out}: ")
    assert {p.name for p in tmp_path.iterdir()} == {"tiny-llama-f32", out.name}
    assert {p.name for p in (tmp_path / "tiny-llama-f32").iterdir()} == {p.name for p in FIXTURE.iterdir()}


def test_default_output_of_dot_is_beside_the_folder(tmp_path):
    # `qtool convert .` inside the model folder names the output after the folder, beside it
    shutil.copytree(FIXTURE, tmp_path / "tiny-llama-f32")
    ok(qtool("convert", ".", "--type", "Q4_0", "-q", cwd=tmp_path / "tiny-llama-f32"))
    assert (tmp_path / "tiny-llama-f32-Q4_0.gguf").is_file()
    assert {p.name for p in (tmp_path / "tiny-llama-f32").iterdir()} == {p.name for p in FIXTURE.iterdir()}


def test_default_output_of_files(tmp_path, runs):
    # a GGUF: <stem>-<TYPE>.gguf beside it, the preset's canonical name whatever the case typed
    src = tmp_path / "small.gguf"
    shutil.copyfile(runs("base-Q8_0", "--type", "Q8_0"), src)
    ok(qtool("convert", src, "--type", "q4_k_m", "--allow-requantize", "-q"))
    assert (tmp_path / "small-Q4_K_M.gguf").is_file()
    # a bare .safetensors file: beside the file, in its folder
    shutil.copytree(FIXTURE, tmp_path / "m")
    ok(qtool("convert", tmp_path / "m" / "model.safetensors", "--type", "Q8_0", "-q"))
    assert (tmp_path / "m" / "model-Q8_0.gguf").is_file()


def test_sharded_index(tmp_path, runs):
    # two shards and an index: the same tensors as the single file, output named after the index's stem
    w = load_file(str(FIXTURE / "model.safetensors"))
    names = sorted(w)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    d = tmp_path / "sharded"
    d.mkdir()
    for f in FIXTURE.glob("*.json"):
        shutil.copyfile(f, d / f.name)
    for shard, keys in shards.items():
        save_file({k: w[k] for k in keys}, str(d / shard))
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    ok(qtool("convert", d / "model.safetensors.index.json", "--type", "Q4_K_M", "-q"))
    out = d / "model-Q4_K_M.gguf"
    assert tensors(out) == tensors(runs("base-Q4_K_M", "--type", "Q4_K_M"))
    # -o over a shard is refused like any input
    usage_error(qtool("convert", d, "--type", "Q4_K_M", "-o", d / "model-00002-of-00002.safetensors"),
                "refusing to overwrite")


def test_dry_run_writes_nothing_and_prints_the_plan(work, model):
    before = snapshot(work)
    r = ok(qtool("convert", model, "--type", "Q4_K_M", "--dry-run"))
    assert snapshot(work) == before
    for name, qtype in (("output.weight", "Q6_K"), ("blk.1.ffn_down.weight", "Q6_K"),
                        ("blk.0.attn_q.weight", "Q4_K"), ("output_norm.weight", "F32")):
        line = next((ln for ln in r.stdout.splitlines() if f" {name} " in ln), None)
        assert line is not None and qtype in line, f"{name} ({qtype}) not in the plan:\n{r.stdout}"
    assert f"would write {model.parent / (model.name + '-Q4_K_M.gguf')}: 21 tensors (16 quantized)" in r.stdout


def test_dry_run_refuses_what_the_real_run_refuses(work, model, tmp_path):
    usage_error(qtool("convert", model, "--type", "Q8_0", "--dry-run", "-o", tmp_path / "no" / "o.gguf"),
                "does not exist")
    usage_error(qtool("convert", model, "--type", "Q8_0", "--dry-run", "-o", model / "config.json"),
                "refusing to overwrite")


def test_dry_run_json_plan_is_what_the_conversion_writes(work, model, runs):
    before = snapshot(work)
    dry = json.loads(ok(qtool("convert", model, "--type", "Q4_K_M", "--dry-run", "--json")).stdout)
    assert snapshot(work) == before
    out = work / "json-Q4_K_M.gguf"
    real = json.loads(ok(qtool("convert", model, "--type", "Q4_K_M", "-o", out, "--json")).stdout)
    in_file = [(t.name, T(t.tensor_type).name) for t in GGUFReader(out).tensors]
    assert [(t["name"], t["type"]) for t in dry["tensors"]] == in_file
    assert [(t["name"], t["type"]) for t in real["tensors"]] == in_file
    assert dry["dry_run"] is True and dry["output"] == str(model.parent / f"{model.name}-Q4_K_M.gguf")
    assert not Path(dry["output"]).exists()
    assert real["dry_run"] is False and real["output"] == str(out)
    assert dry["file_type"] == real["file_type"] == metadata(out)["general.file_type"] == 15
    # the sizes are the file's
    reader = GGUFReader(out)
    assert real["summary"]["bytes_out"] == dry["summary"]["bytes_out"] == sum(int(t.n_bytes) for t in reader.tensors)
    assert [t["n_bytes"] for t in real["tensors"]] == [int(t.n_bytes) for t in reader.tensors]
    summary = real["summary"]
    assert summary["tensors"] == 21 and summary["quantized"] == 16
    assert summary["n_elements"] == sum(t["n_elements"] for t in real["tensors"])
    assert summary["bpw"] == pytest.approx(8 * summary["bytes_out"] / summary["n_elements"])
    assert summary["bytes_in"] == (FIXTURE / "model.safetensors").stat().st_size - _header_bytes()
    assert real["tensors"][0] == {"name": "output.weight", "shape": [320, 256], "source_type": "F32",
                                  "type": "Q6_K", "quantize": True, "n_elements": 81920,
                                  "n_bytes": 320 * 210, "reason": "output rule"}
    # the same file as a plain run (the JSON changes only what is printed)
    assert out.read_bytes() == runs("base-Q4_K_M", "--type", "Q4_K_M").read_bytes()


def _header_bytes() -> int:
    raw = (FIXTURE / "model.safetensors").read_bytes()[:8]
    return 8 + int.from_bytes(raw, "little")


def test_piped_output_is_plain(work, model):
    out = work / "piped.gguf"
    r = ok(qtool("convert", model, "--type", "Q4_0", "-o", out))
    assert "\x1b" not in r.stdout + r.stderr
    assert r.stderr == ""  # no progress bar when stderr is not a terminal
    assert len(r.stdout.splitlines()) == 1 and r.stdout.startswith(f"wrote {out}: ")
    r = ok(qtool("convert", model, "--type", "Q4_0", "--dry-run"))
    assert "\x1b" not in r.stdout + r.stderr


# --------------------------------------------------------------------------------------------------
# user errors: one line, exit 2, no traceback, nothing left behind
# --------------------------------------------------------------------------------------------------


def test_missing_input(tmp_path):
    usage_error(qtool("convert", tmp_path / "nope", "--type", "Q4_K_M"), str(tmp_path / "nope"))
    assert list(tmp_path.iterdir()) == []


def test_unknown_type_suggests_close_names(work, model):
    before = {p.name for p in work.iterdir()}
    msg = usage_error(qtool("convert", model, "--type", "Q4_KM"), "Q4_KM", "did you mean")
    assert "Q4_K_M" in msg
    usage_error(qtool("convert", model, "--type", "Q8"), "did you mean", "Q8_0")
    nothing_written(work, before)


def test_output_equal_to_input_refused(tmp_path, runs):
    src = tmp_path / "in.gguf"
    shutil.copyfile(runs("base-Q8_0", "--type", "Q8_0"), src)
    data = src.read_bytes()
    usage_error(qtool("convert", src, "--type", "Q8_0", "-o", src), "refusing to overwrite")
    usage_error(qtool("convert", src, "--type", "Q8_0", "-o", tmp_path / "." / "in.gguf"), "refusing")
    assert src.read_bytes() == data
    # the safetensors file of a model folder
    shutil.copytree(FIXTURE, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    usage_error(qtool("convert", tmp_path / "m", "--type", "Q8_0", "-o", weights), "refusing to overwrite")
    assert weights.read_bytes() == (FIXTURE / "model.safetensors").read_bytes()
    assert {p.name for p in tmp_path.iterdir()} == {"in.gguf", "m"}


def test_output_over_the_tokenizer_refused(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "m")
    tokenizer = tmp_path / "m" / "tokenizer.json"
    r = qtool("convert", tmp_path / "m", "--type", "Q8_0", "-o", tokenizer)
    assert tokenizer.read_bytes() == (FIXTURE / "tokenizer.json").read_bytes(), "the input's tokenizer.json was overwritten"
    usage_error(r, "refusing to overwrite")


def test_output_folder_missing(work, model):
    before = {p.name for p in work.iterdir()}
    usage_error(qtool("convert", model, "--type", "Q8_0", "-o", work / "no" / "such" / "x.gguf"),
                str(work / "no" / "such"), "does not exist")
    usage_error(qtool("convert", model, "--type", "Q8_0", "-o", work), "folder")
    nothing_written(work, before)


def _bad_copy(tmp_path: Path, name: str, weights: bytes) -> Path:
    d = tmp_path / name
    d.mkdir()
    for f in FIXTURE.iterdir():
        if f.name != "model.safetensors":
            shutil.copyfile(f, d / f.name)
    (d / "model.safetensors").write_bytes(weights)
    return d


@pytest.mark.parametrize("keep", [5, 100, 3_000_000])  # in the length, in the header, in the data
def test_truncated_safetensors(tmp_path, keep):
    folder = _bad_copy(tmp_path, "cut", (FIXTURE / "model.safetensors").read_bytes()[:keep])
    before = {p.name for p in tmp_path.iterdir()}
    usage_error(qtool("convert", folder, "--type", "Q8_0"), str(folder / "model.safetensors"))
    nothing_written(tmp_path, before)
    # the bare file too
    usage_error(qtool("convert", folder / "model.safetensors", "--type", "Q8_0"), "model.safetensors")
    nothing_written(folder, {p.name for p in FIXTURE.iterdir()})


def test_nan_in_a_tensor(tmp_path):
    w = load_file(str(FIXTURE / "model.safetensors"))
    # the last layer: the output file is already being written when the value is met
    w["model.layers.1.mlp.up_proj.weight"][37, 5] = np.nan
    src = tmp_path / "src.safetensors"
    save_file(w, str(src))
    folder = _bad_copy(tmp_path, "nan", src.read_bytes())
    src.unlink()
    before = {p.name for p in tmp_path.iterdir()}
    for preset in ("Q4_K_M", "F16"):
        usage_error(qtool("convert", folder, "--type", preset), "blk.1.ffn_up.weight", "row 37", "nan")
        nothing_written(tmp_path, before)


@pytest.mark.parametrize("preset", ["Q2_K_S", "IQ2_XS"])
def test_preset_needing_an_imatrix_without_one(preset, work, model):
    before = {p.name for p in work.iterdir()}
    usage_error(qtool("convert", model, "--type", preset), "importance matrix", "--imatrix")
    nothing_written(work, before)


# --------------------------------------------------------------------------------------------------
# importance matrices
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def imatrices(work, f32_rows) -> dict[str, tuple[Path, dict[str, np.ndarray]]]:
    """{"dat" / "gguf": (file, {tensor: the vector llama-quantize hands the quantizer})} covering every
    2-D tensor, with distinct seeded values so each format's effect is its own."""
    rng = np.random.default_rng(11)
    names = [n for n, a in f32_rows.items() if a.ndim == 2]
    dat, dat_use, gg, gg_use = {}, {}, {}, {}
    for n in names:
        ncols = f32_rows[n].shape[-1]
        stored = (rng.random(ncols) * 3 + 0.05).astype(np.float32) * np.float32(5)  # mean x^2 * ncall
        dat[n] = (5, stored)
        dat_use[n] = stored / np.float32(5)
        sums = (rng.random(ncols) ** 3 * 40 + 0.01).astype(np.float32)
        gg[n] = (sums, np.array([8.0], np.float32))
        gg_use[n] = sums / np.float32(8)
    return {"dat": (write_imatrix_dat(work / "imatrix.dat", dat, chunk_count=7, dataset="wiki.train.raw"),
                    dat_use),
            "gguf": (write_imatrix_gguf(work / "imatrix.gguf", gg, datasets=["calib.txt"], chunk_count=12),
                     gg_use)}


@pytest.mark.parametrize("preset", ["Q4_K_M", "Q4_0", "Q2_K_S"])
@pytest.mark.parametrize("fmt", ["dat", "gguf"])
def test_imatrix(fmt, preset, work, runs, imatrices, f32_rows):
    path, use = imatrices[fmt]
    out = runs(f"imatrix-{fmt}-{preset}", "--type", preset, "--imatrix", path)
    meta = metadata(out)
    assert meta["quantize.imatrix.file"] == str(path)
    assert meta["quantize.imatrix.dataset"] == ("wiki.train.raw" if fmt == "dat" else "calib.txt")
    assert meta["quantize.imatrix.entries_count"] == len(use)
    assert meta["quantize.imatrix.chunks_count"] == (7 if fmt == "dat" else 12)

    ours = tensors(out)
    quantized = {n: qt for n, (qt, _) in ours.items() if qt != T.F32}
    assert set(quantized) == set(use)
    if preset != "Q2_K_S":  # Q2_K_S has no run without an imatrix
        plain = tensors(runs(f"base-{preset}", "--type", preset))
        same = [n for n, qt in quantized.items() if qt in IMATRIX_TYPES and plain[n] == ours[n]]
        assert not same, f"the importance matrix changed nothing in {same}"
    need_oracle()
    bad = []
    for name, qt in quantized.items():
        want = ggml.quantize(qt, f32_rows[name], use[name]).tobytes()
        if ours[name][1] != want:
            got = np.frombuffer(ours[name][1], np.uint8)
            first = int(np.flatnonzero(got != np.frombuffer(want, np.uint8))[0])
            bad.append(f"{name} ({qt.name}): first differing byte {first}")
    assert not bad, "not what ggml_quantize_chunk writes with the same importance vectors:\n" + "\n".join(bad)


def test_imatrix_include_and_exclude_weights(runs, imatrices):
    path, use = imatrices["dat"]
    plain = tensors(runs("base-Q4_K_M", "--type", "Q4_K_M"))
    full = tensors(runs("imatrix-dat-Q4_K_M", "--type", "Q4_K_M", "--imatrix", path))
    for option, picked in (("--include-weights", lambda n: "ffn_" in n), ("--exclude-weights", lambda n: "ffn_" not in n)):
        out = runs(f"imatrix{option}", "--type", "Q4_K_M", "--imatrix", path, option, "ffn_")
        got = tensors(out)
        for name in got:
            want = full[name] if name in use and picked(name) else plain[name]
            assert got[name] == want, f"{option} ffn_: {name} is not the {'imatrix' if want is full[name] else 'plain'} run's"
        assert metadata(out)["quantize.imatrix.entries_count"] == sum(picked(n) for n in use)
    # a filter that leaves nothing counts as no importance matrix at all, as in llama-quantize
    assert runs("imatrix-include-none", "--type", "Q4_K_M", "--imatrix", path, "--include-weights",
                "no-such-tensor").read_bytes() == runs("base-Q4_K_M", "--type", "Q4_K_M").read_bytes()


def test_imatrix_filter_errors(work, model, imatrices):
    path, _ = imatrices["dat"]
    before = {p.name for p in work.iterdir()}
    usage_error(qtool("convert", model, "--type", "Q4_K_M", "--include-weights", "ffn"), "--imatrix")
    usage_error(qtool("convert", model, "--type", "Q4_K_M", "--imatrix", path, "--include-weights", "ffn",
                      "--exclude-weights", "attn"), "cannot be used together")
    nothing_written(work, before)


def test_imatrix_of_the_wrong_length(tmp_path, work, model, f32_rows):
    entries = {n: (1, np.ones(a.shape[-1], np.float32)) for n, a in f32_rows.items() if a.ndim == 2}
    entries["blk.1.ffn_up.weight"] = (1, np.ones(300, np.float32))
    path = write_imatrix_dat(tmp_path / "short.dat", entries)
    out = tmp_path / "out.gguf"
    usage_error(qtool("convert", model, "--type", "Q4_K_M", "--imatrix", path, "-o", out),
                "blk.1.ffn_up.weight", "300", "256", str(path))
    nothing_written(tmp_path, {"short.dat"})


def _malformed(tmp_path: Path, kind: str) -> Path:
    p = tmp_path / f"{kind}.imatrix"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "junk":
        p.write_bytes(b"\x05\x00\x00\x00abc")
    elif kind == "cut-dat":
        full = write_imatrix_dat(tmp_path / "full.dat", {"blk.0.ffn_up.weight": (1, np.ones(256, np.float32))})
        p.write_bytes(full.read_bytes()[:200])
        full.unlink()
    elif kind == "cut-gguf":
        full = write_imatrix_gguf(tmp_path / "full.gguf",
                                  {"blk.0.ffn_up.weight": (np.ones(256, np.float32), np.ones(1, np.float32))})
        p.write_bytes(full.read_bytes()[:-100])
        full.unlink()
    elif kind == "gguf-without-metadata":
        write_imatrix_gguf(p, {"blk.0.ffn_up.weight": (np.ones(256, np.float32), np.ones(1, np.float32))},
                           datasets=None, chunk_count=None, chunk_size=None)
    return p


@pytest.mark.parametrize("kind", ["empty", "junk", "cut-dat", "cut-gguf", "gguf-without-metadata"])
def test_malformed_imatrix(kind, tmp_path, model):
    path = _malformed(tmp_path, kind)
    before = {p.name for p in tmp_path.iterdir()}
    usage_error(qtool("convert", model, "--type", "Q4_K_M", "--imatrix", path, "-o", tmp_path / "o.gguf"),
                str(path))
    nothing_written(tmp_path, before)


def test_missing_imatrix_file(tmp_path, model):
    usage_error(qtool("convert", model, "--type", "Q4_K_M", "--imatrix", tmp_path / "none.dat",
                      "-o", tmp_path / "o.gguf"), str(tmp_path / "none.dat"))
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------
# per-tensor overrides change exactly the tensors they name
# --------------------------------------------------------------------------------------------------


LAYERS = (0, 1)


@pytest.mark.parametrize("option, expect", [
    (["--output-tensor-type", "Q8_0"], {"output.weight": T.Q8_0}),
    (["--token-embedding-type", "q8_0"], {"token_embd.weight": T.Q8_0}),
    (["--tensor-type", "attn_v=Q8_0"], {f"blk.{i}.attn_v.weight": T.Q8_0 for i in LAYERS}),
    (["--tensor-type", "ffn_(up|gate)=Q5_0", "--tensor-type", "ffn=Q8_0"],  # first match wins
     {**{f"blk.{i}.ffn_{k}.weight": T.Q5_0 for i in LAYERS for k in ("up", "gate")},
      **{f"blk.{i}.ffn_down.weight": T.Q8_0 for i in LAYERS}}),
    (["--leave-output-tensor"], {"output.weight": T.F32}),
], ids=["output-tensor-type", "token-embedding-type", "tensor-type", "tensor-type-first-match", "leave-output"])
def test_override_changes_exactly_its_tensors(option, expect, runs, f32_rows):
    base = runs("base-Q4_K_M", "--type", "Q4_K_M")
    out = runs("override-" + "-".join(option).replace("=", "_").replace("|", "_"), "--type", "Q4_K_M", *option)
    assert changed(base, out) == set(expect)
    got = tensors(out)
    assert {n: got[n][0] for n in expect} == expect
    if "--leave-output-tensor" in option:
        assert got["output.weight"][1] == f32_rows["output.weight"].tobytes()
    assert metadata(out) == metadata(base)


def test_pure(runs):
    base = runs("base-Q4_K_M", "--type", "Q4_K_M")
    out = runs("pure-Q4_K_M", "--type", "Q4_K_M", "--pure")
    plain = tensors(base)
    got = tensors(out)
    ruled = {n for n, (qt, _) in plain.items() if qt not in (T.Q4_K, T.F32)}
    assert ruled == {"output.weight", "blk.1.attn_v.weight", "blk.1.ffn_down.weight"}  # Q6_K by the rules
    assert changed(base, out) == ruled
    assert {qt for qt, _ in got.values()} == {T.Q4_K, T.F32}


def test_bad_override_values(work, model):
    before = {p.name for p in work.iterdir()}
    usage_error(qtool("convert", model, "--type", "Q4_K_M", "--output-tensor-type", "Q9_K"), "Q9_K")
    usage_error(qtool("convert", model, "--type", "Q4_K_M", "--tensor-type", "attn_v"), "NAME=TYPE")
    usage_error(qtool("convert", model, "--type", "Q4_K_M", "--tensor-type", "attn_v=Q8_K"), "Q8_K")
    usage_error(qtool("convert", model, "--type", "Q4_K_M", "--tensor-type", "(=Q8_0"), "not a regular expression")
    nothing_written(work, before)


@pytest.mark.parametrize("args", [["--type", "Q8_0", "--threads", "0"], ["--type", "Q8_0", "--threads", "x"],
                                  ["--type", "Q8_0", "--bogus"], []], ids=["threads-0", "threads-x", "unknown-option",
                                                                           "no-type"])
def test_option_errors_are_usage_errors(args, work, model):
    before = {p.name for p in work.iterdir()}
    usage_error(qtool("convert", model, *args, "-o", work / "opt.gguf"))
    nothing_written(work, before)


# --------------------------------------------------------------------------------------------------
# Ctrl-C
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A conversion sent SIGINT while it writes its temporary file: (exit code, stderr, folder listing)."""
    import signal
    import time

    from qtool.testing.models import ModelSpec, write_model

    d = tmp_path_factory.mktemp("interrupt")
    src = write_model(d / "big.gguf", ModelSpec(n_layer=3, n_embd=1024, n_ff=2048, n_vocab=512), seed=5)
    out = d / "out.gguf"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("QTOOL_DEBUG", None)
    # once whole first: on a fresh checkout the run compiles its kernels into Numba's cache, and an interrupt
    # landing in that compilation is not what this checks (CI's first run finished before it landed)
    warm = d / "warm" / "out.gguf"
    warm.parent.mkdir()
    subprocess.run([sys.executable, "-m", "qtool", "convert", str(src), "--type", "Q4_K_M", "-o", str(warm)],
                   capture_output=True, env=env, check=True)
    shutil.rmtree(warm.parent)
    # SIGINT as a terminal gives it: a shell's background job (`.ci/run &`) inherits it ignored, and Python then
    # never installs its KeyboardInterrupt handler
    proc = subprocess.Popen([sys.executable, "-m", "qtool", "convert", str(src), "--type", "Q4_K_M", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # once some tensors are written: the kernels are loaded and the run is in its tensor loop (an interrupt
    # landing while LLVM loads a kernel can be lost in one of its callbacks)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline and \
            not any(f.stat().st_size > (2 << 20) for f in d.glob(f".{out.name}.*")):
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert not out.exists(), "the conversion finished before the interrupt landed"
    return proc.returncode, err, sorted(p.name for p in d.iterdir())


def test_interrupt_leaves_no_partial_file(interrupted):
    _, err, listing = interrupted
    assert listing == ["big.gguf"]
    assert "Traceback" not in err


def test_interrupt_exits_130(interrupted):
    code, err, _ = interrupted
    assert code == 130 and err.strip() == "qtool: interrupted", (code, err[-2000:])


# --------------------------------------------------------------------------------------------------
# QTOOL_DEBUG
# --------------------------------------------------------------------------------------------------


def test_debug_shows_the_traceback(tmp_path, model):
    r = qtool("convert", tmp_path / "nope", "--type", "Q4_K_M", env={"QTOOL_DEBUG": "1"})
    assert r.returncode != 0
    assert "Traceback (most recent call last)" in r.stderr
    assert "FormatError" in r.stderr or "UsageError" in r.stderr
    r = qtool("convert", model, "--type", "Q4_KM", env={"QTOOL_DEBUG": "1"})
    assert r.returncode != 0 and "Traceback" in r.stderr and "did you mean" in r.stderr


def test_the_cycle_collector_is_off_until_the_work_starts_and_restored_after(tmp_path, monkeypatch):
    import gc

    from qtool.cli import app, output

    states = []
    real = output.collect_from_now

    def spy():
        states.append(gc.isenabled())
        real()
        states.append((gc.isenabled(), gc.get_freeze_count() > 0))

    monkeypatch.setattr(output, "collect_from_now", spy)
    assert gc.isenabled() and gc.get_freeze_count() == 0
    app.main(["convert", str(FIXTURE), "--type", "Q8_0", "-o", str(tmp_path / "o.gguf"), "--quiet"])
    assert (tmp_path / "o.gguf").is_file()
    # off while the model was opened and planned, on (everything alive so far frozen) for the tensors
    assert states[0] is False and states[1] == (True, True)
    assert gc.isenabled() and gc.get_freeze_count() == 0  # the caller's collector as it was


class _Ended(Exception):
    pass


def _ending(monkeypatch) -> list:
    """Calls of os._exit and of the exit handlers' runner, seen from qtool.cli.app, instead of the real ones."""
    import atexit

    from qtool.cli import app

    calls = []

    def end(status):
        calls.append(("os._exit", status))
        raise _Ended

    monkeypatch.setattr(app.os, "_exit", end)
    monkeypatch.setattr(atexit, "_run_exitfuncs", lambda: calls.append(("atexit",)))
    return calls


def test_the_command_ends_its_process_without_tearing_python_down(monkeypatch, tmp_path):
    """The command's entry point (console script, python -m qtool) runs main(), leaves the collector off with
    everything frozen, runs the exit handlers and ends the process with os._exit and main's status.
    (test_readme checks that the console script and python -m qtool both name this entry.)"""
    import gc

    from qtool.cli import app

    calls = _ending(monkeypatch)
    monkeypatch.setattr("sys.argv", ["qtool", "convert", str(FIXTURE), "--type", "Q8_0", "-o",
                                     str(tmp_path / "o.gguf"), "--quiet"])
    try:
        with pytest.raises(_Ended):
            app.run()
        assert (tmp_path / "o.gguf").is_file()
        assert calls == [("atexit",), ("os._exit", 0)]
        assert not gc.isenabled() and gc.get_freeze_count() > 0
        calls.clear()
        monkeypatch.setattr("sys.argv", ["qtool", "convert", str(tmp_path / "missing"), "--type", "Q8_0"])
        with pytest.raises(_Ended):
            app.run()
        assert calls == [("atexit",), ("os._exit", 2)]
    finally:
        gc.unfreeze()
        gc.enable()


def test_with_another_thread_running_the_command_exits_as_python_does(monkeypatch, tmp_path):
    import gc
    import threading

    from qtool.cli import app

    calls = _ending(monkeypatch)
    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    monkeypatch.setattr("sys.argv", ["qtool", "convert", str(tmp_path / "missing"), "--type", "Q8_0"])
    try:
        with pytest.raises(SystemExit) as e:
            app.run()
        assert e.value.code == 2 and calls == []
    finally:
        release.set()
        other.join()
        gc.unfreeze()
        gc.enable()


def test_a_whole_process_flushes_its_output_and_runs_its_exit_handlers(tmp_path):
    """Through the real os._exit: stdout written to a pipe arrives whole, exit handlers run, the status is main's."""
    code = ("import atexit, sys\n"
            "atexit.register(lambda: sys.stderr.write('handler ran\\n'))\n"
            "from qtool.cli.app import run\n"
            "sys.argv = ['qtool', *sys.argv[1:]]\n"
            "run()\n")
    done = subprocess.run([sys.executable, "-c", code, "inspect", str(FIXTURE), "--json", "--no-stats"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["format"] in ("hf", "safetensors", "gguf")
    assert done.stderr.strip().splitlines()[-1] == "handler ran"
    done = subprocess.run([sys.executable, "-c", code, "convert", str(tmp_path / "missing"), "--type", "Q8_0"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "no such file" in done.stderr and "handler ran" in done.stderr


@pytest.mark.parametrize("argv", [["inspect", str(FIXTURE)], ["inspect", str(FIXTURE), "--json"], ["types"]])
def test_a_reader_that_goes_away_is_not_an_error(argv):
    """`qtool inspect ... | head`: the command ends with status 0 and nothing on stderr (click and rich would say
    1, qtool's status for a failed check)."""
    p = subprocess.Popen([sys.executable, "-m", "qtool", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # gone before the command writes anything
    err = p.stderr.read()
    assert p.wait(timeout=300) == 0 and err == b""


@pytest.mark.parametrize("argv", [["convert", "--help"], ["convert"], ["convert", str(FIXTURE), "--bogus"],
                                  ["convert", str(FIXTURE), "--type", "NOPE"], ["inspect", "-h"], ["types"],
                                  ["eval", "--help"], ["imatrix", "--help"], ["--help"], ["bogus"], []])
def test_a_command_dispatched_alone_says_what_the_whole_app_says(argv, monkeypatch, capsys):
    """main() builds only the named command's options (app._one_command); help, usage errors and output are
    those of the app with every command, and so are the exit codes."""
    from qtool.cli import app

    def outcome():
        try:
            app.main(list(argv))
            code = 0
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err

    chosen = app._one_command(list(argv))
    named = [c.name for c in app.app.registered_commands]
    if argv and argv[0] in named:
        assert [c.name for c in chosen.registered_commands] == [argv[0]]
    else:
        assert chosen is app.app
    alone = outcome()
    monkeypatch.setattr(app, "_one_command", lambda argv: app.app)
    assert outcome() == alone
