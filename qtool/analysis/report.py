"""The report behind `qtool inspect`: a model's tensors, and (streaming, one tensor at a time) their
error, sign-loss and outlier figures, with per-layer and whole-model summaries.

Library code: it reads, computes and returns a `Report`; the CLI renders it.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from qtool.analysis import stats
from qtool.analysis.weights import load_floats
from qtool.errors import QtoolError, UsageError
from qtool.formats.gguf_in import StringRecords


@dataclass(frozen=True)
class Field:
    """A figure that can be sorted on, gated on and summarised."""

    name: str
    group: str | None          # "error", "sign", "outliers", or None for the tensor's own fields
    worse: str                 # "high" or "low": which end is worse (for --sort)
    summary: str               # how the whole-model line combines it: "mean" (element-weighted), "sum", "max"


FIELDS: dict[str, Field] = {f.name: f for f in (
    Field("rmse", "error", "high", "mean"),
    Field("rel_rmse", "error", "high", "mean"),
    Field("max_abs", "error", "high", "max"),
    Field("sqnr_db", "error", "low", "mean"),
    Field("cosine", "error", "low", "mean"),
    Field("p50", "error", "high", "mean"),
    Field("p95", "error", "high", "mean"),
    Field("p99", "error", "high", "mean"),
    Field("nonzero", "sign", "high", "sum"),
    Field("collapsed", "sign", "high", "sum"),
    Field("flipped", "sign", "high", "sum"),
    Field("collapsed_frac", "sign", "high", "mean"),
    Field("flipped_frac", "sign", "high", "mean"),
    Field("zero_frac", "sign", "high", "mean"),
    Field("crest", "outliers", "high", "mean"),
    Field("kurtosis", "outliers", "high", "mean"),
    Field("beyond_3sigma", "outliers", "high", "mean"),
    Field("beyond_6sigma", "outliers", "high", "mean"),
    Field("outlier_channels", "outliers", "high", "sum"),
    Field("scale_dominated_blocks", "outliers", "high", "mean"),
    Field("bpw", None, "low", "mean"),
    Field("n_elements", None, "high", "sum"),
    Field("n_bytes", None, "high", "sum"),
)}

#: the figures each mode computes (a field outside its mode is an error to ask for)
REFERENCE_FIELDS = ("rmse", "rel_rmse", "max_abs", "sqnr_db", "cosine", "p50", "p95", "p99",
                    "nonzero", "collapsed", "flipped", "collapsed_frac", "flipped_frac")
SELF_FIELDS = ("zero_frac",)
OUTLIER_FIELDS = ("crest", "kurtosis", "beyond_3sigma", "beyond_6sigma", "outlier_channels",
                  "scale_dominated_blocks")
TENSOR_FIELDS = ("bpw", "n_elements", "n_bytes")

_LAYER = re.compile(r"^blk\.(\d+)\.")


def mode_fields(*, reference: bool, figures: bool = True) -> tuple[str, ...]:
    """The per-tensor fields a report of this kind carries."""
    if not figures:
        return TENSOR_FIELDS
    return (REFERENCE_FIELDS if reference else SELF_FIELDS) + OUTLIER_FIELDS + TENSOR_FIELDS


def block_size(qtype) -> int:
    """The quantization block of a ggml type; 32 for the unblocked float types."""
    from qtool.formats.ggml_types import QUANT_SIZES

    block = QUANT_SIZES[qtype][0]
    return block if block > 1 else stats.FLOAT_BLOCK


@dataclass
class TensorEntry:
    name: str
    type: str
    shape: list[int]
    n_elements: int
    n_bytes: int
    error: dict | None = None
    sign: dict | None = None
    outliers: dict | None = None

    @property
    def bpw(self) -> float:
        return 8.0 * self.n_bytes / self.n_elements if self.n_elements else math.nan

    @property
    def layer(self) -> int | None:
        m = _LAYER.match(self.name)
        return int(m.group(1)) if m else None

    def value(self, name: str) -> float | None:
        """A figure by field name, as a float (``outlier_channels`` is its count); None when absent."""
        f = FIELDS[name]
        if f.group is None:
            return float(getattr(self, name))
        group = getattr(self, f.group)
        if not group or name not in group:
            return None
        v = group[name]
        if isinstance(v, dict):
            v = v["count"]
        return float(v)

    def document(self, figures: bool) -> dict:
        doc: dict[str, Any] = {"name": self.name, "type": self.type, "shape": self.shape,
                               "n_elements": self.n_elements, "n_bytes": self.n_bytes, "bpw": self.bpw}
        if figures:
            doc.update(error=self.error, sign=self.sign, outliers=self.outliers)
        return doc


@dataclass
class Report:
    file: str
    format: str
    architecture: str | None
    metadata: dict[str, Any]
    tensors: list[TensorEntry]
    reference: str | None = None
    #: whether the weights were read (False: the header-only listing)
    figures: bool = True
    #: tensors without figures: {"name", "reason"} (no match in the reference, shapes differ, unreadable)
    skipped: list[dict] = field(default_factory=list)
    #: reference tensors the quantized file does not have
    reference_only: list[str] = field(default_factory=list)
    #: {"tensor", "of", "zeros", "below", "edges", "counts", "above"} when a histogram was asked for
    histogram: dict | None = None

    @property
    def fields(self) -> tuple[str, ...]:
        return mode_fields(reference=self.reference is not None, figures=self.figures)

    def summary(self) -> dict:
        """Totals, the type histogram, element-weighted figures, per layer and for the whole model."""
        doc = summarise(self.tensors, self.fields)
        types: dict[str, dict] = {}
        for t in self.tensors:
            s = types.setdefault(t.type, {"n_tensors": 0, "n_elements": 0, "n_bytes": 0})
            s["n_tensors"] += 1
            s["n_elements"] += t.n_elements
            s["n_bytes"] += t.n_bytes
        for s in types.values():
            s["bpw"] = 8.0 * s["n_bytes"] / s["n_elements"] if s["n_elements"] else None
        doc["types"] = types
        if self.figures:
            layers: dict[int, list[TensorEntry]] = {}
            for t in self.tensors:
                if t.layer is not None:
                    layers.setdefault(t.layer, []).append(t)
            doc["layers"] = [{"layer": n, **summarise(ts, self.fields)} for n, ts in sorted(layers.items())]
            doc["skipped"] = self.skipped
            if self.reference is not None:
                doc["reference_only"] = self.reference_only
        return doc

    def ordered(self, sort: str | None = None, top: int | None = None) -> list[TensorEntry]:
        """The tensors worst first by ``sort`` (file order without), the first ``top`` of them."""
        tensors = list(self.tensors)
        if sort is not None:
            tensors = sort_entries(tensors, resolve_field(sort, self.fields))
        return tensors[:top] if top is not None else tensors

    def document(self, sort: str | None = None, top: int | None = None) -> dict:
        """The JSON document of `qtool inspect --json`."""
        doc: dict[str, Any] = {"file": self.file, "format": self.format}
        if self.figures:
            doc["reference"] = self.reference
        doc["metadata"] = {k: summarise_value(v) for k, v in self.metadata.items()}
        doc["tensors"] = [t.document(self.figures) for t in self.ordered(sort, top)]
        doc["summary"] = self.summary()
        if self.histogram is not None:
            doc["histogram"] = self.histogram
        return doc


def resolve_field(name: str, available: tuple[str, ...]) -> str:
    """A field name (optionally qualified, ``error.rel_rmse``) checked against the report's fields."""
    bare = name.strip()
    if "." in bare:
        group, _, bare = bare.partition(".")
        if bare in FIELDS and FIELDS[bare].group != group:
            bare = ""
    if bare not in FIELDS:
        raise UsageError(f"unknown field {name!r}; valid fields: {', '.join(available)}")
    if bare not in available:
        why = ("needs --reference" if bare in REFERENCE_FIELDS
               else "is only reported without --reference" if bare in SELF_FIELDS
               else "needs the weights (drop --no-stats)")
        raise UsageError(f"field {bare!r} {why}; valid fields here: {', '.join(available)}")
    return bare


def sort_entries(entries: list[TensorEntry], name: str) -> list[TensorEntry]:
    """Worst first by ``name``; tensors without a finite value for it go last, in file order."""
    f = FIELDS[name]
    sign = -1.0 if f.worse == "high" else 1.0

    def key(t: TensorEntry):
        v = t.value(name)
        if v is None or math.isnan(v):
            return (1, 0.0)
        return (0, sign * v)

    return sorted(entries, key=key)


def summarise(entries: list[TensorEntry], fields: tuple[str, ...]) -> dict:
    """Element-weighted means (sums, maxima) of the figures of ``entries``; None where no tensor has one."""
    n_elements = sum(t.n_elements for t in entries)
    n_bytes = sum(t.n_bytes for t in entries)
    out: dict[str, Any] = {"n_tensors": len(entries), "n_elements": n_elements, "n_bytes": n_bytes,
                           "bpw": 8.0 * n_bytes / n_elements if n_elements else None}
    for name in fields:
        if name in TENSOR_FIELDS:
            continue
        how = FIELDS[name].summary
        pairs = [(t.n_elements, v) for t in entries
                 if (v := t.value(name)) is not None and math.isfinite(v)]
        if not pairs:
            out[name] = None
        elif how == "sum":
            out[name] = int(sum(v for _, v in pairs))
        elif how == "max":
            out[name] = max(v for _, v in pairs)
        else:
            w = sum(n for n, _ in pairs)
            out[name] = sum(n * v for n, v in pairs) / w if w else None
    return out


def summarise_value(value: Any, limit: int = 16) -> Any:
    """A metadata value fit to print: arrays longer than ``limit`` become e.g. "[320 strings]"."""
    if isinstance(value, StringRecords):  # a Hugging Face folder's tokens read in bulk
        if len(value) > limit:
            return f"[{len(value)} strings]"
        value = value.tolist()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, (list, tuple)):
        if len(value) > limit:
            kinds = {type(v) for v in value}
            kind = ("strings" if kinds <= {str, bytes} else "ints" if kinds <= {int, bool}
                    else "floats" if kinds <= {float, int} else "arrays" if kinds <= {list, tuple} else "items")
            return f"[{len(value)} {kind}]"
        return [summarise_value(v, limit) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def inspect_model(
    path: str | Path,
    *,
    reference: str | Path | None = None,
    figures: bool = True,
    select: str | None = None,
    histogram: str | None = None,
    on_start: Callable[[int], None] | None = None,
    on_tensor: Callable[[str, int], None] | None = None,
) -> Report:
    """Read ``path`` (GGUF, safetensors, HF folder) and, unless ``figures`` is False, each tensor's
    figures, one tensor at a time: against the same-named tensor of ``reference`` when given, else
    of the (dequantized) weights themselves. ``select`` is a regex on tensor names; ``histogram``
    names the tensor whose |error| (or |weight|) histogram to keep. ``on_start(total_bytes)`` and
    ``on_tensor(name, nbytes)`` report progress."""
    from qtool.formats.source import open_model

    pattern = _compile(select)
    if reference is not None and not figures:
        raise UsageError("--reference needs the weights; drop --no-stats")
    with contextlib.ExitStack() as stack:
        src = stack.enter_context(open_model(path))
        ref = stack.enter_context(open_model(reference)) if reference is not None else None
        infos = [t for t in src.tensors if pattern is None or pattern.search(t.name)]
        if pattern is not None and not infos:
            raise UsageError(f"--tensor {select!r} matches none of the {len(src.tensors)} tensors of {src.path}")
        if histogram is not None and histogram not in {t.name for t in infos}:
            raise UsageError(f"--histogram: no tensor named {histogram!r}"
                             + (" among those --tensor selects" if pattern is not None else ""))
        report = Report(file=str(path), format=src.format, architecture=src.architecture,
                        metadata=dict(src.metadata), tensors=[], figures=figures,
                        reference=str(reference) if reference is not None else None)
        if ref is not None:
            ours = {t.name for t in src.tensors}
            report.reference_only = [t.name for t in ref.tensors if t.name not in ours]
        if on_start is not None:
            on_start(sum(t.nbytes for t in infos) if figures else 0)
        for info in infos:
            entry = TensorEntry(name=info.name, type=info.qtype.name, shape=[int(d) for d in info.shape],
                                n_elements=int(info.n_elements), n_bytes=int(info.nbytes))
            report.tensors.append(entry)
            if not figures:
                continue
            keep = info.name == histogram
            try:
                reason = _figures(entry, info, src, ref, keep, report)
            except QtoolError as e:
                reason = f"cannot read: {e}"
            if reason is not None:
                report.skipped.append({"name": info.name, "reason": reason})
            if on_tensor is not None:
                on_tensor(info.name, info.nbytes)
    return report


def _figures(entry: TensorEntry, info, src, ref, keep: bool, report: Report) -> str | None:
    """Fill ``entry``'s figures; return why not, if they cannot be had."""
    block = block_size(info.qtype)
    if ref is None:
        w = load_floats(src, info.name)
        fig = stats.describe(w, block_size=block, keep_abs=keep)
        of = "|w|"
        del w
        src.release(info.name)
    else:
        try:
            rinfo = ref.info(info.name)
        except KeyError:
            return "not in the reference"
        if tuple(rinfo.shape) != tuple(info.shape):
            return f"shape {list(info.shape)} but {list(rinfo.shape)} in the reference"
        q = load_floats(src, info.name)
        x = load_floats(ref, info.name)
        fig = stats.compare(q, x, block_size=block, keep_abs_error=keep)
        of = "|q-x|"
        del q, x
        src.release(info.name)
        ref.release(info.name)
    entry.error, entry.sign, entry.outliers = fig.error, fig.sign, fig.outliers
    if keep:
        report.histogram = {"tensor": info.name, "of": of, **stats.histogram(fig.abs_error)}
    return None


def _compile(select: str | None) -> re.Pattern | None:
    if select is None:
        return None
    try:
        return re.compile(select)
    except re.error as e:
        raise UsageError(f"--tensor {select!r} is not a regular expression: {e}") from None
