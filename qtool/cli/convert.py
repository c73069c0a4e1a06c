"""`qtool convert`: parse options, call qtool.convert, print the plan or the summary."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from qtool.cli.options import JsonOpt, QuietOpt, ThreadsOpt


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def convert_command(
    input: Annotated[Path, typer.Argument(help="A .safetensors file, a *.safetensors.index.json, a Hugging Face "
                                                "model folder, or a .gguf file.", show_default=False)],
    type: Annotated[Optional[str], typer.Option("--type", "-T", help="llama-quantize preset (Q4_K_M, Q8_0, ...) "
                                                "or ggml type name; `qtool types` lists them. Optional with "
                                                "--target-*/--types-from (it then sets general.file_type).",
                                                show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output file (default: "
                                                   "<input-stem>-<TYPE>.gguf beside the input).")] = None,
    threads: ThreadsOpt = None,
    imatrix: Annotated[Optional[Path], typer.Option("--imatrix", help="Importance matrix: llama-imatrix .dat "
                                                    "or GGUF imatrix file.")] = None,
    include_weights: Annotated[list[str], typer.Option("--include-weights", help="Use the imatrix only for "
                                                       "tensors whose name contains this (repeatable).")] = [],
    exclude_weights: Annotated[list[str], typer.Option("--exclude-weights", help="Do not use the imatrix for "
                                                       "tensors whose name contains this (repeatable).")] = [],
    output_tensor_type: Annotated[Optional[str], typer.Option("--output-tensor-type",
                                                              help="ggml type for output.weight.")] = None,
    token_embedding_type: Annotated[Optional[str], typer.Option("--token-embedding-type",
                                                                help="ggml type for token_embd.weight.")] = None,
    tensor_type: Annotated[list[str], typer.Option("--tensor-type", help="REGEX=TYPE: type for matching "
                                                   "tensors (repeatable; first match wins).")] = [],
    tensor_type_file: Annotated[list[Path], typer.Option("--tensor-type-file", help="File of REGEX=TYPE "
                                                         "entries separated by spaces or newlines, as "
                                                         "llama-quantize reads it; after the --tensor-type "
                                                         "entries (repeatable).")] = [],
    recipe_out: Annotated[Optional[Path], typer.Option("--recipe-out", help="Write the chosen type of every "
                                                       "quantized tensor as a --tensor-type-file that "
                                                       "llama-quantize (same preset) reproduces the file "
                                                       "from.")] = None,
    types_from: Annotated[Optional[Path], typer.Option("--types-from", help="Take each tensor's type from "
                                                       "this GGUF (e.g. a published quant of the same "
                                                       "model).")] = None,
    target_bpw: Annotated[Optional[float], typer.Option("--target-bpw", help="Choose a type per tensor for "
                                                        "the least predicted error at this many bits per "
                                                        "weight (tensor bytes).")] = None,
    target_size: Annotated[Optional[str], typer.Option("--target-size", help="As --target-bpw, for a whole "
                                                       "file of this size: 3.5GB, 3.5GiB, 900MB ...")] = None,
    candidates: Annotated[Optional[str], typer.Option("--candidates", help="Types a target mix chooses from, "
                                                      "e.g. Q3_K,Q4_K,Q5_K,Q6_K (default: the K and IQ types "
                                                      "near the target).")] = None,
    pure: Annotated[bool, typer.Option("--pure", help="Every quantized tensor gets the preset's base type "
                                                      "(no per-tensor rules).")] = False,
    leave_output_tensor: Annotated[bool, typer.Option("--leave-output-tensor",
                                                      help="Do not quantize output.weight.")] = False,
    allow_requantize: Annotated[bool, typer.Option("--allow-requantize", help="Allow a GGUF input whose "
                                                   "tensors are already quantized.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (type and bytes per tensor) and "
                                                            "write nothing.")] = False,
    pre_tokenizer: Annotated[Optional[str], typer.Option("--pre-tokenizer", help="llama.cpp pre-tokenizer name "
                                                         "for a BPE or WordPiece tokenizer.json (default: found "
                                                         "as convert_hf_to_gguf.py does).")] = None,
    tensors_only: Annotated[bool, typer.Option("--tensors-only", help="Hugging Face folder: write the quantized "
                                               "tensors alone, also for an architecture qtool cannot convert. "
                                               "The file is marked not runnable: general.architecture is the "
                                               "HF class name, general.description says why.")] = False,
    calibrate_text: Annotated[Optional[Path], typer.Option("--calibrate-text", help="With --target-*: weigh "
                                                           "each tensor class's error by the KL divergence "
                                                           "measured on this text with that class alone "
                                                           "quantized (runs llama.cpp: qtool[eval]).")] = None,
    calibrate_type: Annotated[Optional[str], typer.Option("--calibrate-type", help="The type each class is "
                                                          "quantized to for --calibrate-text (default: the "
                                                          "cheapest candidate needing no imatrix).")] = None,
    calibrate_ctx: Annotated[int, typer.Option("--calibrate-ctx", help="Tokens per window of the "
                                               "--calibrate-text evaluation.")] = 512,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="With --target-bpw/--target-size: also draw "
                                                 "size against predicted error (the frontier, the mix, the stock "
                                                 "presets) into FILE.png or FILE.svg (needs matplotlib: pip "
                                                 "install 'qtool[plots]').")] = None,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Convert a model to GGUF, quantizing tensor by tensor exactly as llama.cpp's llama-quantize does."""
    from qtool.cli.output import Output
    from qtool.convert import convert
    from qtool.plan import PlanOptions, read_tensor_type_file
    from qtool.quantizers.presets import parse_ggml_type, parse_tensor_type

    out = Output(json_mode=json, quiet=quiet)
    options = PlanOptions(
        output_tensor_type=parse_ggml_type(output_tensor_type) if output_tensor_type else None,
        token_embedding_type=parse_ggml_type(token_embedding_type) if token_embedding_type else None,
        tensor_types=[parse_tensor_type(spec) for spec in tensor_type]
        + [entry for f in tensor_type_file for entry in read_tensor_type_file(f)],
        pure=pure,
        leave_output_tensor=leave_output_tensor,
        allow_requantize=allow_requantize,
    )
    if pre_tokenizer is not None:  # (the tokenizer module, ~18 ms, only where it is asked for or read)
        from qtool.formats.vocab import check_pre_tokenizer

        check_pre_tokenizer(pre_tokenizer)
    reading = {"pre_tokenizer": pre_tokenizer, "tensors_only": tensors_only}  # how the input is read, every time

    target = cands = None
    if target_bpw is not None or target_size is not None or candidates is not None:  # the mixer only for a mix
        from qtool.analysis.mix import parse_candidates, parse_target

        target = parse_target(target_bpw, target_size)
        cands = parse_candidates(candidates) if candidates is not None else None
    if plot is not None:
        from qtool.analysis.plots import prepare
        from qtool.errors import UsageError

        if target is None:
            raise UsageError("--plot draws a size-targeted mix: it goes with --target-bpw or --target-size")
        prepare(plot)  # the extension, the folder and matplotlib, before any work
    workdir = _calibration(out, target, input, calibrate_text, calibrate_type, calibrate_ctx, threads, reading)
    if workdir is not None:
        import dataclasses

        target = dataclasses.replace(target, calibration=workdir[1])
    with out.progress(total=None, description="quantizing") as advance, _warnings_to(out), \
            workdir[0] if workdir else contextlib.nullcontext():
        measured = [0]  # one bar for both phases: measuring a mix's candidates, then writing

        def measure(name: str, n: int) -> None:
            measured[0] += n
            advance(n, f"measuring {name}")

        result = convert(input, type, output, threads=threads, options=options, imatrix=imatrix,
                         include_weights=include_weights, exclude_weights=exclude_weights, dry_run=dry_run,
                         target=target, candidates=cands, types_from=types_from, recipe_out=recipe_out, **reading,
                         on_start=lambda n: advance.set_total(measured[0] + n),
                         on_tensor=lambda p, n: advance(n, p.name),
                         on_measure_start=advance.set_total, on_measure=measure)
        stock = _stock_presets(input, options, result, reading) if plot is not None else None
    _report(out, result, dry_run)
    if plot is not None:
        from qtool.analysis.plots import frontier_data, plot_frontier

        plot_frontier(frontier_data(result.mix, result.n_elements, stock), plot,
                      title=f"qtool convert {input.name} {result.mix.target.label}: size against predicted error")
        out.note(f"wrote {plot}")


def _calibration(out, target, input, text, qtype, ctx, threads, reading):
    """--calibrate-text: (a temporary folder for the calibration's models, the Calibration), or None."""
    if text is None:
        if qtype is not None:
            from qtool.errors import UsageError

            raise UsageError("--calibrate-type goes with --calibrate-text")
        return None
    import tempfile

    from qtool.analysis.llama_runner import load_llama
    from qtool.analysis.mix import Calibration
    from qtool.cli.eval import kl_measure
    from qtool.errors import FormatError, UsageError
    from qtool.quantizers.presets import parse_ggml_type

    if target is None:
        raise UsageError("--calibrate-text weighs a size-targeted mix: it goes with --target-bpw or --target-size")
    if not text.is_file():
        raise FormatError(f"{text}: no such file (--calibrate-text)")
    load_llama()  # the one-line install hint before any work
    tmp = tempfile.TemporaryDirectory(prefix="qtool-calibrate-")
    measure = kl_measure(input, text, Path(tmp.name), ctx=ctx, threads=threads, note=out.note, reading=reading)
    return tmp, Calibration(str(text), measure, parse_ggml_type(qtype) if qtype else None, ctx)


def _stock_presets(input, options, result, reading) -> dict:
    """Each stock preset's plan of the same input (a dry run: nothing measured or written): preset ->
    (its bytes as the mix's target counts them, {tensor: type}); presets that cannot be planned are left out."""
    from qtool.analysis.plots import STOCK_PRESETS
    from qtool.convert import convert
    from qtool.errors import QtoolError

    stock = {}
    for name in STOCK_PRESETS:
        try:
            r = convert(input, name, None, options=options, dry_run=True, **reading)
        except QtoolError:
            continue
        nbytes = r.file_bytes if result.mix.target.kind == "size" else r.bytes_out
        stock[name] = (nbytes, {p.name: p.qtype for p in r.plan})
    return stock


@contextlib.contextmanager
def _warnings_to(out):
    """qtool's logged warnings (an unrecognized pre-tokenizer, ...) as one line each on stderr."""
    import logging
    import sys

    class _Note(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if not out.quiet:
                sys.stderr.write(f"qtool: warning: {record.getMessage()}\n")

    logger, handler = logging.getLogger("qtool"), _Note(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _report(out, result, dry_run: bool) -> None:
    import numpy as np

    from qtool.formats.ggml_types import QUANT_SIZES
    from qtool.quantizers import can_quantize

    tensors = []
    for p in result.plan:
        n = int(np.prod(p.shape, dtype=np.int64))
        block, size = QUANT_SIZES[p.qtype]
        nbytes = n // block * size if can_quantize(p.qtype) else None
        tensors.append({"name": p.name, "shape": list(p.shape), "source_type": p.source_type.name,
                        "type": p.qtype.name, "quantize": p.quantize, "n_elements": n, "n_bytes": nbytes,
                        "reason": p.reason})
    summary = {
        "tensors": len(result.plan),
        "quantized": sum(1 for p in result.plan if p.quantize),
        "bytes_in": result.bytes_in,
        "bytes_out": result.bytes_out,
        "n_elements": result.n_elements,
        "bpw": result.bits_per_weight,
        "seconds": result.seconds,
    }
    summary["file_bytes"] = result.file_bytes
    doc = {"input": str(result.input), "output": str(result.target) if result.target else None,
           "type": result.preset, "file_type": result.file_type, "dry_run": dry_run,
           "imatrix": result.imatrix, "unmapped": result.unmapped, "tensors": tensors, "summary": summary}
    if result.recipe is not None:
        doc["recipe"] = str(result.recipe)
    if result.mix is not None:
        doc["mix"] = result.mix.document()
    if out.json_mode:
        out.json(doc)
        return
    for problem in result.notes:
        out.note(f"note: llama.cpp may not load the result: {problem}")
    if result.unmapped:
        out.note(f"note: {len(result.unmapped)} tensor name(s) had no GGUF mapping and were kept as they were: "
                 + ", ".join(result.unmapped[:5]) + (" ..." if len(result.unmapped) > 5 else ""))
    if dry_run:
        from rich.table import Table

        table = Table(title=f"plan: {result.input} -> {result.preset}", title_justify="left")
        for col, justify in (("tensor", "left"), ("shape", "left"), ("type", "left"), ("bytes", "right"),
                             ("why", "left")):
            table.add_column(col, justify=justify)
        for t in tensors:
            table.add_row(t["name"], "x".join(map(str, t["shape"])), t["type"],
                          _human_bytes(t["n_bytes"]) if t["n_bytes"] is not None else "?", t["reason"])
        out.print(table)
    if result.mix is not None:
        m = result.mix
        unit = "file bytes" if m.target.kind == "size" else "tensor bytes"
        out.line(f"mix for {m.target.label}: {m.total} {unit} (budget {m.budget}, "
                  f"{100 * (m.budget - m.total) / m.budget:.2f}% under), predicted error {m.predicted_error:.4g} "
                  f"({m.measure}, element-weighted mean), candidates {','.join(t.name for t in m.candidates)}")
        if m.calibration is not None:
            out.line(f"KL calibration at {m.calibration.chosen_type.name} on {m.calibration.text}: "
                      + ", ".join(f"{c.name} {c.kld_mean:.4g} nats (weight {c.weight:.3g})"
                                  for c in m.calibration.classes))
    if result.recipe is not None:
        out.note(f"recipe: {result.recipe} (llama-quantize --tensor-type-file {result.recipe} IN.gguf OUT.gguf "
                 f"{result.preset} reproduces the file)")
    verb = f"would write {result.target}" if dry_run else f"wrote {result.output}"
    out.line(f"{verb}: {summary['tensors']} tensors ({summary['quantized']} quantized), "
              f"{_human_bytes(result.bytes_in)} -> {_human_bytes(result.bytes_out)}, "
              f"{result.bits_per_weight:.2f} bits per weight"
              + ("" if dry_run else f", {result.seconds:.2f} s"))


def register(app: typer.Typer) -> None:
    app.command("convert", no_args_is_help=True)(convert_command)
