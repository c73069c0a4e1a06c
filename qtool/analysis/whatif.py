"""What-if: how much each candidate type would hurt each tensor, before converting anything.

For every tensor llama.cpp would quantize and every candidate type whose block fits its rows, quantize
in memory with the registry, dequantize, and measure against the original: rel_rmse, collapsed_frac,
flipped_frac and bits per weight. One tensor in memory at a time (plus one candidate's bytes).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from qtool.analysis import stats
from qtool.analysis.weights import load_floats
from qtool.errors import QtoolError, UsageError


def parse_types(spec: str) -> list:
    """``"Q4_0,Q4_K"`` -> registered quantizers, in the order given. Unknown or unregistered types (and
    types that need an importance matrix) are a UsageError naming them and listing what is registered."""
    from qtool.formats.ggml_types import all_types
    from qtool.quantizers import registered

    reg = {q.name: q for q in registered().values()}
    names = [n.strip().upper() for n in spec.split(",") if n.strip()]
    if not names:
        raise UsageError("--what-if needs at least one type, e.g. --what-if Q4_0,Q4_K")
    known = {t.name for t in all_types()}
    unknown = [n for n in names if n not in known]
    missing = [n for n in names if n not in reg and n not in unknown]
    if unknown or missing:
        parts = ([f"unknown type{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}"] if unknown else []) + \
                ([f"no quantizer registered for {', '.join(missing)}"] if missing else [])
        raise UsageError(f"--what-if: {'; '.join(parts)}; registered types: {', '.join(reg)}")
    needs = [n for n in names if reg[n].requires_imatrix]
    if needs:
        raise UsageError(f"--what-if: {', '.join(needs)} need an importance matrix, which what-if does not take")
    seen: dict[str, Any] = {}
    for n in names:
        seen.setdefault(n, reg[n])
    return list(seen.values())


def why_kept(name: str, shape: tuple[int, ...], arch: str | None) -> str | None:
    """None when llama.cpp quantizes this tensor, else why not (llama-quant.cpp's rule, from presets)."""
    from qtool.plan import why_not_quantized

    return why_not_quantized(name, tuple(shape), arch or "", False)


@dataclass
class Candidate:
    type: str
    bpw: float
    n_bytes: int
    rel_rmse: float
    collapsed_frac: float
    flipped_frac: float


@dataclass
class WhatIfTensor:
    name: str
    shape: list[int]
    n_elements: int
    #: type name -> Candidate, or None where the type's block does not fit the rows (or it failed)
    candidates: dict[str, Candidate | None]
    #: type name -> why there is no Candidate
    why: dict[str, str] = field(default_factory=dict)


@dataclass
class WhatIf:
    file: str
    format: str
    types: list[str]
    tensors: list[WhatIfTensor]
    #: tensors llama.cpp leaves as they are (1-D, norms, routers ...): {"name", "reason"}
    kept: list[dict] = field(default_factory=list)
    #: tensors or candidates that could not be measured (unreadable, non-finite): {"name", "reason"}
    skipped: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        """Per type: the tensors it fits, their bytes and bpw, element-weighted rel_rmse and fractions."""
        out: dict[str, dict] = {}
        for t in self.types:
            fit = [(w.n_elements, c) for w in self.tensors if (c := w.candidates.get(t)) is not None]
            n_el = sum(n for n, _ in fit)
            n_bytes = sum(c.n_bytes for _, c in fit)
            line: dict[str, Any] = {"n_tensors": len(fit), "n_unfit": len(self.tensors) - len(fit),
                                    "n_elements": n_el, "n_bytes": n_bytes,
                                    "bpw": 8.0 * n_bytes / n_el if n_el else None}
            for key in ("rel_rmse", "collapsed_frac", "flipped_frac"):
                pairs = [(n, getattr(c, key)) for n, c in fit if math.isfinite(getattr(c, key))]
                w = sum(n for n, _ in pairs)
                line[key] = sum(n * v for n, v in pairs) / w if w else None
            out[t] = line
        return out

    def document(self, sort: str | None = None, top: int | None = None) -> dict:
        tensors = self.ordered(sort, top)
        return {
            "file": self.file, "format": self.format, "what_if": self.types,
            "tensors": [{"name": w.name, "shape": w.shape, "n_elements": w.n_elements,
                         "candidates": {k: (None if c is None else
                                            {"rel_rmse": c.rel_rmse, "collapsed_frac": c.collapsed_frac,
                                             "flipped_frac": c.flipped_frac, "bpw": c.bpw, "n_bytes": c.n_bytes})
                                        for k, c in w.candidates.items()}}
                        for w in tensors],
            "summary": {"types": self.summary(), "kept": self.kept, "skipped": self.skipped},
        }

    def ordered(self, sort: str | None = None, top: int | None = None) -> list[WhatIfTensor]:
        """Worst first by the ``sort`` figure (rel_rmse, collapsed_frac, flipped_frac) of the first
        candidate type, or of ``TYPE:FIELD``; file order without."""
        tensors = list(self.tensors)
        if sort is not None:
            type_name, _, key = sort.rpartition(":")
            type_name = type_name.upper() or self.types[0]
            if key not in ("rel_rmse", "collapsed_frac", "flipped_frac") or type_name not in self.types:
                raise UsageError(f"--sort {sort!r} with --what-if: use rel_rmse, collapsed_frac or flipped_frac, "
                                 f"optionally as TYPE:FIELD with TYPE one of {', '.join(self.types)}")

            def k(w: WhatIfTensor):
                c = w.candidates.get(type_name)
                v = None if c is None else getattr(c, key)
                return (1, 0.0) if v is None or math.isnan(v) else (0, -v)

            tensors.sort(key=k)
        return tensors[:top] if top is not None else tensors


def what_if(
    path: str | Path,
    types: list,
    *,
    select: str | None = None,
    threads: int | None = None,
    on_start: Callable[[int], None] | None = None,
    on_tensor: Callable[[str, int], None] | None = None,
) -> WhatIf:
    """Quantize every tensor of ``path`` that llama.cpp would quantize to each quantizer in ``types``
    (from ``parse_types``), in memory, and measure the damage. One tensor at a time."""
    from qtool.formats.source import open_model

    pattern = None
    if select is not None:
        try:
            pattern = re.compile(select)
        except re.error as e:
            raise UsageError(f"--tensor {select!r} is not a regular expression: {e}") from None
    with open_model(path) as src:
        result = WhatIf(file=str(path), format=src.format, types=[q.name for q in types], tensors=[])
        infos = []
        for info in src.tensors:
            if pattern is not None and not pattern.search(info.name):
                continue
            why = why_kept(info.name, tuple(info.shape), src.architecture)
            if why is None:
                infos.append(info)
            else:
                result.kept.append({"name": info.name, "reason": why})
        if pattern is not None and not infos:
            raise UsageError(f"--tensor {select!r} selects no tensor that llama.cpp would quantize")
        if on_start is not None:
            on_start(sum(i.n_elements for i in infos) * len(types))
        for info in infos:
            try:
                x = load_floats(src, info.name, threads=threads)
            except QtoolError as e:
                result.skipped.append({"name": info.name, "reason": f"cannot read: {e}"})
                continue
            shape = tuple(int(d) for d in info.shape)
            entry = WhatIfTensor(info.name, list(shape), int(info.n_elements), {})
            for q in types:
                if not q.fits(shape[-1]):
                    entry.candidates[q.name] = None
                    entry.why[q.name] = "does not fit"
                else:
                    try:
                        data = q.quantize(x, name=info.name, threads=threads)
                    except QtoolError as e:  # NaN/Inf in the weights: say so, go on
                        entry.candidates[q.name] = None
                        entry.why[q.name] = "cannot quantize"
                        result.skipped.append({"name": info.name, "reason": f"{q.name}: {e}"})
                    else:
                        back = q.dequantize(data, name=info.name, threads=threads)
                        figs = stats.error_brief(back, x)
                        entry.candidates[q.name] = Candidate(q.name, q.bits_per_weight, int(data.nbytes), **figs)
                        del data, back
                if on_tensor is not None:
                    on_tensor(info.name, info.n_elements)
            result.tensors.append(entry)
            del x
            src.release(info.name)
    return result
