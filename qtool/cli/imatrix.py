"""`qtool imatrix`: an importance matrix computed from a text, as llama.cpp's llama-imatrix computes it.

    qtool imatrix MODEL.gguf --text FILE -o OUT.imatrix.gguf [--ctx N] [--chunks N]

The model runs in llama.cpp (the eval extra); the CLI only parses, calls qtool.analysis.llama_runner and prints.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from qtool.cli.options import JsonOpt, QuietOpt, ThreadsOpt


def imatrix_command(
    model: Annotated[Path, typer.Argument(help="The GGUF to run (best the unquantized one).", show_default=False)],
    text: Annotated[Path, typer.Option("--text", help="The calibration text (any bytes; tokenized with the "
                                                      "model's vocabulary).", show_default=False)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output file (default: "
                                                   "<model-stem>.imatrix.gguf beside the model).")] = None,
    ctx: Annotated[int, typer.Option("--ctx", "-c", help="Tokens per chunk; the text must hold at least two.")] = 512,
    chunks: Annotated[Optional[int], typer.Option("--chunks", help="Use only the first N chunks.")] = None,
    process_output: Annotated[bool, typer.Option("--process-output", help="Also collect output.weight's "
                                                 "activations (llama-imatrix leaves them out by default).")] = False,
    threads: ThreadsOpt = None,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Compute an importance matrix (the sum of squared activations into every weight matrix) by running the
    model over a text in llama.cpp; write it in llama-imatrix's GGUF format, for qtool convert --imatrix or
    llama-quantize."""
    from qtool.analysis.llama_runner import make_imatrix
    from qtool.cli.output import Output

    out = Output(json_mode=json, quiet=quiet)
    target = output if output is not None else model.with_name(f"{model.stem}.imatrix.gguf")
    with out.progress(total=None, description="collecting") as advance:
        doc = make_imatrix(model, text, target, ctx=ctx, chunks=chunks, threads=threads or os.cpu_count() or 1,
                           process_output=process_output, on_start=advance.set_total,
                           on_chunk=lambda i: advance(1, f"chunk {i + 1}"))
    if out.json_mode:
        out.json(doc)
        return
    out.line(f"wrote {doc['output']}: {doc['entries']} entries from {doc['chunks']} chunk(s) of {doc['ctx']} "
              f"tokens ({doc['text_tokens']} in the text), {doc['seconds']:.1f} s")


def register(app: typer.Typer) -> None:
    app.command("imatrix", no_args_is_help=True)(imatrix_command)
