"""Recipes (--tensor-type-file, --recipe-out, --types-from) and size-targeted mixes (--target-size/-bpw).

  * llama-quantize's tensor-type file: good files parse as llama-quantize reads them, bad entries are one
    line naming the file and line;
  * --recipe-out: llama_model_quantize given the recipe (as tt_overrides) and the same preset writes the
    very file qtool wrote (oracle);
  * --types-from: replaying a Q4_K_M file's types onto the same weights gives that file again; missing,
    extra and reshaped tensors are one-line errors;
  * target-size/bpw: the file lands within 0.5% under the budget and has the size predicted, a bigger
    budget never predicts a larger error, two runs choose the same, at the size of a stock preset the mix's
    predicted error is no larger than the preset's by the same measure (computed here independently).
"""

from __future__ import annotations

import ctypes
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, need_oracle, run_qtool as qtool
from gguf import GGMLQuantizationType as T

from qtool import plan as PL
from qtool.analysis import mix as M
from qtool.analysis.weights import load_floats
from qtool.convert import convert
from qtool.errors import UsageError
from qtool.formats.gguf_in import GGUFSource
from qtool.formats.source import TensorInfo, open_model
from qtool.testing.models import ModelSpec, write_model

FIXTURE = ROOT / "fixtures" / "tiny-llama-f32"
FIXTURE_BF16 = ROOT / "fixtures" / "tiny-llama"




def one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines and lines[0].startswith("qtool: error:"), r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def types_of(path: Path) -> dict[str, T]:
    with GGUFSource(path) as src:
        return {t.name: t.qtype for t in src.tensors}


def plan_error(source_path: Path, plan, imat=None) -> float:
    """The element-weighted mean rel_mse of every tensor the plan quantizes, measured here tensor by tensor
    with mix.measure_tensor (the same measure the search uses, not its cached table)."""
    num = den = 0.0
    with open_model(source_path) as src:
        for p in plan:
            if p.reason.startswith("not quantized"):
                continue
            x = load_floats(src, p.name)
            w = imat.for_tensor(p.name, p.shape) if imat is not None else None
            e = M.measure_tensor(x, p.name, [p.qtype], w)[p.qtype]
            n = int(np.prod(p.shape))
            num += n * e
            den += n
    return num / den


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mix")


@pytest.fixture(scope="module")
def presets(work):
    """qtool's stock-preset files of the fixture, made once: preset -> ConvertResult."""
    made = {}

    def get(name: str):
        if name not in made:
            made[name] = convert(FIXTURE, name, work / f"stock-{name}.gguf", threads=2)
        return made[name]

    return get


# --------------------------------------------------------------------------------------------------
# --tensor-type-file
# --------------------------------------------------------------------------------------------------


def test_tensor_type_file_reads_as_llama_quantize(tmp_path):
    # entries separated by spaces, tabs and newlines, several on a line, blank lines; names lower-cased
    # (they are regexes), type names in any case
    f = tmp_path / "types.txt"
    f.write_text("ATTN_V=q8_0  ffn_down=Q6_K\n\n\tblk\\.[0-3]\\.ffn_up=iq4_xs\r\n^output\\.weight$=Q5_K   \n")
    assert PL.read_tensor_type_file(f) == [("attn_v", T.Q8_0), ("ffn_down", T.Q6_K),
                                           (r"blk\.[0-3]\.ffn_up", T.IQ4_XS), (r"^output\.weight$", T.Q5_K)]
    (tmp_path / "empty.txt").write_text("\n  \n")
    assert PL.read_tensor_type_file(tmp_path / "empty.txt") == []


@pytest.mark.parametrize("text, line, needle", [
    ("attn_v=Q8_0\nffn_down\n", 2, "is not NAME=TYPE"),
    ("attn_v=Q8_0 =Q6_K\n", 1, "has no tensor name"),
    ("\n\nattn_v=\n", 3, "has no type"),
    ("attn_v=Q9_K\n", 1, "unknown ggml type"),
    ("attn_v=Q8_K\n", 1, "cannot quantize to Q8_K"),
    ("# a comment=Q8_0\nattn_v=Q8_0\n", 1, "no comments"),
    ("attn_v=Q8_0\nblk.[0-=Q8_0\n", 2, "not a regular expression"),
])
def test_tensor_type_file_bad_entry_is_one_line(tmp_path, text, line, needle):
    f = tmp_path / "bad.txt"
    f.write_text(text)
    with pytest.raises(UsageError) as e:
        PL.read_tensor_type_file(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}:{line}: ") and needle in msg and "\n" not in msg, msg


def test_tensor_type_file_missing_is_one_line(tmp_path):
    with pytest.raises(UsageError) as e:
        PL.read_tensor_type_file(tmp_path / "nope.txt")
    assert str(tmp_path / "nope.txt") in str(e.value) and "\n" not in str(e.value)


def test_tensor_type_file_comes_after_tensor_type_options(tmp_path, work):
    # first match wins: --tensor-type attn_v=Q8_0 beats the file's attn_v=Q4_0; the file's other entry applies
    f = tmp_path / "types.txt"
    f.write_text("attn_v=Q4_0 ffn_up=Q5_0\n")
    out = work / "tt-file.json"
    r = qtool("convert", FIXTURE, "-T", "Q4_K_M", "--tensor-type", "attn_v=Q8_0", "--tensor-type-file", f,
              "--dry-run", "--json", "-o", work / "unused.gguf")
    assert r.returncode == 0, r.stderr
    out.write_text(r.stdout)
    types = {t["name"]: t["type"] for t in json.loads(r.stdout)["tensors"]}
    assert types["blk.0.attn_v.weight"] == "Q8_0" and types["blk.1.attn_v.weight"] == "Q8_0"
    assert types["blk.0.ffn_up.weight"] == "Q5_0" and types["blk.1.ffn_up.weight"] == "Q5_0"
    assert types["blk.0.ffn_gate.weight"] == "Q4_K"  # untouched: the preset's rules


# --------------------------------------------------------------------------------------------------
# --recipe-out
# --------------------------------------------------------------------------------------------------


def test_recipe_patterns_name_one_tensor_each(presets):
    # anchored and escaped: output.weight's pattern must not also match blk.N.attn_output.weight, nor
    # blk.1's match blk.10's; lower-casing (llama-quantize's) keeps each pattern matching its own name
    import re

    plan = presets("Q4_K_M").plan
    names = [p.name for p in plan] + ["blk.10.attn_q.weight", "Blk.1.attn_q.weight", "x=y z.weight"]
    for name in names:
        pat = re.compile(PL.recipe_pattern(name).lower())
        assert [n for n in names if pat.search(n)] == [name], name
    text = PL.recipe_text(plan)
    lines = text.splitlines()
    quantized = [p for p in plan if not p.reason.startswith("not quantized")]
    assert len(lines) == len(quantized) == 16
    want = [(PL.recipe_pattern(p.name).lower(), p.qtype) for p in quantized]
    assert PL.parse_tensor_type_text(text, "recipe") == want


def _llama_quantize_with_recipe(lc, src: Path, dst: Path, preset: str, entries) -> int:
    from qtool.quantizers.presets import get_preset

    params = lc.llama_model_quantize_default_params()
    params.nthread = 2
    params.ftype = int(get_preset(preset).ftype)
    tt = [lc.llama_model_tensor_override(rx.encode(), int(q)) for rx, q in entries]
    tt.append(lc.llama_model_tensor_override(None, 43))  # terminator (pattern NULL, GGML_TYPE_COUNT)
    arr = (lc.llama_model_tensor_override * len(tt))(*tt)
    params.tt_overrides = arr
    if dst.exists():
        dst.unlink()
    return lc.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))


@pytest.fixture(scope="module")
def lc():
    need_oracle()
    import llama_cpp

    lib = llama_cpp.llama_cpp

    @ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
    def quiet(level, text, user_data):
        pass

    lib.llama_log_set(quiet, None)
    lib._qtool_quiet = quiet  # keep the callback alive
    return lib


@pytest.mark.oracle
@pytest.mark.parametrize("model", ["fixture", "odd_rows"])
def test_recipe_out_reproduced_by_llama_quantize(lc, work, model):
    # a size-targeted mix (its types from several candidates; on odd_rows, rows of 288 make the K types fall
    # back) written by qtool, then llama.cpp given only the recipe and the same preset: the same file
    if model == "fixture":
        src = work / "fixture-f32.gguf"
        if not src.exists():
            convert(FIXTURE, "F32", src)
        target = M.Target("bpw", 4.6, "4.6")
    else:
        src = write_model(work / "odd-rows.gguf", ModelSpec(n_layer=4, n_embd=288, n_ff=600, n_head=8,
                                                            n_head_kv=2, n_vocab=96), seed=5)
        target = M.Target("bpw", 9.0, "9")  # ffn_down (rows of 600) can only be F16
    recipe = work / f"{model}.recipe.txt"
    ours = convert(src, None, work / f"{model}-mix.gguf", target=target, recipe_out=recipe, threads=2)
    assert len({p.qtype for p in ours.plan if p.quantize}) >= 2, "the mix should use more than one type"
    if model == "odd_rows":
        assert any("fallback" in p.reason for p in ours.plan)
    theirs = work / f"{model}-llama.gguf"
    rc = _llama_quantize_with_recipe(lc, src, theirs, ours.preset, PL.read_tensor_type_file(recipe))
    assert rc == 0
    a, b = ours.output.read_bytes(), theirs.read_bytes()
    if a != b:
        bad = [n for n, t in types_of(ours.output).items() if types_of(theirs).get(n) != t]
        pytest.fail(f"{model}: qtool {len(a)} bytes, llama.cpp {len(b)} bytes; tensors typed differently: {bad}")


@pytest.mark.oracle
def test_recipe_of_a_preset_reproduced_by_llama_quantize(lc, work, presets):
    # a plain preset's recipe, given to llama.cpp with another preset's name would change general.file_type
    # only; with the same preset it is the same file
    src = work / "fixture-f32.gguf"
    if not src.exists():
        convert(FIXTURE, "F32", src)
    recipe = work / "q3km.recipe.txt"
    ours = convert(src, "Q3_K_M", work / "q3km-qtool.gguf", recipe_out=recipe, threads=2)
    theirs = work / "q3km-llama-recipe.gguf"
    assert _llama_quantize_with_recipe(lc, src, theirs, "Q3_K_M", PL.read_tensor_type_file(recipe)) == 0
    assert ours.output.read_bytes() == theirs.read_bytes()


# --------------------------------------------------------------------------------------------------
# --types-from
# --------------------------------------------------------------------------------------------------


def test_types_from_replays_a_q4_k_m_file(work, presets):
    stock = presets("Q4_K_M")
    again = convert(FIXTURE, None, work / "replayed.gguf", types_from=stock.output, threads=2)
    assert again.preset in ("Q4_K", "Q4_K_M") and again.file_type == stock.file_type
    assert again.output.read_bytes() == stock.output.read_bytes()
    assert all("--types-from" in p.reason for p in again.plan if p.quantize)


def test_types_from_onto_other_weights(work, presets):
    # the same model in BF16 (other bytes, same tensors): every tensor gets the Q4_K_M file's type
    stock = presets("Q4_K_M")
    other = convert(FIXTURE_BF16, None, work / "bf16-replayed.gguf", types_from=stock.output, threads=2)
    assert types_of(other.output) == types_of(stock.output)


def test_types_from_overrides_a_preset_and_yields_to_tensor_type(work, presets):
    stock = presets("Q4_K_M")
    opt = PL.PlanOptions(tensor_types=[("ffn_up", T.Q8_0)])
    r = convert(FIXTURE, "Q6_K", work / "tf-q6k.gguf", types_from=stock.output, options=opt, dry_run=True)
    want = types_of(stock.output)
    got = {p.name: p.qtype for p in r.plan}
    assert r.preset == "Q6_K"
    assert all(got[n] == (T.Q8_0 if "ffn_up" in n else want[n]) for n in got), got


@pytest.mark.parametrize("spec, needle", [
    (ModelSpec(n_layer=1, n_embd=256, n_ff=768, n_head=4, n_head_kv=2, n_vocab=320), "has no tensor blk.1."),
    (ModelSpec(n_layer=3, n_embd=256, n_ff=768, n_head=4, n_head_kv=2, n_vocab=320), "has tensor blk.2."),
    (ModelSpec(n_layer=2, n_embd=256, n_ff=512, n_head=4, n_head_kv=2, n_vocab=320), "shape"),
])
def test_types_from_mismatch_is_one_line(work, spec, needle):
    other = write_model(work / f"other-{spec.n_layer}-{spec.n_ff}.gguf", spec)
    r = qtool("convert", FIXTURE, "--types-from", other, "--dry-run", "-o", work / "unused.gguf")
    line = one_line_error(r, needle)
    assert str(other) in line


def test_exact_types_still_fall_back(work):
    # a per-tensor type whose blocks do not fit the row: llama.cpp's fallback, said in the reason
    meta = {"general.architecture": "llama", "llama.block_count": 1, "llama.attention.head_count": 4}
    infos = [TensorInfo(n, n, s, T.F32, 4 * s[0] * s[1]) for n, s in
             (("blk.0.ffn_down.weight", (288, 600)), ("blk.0.ffn_up.weight", (600, 288)))]
    opt = PL.PlanOptions(exact_types={"blk.0.ffn_down.weight": (T.Q4_K, "--types-from x.gguf"),
                                      "blk.0.ffn_up.weight": (T.Q4_K, "--types-from x.gguf")})
    plans = {p.name: p for p in PL.plan_model("Q8_0", meta, infos, opt)}
    down, up = plans["blk.0.ffn_down.weight"], plans["blk.0.ffn_up.weight"]
    assert down.qtype == T.F16 and "--types-from x.gguf" in down.reason and "fallback from Q4_K" in down.reason
    assert up.qtype == T.Q5_0 and "--types-from x.gguf" in up.reason and "288 % 256" in up.reason


# --------------------------------------------------------------------------------------------------
# size-targeted mixes
# --------------------------------------------------------------------------------------------------


def test_size_units():
    assert M.parse_size("3.5GB") == 3_500_000_000
    assert M.parse_size("3.5 GiB") == int(3.5 * 2**30)
    assert M.parse_size("900mb") == 900_000_000
    assert M.parse_size("512KiB") == 524288
    assert M.parse_size("1048576B") == 1048576
    for bad in ("3.5", "3.5XB", "GB", "-1GB", "0B"):
        with pytest.raises(UsageError):
            M.parse_size(bad)


@pytest.fixture(scope="module")
def mixes(work):
    """Dry-run mixes of the fixture for a whole-file budget in bytes, made once each."""
    made = {}

    def get(budget: int):
        if budget not in made:
            made[budget] = convert(FIXTURE, None, work / f"mix-{budget}.gguf", threads=2, dry_run=True,
                                   target=M.Target("size", float(budget), f"{budget}B"))
        return made[budget]

    return get


BUDGETS = [800_000, 900_000, 1_000_000, 1_150_000, 1_300_000]


def test_target_size_lands_within_half_a_percent_under(mixes):
    for budget in BUDGETS:
        r = mixes(budget)
        assert r.file_bytes == r.mix.total, (budget, r.file_bytes, r.mix.total)
        assert budget * (1 - 0.005) <= r.file_bytes <= budget, (budget, r.file_bytes)
        assert all(p.reason.startswith(f"target-size: {budget}B") for p in r.plan if p.quantize)


def test_target_size_written_file_has_the_predicted_size(work):
    r = convert(FIXTURE, None, work / "mix-written.gguf", target=M.Target("size", 1.0e6, "1MB"), threads=2)
    size = r.output.stat().st_size
    assert size == r.file_bytes == r.mix.total and 995_000 <= size <= 1_000_000
    # and llama.cpp's loader side of qtool reads it back with the chosen types
    assert types_of(r.output) == {p.name: p.qtype for p in r.plan}


def test_bigger_budget_never_predicts_more_error(mixes):
    errors = [mixes(b).mix.predicted_error for b in BUDGETS]
    assert all(a >= b for a, b in zip(errors, errors[1:])), errors
    assert errors[0] > errors[-1]


def test_frontier_from_the_same_measurements(mixes):
    # re-solving on the measured table gives what a fresh run at that budget gives, and leaves the mix as it was
    m = mixes(BUDGETS[2]).mix
    before = [t.choice for t in m.tensors]
    points = m.frontier([100_000] + BUDGETS)
    assert points[0] is None  # below the smallest file
    assert [t.choice for t in m.tensors] == before
    for (budget, total, err), b in zip(points[1:], BUDGETS):
        fresh = mixes(b).mix
        assert budget == b and total == fresh.total and err == pytest.approx(fresh.predicted_error, rel=1e-12)


def test_mix_is_deterministic(mixes, work):
    a = mixes(BUDGETS[2])
    b = convert(FIXTURE, None, work / "again.gguf", threads=1, dry_run=True,
                target=M.Target("size", float(BUDGETS[2]), f"{BUDGETS[2]}B"))
    assert [(p.name, p.qtype, p.reason) for p in a.plan] == [(p.name, p.qtype, p.reason) for p in b.plan]
    assert a.mix.predicted_error == b.mix.predicted_error


@pytest.mark.parametrize("preset", ["Q3_K_M", "Q4_K_M", "IQ4_XS", "Q5_K_M"])
def test_mix_at_a_presets_size_predicts_no_more_error(work, presets, preset):
    stock = presets(preset)
    size = stock.output.stat().st_size
    mix = convert(FIXTURE, None, work / f"at-{preset}.gguf", threads=2, dry_run=True,
                  target=M.Target("size", float(size), f"{size}B"))
    assert size * 0.995 <= mix.file_bytes <= size
    theirs = plan_error(FIXTURE, stock.plan)
    ours = plan_error(FIXTURE, mix.plan)
    assert ours == pytest.approx(mix.mix.predicted_error, rel=1e-9)  # the search's own figure is this measure
    assert ours <= theirs, (preset, ours, theirs)


def test_target_bpw(work):
    r = convert(FIXTURE, None, work / "bpw.gguf", threads=2, dry_run=True, target=M.Target("bpw", 4.3, "4.3"),
                candidates=[T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K])
    assert 4.3 * 0.995 <= r.bits_per_weight <= 4.3
    assert {p.qtype for p in r.plan if p.quantize} <= {T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K}
    assert r.mix.candidates == [T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]


def test_default_candidates_near_the_target():
    # 0.6x-1.6x of 4.3 bpw is 2.58-6.88: Q2_K (2.625) to Q6_K (6.5625), not IQ2_S (2.5625, and it needs an
    # imatrix) nor Q8_0 (8.5); cheapest first, equal sizes by name
    c = M.default_candidates(4.3, has_imatrix=False)
    assert c == [T.Q2_K, T.IQ3_S, T.Q3_K, T.IQ4_XS, T.IQ4_NL, T.Q4_K, T.Q5_K, T.Q6_K]
    assert not any(M._needs_imatrix(t) for t in c)
    # beyond the window's reach, the nearest type above is still offered
    assert M.default_candidates(12.0, has_imatrix=False) == [T.Q8_0]
    low = M.default_candidates(2.2, has_imatrix=True)
    assert T.IQ2_XXS in low and T.IQ2_XS in low
    assert T.IQ2_XXS not in M.default_candidates(2.2, has_imatrix=False)


def test_budget_below_the_smallest_file_is_one_line(work):
    r = qtool("convert", FIXTURE, "--target-size", "100KB", "--dry-run", "-o", work / "unused.gguf")
    one_line_error(r, "target-size: 100KB", "below the smallest file")


@pytest.mark.parametrize("args, needle", [
    (["--target-size", "3.5"], "expected a number and a unit"),
    (["--target-size", "1MB", "--target-bpw", "4"], "exclude each other"),
    (["--target-bpw", "40"], "even the largest of the candidates"),
    (["--candidates", "Q4_K"], "--candidates needs --target-bpw or --target-size"),
    (["--target-bpw", "4", "--candidates", "Q4_K,Q9"], "unknown ggml type"),
    (["--target-bpw", "4", "-T", "F16"], "quantizes nothing"),
    ([], "--type is required"),
])
def test_bad_target_options_are_one_line(work, args, needle):
    r = qtool("convert", FIXTURE, *args, "--dry-run", "-o", work / "unused.gguf")
    one_line_error(r, needle)


def test_dry_run_json_shows_the_mix(work):
    recipe = work / "cli.recipe.txt"
    r = qtool("convert", FIXTURE, "--target-size", "1MB", "--dry-run", "--json", "-o", work / "unused.gguf",
              "--recipe-out", recipe)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    mix = doc["mix"]
    assert mix["target"] == "size" and mix["budget"] == 1_000_000
    assert doc["summary"]["file_bytes"] == mix["bytes"] <= 1_000_000
    chosen = {t["name"]: t["type"] for t in doc["tensors"] if t["quantize"]}
    assert {t["name"]: t["type"] for t in mix["tensors"]} == chosen
    assert 0 < mix["predicted_error"] < 1
    # the dry run wrote the recipe (and no model): the same map, one anchored line per tensor
    assert doc["recipe"] == str(recipe) and not (work / "unused.gguf").exists()
    assert PL.read_tensor_type_file(recipe) == [(PL.recipe_pattern(n), T[t]) for n, t in chosen.items()]


def test_imatrix_weighted_mix(work, tmp_path):
    # with an importance matrix the measure is imatrix-weighted, the IQ types that need one are candidates,
    # and the result converts (llama.cpp's imatrix requirement holds for every tensor)
    from qtool.formats.imatrix import load_imatrix
    from qtool.testing.models import write_imatrix_gguf

    rng = np.random.default_rng(0)
    entries = {}
    with open_model(FIXTURE) as src:
        for t in src.tensors:
            if len(t.shape) == 2 and t.name != "token_embd.weight":
                n = t.shape[-1]
                entries[t.name] = (rng.gamma(0.5, 1.0, size=(1, n)).astype(np.float32) * 10,
                                   np.full((1, 1), 10, np.float32))
    imatrix = write_imatrix_gguf(tmp_path / "im.gguf", entries)
    r = convert(FIXTURE, None, work / "im-mix.gguf", imatrix=imatrix, threads=2,
                target=M.Target("bpw", 2.6, "2.6"))
    assert r.mix.weighted and T.IQ2_XXS in r.mix.candidates
    assert 2.6 * 0.995 <= r.bits_per_weight <= 2.6
    imat = load_imatrix(imatrix)
    assert plan_error(FIXTURE, r.plan, imat) == pytest.approx(r.mix.predicted_error, rel=1e-9)
    assert r.output.stat().st_size == r.file_bytes


def _random_instance(rng, n: int, k: int) -> list:
    types = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.Q8_0][:k]
    tensors = []
    for i in range(n):
        size = int(rng.integers(1, 20))
        opts = []
        for j, t in enumerate(types):
            cost = size * (j + 2) * 4 + int(rng.integers(0, 5))
            err = size * float(np.exp(-1.3 * j + rng.normal(0, 0.3)))  # not convex: the hull greedy alone misses
            opts.append(M.Option(t, t, cost, cost, err / size, err))
        tensors.append(M.MixTensor(f"t{i:02d}", (1,), size, opts))
    return tensors


def _exact(tensors, budget: int) -> float:
    """The least total error with total cost <= budget, by dynamic programming over every byte."""
    best = np.zeros(budget + 1)  # best[s]: least error of the tensors so far within s bytes
    for t in tensors:
        new = np.full(budget + 1, np.inf)
        for o in t.options:
            if o.cost <= budget:
                new[o.cost:] = np.minimum(new[o.cost:], best[: budget + 1 - o.cost] + o.error)
        best = new
    return float(best[budget])


def test_search_is_the_exact_knapsack_on_small_problems():
    # 100 seeded instances (12 tensors x 5 options, budgets anywhere between the cheapest and the largest
    # choice), against the exact dynamic programme over every byte
    rng = np.random.default_rng(1)
    for trial in range(100):
        tensors = _random_instance(rng, 12, 5)
        lo = sum(min(o.cost for o in t.options) for t in tensors)
        hi = sum(max(o.cost for o in t.options) for t in tensors)
        budget = int(rng.integers(lo, hi))
        total = M.search(tensors, budget)
        assert total == sum(t.chosen.cost for t in tensors) <= budget
        got = sum(t.chosen.error for t in tensors)
        assert got == pytest.approx(_exact(tensors, budget), rel=1e-12), trial
    with pytest.raises(ValueError):
        M.search(_random_instance(rng, 3, 3), 10)
