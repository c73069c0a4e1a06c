"""`--plot FILE.png|.svg`: the pictures are written, are valid PNG/SVG with their titles and labels, and draw
the figures of the report they come from (the data-building functions are checked against the JSON
document, apart from the drawing); a missing matplotlib and a bad name are one-line errors, exit 2."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, need_oracle

from qtool.analysis import plots
from qtool.cli.app import main

FIXTURE = ROOT / "fixtures" / "tiny-llama"
FIXTURE_F32 = ROOT / "fixtures" / "tiny-llama-f32"
SVG = "{http://www.w3.org/2000/svg}"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

needs_matplotlib = pytest.mark.skipif(
    __import__("importlib").util.find_spec("matplotlib") is None,
    reason="matplotlib not installed (pip install 'qtool[plots]')")


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        main([*map(str, argv)])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def svg_texts(path: Path) -> list[str]:
    """Every text of an SVG (matplotlib writes them as <text> with svg.fonttype 'none'), whitespace folded."""
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg"
    return [" ".join("".join(t.itertext()).split()) for t in root.iter(f"{SVG}text")]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG: {data[:8]!r}"
    assert data[12:16] == b"IHDR" and data[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def quant(tmp_path_factory) -> Path:
    """The bundled model as Q4_K_M (Q6_K on attn_v/ffn_down of layer 1 and on output: cells the map names)."""
    from qtool.convert import convert

    d = tmp_path_factory.mktemp("plots")
    return convert(FIXTURE, "Q4_K_M", d / "tiny-Q4_K_M.gguf").output


@pytest.fixture(scope="module")
def inspect_doc(quant) -> dict:
    """The report of `qtool inspect QUANT --reference FIXTURE --json`, built by the library (no CLI run)."""
    from qtool.analysis.report import inspect_model

    return inspect_model(quant, reference=FIXTURE).document()


@pytest.fixture
def spy(monkeypatch):
    """The documents the CLI hands to the plotting functions, by function name."""
    seen: dict[str, dict] = {}
    for name in ("plot_inspect", "plot_what_if", "plot_eval"):
        real = getattr(plots, name)

        def wrapper(doc, path, _real=real, _name=name):
            seen[_name] = doc
            return _real(doc, path)

        monkeypatch.setattr(plots, name, wrapper)
    return seen


# --------------------------------------------------------------------------------------------------
# the data: built from the JSON documents, checked without drawing
# --------------------------------------------------------------------------------------------------


def _tensor(name, qtype, rel, collapsed=0.0, flipped=0.0):
    return {"name": name, "type": qtype, "error": {"rel_rmse": rel},
            "sign": {"collapsed_frac": collapsed, "flipped_frac": flipped}}


def test_heatmap_rows_columns_and_what_is_left_out():
    doc = {"file": "q.gguf", "reference": "ref", "tensors": [
        _tensor("output_norm.weight", "F32", 0.0),
        _tensor("blk.1.ffn_down.weight", "Q6_K", 0.02, 0.01, 0.0),
        _tensor("blk.0.ffn_down.weight", "Q4_K", 0.09, 0.0, 0.04),
        _tensor("blk.0.attn_norm.weight", "F32", 0.0),
        _tensor("blk.1.attn_norm.weight", "F32", 0.0),
        _tensor("blk.0.attn_q.weight", "Q8_0", 0.0),  # quantized yet exact: kept, drawn grey
        _tensor("blk.1.attn_q.weight", "Q4_K", 0.08, 0.001, 0.03),
        _tensor("blk.2.attn_q.weight", "Q4_K", None, None, None),  # no figures: a blank cell
        {"name": "blk.2.ffn_down.weight", "type": "Q4_K", "error": None, "sign": None},  # skipped: no cell
        _tensor("token_embd.weight", "Q4_K", 0.07, 0.0, 0.05),
        _tensor("output.weight", "Q6_K", 0.03, 0.02, 0.0),
    ]}
    err, sign = plots.inspect_heatmaps(doc)
    assert err.classes == sign.classes == ["attn_q", "ffn_down"]  # the canonical order, not the file's
    assert err.layers == [0, 1, 2]
    assert err.exact == ["attn_norm", "output_norm"]
    assert err.side == ["token_embd", "output"]
    nan = math.nan
    np.testing.assert_array_equal(err.values, [[0.0, 0.08, nan], [0.09, 0.02, nan]])
    np.testing.assert_array_equal(err.side_values, [0.07, 0.03])
    np.testing.assert_array_equal(sign.values, [[0.0, 0.031, nan], [0.04, 0.01, nan]])
    np.testing.assert_array_equal(sign.side_values, [0.05, 0.02])
    assert err.types == [["Q8_0", "Q4_K", "Q4_K"], ["Q4_K", "Q6_K", None]]
    assert err.common_type == "Q4_K"


def test_heatmap_of_an_unquantized_model_keeps_everything():
    """All exact and unquantized (an F32 file against itself): nothing left out, so there is a picture."""
    doc = {"file": "a", "reference": "a", "tensors": [_tensor("blk.0.attn_q.weight", "F32", 0.0),
                                                      _tensor("blk.0.attn_norm.weight", "F32", 0.0)]}
    err, _ = plots.inspect_heatmaps(doc)
    assert err.classes == ["attn_norm", "attn_q"] and err.exact == []
    np.testing.assert_array_equal(err.values, [[0.0], [0.0]])


def test_heatmap_needs_a_reference_and_a_figure():
    from qtool.errors import UsageError

    with pytest.raises(UsageError, match="--reference"):
        plots.inspect_heatmaps({"file": "a", "reference": None, "tensors": []})
    with pytest.raises(UsageError, match="nothing to draw"):
        plots.inspect_heatmaps({"file": "a", "reference": "b", "tensors": [
            {"name": "blk.0.attn_q.weight", "type": "Q4_0", "error": None, "sign": None}]})


def test_split_name():
    assert plots.split_name("blk.12.attn_q.weight") == (12, "attn_q")
    assert plots.split_name("blk.3.ffn_gate_exps.weight") == (3, "ffn_gate_exps")
    assert plots.split_name("blk.0.attn_q.bias") == (0, "attn_q.bias")
    assert plots.split_name("token_embd.weight") == (None, "token_embd")
    assert plots.split_name("rope_freqs") == (None, "rope_freqs")


def test_eval_series_is_the_windows_figures():
    windows = [{"index": i, "start": 64 * i, "kld_mean": 0.1 * (i + 1), "kld_p99": 0.5 * (i + 1), "flips": 3 * i}
               for i in range(4)]
    windows[2]["kld_mean"] = None
    s = plots.eval_series({"windows": windows})
    np.testing.assert_array_equal(s.index, [0, 1, 2, 3])
    np.testing.assert_array_equal(s.start, [0, 64, 128, 192])
    np.testing.assert_array_equal(s.kld_mean, [0.1, 0.2, math.nan, 0.4])
    np.testing.assert_array_equal(s.kld_p99, [0.5, 1.0, 1.5, 2.0])
    np.testing.assert_array_equal(s.flips, [0, 3, 6, 9])


# --------------------------------------------------------------------------------------------------
# the pictures, through the CLI
# --------------------------------------------------------------------------------------------------


def _same_maps(drawn: list, printed: list) -> None:
    """The maps the CLI drew are those of the JSON it printed (which has NaN as null: compared NaN-aware)."""
    assert len(drawn) == len(printed)
    for a, b in zip(drawn, printed):
        assert (a.title, a.classes, a.layers, a.types, a.side, a.side_types, a.exact) == \
               (b.title, b.classes, b.layers, b.types, b.side, b.side_types, b.exact)
        np.testing.assert_array_equal(a.values, b.values)
        np.testing.assert_array_equal(a.side_values, b.side_values)


def _check_inspect_maps(doc: dict) -> None:
    """The heat maps built from a report are its figures, cell by cell."""
    err, sign = plots.inspect_heatmaps(doc)
    by_name = {t["name"]: t for t in doc["tensors"]}
    assert err.layers == [0, 1]
    assert err.classes == ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
    assert sorted(err.exact) == ["attn_norm", "ffn_norm", "output_norm"]
    assert err.side == ["token_embd", "output"]
    for i, cls in enumerate(err.classes):
        for j, layer in enumerate(err.layers):
            t = by_name[f"blk.{layer}.{cls}.weight"]
            assert err.values[i, j] == t["error"]["rel_rmse"]
            assert sign.values[i, j] == t["sign"]["collapsed_frac"] + t["sign"]["flipped_frac"]
            assert err.types[i][j] == t["type"]
    for k, name in enumerate(err.side):
        assert err.side_values[k] == by_name[f"{name}.weight"]["error"]["rel_rmse"]
        assert err.side_types[k] == by_name[f"{name}.weight"]["type"]
    # Q4_K_M on the bundled model: Q4_K mostly; the layer-1 attn_v and ffn_down and the output get Q6_K
    assert err.common_type == "Q4_K"
    assert err.types[err.classes.index("attn_v")][1] == err.types[err.classes.index("ffn_down")][1] == "Q6_K"


@needs_matplotlib
def test_inspect_png(capsys, tmp_path, quant, spy):
    picture = tmp_path / "damage.png"
    code, out, err = run(capsys, "inspect", quant, "--reference", FIXTURE, "--json", "--plot", picture)
    assert code == 0, err
    doc = json.loads(out)
    _same_maps(plots.inspect_heatmaps(spy["plot_inspect"]), plots.inspect_heatmaps(doc))  # what was printed
    _check_inspect_maps(doc)
    width, height = png_size(picture)
    assert picture.stat().st_size > 30_000 and width >= 1000 and height >= 800, (picture.stat().st_size, width, height)
    assert f"wrote {picture}" in err
    assert sorted(os.listdir(tmp_path)) == ["damage.png"]  # no temporary file left behind


@needs_matplotlib
def test_inspect_svg_has_its_titles_and_labels(tmp_path, quant, inspect_doc):
    picture = tmp_path / "damage.svg"
    plots.plot_inspect(inspect_doc, picture)
    texts = svg_texts(picture)
    assert f"qtool inspect: {quant.name} against tiny-llama" in texts
    for label in ("layer (blk.N)", "tensor class", "rel_rmse", "not in a layer", "attn_q", "attn_v", "ffn_down",
                  "token_embd", "output", "error: rel_rmse = ‖q−x‖/‖x‖", "sign loss: collapsed_frac + flipped_frac"):
        assert label in texts, (label, texts)
    assert texts.count("Q6_K") == 6  # attn_v.1, ffn_down.1, output: named in both maps
    assert "Q4_K" not in texts  # the common type is not repeated in every cell
    assert any(t.startswith("collapsed + flipped fraction") for t in texts)
    assert any("left out (kept unquantized, exactly 0): attn_norm, ffn_norm, output_norm" in t for t in texts)


@needs_matplotlib
def test_what_if_svg(capsys, tmp_path, spy):
    picture = tmp_path / "whatif.svg"
    code, out, err = run(capsys, "inspect", FIXTURE, "--what-if", "Q4_0,Q6_K", "--json", "--plot", picture)
    assert code == 0, err
    doc = json.loads(out)
    _same_maps(plots.whatif_heatmaps(spy["plot_what_if"]), plots.whatif_heatmaps(doc))
    maps = plots.whatif_heatmaps(doc)
    assert [m.title.split(" ")[2] for m in maps] == ["Q4_0", "Q6_K"]
    by_name = {t["name"]: t for t in doc["tensors"]}
    for m, qtype in zip(maps, ("Q4_0", "Q6_K")):
        assert m.layers == [0, 1] and m.side == ["token_embd", "output"] and m.exact == []
        for i, cls in enumerate(m.classes):
            for j, layer in enumerate(m.layers):
                assert m.values[i, j] == by_name[f"blk.{layer}.{cls}.weight"]["candidates"][qtype]["rel_rmse"]
        assert list(m.side_values) == [by_name[f"{s}.weight"]["candidates"][qtype]["rel_rmse"] for s in m.side]
    assert (maps[1].values < maps[0].values).all()  # more bits, less error, everywhere
    texts = svg_texts(picture)
    assert any(t.startswith("what if Q4_0 (4.5 bpw)") for t in texts)
    assert any(t.startswith("what if Q6_K (6.56 bpw)") for t in texts)
    assert texts.count("layer (blk.N)") == 2


@needs_matplotlib
def test_a_failed_write_leaves_the_old_picture(tmp_path, inspect_doc, monkeypatch):
    from matplotlib.figure import Figure

    from qtool.errors import QtoolError

    picture = tmp_path / "damage.png"
    picture.write_bytes(b"the old picture")

    def broken(self, fname, **kw):
        fname.write(b"half a pic")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(QtoolError, match=f"--plot {picture}: cannot write it: No space left on device") as e:
        plots.plot_inspect(inspect_doc, picture)
    assert e.value.exit_code == 2
    assert picture.read_bytes() == b"the old picture"
    assert os.listdir(tmp_path) == ["damage.png"]


# --------------------------------------------------------------------------------------------------
# errors: one line, exit 2, before any work
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["inspect", "eval", "convert"])
def test_missing_matplotlib_is_one_line_exit_2(capsys, tmp_path, monkeypatch, command):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    picture = tmp_path / "p.png"
    args = {"inspect": [FIXTURE, "--reference", FIXTURE],
            "eval": [tmp_path / "missing.gguf", "--reference", tmp_path / "missing-ref.gguf"],
            "convert": [FIXTURE, "--target-bpw", "4.5", "-o", tmp_path / "m.gguf"]}[command]
    code, out, err = run(capsys, command, *args, "--plot", picture)
    assert code == 2, err
    assert err.count("\n") == 1 and "pip install 'qtool[plots]'" in err and "Traceback" not in err, err
    assert os.listdir(tmp_path) == [] and out == ""  # no picture, nor a converted model: refused before any work


@pytest.mark.parametrize("name", ["p.jpg", "p.pdf", "p", "p.png.txt"])
@pytest.mark.parametrize("command", ["inspect", "eval"])
def test_bad_picture_name_is_one_line_exit_2(capsys, tmp_path, command, name):
    args = ([FIXTURE, "--reference", FIXTURE] if command == "inspect"
            else [tmp_path / "missing.gguf", "--reference", tmp_path / "missing-ref.gguf"])
    code, out, err = run(capsys, command, *args, "--plot", tmp_path / name)
    assert code == 2 and err.count("\n") == 1 and ".png or .svg" in err and name in err, err
    assert os.listdir(tmp_path) == []


def test_other_plot_errors(capsys, tmp_path):
    code, _, err = run(capsys, "inspect", FIXTURE, "--plot", tmp_path / "p.png")
    assert code == 2 and err.count("\n") == 1 and "--reference" in err and "--what-if" in err, err
    code, _, err = run(capsys, "inspect", FIXTURE, "-r", FIXTURE, "--plot", tmp_path / "no" / "p.png")
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err, err
    (tmp_path / "d.svg").mkdir()
    code, _, err = run(capsys, "inspect", FIXTURE, "-r", FIXTURE, "--plot", tmp_path / "d.svg")
    assert code == 2 and err.count("\n") == 1 and "is a folder" in err, err


# --------------------------------------------------------------------------------------------------
# eval, in llama.cpp (a child process)
# --------------------------------------------------------------------------------------------------

TEXT = ("A quantized model keeps fewer bits per weight than the original; the question is how much of its "
        "judgement survives, position by position, window by window. ") * 12


@needs_matplotlib
def test_eval_png_and_svg(tmp_path):
    need_oracle()
    from qtool.convert import convert

    ref = convert(FIXTURE_F32, "F32", tmp_path / "f32.gguf").output
    q = convert(FIXTURE_F32, "Q4_K_M", tmp_path / "q4.gguf").output
    (tmp_path / "text.txt").write_text(TEXT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("QTOOL_DEBUG", None)
    p = subprocess.run([sys.executable, "-m", "qtool", "eval", str(q), "--reference", str(ref), "--text",
                        str(tmp_path / "text.txt"), "--ctx", "64", "--json", "--plot", str(tmp_path / "kld.svg")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr
    assert f"wrote {tmp_path / 'kld.svg'}" in p.stderr
    doc = json.loads(p.stdout)
    assert len(doc["windows"]) >= 4
    s = plots.eval_series(doc)
    assert list(s.flips) == [w["flips"] for w in doc["windows"]]
    assert list(s.kld_mean) == [w["kld_mean"] for w in doc["windows"]]
    assert list(s.kld_p99) == [w["kld_p99"] for w in doc["windows"]]
    texts = svg_texts(tmp_path / "kld.svg")
    summ = doc["summary"]
    assert "qtool eval: KL divergence per window, q4.gguf against f32.gguf" in texts
    # the subtitle carries the whole text's figures of this very run
    assert any(f"({summ['flips']} flips)" in t for t in texts), texts
    assert any(f"KLD mean {summ['kld_mean']:.4g}, median {summ['kld_median']:.4g}" in t for t in texts), texts
    assert any(t.startswith("KL divergence (nats") for t in texts) and "flips per window" in texts
    for label in ("KLD mean", "KLD p99", "flips (top token changed)"):
        assert label in texts
    plots.plot_eval(doc, tmp_path / "kld.png")  # the same document as a PNG (drawing needs no llama.cpp)
    width, height = png_size(tmp_path / "kld.png")
    assert (tmp_path / "kld.png").stat().st_size > 20_000 and width >= 1000 and height >= 600


# --------------------------------------------------------------------------------------------------
# a target-size run: the frontier
# --------------------------------------------------------------------------------------------------


def _toy_mix():
    """Three tensors, three options each (one of them off the hull), a fixed part and a pinned error."""
    from gguf import GGMLQuantizationType as T

    from qtool.analysis.mix import Mix, MixTensor, Option, Target

    def opts(n, rows):
        return [Option(t, t, c, c, e, n * e) for t, c, e in rows]

    tensors = [
        MixTensor("blk.0.attn_q.weight", (8, 8), 64, opts(64, [(T.Q2_K, 10, 0.09), (T.Q4_K, 20, 0.02),
                                                                 (T.Q6_K, 30, 0.004)])),
        MixTensor("blk.0.ffn_up.weight", (8, 16), 128, opts(128, [(T.Q2_K, 20, 0.08), (T.Q4_K, 40, 0.07),
                                                                   (T.Q6_K, 60, 0.003)])),  # Q4_K: off the hull
        MixTensor("output.weight", (8, 4), 32, opts(32, [(T.Q4_K, 8, 0.03), (T.Q6_K, 12, 0.01),
                                                          (T.Q8_0, 16, 0.001)])),
    ]
    mix = Mix(Target("size", 150.0, "150B"), budget=150, total=0, fixed=50, candidates=[T.Q2_K, T.Q4_K, T.Q6_K],
              weighted=False, tensors=tensors, pinned_error=16 * 0.05, pinned_elements=16)
    return mix, T


def test_frontier_is_the_lower_envelope_of_every_choice():
    import itertools

    mix, T = _toy_mix()
    mix.tensors[0].choice, mix.tensors[1].choice, mix.tensors[2].choice = 1, 0, 1
    mix.total = 50 + 20 + 20 + 12
    f = plots.frontier_data(mix, n_elements=1000)
    n = 64 + 128 + 32 + 16
    every = []
    for choice in itertools.product(*(t.options for t in mix.tensors)):
        every.append((50 + sum(o.cost for o in choice), (sum(o.error for o in choice) + mix.pinned_error) / n))
    # the ends: all cheapest, all best
    assert (f.x[0], f.y[0]) == min(every)
    assert f.x[-1] == 50 + 30 + 60 + 16 and f.y[-1] == pytest.approx(min(e for _, e in every), rel=1e-12)
    # every point of the path is a real choice of types, sizes grow and errors fall
    for x, y in zip(f.x, f.y):
        assert any(c == x and e == pytest.approx(y, rel=1e-12) for c, e in every), (x, y)
    assert (np.diff(f.x) > 0).all() and (np.diff(f.y) < 0).all()
    # and no choice lies below it
    for c, e in every:
        if f.x[0] <= c <= f.x[-1]:
            assert e >= np.interp(c, f.x, f.y) * (1 - 1e-12), (c, e)
    assert f.chosen == (102.0, mix.predicted_error) and f.budget == 150.0 and f.kind == "size"
    assert f.candidates == ["Q2_K", "Q4_K", "Q6_K"] and f.measure == "rel_mse"


def test_frontier_presets_are_scored_by_the_mix_measure():
    mix, T = _toy_mix()
    stock = {"A": (120, {"blk.0.attn_q.weight": T.Q4_K, "blk.0.ffn_up.weight": T.Q4_K, "output.weight": T.Q6_K}),
             "B": (170, {"blk.0.attn_q.weight": T.Q6_K, "blk.0.ffn_up.weight": T.Q6_K, "output.weight": T.Q5_K})}
    f = plots.frontier_data(mix, n_elements=1000, stock=stock)
    n = 64 + 128 + 32 + 16
    assert f.presets[0] == ("A", 120.0, pytest.approx((64 * 0.02 + 128 * 0.07 + 32 * 0.01 + 16 * 0.05) / n))
    assert f.presets[1] == ("B", 170.0, None)  # Q5_K was not measured: size only
    # the search at each preset's size: within it, and no worse than the preset where it could be scored
    (name_a, xa, ya), (name_b, xb, yb) = f.mixes_at_presets
    assert (name_a, name_b) == ("A", "B") and xa <= 120 and xb <= 170
    assert ya <= f.presets[0][2] and yb <= ya
    assert [t.choice for t in mix.tensors] == [0, 0, 0]  # the mix itself is left as it was
    mix.target = type(mix.target)("bpw", 1.2, "1.2")
    g = plots.frontier_data(mix, n_elements=1000, stock=stock)
    assert g.x[0] == 8.0 * f.x[0] / 1000 and g.presets[0][1] == 8.0 * 120 / 1000 and g.budget == 8.0 * 150 / 1000


@needs_matplotlib
def test_convert_target_size_frontier_svg(capsys, tmp_path, monkeypatch):
    from qtool.convert import convert

    drawn = {}
    real = plots.plot_frontier
    monkeypatch.setattr(plots, "plot_frontier",
                        lambda f, path, **kw: (drawn.setdefault("f", f), real(f, path, **kw))[1])
    q4km = convert(FIXTURE, "Q4_K_M", None, dry_run=True)
    picture = tmp_path / "frontier.svg"
    code, out, err = run(capsys, "convert", FIXTURE, "--target-size", f"{q4km.file_bytes}B", "--dry-run", "--json",
                         "--plot", picture)
    assert code == 0, err
    mix = json.loads(out)["mix"]
    f = drawn["f"]
    assert f.chosen == (mix["bytes"], mix["predicted_error"]) and f.budget == q4km.file_bytes
    presets = {name: (x, y) for name, x, y in f.presets}
    assert set(presets) == set(plots.STOCK_PRESETS)
    assert presets["Q4_K_M"][0] == q4km.file_bytes
    # at Q4_K_M's size the mix predicts no more error than Q4_K_M by the same measure, and no preset that was
    # scored lies below the frontier
    assert presets["Q4_K_M"][1] is not None and f.chosen[1] <= presets["Q4_K_M"][1]
    at = {name: (x, y) for name, x, y in f.mixes_at_presets}
    assert at["Q4_K_M"] == f.chosen  # the search at Q4_K_M's size is this run's mix
    for name, (x, y) in at.items():
        assert x <= presets[name][0] and (presets[name][1] is None or y <= presets[name][1] * (1 + 1e-12)), name
    for name, (x, y) in presets.items():
        if y is not None and f.x[0] <= x <= f.x[-1]:
            assert y >= np.interp(x, f.x, f.y) * (1 - 1e-12), name
    texts = svg_texts(picture)
    assert f"the mix: {mix['predicted_error']:.4g}" in texts and "file size (MB)" in texts
    assert "Q4_K_M" in texts and f"budget ({q4km.file_bytes}B)" in texts
    assert any(t.startswith("predicted error (rel_mse") for t in texts)
    assert any(t.startswith("qtool convert tiny-llama target-size:") for t in texts)
    assert not list(tmp_path.glob("*.gguf")) and sorted(os.listdir(tmp_path)) == ["frontier.svg"]


def test_convert_plot_needs_a_target(capsys, tmp_path):
    code, _, err = run(capsys, "convert", FIXTURE, "--type", "Q4_K_M", "--dry-run", "--plot", tmp_path / "f.png")
    assert code == 2 and err.count("\n") == 1 and "--target-bpw or --target-size" in err, err
    code, _, err = run(capsys, "convert", FIXTURE, "--target-bpw", "4.5", "--dry-run", "--plot", tmp_path / "f.gif")
    assert code == 2 and err.count("\n") == 1 and ".png or .svg" in err, err


@needs_matplotlib
def test_drawing_edge_cases(tmp_path):
    """A model with no layer tensors, a 100-layer model (no type labels), one window of zero divergence."""
    only_side = {"file": "a.gguf", "reference": "b", "summary": {"n_tensors": 1, "bpw": None},
                 "tensors": [_tensor("token_embd.weight", "Q4_0", 0.1, 0.01, 0.0)]}
    plots.plot_inspect(only_side, tmp_path / "side.svg")
    assert "token_embd" in svg_texts(tmp_path / "side.svg")
    deep = {"file": "a.gguf", "reference": "b", "summary": {"n_tensors": 200, "bpw": 4.5},
            "tensors": [_tensor(f"blk.{i}.{c}.weight", "Q6_K" if i % 7 == 0 else "Q4_K", 0.02 + 0.001 * i, 0.01)
                        for i in range(100) for c in ("attn_q", "ffn_down")]}
    plots.plot_inspect(deep, tmp_path / "deep.svg")
    texts = svg_texts(tmp_path / "deep.svg")
    assert "Q6_K" not in texts and "99" not in texts and "96" in texts  # every 4th layer numbered
    flat = {"quant": "a.gguf", "reference": "a.gguf", "reference_logits": None, "ctx": 64, "scored_from": 32,
            "windows": [{"index": 0, "start": 0, "kld_mean": 0.0, "kld_p99": 0.0, "flips": 0}],
            "summary": {"n_positions": 31, "kld_mean": 0.0, "kld_median": 0.0, "kld_p99": 0.0, "kld_max": 0.0,
                        "top1_agreement": 1.0, "flips": 0, "ppl_quant": 300.0, "ppl_reference": 300.0}}
    plots.plot_eval(flat, tmp_path / "flat.png")
    assert png_size(tmp_path / "flat.png")[0] >= 1000
