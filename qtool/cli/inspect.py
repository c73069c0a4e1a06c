"""`qtool inspect`: what a model holds and where quantization hurt it.

    qtool inspect MODEL                          metadata, tensors, types; outlier/zero figures of the weights
    qtool inspect MODEL --no-stats               header only: nothing but metadata and the tensor table
    qtool inspect QUANT.gguf --reference ORIG    the microscope: error, sign loss, outliers per tensor
    qtool inspect ORIG --what-if Q4_0,Q4_K       what each type would do to each tensor
    ... --fail-if 'rel_rmse>0.05'                exit 1 when a check trips (CI gates)
    ... --plot damage.png                        the damage per layer and tensor class as a heat map

The CLI only parses, calls qtool.analysis and prints.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from qtool.cli.options import JsonOpt, QuietOpt, ThreadsOpt

_BAR = "█"


def inspect_command(
    model: Annotated[Path, typer.Argument(help="A .gguf file, a .safetensors file, a *.safetensors.index.json or a "
                                               "Hugging Face model folder.", show_default=False)],
    reference: Annotated[Optional[Path], typer.Option(
        "--reference", "-r", help="The original weights (GGUF, safetensors or model folder) to measure MODEL "
                                  "against, tensor by tensor (matched by GGUF name).")] = None,
    what_if: Annotated[Optional[str], typer.Option(
        "--what-if", help="Comma-separated ggml types (Q4_0,Q4_K,...): quantize MODEL's weights to each in "
                          "memory and report the damage.")] = None,
    tensor: Annotated[Optional[str], typer.Option(
        "--tensor", help="Only tensors whose name matches this regular expression (with --histogram: the "
                         "one tensor's name).")] = None,
    sort: Annotated[Optional[str], typer.Option(
        "--sort", help="Order tensors worst first by this figure (rel_rmse, sqnr_db, collapsed_frac, crest, "
                       "...).")] = None,
    top: Annotated[Optional[int], typer.Option("--top", min=1, help="Show only the first N tensors.")] = None,
    histogram: Annotated[bool, typer.Option(
        "--histogram", help="A text histogram of |error| (|weight| without --reference) for --tensor NAME.")] = False,
    fail_if: Annotated[list[str], typer.Option(
        "--fail-if", help="FIELD OP NUMBER, e.g. 'rel_rmse>0.05' (any tensor) or 'summary.collapsed_frac>0.1'; "
                          "exit 1 when it holds (repeatable).")] = [],
    no_stats: Annotated[bool, typer.Option(
        "--no-stats", help="Read the header only: metadata and tensor table, no figures.")] = False,
    plot: Annotated[Optional[Path], typer.Option(
        "--plot", help="Also draw the damage per layer and tensor class as a heat map into FILE.png or "
                       "FILE.svg (with --reference or --what-if; needs matplotlib: pip install "
                       "'qtool[plots]').")] = None,
    threads: ThreadsOpt = None,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Show a model's metadata and tensors, and where quantization hurt it (--reference) or would (--what-if)."""
    from qtool.cli.output import Output
    from qtool.errors import UsageError

    out = Output(json_mode=json, quiet=quiet)
    if plot is not None:
        from qtool.analysis.plots import prepare

        if reference is None and what_if is None:
            raise UsageError("--plot draws the damage: give --reference ORIGINAL or --what-if TYPES")
        prepare(plot)  # the extension, the folder and matplotlib, before any work
    if threads is not None:
        from qtool.kernels import native

        native.set_num_threads(threads)
    if what_if is not None:
        if reference is not None or histogram or no_stats:
            raise UsageError("--what-if takes MODEL's own weights: it goes with neither --reference, "
                             "--histogram nor --no-stats")
        if fail_if:
            raise UsageError("--fail-if checks an existing quantization (--reference or the weights); "
                             "it does not apply to --what-if")
        _what_if(out, model, what_if, tensor, sort, top, threads, plot)
        return
    if histogram and tensor is None:
        raise UsageError("--histogram needs --tensor NAME (the tensor to draw)")
    if no_stats and (histogram or reference is not None):
        raise UsageError("--no-stats reads no weights: it goes with neither --reference nor --histogram")
    _inspect(out, model, reference, tensor, sort, top, histogram, fail_if, not no_stats, plot)


# ----------------------------------------------------------------------------------------------
# inspect / microscope
# ----------------------------------------------------------------------------------------------

def _inspect(out, model, reference, tensor, sort, top, histogram, fail_if, figures, plot=None) -> None:
    from qtool.analysis import gates
    from qtool.analysis.report import inspect_model, mode_fields, resolve_field

    fields = mode_fields(reference=reference is not None, figures=figures)
    checks = [gates.parse(text, fields) for text in fail_if]
    if sort is not None:
        resolve_field(sort, fields)
    select, hist_name = tensor, None
    if histogram:
        # --tensor names the one tensor to draw: match it exactly, not as a regex
        select, hist_name = f"^{re.escape(tensor)}$", tensor
    with out.progress(total=None, description="inspecting") as advance:
        report = inspect_model(model, reference=reference, figures=figures, select=select, histogram=hist_name,
                               on_start=advance.set_total, on_tensor=lambda name, n: advance(n, name))
    if out.json_mode:
        out.json(report.document(sort, top))
    else:
        _render(out, report, sort, top)
    for s in report.skipped:
        out.note(f"note: {s['name']}: {s['reason']}")
    if report.reference is not None and report.tensors and all(
            s["reason"] == "not in the reference" for s in report.skipped) and len(report.skipped) == len(report.tensors):
        out.note(f"note: no tensor of {model} is in {report.reference}: tensors are matched by GGUF name (a bare "
                 ".safetensors file keeps its own names; point --reference at the model folder with config.json)")
    if report.reference is not None and report.reference_only:
        names = report.reference_only
        out.note(f"note: {len(names)} reference tensor(s) not in {model}: " + ", ".join(names[:5])
                 + (" ..." if len(names) > 5 else ""))
    if plot is not None:
        from qtool.analysis.plots import plot_inspect

        plot_inspect(report.document(), plot)
        out.note(f"wrote {plot}")
    failures = gates.evaluate(checks, report)
    if failures:
        fail_checks(out, failures, len(checks))


def fail_checks(out, failures, n_checks: int, whole: str = "model", part: str = "tensor",
                counts: tuple[str, ...] = ()) -> None:
    """One stderr line per failed --check gate (its first ten offending parts, or the whole's value for a
    summary gate), then CheckFailed. Values of the ``counts`` fields print as integers."""
    from qtool.errors import CheckFailed

    for f in failures:
        g = f.gate
        num = (lambda v: str(int(v))) if g.field in counts else _num
        if g.summary:
            line = f"check failed: {g.text}: the whole {whole} has {g.field}={num(f.offenders[0][1])}"
        else:
            shown = ", ".join(f"{name} ({num(v)})" for name, v in f.offenders[:10])
            more = f" and {len(f.offenders) - 10} more" if len(f.offenders) > 10 else ""
            line = f"check failed: {g.text}: {len(f.offenders)} {part}(s): {shown}{more}"
        out.err.print(line, markup=False, highlight=False, soft_wrap=True)
    raise CheckFailed(f"{len(failures)} of {n_checks} check(s) failed: "
                      + "; ".join(f.gate.text for f in failures))


def _render(out, report, sort, top) -> None:
    from rich.table import Table

    ref = report.reference is not None
    title = f"{report.file} ({report.format}" + (f", {report.architecture})" if report.architecture else ")")
    if ref:
        title += f" against {report.reference}"
    if not ref:
        meta = Table(title=f"metadata: {title}", title_justify="left", show_header=True)
        meta.add_column("key")
        meta.add_column("value", overflow="fold")
        from qtool.analysis.report import summarise_value

        for k, v in report.metadata.items():
            s = str(summarise_value(v))
            meta.add_row(k, s if len(s) <= 100 else s[:99] + "…")
        out.print(meta)

    tensors = report.ordered(sort, top)
    t = Table(title=f"tensors ({len(tensors)} of {len(report.tensors)})" if len(tensors) != len(report.tensors)
              else f"tensors ({len(tensors)})", title_justify="left")
    if ref:
        cols = [("tensor", "left"), ("type", "left"), ("bpw", "right"), ("rel_rmse", "right"),
                ("sqnr dB", "right"), ("collapsed %", "right"), ("flipped %", "right"), ("crest", "right"),
                ("kurtosis", "right")]
    elif report.figures:
        cols = [("tensor", "left"), ("type", "left"), ("shape", "left"), ("elements", "right"),
                ("bytes", "right"), ("bpw", "right"), ("zeros %", "right"), ("crest", "right"),
                ("kurtosis", "right"), (">3σ %", "right"), ("outlier ch", "right"), ("dominated blk %", "right")]
    else:
        cols = [("tensor", "left"), ("type", "left"), ("shape", "left"), ("elements", "right"),
                ("bytes", "right"), ("bpw", "right")]
    for name, justify in cols:
        t.add_column(name, justify=justify)
    for e in tensors:
        if ref:
            t.add_row(e.name, e.type, _num(e.bpw, 3), _num(e.value("rel_rmse"), 4), _num(e.value("sqnr_db"), 1),
                      _pct(e.value("collapsed_frac")), _pct(e.value("flipped_frac")), _num(e.value("crest"), 1),
                      _num(e.value("kurtosis"), 2))
        elif report.figures:
            ch = e.outliers["outlier_channels"] if e.outliers else None
            t.add_row(e.name, e.type, _shape(e.shape), f"{e.n_elements:,}", _bytes(e.n_bytes), _num(e.bpw, 3),
                      _pct(e.value("zero_frac")), _num(e.value("crest"), 1), _num(e.value("kurtosis"), 2),
                      _pct(e.value("beyond_3sigma")), "—" if ch is None else str(ch["count"]),
                      _pct(e.value("scale_dominated_blocks")))
        else:
            t.add_row(e.name, e.type, _shape(e.shape), f"{e.n_elements:,}", _bytes(e.n_bytes), _num(e.bpw, 3))
    out.print(t)

    summary = report.summary()
    if report.figures:
        _render_layers(out, summary, ref)
    types = Table(title="types", title_justify="left")
    for name, justify in (("type", "left"), ("tensors", "right"), ("elements", "right"), ("share", "right"),
                          ("bytes", "right"), ("bpw", "right"), ("", "left")):
        types.add_column(name, justify=justify)
    total = summary["n_elements"] or 1
    for name, s in sorted(summary["types"].items(), key=lambda kv: -kv[1]["n_elements"]):
        share = s["n_elements"] / total
        types.add_row(name, str(s["n_tensors"]), f"{s['n_elements']:,}", f"{100 * share:.1f}%",
                      _bytes(s["n_bytes"]), _num(s["bpw"], 3), _BAR * max(1, round(30 * share)))
    out.print(types)
    line = (f"model: {summary['n_tensors']} tensors, {summary['n_elements']:,} elements, "
            f"{_bytes(summary['n_bytes'])}, {_num(summary['bpw'], 3)} bits per weight")
    if ref:
        line += (f"; rel_rmse {_num(summary['rel_rmse'], 4)}, sqnr {_num(summary['sqnr_db'], 1)} dB, "
                 f"collapsed {_pct(summary['collapsed_frac'])}%, flipped {_pct(summary['flipped_frac'])}% "
                 f"(element-weighted)")
    out.print(line)
    if report.histogram is not None:
        _render_histogram(out, report.histogram)


def _render_layers(out, summary, ref: bool) -> None:
    from rich.table import Table

    rows = list(summary["layers"])
    if not rows:
        return
    t = Table(title="per layer (element-weighted)", title_justify="left")
    if ref:
        cols = ["layer", "tensors", "elements", "bpw", "rel_rmse", "sqnr dB", "collapsed %", "flipped %",
                "crest", "kurtosis"]
    else:
        cols = ["layer", "tensors", "elements", "bpw", "zeros %", "crest", "kurtosis", ">3σ %",
                "dominated blk %"]
    for i, c in enumerate(cols):
        t.add_column(c, justify="left" if i == 0 else "right")

    def cells(s: dict) -> list[str]:
        head = [str(s["n_tensors"]), f"{s['n_elements']:,}", _num(s["bpw"], 3)]
        if ref:
            return head + [_num(s["rel_rmse"], 4), _num(s["sqnr_db"], 1), _pct(s["collapsed_frac"]),
                           _pct(s["flipped_frac"]), _num(s["crest"], 1), _num(s["kurtosis"], 2)]
        return head + [_pct(s["zero_frac"]), _num(s["crest"], 1), _num(s["kurtosis"], 2),
                       _pct(s["beyond_3sigma"]), _pct(s["scale_dominated_blocks"])]

    for s in rows:
        t.add_row(f"blk.{s['layer']}", *cells(s))
    t.add_section()
    t.add_row("model", *cells(summary))
    out.print(t)


def _render_histogram(out, h: dict) -> None:
    counts = [("0", h["zeros"])]
    edges = h["edges"]
    if edges:
        counts.append((f"< {edges[0]:.3g}", h["below"]))
        for i, c in enumerate(h["counts"]):
            close = "]" if i == len(h["counts"]) - 1 else ")"
            counts.append((f"[{edges[i]:.3g}, {edges[i + 1]:.3g}{close}", c))
    if h["above"]:
        counts.append(("nan/inf", h["above"]))
    total = sum(c for _, c in counts) or 1
    peak = max(c for _, c in counts) or 1
    width = max(len(label) for label, _ in counts)
    lines = [f"{h['of']} of {h['tensor']} ({total:,} values, log-spaced bins)"]
    for label, c in counts:
        bar = _BAR * (round(40 * c / peak) if c else 0)
        lines.append(f"  {label:>{width}} │{bar:<40} {c:>12,} {100 * c / total:6.2f}%")
    out.print("\n".join(lines), markup=False)


# ----------------------------------------------------------------------------------------------
# what-if
# ----------------------------------------------------------------------------------------------

def _what_if(out, model, spec, tensor, sort, top, threads, plot=None) -> None:
    from qtool.analysis.whatif import parse_types, what_if

    types = parse_types(spec)
    with out.progress(total=None, description="quantizing") as advance:
        result = what_if(model, types, select=tensor, threads=threads, on_start=lambda n: advance.set_total(4 * n),
                         on_tensor=lambda name, n: advance(4 * n, name))
    tensors = result.ordered(sort, top)  # checks --sort before printing anything
    if out.json_mode:
        out.json(result.document(sort, top))
    else:
        _render_what_if(out, result, tensors)
    for s in result.skipped:
        out.note(f"note: {s['name']}: {s['reason']}")
    if plot is not None:
        from qtool.analysis.plots import plot_what_if

        plot_what_if(result.document(), plot)
        out.note(f"wrote {plot}")


def _render_what_if(out, result, tensors) -> None:
    from rich.table import Table

    t = Table(title=f"what if: {result.file} ({len(tensors)} of {len(result.tensors)} quantizable tensors; "
                    "rel_rmse / collapsed %)", title_justify="left")
    t.add_column("tensor")
    t.add_column("shape")
    for name in result.types:
        t.add_column(name, justify="right")
    for w in tensors:
        cells = []
        for name in result.types:
            c = w.candidates.get(name)
            cells.append(w.why.get(name, "—") if c is None else f"{_num(c.rel_rmse, 4)} / {_pct(c.collapsed_frac)}")
        t.add_row(w.name, _shape(w.shape), *cells)
    out.print(t)
    s = Table(title="per type, whole model (element-weighted over the tensors it fits)", title_justify="left")
    for name, justify in (("type", "left"), ("bpw", "right"), ("bytes", "right"), ("tensors", "right"),
                          ("rel_rmse", "right"), ("collapsed %", "right"), ("flipped %", "right")):
        s.add_column(name, justify=justify)
    for name, line in result.summary().items():
        fits = f"{line['n_tensors']}" + (f" ({line['n_unfit']} without)" if line["n_unfit"] else "")
        s.add_row(name, _num(line["bpw"], 3), _bytes(line["n_bytes"]), fits, _num(line["rel_rmse"], 4),
                  _pct(line["collapsed_frac"]), _pct(line["flipped_frac"]))
    out.print(s)


# ----------------------------------------------------------------------------------------------
# formatting
# ----------------------------------------------------------------------------------------------

def _num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "—"
    v = float(v)
    if math.isnan(v):
        return "—"
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    if v != 0 and (abs(v) < 10 ** -digits or abs(v) >= 1e6):
        return f"{v:.{max(1, digits - 1)}e}"
    return f"{v:.{digits}f}"


def _pct(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    p = 100.0 * float(v)
    return "0" if p == 0 else f"{p:.3f}" if p < 0.01 else f"{p:.2f}"


def _shape(shape) -> str:
    return "×".join(str(d) for d in shape)


def _bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def register(app: typer.Typer) -> None:
    app.command("inspect", no_args_is_help=True)(inspect_command)
