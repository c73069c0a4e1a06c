"""Pictures for `--plot FILE.png|.svg`: inspect's per-layer heat map, eval's KL divergence per window, and a
target-size run's size-versus-predicted-error frontier.

matplotlib is an optional extra (``pip install 'qtool[plots]'``): this module imports it only when a picture
is drawn (:func:`prepare` checks it up front, so a missing extra costs no minutes of work first), through
the object-oriented API on the Agg backend, never needing a display.

Each picture has two halves: a function that builds the data from a report's JSON document (the dict of
``--json``; tested against the figures it came from) and one that draws it. Files are written to a temporary
file beside the target and renamed into place, so an error leaves no partial picture.
"""

from __future__ import annotations

import math
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from qtool.errors import QtoolError, UsageError

INSTALL_HINT = "pip install 'qtool[plots]'"

#: picture formats by file extension
FORMATS = {".png": "png", ".svg": "svg"}

#: rows of the heat map in this order (then any other class, in file order)
CLASS_ORDER = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_qkv", "attn_q_a", "attn_q_b", "attn_kv_a_mqa",
               "attn_kv_b", "attn_output", "attn_out", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down",
               "ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps", "ffn_gate_shexp",
               "ffn_up_shexp", "ffn_down_shexp")

_LAYER_NAME = re.compile(r"^blk\.(\d+)\.(.+?)(?:\.weight)?$")

DPI = 150

#: heat maps of more layers than this do not name the cells' types (too small to read)
MAX_LABELLED_LAYERS = 64


def _matplotlib():
    """matplotlib on the Agg backend, or a one-line error naming the extra to install."""
    try:
        import matplotlib
    except ImportError as e:
        detail = "" if getattr(e, "name", None) == "matplotlib" else f" ({e})"
        raise QtoolError(f"--plot draws with matplotlib, which is not installed: {INSTALL_HINT}{detail}") from None
    matplotlib.use("Agg")
    return matplotlib


def prepare(path: Path) -> str:
    """Check ``--plot PATH`` before any work: its extension (the format it names), its folder, and that
    matplotlib imports. Returns the format ("png" or "svg")."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise UsageError(f"--plot {path}: the picture's name must end in .png or .svg")
    parent = Path(path).parent
    if not parent.is_dir():
        raise UsageError(f"--plot {path}: folder {parent} does not exist")
    if Path(path).is_dir():
        raise UsageError(f"--plot {path} is a folder")
    _matplotlib()
    return fmt


def _save(fig, path: Path) -> None:
    """Write ``fig`` to ``path`` through a temporary file in the same folder, renamed into place."""
    import matplotlib

    path = Path(path)
    fmt = prepare(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        # O_EXCL: never another's file; mode 0o666 under the umask, as any new file of the user's
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f, \
                matplotlib.rc_context({"svg.hashsalt": "qtool", "svg.fonttype": "none"}):
            fig.savefig(f, format=fmt, dpi=DPI, metadata={"Date": None} if fmt == "svg" else None)
        os.replace(tmp, path)
    except OSError as e:
        raise QtoolError(f"--plot {path}: cannot write it: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _num(v: float | None) -> float:
    return math.nan if v is None else float(v)


def _short(path: str | None) -> str:
    return "—" if path is None else Path(str(path)).name


# ---------------------------------------------------------------------------------------------------------
# inspect: per-layer heat maps
# ---------------------------------------------------------------------------------------------------------


@dataclass
class HeatMap:
    """One figure over the tensors: rows are tensor classes, columns layers; the non-layer tensors beside."""

    title: str
    label: str                        # what the colour means (the colour bar's label)
    key: str                          # panels with the same key share one colour scale
    classes: list[str]                # rows
    layers: list[int]                 # columns
    values: np.ndarray                # float64 [len(classes), len(layers)]; NaN: no tensor / no figure
    types: list[list[str | None]]     # the ggml type of each cell (None: no tensor)
    side: list[str] = field(default_factory=list)   # non-layer tensors (token_embd, output, ...)
    side_values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    side_types: list[str | None] = field(default_factory=list)
    #: classes and non-layer tensors left out because every figure of theirs is exactly 0 (kept unquantized)
    exact: list[str] = field(default_factory=list)
    #: label the cells with their type where it differs from this (the most common type); None: no labels
    common_type: str | None = None


def split_name(name: str) -> tuple[int | None, str]:
    """``blk.3.attn_q.weight`` -> (3, "attn_q"); ``token_embd.weight`` -> (None, "token_embd")."""
    m = _LAYER_NAME.match(name)
    if m:
        return int(m.group(1)), m.group(2)
    return None, name[: -len(".weight")] if name.endswith(".weight") else name


def _class_key(order: dict[str, int]):
    rank = {c: i for i, c in enumerate(CLASS_ORDER)}
    return lambda c: (rank.get(c, len(rank)), order[c])


#: tensors of these types are left out of a heat map where all of them are exactly 0 (kept as they were)
UNQUANTIZED = ("F32", "F16", "BF16", "F64")

#: non-layer tensors in this order (then any other, in file order)
SIDE_ORDER = ("token_embd", "output")


def _heatmap(entries: Sequence[tuple[str, str | None, float | None]], *, title: str, label: str, key: str,
             label_types: bool) -> HeatMap:
    """``entries``: (tensor name, type, value). Rows (classes) and non-layer tensors of unquantized types whose
    every value is 0 (norms kept in F32) are left out and named in ``exact``, unless that leaves nothing;
    a None value is a blank cell."""
    seen: dict[str, int] = {}
    cells: dict[tuple[int, str], tuple[str | None, float]] = {}
    side: dict[str, tuple[str | None, float]] = {}
    for name, qtype, v in entries:
        layer, cls = split_name(name)
        value = _num(v)
        if layer is None:
            side[cls] = (qtype, value)
        else:
            seen.setdefault(cls, len(seen))
            cells[(layer, cls)] = (qtype, value)
    layers = sorted({layer for layer, _ in cells})

    def kept(pairs) -> bool:
        return all(v == 0.0 and t in UNQUANTIZED for t, v in pairs)

    rows = sorted(seen, key=_class_key(seen))
    side_rank = {c: i for i, c in enumerate(SIDE_ORDER)}
    side_all = sorted(side, key=lambda c: (side_rank.get(c, 0.5), list(side).index(c)))
    exact = [c for c in rows if kept(v for (n, k), v in cells.items() if k == c)]
    exact += [s for s in side_all if kept([side[s]])]
    if len(exact) == len(rows) + len(side_all):
        exact = []
    classes = [c for c in rows if c not in exact]
    values = np.full((len(classes), len(layers)), np.nan)
    types: list[list[str | None]] = [[None] * len(layers) for _ in classes]
    for i, cls in enumerate(classes):
        for j, layer in enumerate(layers):
            if (layer, cls) in cells:
                types[i][j], values[i, j] = cells[(layer, cls)]
    side_names = [s for s in side_all if s not in exact]
    common = None
    if label_types:
        count: dict[str, int] = {}
        for row in types:
            for t in row:
                if t is not None:
                    count[t] = count.get(t, 0) + 1
        common = max(sorted(count), key=lambda t: count[t]) if count else None
    layers = layers if classes else []
    return HeatMap(title, label, key, classes, layers, values if classes else np.zeros((0, 0)), types, side_names,
                   np.array([side[s][1] for s in side_names], dtype=np.float64), [side[s][0] for s in side_names],
                   exact, common)


def _sign_loss(sign: dict | None) -> float | None:
    if not sign or sign.get("collapsed_frac") is None or sign.get("flipped_frac") is None:
        return None
    return float(sign["collapsed_frac"]) + float(sign["flipped_frac"])


def inspect_heatmaps(doc: dict) -> list[HeatMap]:
    """From `qtool inspect --reference --json`'s document: a rel_rmse map and a sign-loss map
    (collapsed_frac + flipped_frac), cells labelled with their type where it is not the most common one."""
    if doc.get("reference") is None:
        raise UsageError("--plot draws the damage against a reference: give --reference ORIGINAL (or --what-if)")
    tensors = [t for t in doc["tensors"] if t.get("error") is not None]
    if not tensors:
        raise UsageError("--plot: no tensor was measured against the reference; nothing to draw")
    err = [(t["name"], t["type"], t["error"].get("rel_rmse")) for t in tensors]
    sign = [(t["name"], t["type"], _sign_loss(t.get("sign"))) for t in tensors]
    return [_heatmap(err, title="error: rel_rmse = ‖q−x‖/‖x‖", label="rel_rmse", key="rel_rmse",
                     label_types=True),
            _heatmap(sign, title="sign loss: collapsed_frac + flipped_frac", label="collapsed + flipped fraction",
                     key="sign", label_types=True)]


def whatif_heatmaps(doc: dict) -> list[HeatMap]:
    """From `qtool inspect --what-if --json`'s document: one rel_rmse map per type (one colour scale)."""
    maps = []
    for t in doc["what_if"]:
        entries = []
        for w in doc["tensors"]:
            c = w["candidates"].get(t)
            entries.append((w["name"], t, None if c is None else c["rel_rmse"]))
        if not entries:
            continue
        bpw = doc["summary"]["types"].get(t, {}).get("bpw")
        head = f"what if {t}" + (f" ({bpw:.3g} bpw)" if bpw else "") + ": relative RMS error ‖q−x‖/‖x‖"
        maps.append(_heatmap(entries, title=head, label="rel_rmse", key="rel_rmse", label_types=False))
    if not maps or all(not m.classes and not m.side for m in maps):
        raise UsageError("--plot: no tensor was measured; nothing to draw")
    return maps


def _norm(maps: Sequence[HeatMap]):
    """One colour scale for maps sharing a key: logarithmic where the positive values span a decade or more."""
    from matplotlib.colors import LogNorm, Normalize

    vals = np.concatenate([np.concatenate([m.values.ravel(), m.side_values]) for m in maps])
    pos = vals[np.isfinite(vals) & (vals > 0)]
    if pos.size == 0:
        return Normalize(0.0, 1.0), False
    lo, hi = float(pos.min()), float(pos.max())
    if hi >= 10 * lo:
        return LogNorm(lo, hi), True
    if hi == lo:
        return Normalize(0.0, hi), False
    return Normalize(lo, hi), False


def _draw_grid(ax, values: np.ndarray, types, norm, cmap, common: str | None, fontsize: float):
    """One heat map on ``ax``: zeros light grey, blanks white, the rest coloured by ``norm``."""
    from matplotlib.colors import ListedColormap

    zero = np.ma.masked_where(~(values == 0.0), np.zeros_like(values))
    ax.imshow(zero, cmap=ListedColormap(["#d0d0d0"]), aspect="auto", interpolation="nearest")
    shown = np.ma.masked_where(~(np.isfinite(values) & (values > 0)), values)
    im = ax.imshow(shown, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    if common is not None:
        for i, row in enumerate(types):
            for j, t in enumerate(row):
                if t is not None and t != common:
                    v = values[i, j]
                    rgba = cmap(norm(v)) if np.isfinite(v) and v > 0 else (0.82, 0.82, 0.82, 1)
                    lum = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
                    ax.text(j, i, t, ha="center", va="center", fontsize=fontsize,
                            color="black" if lum > 0.5 else "white")
    return im


def draw_heatmaps(maps: Sequence[HeatMap], path: Path, *, title: str, subtitle: str = "") -> None:
    """Stack the maps (each: layers on the left, the non-layer tensors in a narrow panel beside), one colour
    bar per colour scale, and write the picture."""
    from matplotlib import colormaps

    prepare(path)
    n_layers = max((len(m.layers) for m in maps), default=0)
    n_rows = [max(len(m.classes), len(m.side), 1) for m in maps]
    has_side = any(m.side for m in maps)
    has_main = n_layers > 0
    main_w = min(16.0, max(4.0, 0.32 * n_layers + 1.5)) if has_main else 0.0
    side_w = 1.2 if has_side else 0.0
    width = max(7.5, main_w + side_w + 2.6)
    height = 1.3 + sum(0.32 * n + 1.1 for n in n_rows)
    fig = _figure(width, height)
    fig.suptitle(title + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    ncols = int(has_main) + int(has_side)
    ratios = ([main_w] if has_main else []) + ([side_w] if has_side else [])
    gs = fig.add_gridspec(len(maps), ncols, width_ratios=ratios, height_ratios=[n + 1.2 for n in n_rows])
    cmaps = {"rel_rmse": colormaps["viridis"], "sign": colormaps["magma"]}
    groups: dict[str, list[int]] = {}
    for i, m in enumerate(maps):
        groups.setdefault(m.key, []).append(i)
    fontsize = 6.5 if n_layers <= 24 else 5.5 if n_layers <= 40 else 4.5
    exact_all: list[str] = []
    blanks = False
    for key, idx in groups.items():
        norm, log = _norm([maps[i] for i in idx])
        cmap = cmaps.get(key, colormaps["viridis"])
        axes = []
        im = None
        for i in idx:
            m = maps[i]
            labels = m.common_type if n_layers <= MAX_LABELLED_LAYERS else None
            col = 0
            blanks |= bool(np.isnan(m.values).any() or np.isnan(m.side_values).any())
            for e in m.exact:
                if e not in exact_all:
                    exact_all.append(e)
            if has_main:
                ax = fig.add_subplot(gs[i, col])
                col += 1
                axes.append(ax)
                if m.classes:
                    im = _draw_grid(ax, m.values, m.types, norm, cmap, labels, fontsize)
                    ax.set_yticks(range(len(m.classes)), m.classes, fontsize=8)
                    step = 1 if len(m.layers) <= 32 else 2 if len(m.layers) <= 64 else 4
                    ax.set_xticks(range(0, len(m.layers), step), [str(n) for n in m.layers[::step]], fontsize=7)
                    ax.set_xlabel("layer (blk.N)", fontsize=8)
                    ax.set_ylabel("tensor class", fontsize=8)
                else:
                    ax.set_axis_off()
                ax.set_title(m.title, fontsize=9, loc="left")
            if has_side:
                ax = fig.add_subplot(gs[i, col])
                axes.append(ax)
                if m.side:
                    im2 = _draw_grid(ax, m.side_values.reshape(-1, 1), [[t] for t in m.side_types], norm, cmap,
                                     labels, 7)
                    im = im if im is not None else im2
                    ax.set_yticks(range(len(m.side)), m.side, fontsize=8)
                    ax.yaxis.tick_right()
                    ax.set_xticks([])
                    ax.set_xlabel("not in a layer", fontsize=8)
                else:
                    ax.set_axis_off()
        if im is not None:
            cb = fig.colorbar(im, ax=axes, fraction=0.04 if len(idx) == 1 else 0.025, pad=0.02,
                              aspect=20 * len(idx), shrink=0.9 if len(idx) > 1 else 1.0)
            cb.set_label(maps[idx[0]].label + (" (log scale)" if log else ""), fontsize=8)
            cb.ax.tick_params(labelsize=7)
    notes = []
    common = {m.common_type for m in maps if m.common_type}
    if common and n_layers <= MAX_LABELLED_LAYERS:
        notes.append(f"cells name their type where it is not {'/'.join(sorted(common))}")
    if exact_all:
        notes.append("left out (kept unquantized, exactly 0): " + ", ".join(exact_all))
    notes.append("grey: exactly 0" + ("; white: no figure" if blanks else ""))
    fig.supxlabel("; ".join(notes), fontsize=7.5, color="#444444")
    _save(fig, path)


def plot_inspect(doc: dict, path: Path) -> None:
    """`qtool inspect QUANT --reference ORIG --plot PATH` (``doc``: the --json document)."""
    maps = inspect_heatmaps(doc)
    s = doc["summary"]
    sub = (f"{s['n_tensors']} tensors, {_fmt(s.get('bpw'), 4)} bits per weight; rel_rmse {_fmt(s.get('rel_rmse'))}, "
           f"collapsed {_pct(s.get('collapsed_frac'))}, flipped {_pct(s.get('flipped_frac'))} (element-weighted)")
    draw_heatmaps(maps, path, title=f"qtool inspect: {_short(doc['file'])} against {_short(doc['reference'])}",
                  subtitle=sub)


def plot_what_if(doc: dict, path: Path) -> None:
    """`qtool inspect ORIG --what-if T1,T2 --plot PATH` (``doc``: the --json document)."""
    maps = whatif_heatmaps(doc)
    parts = [f"{t}: {_fmt(s.get('rel_rmse'))}" for t, s in doc["summary"]["types"].items()]
    draw_heatmaps(maps, path, title=f"qtool inspect --what-if: {_short(doc['file'])}",
                  subtitle="element-weighted rel_rmse — " + ", ".join(parts))


def _fmt(v: float | None, digits: int = 3) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.{digits}g}"


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.3g}%"


# ---------------------------------------------------------------------------------------------------------
# eval: KL divergence per window
# ---------------------------------------------------------------------------------------------------------


@dataclass
class EvalSeries:
    index: np.ndarray      # int, window numbers
    start: np.ndarray      # int, first token of each window
    kld_mean: np.ndarray   # float64; NaN where undefined
    kld_p99: np.ndarray
    flips: np.ndarray      # int


def eval_series(doc: dict) -> EvalSeries:
    """From `qtool eval --json`'s document: the per-window figures the picture draws."""
    w = doc["windows"]
    if not w:
        raise UsageError("--plot: no window was evaluated; nothing to draw")
    return EvalSeries(np.array([x["index"] for x in w], dtype=np.int64),
                      np.array([x["start"] for x in w], dtype=np.int64),
                      np.array([_num(x["kld_mean"]) for x in w]),
                      np.array([_num(x["kld_p99"]) for x in w]),
                      np.array([int(x["flips"]) for x in w], dtype=np.int64))


def plot_eval(doc: dict, path: Path) -> None:
    """`qtool eval ... --plot PATH`: KL divergence mean and p99 per window (lines, left axis), flips per
    window (bars, right axis), the whole text's mean as a dotted line."""
    prepare(path)
    s = eval_series(doc)
    summ = doc["summary"]
    n = len(s.index)
    fig = _figure(min(14.0, max(7.5, 0.12 * n + 6)), 4.6)
    ax = fig.add_subplot()
    bars = ax.twinx()
    bars.bar(s.index, s.flips, width=0.8, color="#9ecae1", alpha=0.6, label="flips (top token changed)")
    bars.set_ylabel("flips per window", fontsize=9, color="#3182bd")
    bars.tick_params(axis="y", labelsize=8, colors="#3182bd")
    bars.set_ylim(0, max(1, int(s.flips.max())) * 1.15)
    marker = "o" if n <= 60 else None
    ax.plot(s.index, s.kld_mean, color="#d62728", marker=marker, ms=3.5, lw=1.6, label="KLD mean")
    ax.plot(s.index, s.kld_p99, color="#7f2704", marker=marker, ms=3, lw=1.2, ls="--", label="KLD p99")
    if summ.get("kld_mean") is not None:
        ax.axhline(summ["kld_mean"], color="#d62728", lw=0.9, ls=":",
                   label=f"whole text mean {summ['kld_mean']:.4g}")
    finite = np.concatenate([s.kld_mean, s.kld_p99])
    finite = finite[np.isfinite(finite)]
    log = bool(finite.size and finite.min() > 0 and finite.max() >= 10 * finite.min())
    if log:
        from matplotlib.ticker import FuncFormatter, LogLocator

        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    else:
        ax.set_ylim(0, (finite.max() if finite.size else 1) * 1.1 or 1)
    ax.set_zorder(bars.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.set_xlabel(f"window ({doc['ctx']} tokens each; positions {doc['scored_from']}..{doc['ctx'] - 2} scored)",
                  fontsize=9)
    ax.set_ylabel("KL divergence (nats" + (", log scale)" if log else ")"), fontsize=9)
    ax.tick_params(labelsize=8)
    if n <= 40:
        ax.set_xticks(s.index)
    ax.grid(axis="y", color="#e0e0e0", lw=0.6)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = bars.get_legend_handles_labels()
    fig.legend(h1 + h2, l1 + l2, fontsize=8, loc="outside lower center", ncol=4, frameon=False)
    ref = _short(doc.get("reference_logits") or doc["reference"])
    agree = summ.get("top1_agreement")
    sub = (f"{summ['n_positions']:,} positions: KLD mean {_fmt(summ.get('kld_mean'), 4)}, median "
           f"{_fmt(summ.get('kld_median'), 4)}, p99 {_fmt(summ.get('kld_p99'), 4)}, max {_fmt(summ.get('kld_max'), 4)}\n"
           f"top-1 agreement {'—' if agree is None else f'{100 * agree:.2f}%'} ({summ['flips']} flips); "
           f"PPL {_fmt(summ.get('ppl_quant'), 5)} vs {_fmt(summ.get('ppl_reference'), 5)}")
    fig.suptitle(f"qtool eval: KL divergence per window, {_short(doc['quant'])} against {ref}\n{sub}", fontsize=9.5)
    _save(fig, path)


# ---------------------------------------------------------------------------------------------------------
# a target-size run: size against predicted error
# ---------------------------------------------------------------------------------------------------------

#: the stock presets a frontier picture marks (those needing no importance matrix), smallest first
STOCK_PRESETS = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "IQ4_XS", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K",
                 "Q8_0")


@dataclass
class Frontier:
    kind: str                  # "size" (x: whole-file bytes) or "bpw" (x: tensor bits per weight)
    measure: str               # what the error is ("rel_mse", "imatrix-weighted rel_mse")
    x: np.ndarray              # the frontier: the sizes of the mixes along the hull path, smallest first
    y: np.ndarray              # and their predicted errors
    chosen: tuple[float, float]
    budget: float
    target: str                # as the user wrote it
    #: (preset, x, predicted error or None where one of its types was not measured)
    presets: list[tuple[str, float, float | None]] = field(default_factory=list)
    #: (preset, x, predicted error) of the mix the search chooses with each preset's size as the budget
    mixes_at_presets: list[tuple[str, float, float]] = field(default_factory=list)
    candidates: list[str] = field(default_factory=list)


def _lower_hull(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """The lower convex hull of (cost, error) points, cheapest first, each next one strictly better."""
    pts = sorted(set(points))
    hull: list[tuple[int, float]] = []
    for c, e in pts:
        if hull and e >= hull[-1][1]:
            continue  # no cheaper-or-equal point may be beaten by a dearer one
        while len(hull) >= 2:
            (c1, e1), (c2, e2) = hull[-2], hull[-1]
            if (e2 - e1) * (c - c1) >= (e - e1) * (c2 - c1):  # hull[-1] lies on or above the chord
                hull.pop()
            else:
                break
        hull.append((c, e))
    return hull


def frontier_data(mix, n_elements: int, stock: dict[str, tuple[int, dict]] | None = None) -> Frontier:
    """The size/error frontier of a mix's measured options: every tensor it decides starts at its cheapest
    option and takes the upgrades along its convex hull, steepest error decrease per byte first, across all
    tensors (the search's greedy path: each point is a real choice of types, the lower convex envelope of
    all of them). ``n_elements``: all the file's weights (for bits per weight); ``stock``: preset ->
    (its bytes as the target counts them, {tensor: ggml type}), scored by the mix's own measure."""
    n = sum(t.n_elements for t in mix.tensors) + mix.pinned_elements
    if n == 0:
        raise UsageError("--plot: the mix decides no tensor; nothing to draw")
    steps = []
    cost = mix.fixed
    err = mix.pinned_error
    for t in mix.tensors:
        hull = _lower_hull([(o.cost, o.error) for o in t.options])
        cost += hull[0][0]
        err += hull[0][1]
        for (c0, e0), (c1, e1) in zip(hull, hull[1:]):
            steps.append(((e1 - e0) / (c1 - c0), t.name, c1 - c0, e1 - e0))
    steps.sort(key=lambda s: (s[0], s[1]))  # most negative slope first; per tensor in hull order (convex)
    xs, ys = [cost], [err]
    for _, _, dc, de in steps:
        cost += dc
        err += de
        xs.append(cost)
        ys.append(err)

    def x_of(nbytes: float) -> float:
        return float(nbytes) if mix.target.kind == "size" else 8.0 * nbytes / n_elements

    presets = []
    for name, (nbytes, types) in (stock or {}).items():
        presets.append((name, x_of(nbytes), mix.error_of(types)))
    # the search itself at each preset's size (re-solved on the measured table, nothing quantized again)
    names = list(stock or {})
    solved = mix.frontier([stock[p][0] for p in names]) if names else []
    at = [(p, x_of(r[1]), float(r[2])) for p, r in zip(names, solved) if r is not None]
    return Frontier(mix.target.kind, mix.measure,
                    np.array([x_of(c) for c in xs]), np.array(ys) / n,
                    (x_of(mix.total), float(mix.predicted_error)), x_of(mix.budget), mix.target.text,
                    presets=presets, mixes_at_presets=at,
                    candidates=[getattr(c, "name", str(c)) for c in mix.candidates])


def _size_unit(values: Sequence[float]) -> tuple[float, str]:
    top = max(values)
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if top >= scale:
            return scale, unit
    return 1.0, "bytes"


def _same_point(points: list[tuple[str, float, float | None]]) -> list[tuple[str, float, float | None]]:
    """Presets that make the same plan (Q2_K and Q3_K_S where every row falls back alike) as one label, by x."""
    out: dict[tuple, list[str]] = {}
    for name, x, y in points:
        out.setdefault((x, y), []).append(name)
    return sorted(((" = ".join(names), x, y) for (x, y), names in out.items()), key=lambda p: p[1])


#: where a point's label may go, in points from the point (tried in this order): right above, right below,
#: left above, left below, then further out
_LABEL_SPOTS = ((5, 3, "left", "bottom"), (5, -3, "left", "top"), (-5, 3, "right", "bottom"),
                (-5, -3, "right", "top"), (5, 12, "left", "bottom"), (5, -12, "left", "top"),
                (-5, 12, "right", "bottom"), (-5, -12, "right", "top"), (12, 24, "left", "bottom"),
                (12, -24, "left", "top"), (-12, 24, "right", "bottom"), (-12, -24, "right", "top"))
#: a thin line from a label to its point, so that a label between two points names one of them
_LEADER = {"arrowstyle": "-", "lw": 0.5, "color": "#999999", "shrinkA": 0, "shrinkB": 3}


def _place_labels(fig, ax, points: list[tuple[str, float, float]], avoid: Sequence[tuple[float, float]] = ()):
    """Name each point beside it, at the first spot inside the axes where the label overlaps no label placed
    before and no other point of ``points`` or ``avoid`` (where every spot does: the first). Call it last, once the axes,
    scales and titles are set: it lays the figure out to know where things are."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.transforms import Bbox

    canvas = FigureCanvasAgg(fig)
    fig.draw_without_rendering()  # the layout, so that display coordinates hold
    renderer = canvas.get_renderer()
    centres = [ax.transData.transform((x, y)) for _, x, y in points] + [ax.transData.transform(p) for p in avoid]
    marks = [Bbox.from_bounds(cx - 6, cy - 6, 12, 12) for cx, cy in centres]
    legend = ax.get_legend()
    labels: list = [legend.get_window_extent(renderer)] if legend is not None else []
    for k, (name, x, y) in enumerate(points):
        here = centres[k]  # marks on the point itself (a mix that is the preset) do not count
        others = labels + [m for j, m in enumerate(marks) if j != k and
                           (abs(centres[j][0] - here[0]) > 2 or abs(centres[j][1] - here[1]) > 2)]
        for dx, dy, ha, va in _LABEL_SPOTS:
            text = ax.annotate(name, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va,
                               fontsize=8, arrowprops=_LEADER)
            box = text.get_window_extent(renderer).expanded(1.1, 1.15)
            inside = ax.bbox.x0 <= box.x0 and box.x1 <= ax.bbox.x1 and ax.bbox.y0 <= box.y0 and box.y1 <= ax.bbox.y1
            if inside and not any(box.overlaps(o) for o in others):
                break
            text.remove()
        else:
            dx, dy, ha, va = _LABEL_SPOTS[0]
            text = ax.annotate(name, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va,
                               fontsize=8, arrowprops=_LEADER)
            box = text.get_window_extent(renderer)
        text.set_in_layout(False)  # the layout must not move the axes under the labels just placed
        labels.append(box)


def plot_frontier(f: Frontier, path: Path, *, title: str = "") -> None:
    """The frontier (a staircase: at each size, the error of the last greedy choice that fits it, so that no
    point of the line is a choice that does not exist), the chosen mix (star) at its budget (dashed), the stock
    presets (dots, named; those with a type outside the measured ones as ticks on the axis)."""
    prepare(path)
    from matplotlib.ticker import FuncFormatter

    fig = _figure(8.5, 5.4)
    ax = fig.add_subplot()
    xs_all = list(f.x) + [f.chosen[0], f.budget] + [p[1] for p in f.presets]
    scale, unit = _size_unit(xs_all) if f.kind == "size" else (1.0, "bits per weight")
    ax.plot(f.x / scale, f.y, color="#1f77b4", lw=1.6, drawstyle="steps-post",
            label="frontier: greedy upgrades, best error within each size")
    ax.axvline(f.budget / scale, color="#555555", lw=1, ls="--", label=f"budget ({f.target})")
    ax.plot([f.chosen[0] / scale], [f.chosen[1]], marker="*", ms=15, color="#d62728", ls="none",
            label=f"the mix: {f.chosen[1]:.4g}", zorder=5)
    scored = _same_point([p for p in f.presets if p[2] is not None])
    by_preset = {name: (x, y) for name, x, y in f.presets}
    if f.mixes_at_presets:
        for name, x, y in f.mixes_at_presets:
            px, py = by_preset.get(name, (None, None))
            if py is not None:  # from the preset to the mix of its size
                ax.plot([px / scale, x / scale], [py, y], color="#d62728", lw=0.8, alpha=0.6, zorder=3)
        ax.plot([p[1] / scale for p in f.mixes_at_presets], [p[2] for p in f.mixes_at_presets], "o", ms=4.5,
                mfc="white", mec="#d62728", mew=1.2, ls="none", zorder=4, label="a mix at each preset's size")
    unscored = _same_point([p for p in f.presets if p[2] is None])
    lo, hi = min(xs_all) / scale, max(xs_all) / scale
    span = (hi - lo) or 1.0
    ax.set_xlim(lo - 0.04 * span, hi + 0.04 * span)
    if scored:
        ax.plot([p[1] / scale for p in scored], [p[2] for p in scored], "o", color="#2ca02c", ms=6,
                label="stock presets (same measure)", zorder=4)
    ys = np.concatenate([f.y, [f.chosen[1]], [p[2] for p in scored], [p[2] for p in f.mixes_at_presets]])
    ys = ys[np.isfinite(ys) & (ys > 0)]
    if ys.size and ys.max() >= 10 * ys.min():
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    if unscored:
        trans = ax.get_xaxis_transform()
        for name, x, _ in unscored:
            ax.plot([x / scale], [0.0], marker="|", ms=12, color="#888888", transform=trans, clip_on=False)
            ax.annotate(name, (x / scale, 0.0), xycoords=trans, xytext=(0, 8), textcoords="offset points",
                        fontsize=7, color="#777777", rotation=90, ha="center", va="bottom")
        ax.plot([], [], marker="|", ms=10, color="#888888", ls="none",
                label="stock presets with a type not measured (size only)")
    ax.set_xlabel(f"file size ({unit})" if f.kind == "size" else "tensor bits per weight", fontsize=9)
    ax.set_ylabel(f"predicted error ({f.measure}, element-weighted mean"
                  + (", log scale)" if ax.get_yscale() == "log" else ")"), fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(color="#e6e6e6", lw=0.6)
    # below the frontier's left end nothing is drawn (no choice of types is there): the legend's place
    ax.legend(fontsize=8, loc="lower left", framealpha=0.9)
    import textwrap

    fig.suptitle((title or "qtool convert: size against predicted error") + "\n"
                 + textwrap.fill(f"candidates {', '.join(f.candidates)}", 110), fontsize=9.5)
    if scored:
        _place_labels(fig, ax, [(name, x / scale, y) for name, x, y in scored],
                      avoid=[(f.chosen[0] / scale, f.chosen[1])] + [(x / scale, y) for _, x, y in f.mixes_at_presets])
    _save(fig, path)
