"""`qtool types`: the presets --type accepts and the ggml types, with bits per weight and what qtool does."""

from __future__ import annotations

import typer

from qtool.cli.options import JsonOpt


def _type_rows():
    from qtool.formats.ggml_types import QUANT_SIZES
    from qtool import plan
    from qtool.quantizers import presets, registered

    reg = registered()
    for qtype, (block, size) in sorted(QUANT_SIZES.items()):
        if qtype not in presets.TARGET_TYPES:
            continue
        yield {"name": qtype.name, "block_size": block, "type_size": size, "bpw": 8.0 * size / block,
               "quantize": qtype in reg, "requires_imatrix": plan.imatrix_required(qtype)}


def _preset_rows():
    from qtool.formats.ggml_types import QUANT_SIZES
    from qtool import plan
    from qtool.quantizers import presets, registered

    reg = registered()
    for p in presets.PRESETS.values():
        base = p.base_type
        block, size = QUANT_SIZES[base]
        yield {"name": p.name, "file_type": int(p.ftype), "base_type": base.name, "base_bpw": 8.0 * size / block,
               "quantize": p.only_copy or base in reg, "requires_imatrix": plan.imatrix_required(p),
               "alias_of": p.alias_of, "description": p.description}


def types_command(json: JsonOpt = False) -> None:
    """List the llama-quantize presets --type accepts and the ggml types, with bits per weight.

    A preset mixes types per tensor (llama.cpp's rules), so its size lands somewhat above its base type's
    bits per weight; `qtool convert --dry-run` gives the exact figure for a model."""
    from rich.table import Table

    from qtool.cli.output import Output

    out = Output(json_mode=json)
    presets, types = list(_preset_rows()), list(_type_rows())
    if json:
        out.json({"presets": presets, "types": types})
        return
    table = Table(title="presets (--type)", title_justify="left")
    for col, justify in (("preset", "left"), ("ftype", "right"), ("base type", "left"), ("base bpw", "right"),
                         ("qtool", "left"), ("imatrix", "left"), ("llama-quantize says", "left")):
        table.add_column(col, justify=justify)
    for r in presets:
        table.add_row(r["name"], str(r["file_type"]), r["base_type"], f"{r['base_bpw']:.4g}",
                      "yes" if r["quantize"] else "not yet", "required" if r["requires_imatrix"] else "",
                      r["description"])
    out.print(table)
    table = Table(title="ggml types (for --tensor-type and friends)", title_justify="left")
    for col, justify in (("type", "left"), ("block", "right"), ("bytes", "right"), ("bpw", "right"),
                         ("qtool", "left")):
        table.add_column(col, justify=justify)
    for r in types:
        table.add_row(r["name"], str(r["block_size"]), str(r["type_size"]), f"{r['bpw']:.4g}",
                      "yes" if r["quantize"] else "not yet")
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command("types")(types_command)
