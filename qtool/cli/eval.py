"""`qtool eval`: the KL divergence between a quantized model's next-token distributions and the original's.

    qtool eval QUANT.gguf --reference ORIG.gguf --text FILE                 run both in llama.cpp, compare
    ... --save-logits ORIG.logits                                           keep the reference's logits
    qtool eval OTHER.gguf --reference ORIG.logits                           reuse them (no reference run)
    ... --fail-if 'kld_mean>0.05'                                           exit 1 when a check trips
    ... --plot kld.png                                                      KL divergence per window, drawn

The CLI only parses, calls qtool.analysis.eval and prints.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from qtool.cli.options import JsonOpt, QuietOpt, ThreadsOpt


def eval_command(
    quant: Annotated[Path, typer.Argument(help="The quantized GGUF to evaluate.", show_default=False)],
    reference: Annotated[Path, typer.Option(
        "--reference", "-r", show_default=False,
        help="The original GGUF (same vocabulary), or a file written by --save-logits.")],
    text: Annotated[Optional[Path], typer.Option(
        "--text", help="The text to evaluate on (UTF-8 or any bytes; tokenized with the reference's "
                       "vocabulary). Optional with a saved-logits --reference, which carries its tokens.")] = None,
    ctx: Annotated[Optional[int], typer.Option(
        "--ctx", "-c", help="Tokens per window (default 512; a saved-logits reference sets it).")] = None,
    windows: Annotated[Optional[int], typer.Option(
        "--windows", help="Evaluate only the first N windows.")] = None,
    save_logits: Annotated[Optional[Path], typer.Option(
        "--save-logits", help="Save the reference's logits of the scored positions to FILE, to pass as "
                              "--reference next time.")] = None,
    top_k: Annotated[int, typer.Option(
        "--top-k", help="With --save-logits: store the K most likely tokens per position instead of all "
                        "logits (a far smaller file; its KL divergence is a lower bound).")] = 0,
    fail_if: Annotated[list[str], typer.Option(
        "--fail-if", help="FIELD OP NUMBER, e.g. 'kld_mean>0.05' (the whole text) or 'window.flips>10' (any "
                          "window); exit 1 when it holds (repeatable).")] = [],
    plot: Annotated[Optional[Path], typer.Option(
        "--plot", help="Also draw the KL divergence per window (mean and p99, flips as bars) into FILE.png or "
                       "FILE.svg (needs matplotlib: pip install 'qtool[plots]').")] = None,
    threads: ThreadsOpt = None,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Compare a quantized model's next-token distributions with the original's: KL divergence, perplexity,
    top-1 agreement, per window of --ctx tokens."""
    from qtool.analysis.eval import check_gates, evaluate, parse_gate
    from qtool.cli.output import Output

    out = Output(json_mode=json, quiet=quiet)
    checks = [parse_gate(t) for t in fail_if]
    if plot is not None:
        from qtool.analysis.plots import prepare

        prepare(plot)  # the extension, the folder and matplotlib, before any work
    with out.progress(total=None, description="evaluating") as advance:
        result = evaluate(quant, reference, text, ctx=ctx, threads=threads or os.cpu_count() or 1,
                          max_windows=windows, save_logits=save_logits, top_k=top_k,
                          on_start=advance.set_total, on_window=lambda i: advance(1, f"window {i}"))
    if out.json_mode:
        out.json(result.document())
    else:
        _render(out, result)
    for note in result.notes:
        out.note(note)
    if result.saved_logits:
        out.note(f"saved the reference's logits to {result.saved_logits}")
    if plot is not None:
        from qtool.analysis.plots import plot_eval

        plot_eval(result.document(), plot)
        out.note(f"wrote {plot}")
    failures = check_gates(checks, result)
    if failures:
        from qtool.cli.inspect import fail_checks

        fail_checks(out, failures, len(checks), "text", "window", counts=("flips", "n_positions"))


def _render(out, result) -> None:
    from rich.table import Table

    from qtool.cli.inspect import _num

    ref = result.reference_logits and f"{result.reference} (saved logits)" or result.reference
    t = Table(title=f"{result.quant} against {ref}: {len(result.windows)} window(s) of {result.ctx} tokens, "
                    f"positions {result.first}..{result.ctx - 2} of each scored", title_justify="left")
    for name in ("window", "tokens", "PPL ref", "PPL quant", "KLD mean", "median", "p99", "max", "top-1 %",
                 "flips"):
        t.add_column(name, justify="left" if name == "window" else "right")

    def cells(f: dict) -> list[str]:
        agree = f["top1_agreement"]
        return [_num(f["ppl_reference"], 3), _num(f["ppl_quant"], 3), _num(f["kld_mean"], 5),
                _num(f["kld_median"], 5), _num(f["kld_p99"], 5), _num(f["kld_max"], 5),
                "—" if agree is None else f"{100 * agree:.2f}", str(f["flips"])]

    for w in result.windows:
        t.add_row(str(w["index"]), f"{w['start']}..{w['start'] + result.ctx - 1}", *cells(w))
    t.add_section()
    t.add_row("all", f"{result.summary['n_positions']} scored", *cells(result.summary))
    out.print(t)
    s = result.summary
    out.line(f"KL divergence {_num(s['kld_mean'], 6)} nats (mean), top-1 agreement "
              f"{100 * s['top1_agreement']:.2f}% ({s['flips']} flips of {s['n_positions']}), perplexity "
              f"{_num(s['ppl_quant'], 4)} against {_num(s['ppl_reference'], 4)} (x{_num(s['ppl_ratio'], 4)})"
              + (f"; reference saved as top-{result.top_k}: KL is a lower bound" if result.top_k and
                 result.reference_logits else ""))


def kl_measure(input: Path, text: Path, workdir: Path, *, ctx: int, threads: int | None,
               note=lambda message: None, reading: dict | None = None):
    """For `qtool convert --calibrate-text`: a function ``(class, {tensor: type}) -> mean KL divergence`` that
    writes ``input`` with those tensors at those types and every other quantizable tensor F32 into ``workdir``,
    and evaluates it against ``input`` written all F32 (the reference, written on the first call; its logits
    saved there and reused by the later calls). Each class's file is removed once measured. ``reading``: convert's
    pre_tokenizer/tensors_only."""
    from gguf import GGMLQuantizationType as T

    from qtool.analysis.eval import evaluate
    from qtool.convert import convert
    from qtool.plan import PlanOptions, recipe_pattern

    all_f32 = [(".", T.F32)]
    state: dict = {}
    n_threads = threads or os.cpu_count() or 1

    def write(path: Path, patterns: list) -> Path:
        # a quantized preset only carries the per-tensor patterns; every tensor is named by one of them
        return convert(input, "Q8_0", path, threads=threads, options=PlanOptions(tensor_types=patterns),
                       **(reading or {})).output

    def measure(cls: str, types: dict) -> float:
        path = workdir / f"calibrate-{cls}.gguf"
        write(path, [(recipe_pattern(n), t) for n, t in types.items()] + all_f32)
        try:
            if "logits" not in state:
                ref = write(workdir / "calibrate-reference.gguf", all_f32)
                logits = workdir / "calibrate-reference.logits"
                r = evaluate(path, ref, text, ctx=ctx, threads=n_threads, save_logits=logits)
                ref.unlink()
                state["logits"] = logits
            else:
                r = evaluate(path, state["logits"], None, ctx=None, threads=n_threads)
        finally:
            path.unlink(missing_ok=True)
        kld = r.summary["kld_mean"]
        written = ",".join(sorted({t.name for t in types.values()}))
        note(f"calibration: {cls} ({len(types)} tensor(s) as {written}): KL divergence {kld:.5g} "
             f"({r.summary['n_positions']} positions)")
        return kld

    return measure


def register(app: typer.Typer) -> None:
    app.command("eval", no_args_is_help=True)(eval_command)
