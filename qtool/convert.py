"""The convert pipeline: read -> plan (a type per tensor) -> quantize -> write, one tensor at a time.

Library code: no printing. The CLI passes a progress callback and renders the returned result.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from gguf import GGMLQuantizationType

from qtool.errors import FormatError, QuantError, UsageError

#: ggml's GGML_QNT_VERSION, which llama.cpp records as general.quantization_version
QUANTIZATION_VERSION = 2


@dataclass
class ConvertResult:
    input: Path
    output: Path | None
    preset: str
    file_type: int
    plan: list[Any]
    bytes_in: int
    bytes_out: int
    n_elements: int
    seconds: float
    imatrix: str | None = None
    unmapped: list[str] = field(default_factory=list)
    #: where the output goes (for a dry run: would go); ``output`` is set once it is written
    target: Path | None = None
    #: why llama.cpp may not load the result (from the reader: unknown architecture metadata, no tokenizer)
    notes: list[str] = field(default_factory=list)
    #: a size-targeted mix (analysis.mix.Mix), when --target-bpw/--target-size chose the types
    mix: Any = None
    #: the bytes of the whole file (header, metadata, padded tensors)
    file_bytes: int | None = None
    #: where --recipe-out wrote the plan as a llama-quantize --tensor-type-file
    recipe: Path | None = None

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.bytes_out / self.n_elements if self.n_elements else 0.0


def default_output(input_path: Path, type_name: str) -> Path:
    """`<input-stem>-<TYPE>.gguf` beside the input (beside the folder, for a model folder)."""
    p = Path(input_path)
    if p.name in ("", ".."):  # `qtool convert .` names the folder by its real name, beside it
        p = Path(os.path.abspath(p))
    name = p.name
    for suffix in (".safetensors.index.json", ".safetensors", ".gguf"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return p.parent / f"{name}-{type_name}.gguf"


def _input_files(source) -> list[Path]:
    files = [Path(source.path)]
    files.extend(Path(f) for f in getattr(source, "files", []) or [])
    return files


def convert(
    input_path: str | Path,
    type_name: str | None,
    output: str | Path | None = None,
    *,
    threads: int | None = None,
    options: Any = None,
    imatrix: str | Path | None = None,
    include_weights: list[str] | None = None,
    exclude_weights: list[str] | None = None,
    dry_run: bool = False,
    target: Any = None,
    candidates: list | None = None,
    types_from: str | Path | None = None,
    recipe_out: str | Path | None = None,
    pre_tokenizer: str | None = None,
    tensors_only: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_tensor: Callable[[Any, int], None] | None = None,
    on_measure_start: Callable[[int], None] | None = None,
    on_measure: Callable[[str, int], None] | None = None,
) -> ConvertResult:
    """Convert (and quantize) a model; see `qtool convert --help` for what each argument means.

    ``options`` is a plan.PlanOptions. ``target`` (analysis.mix.Target) chooses the types of the tensors the
    mixture rules would place, from ``candidates`` (default: near the target), under a byte budget;
    ``types_from`` takes them from another GGUF; ``type_name`` may then be None (the preset is found).
    ``recipe_out`` receives the plan as a llama-quantize --tensor-type-file (also on a dry run).
    ``pre_tokenizer`` and ``tensors_only`` go to open_model (they apply to Hugging Face folders).
    For progress bars: ``on_start(total_elements)`` is called once the plan is made, ``on_tensor(plan_entry,
    n_elements)`` after each tensor is written; ``on_measure_start``/``on_measure(name, n)`` while a mix
    measures its candidates.
    """
    from qtool.formats.source import open_model
    from qtool import plan as planner
    from qtool.quantizers import presets

    t0 = time.perf_counter()
    options = options or planner.PlanOptions()
    if target is not None and types_from is not None:
        raise UsageError("--types-from and --target-bpw/--target-size exclude each other")
    if candidates and target is None:
        raise UsageError("--candidates needs --target-bpw or --target-size")
    if type_name is None and target is None and types_from is None:
        raise UsageError("--type is required (a preset such as Q4_K_M), unless --target-bpw, --target-size or "
                         "--types-from chooses the types")
    preset = presets.get_preset(type_name) if type_name is not None else None
    if preset is not None and (target is not None or types_from is not None) and \
            (preset.only_copy or not presets.is_quantized(preset.base_type)):
        raise UsageError(f"--type {preset.name} quantizes nothing; with --target-bpw/--target-size/--types-from "
                         f"give a quantized preset (it sets general.file_type) or none")
    imat = None
    if imatrix is not None:
        from qtool.formats.imatrix import load_imatrix

        imat = load_imatrix(imatrix)
        imat.check_finite()
        imat = imat.filter(include=include_weights or [], exclude=exclude_weights or [])
        # as in llama-quantize: an importance matrix that filtering emptied counts as none at all
        options = dataclasses.replace(options, has_imatrix=len(imat) > 0)
    elif include_weights or exclude_weights:
        raise UsageError("--include-weights/--exclude-weights need --imatrix")

    with open_model(input_path, pre_tokenizer=pre_tokenizer, tensors_only=tensors_only) as source:
        if not source.architecture and source.problems:  # e.g. an architecture not in qtool.archs
            raise UsageError(source.problems[0])
        # safetensors tensors reach the planner as F32, i.e. as llama-quantize sees the F32 GGUF that
        # convert_hf_to_gguf would write: 1-D and other unquantized tensors stay F32 in the output.
        as_f32 = source.format != "gguf"
        planned = [dataclasses.replace(t, qtype=GGMLQuantizationType.F32) for t in source.tensors] if as_f32 \
            else list(source.tensors)
        mix = None
        if types_from is not None:
            other_preset, exact = _types_from(types_from, planned)
            options = dataclasses.replace(options, exact_types=exact)
            preset = preset or other_preset
        if target is not None:
            from qtool.analysis import mix as mixer

            rules_preset = preset or presets.get_preset("Q4_K_M")  # places no tensor the mix decides
            base = planner.plan_model(rules_preset, source.metadata, planned, options)
            offset, alignment = _data_offset(source, base, imat, int(rules_preset.ftype))
            mix = mixer.make_mix(source, source.metadata, planned, options, target, candidates=candidates,
                                 imat=imat, preset=rules_preset, header_bytes=offset, alignment=alignment,
                                 threads=threads, on_start=on_measure_start, on_tensor=on_measure)
            options = dataclasses.replace(options, exact_types=mix.types)
            preset = preset or mixer.preset_for(mix)
        plan = planner.plan_model(preset, source.metadata, planned, options)
        planner.check_imatrix(plan, imat.names() if imat is not None else None)

        bytes_in = sum(t.nbytes for t in source.tensors)
        n_elements = sum(int(np.prod(p.shape, dtype=np.int64)) for p in plan)
        bytes_out = sum(_nbytes(p.shape, p.qtype) for p in plan)
        result = ConvertResult(input=Path(input_path), output=None, preset=preset.name,
                               file_type=planner.file_type(preset, source.metadata, planned), plan=plan,
                               bytes_in=bytes_in, bytes_out=bytes_out, n_elements=n_elements, seconds=0.0,
                               imatrix=str(imatrix) if imatrix else None, unmapped=list(source.unmapped),
                               notes=list(getattr(source, "problems", []) or []), mix=mix)
        if source.architecture:
            offset, alignment = _data_offset(source, plan, imat, result.file_type)
            result.file_bytes = offset + sum(-(-_nbytes(p.shape, p.qtype) // alignment) * alignment for p in plan)

        # everything a real run would refuse, a dry run refuses too
        from qtool.formats.gguf_out import GGUFOut, check_output_path

        tag = preset.name if target is None else f"mix-{target.text.replace(' ', '')}" + \
            ("bpw" if target.kind == "bpw" else "")
        out_path = Path(output) if output is not None else default_output(Path(input_path), tag)
        check_output_path(out_path, _input_files(source))
        result.target = out_path
        if recipe_out is not None:
            check_output_path(Path(recipe_out), _input_files(source) + [out_path])
            Path(recipe_out).write_text(planner.recipe_text(plan))
            result.recipe = Path(recipe_out)
        if imat is not None:
            for p in plan:
                if p.quantize:
                    imat.for_tensor(p.name, p.shape)  # QuantError when its length does not fit the tensor
        if dry_run:
            result.seconds = time.perf_counter() - t0
            return result

        from qtool.quantizers import can_quantize

        missing = sorted({p.qtype.name for p in plan if p.quantize and not can_quantize(p.qtype)})
        if missing:
            raise UsageError(f"preset {preset.name} uses ggml type {', '.join(missing)}, which qtool cannot quantize "
                             f"yet (`qtool types` lists what it can; --dry-run shows the plan)")
        if not source.architecture:
            raise UsageError(f"{input_path}: the model's architecture is unknown (no general.architecture, "
                             f"no config.json), so llama.cpp could not load the result")

        if on_start is not None:
            on_start(n_elements)
        with GGUFOut(out_path, source.architecture, alignment=source.metadata.get("general.alignment")) as out:
            _write_metadata(out, source, result, imat)
            for p in plan:
                out.add_tensor(p.name, p.shape, p.qtype)
            out.begin()
            widened, written = _Reused(np.float32), _Reused(np.uint8)
            for p in plan:
                out.write(p.name, _tensor_bytes(source, p, imat, threads, widened, written))
                source.release(p.name)  # keep the resident set near one tensor, not the whole input
                if on_tensor is not None:
                    on_tensor(p, int(np.prod(p.shape, dtype=np.int64)))
            result.output = out.commit()
    result.seconds = time.perf_counter() - t0
    return result


def _types_from(path: str | Path, planned: list) -> tuple[Any, dict]:
    """The per-tensor types of GGUF ``path`` for the planner's ``planned`` tensors, and the preset its
    general.file_type names."""
    from qtool import plan as planner
    from qtool.formats.gguf_in import GGUFSource
    from qtool.quantizers import presets

    with GGUFSource(path) as other:
        exact = planner.types_from(planned, list(other.tensors), str(path))
        ft = other.metadata.get("general.file_type")
    if ft is None:
        raise UsageError(f"--types-from {path} has no general.file_type; give --type (it sets the file type)")
    try:
        return presets.get_preset(str(int(ft) & ~1024)), exact
    except UsageError:
        raise UsageError(f"--types-from {path}: its general.file_type {int(ft)} names no llama-quantize preset; "
                         f"give --type (it sets the file type)") from None


def _data_offset(source, plan, imat, file_type: int) -> tuple[int, int]:
    """(offset of the tensor data, alignment) of the file ``plan`` makes: header, metadata and tensor infos
    as convert writes them, without writing anything (every type has a fixed-size info, so any plan of
    the same tensors gives the same offset)."""
    from qtool.formats.gguf_out import GGUFOut

    # nothing is written: the path only names the (never opened) temporary file
    out = GGUFOut(Path("offset.gguf"), source.architecture or "unknown",
                  alignment=source.metadata.get("general.alignment"))
    fake = ConvertResult(input=Path("."), output=None, preset="", file_type=file_type, plan=plan, bytes_in=0,
                         bytes_out=0, n_elements=0, seconds=0.0)
    _write_metadata(out, source, fake, imat)
    for p in plan:
        out.add_tensor(p.name, p.shape, p.qtype)
    return out.data_offset(), out.alignment


def _nbytes(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> int:
    from qtool.formats.ggml_types import QUANT_SIZES

    block, size = QUANT_SIZES[qtype]
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    return rows * (shape[-1] // block) * size


class _Reused:
    """One buffer used tensor after tensor: float32, that F16/BF16 tensors are widened into (ModelSource.load);
    uint8, that tensors are quantized into and written from. Fresh pages cost their zeroing by the kernel:
    a buffer that only grows pays it once for the biggest tensor, not for every tensor."""

    def __init__(self, dtype=np.float32) -> None:
        self._dtype = np.dtype(dtype)
        self._buffer = np.empty(0, self._dtype)

    def for_tensor(self, info) -> np.ndarray | None:
        if info.qtype not in (GGMLQuantizationType.F16, GGMLQuantizationType.BF16):
            return None
        return self.for_slice(info.n_elements)

    def for_slice(self, n: int) -> np.ndarray:
        if self._buffer.size < n:
            self._buffer = np.empty(0, self._dtype)  # the old one goes before the bigger one comes
            self._buffer = np.empty(n, self._dtype)
        return self._buffer


def _tensor_bytes(source, p, imat, threads, widened: _Reused | None = None,
                  written: _Reused | None = None) -> np.ndarray:
    """The bytes to write for one planned tensor: copied unchanged, converted, or quantized. The floats
    may be widened into ``widened``'s buffer: the bytes returned never share memory with it. Quantized
    bytes are a view of ``written``'s buffer where one is given, valid until the next call."""
    from qtool.analysis.weights import load_floats
    from qtool.formats.source import drop_pages, widen
    from qtool.quantizers import get

    if not p.quantize and p.source_type == p.qtype and source.format == "gguf":
        _check_copied(source, p)
        return source.raw(p.name)
    weights = imat.for_tensor(p.name, p.shape) if (imat is not None and p.quantize) else None
    halves = source.halves(p.name) if widened is not None else None
    quantizer = get(p.qtype)
    into = written.for_slice(quantizer.nbytes(p.shape)) if written is not None else None
    if halves is not None and halves[0].ndim >= 2 and \
            (halves[0].size >= _SLICED_HALVES or (halves[1] == "BF16" and quantizer.reads_bfloat16)):
        # a big F16/BF16 tensor stored as it is used: widened and quantized a slice of rows at a time through
        # one small buffer, so it is never float32 whole (a large vocabulary's embeddings: hundreds of MB
        # of fresh memory, faulted in page by page, and resident at once); or, whatever its size, BF16
        # quantized as it is stored by a type whose kernel reads bfloat16 (Q8_0, F16, BF16): no float32 copy
        words, dtype = halves
        n = words.shape[-1]
        rows = max(1, _SLICE_FLOATS // n)
        buffer = widened.for_slice(rows * n)
        return quantizer.quantize(words, weights, name=p.name, threads=threads, slice_rows=rows,
                                  after_slice=drop_pages, stored=dtype,
                                  convert_slice=lambda part: widen(part, dtype, part.shape, into=buffer), into=into)
    floats = widened.for_tensor(source.info(p.name)) if widened is not None else None
    data = load_floats(source, p.name, threads=threads, into=floats)
    if getattr(data, "_mmap", None) is None or data.nbytes <= _CHUNK_BYTES or data.ndim < 1:
        return quantizer.quantize(data, weights, name=p.name, threads=threads, into=into)
    # a view of the input's map: quantized a slice of rows at a time, each slice's pages dropped once done,
    # so that a big tensor (a large vocabulary's embeddings) is not resident whole
    return quantizer.quantize(data, weights, name=p.name, threads=threads,
                                 slice_rows=max(1, _CHUNK_BYTES // (4 * max(1, data.shape[-1]))),
                                 after_slice=drop_pages, into=into)


#: a tensor read as a view of the input's map is quantized this many bytes of float32 at a time
_CHUNK_BYTES = 64 << 20
#: F16/BF16 tensors of at least this many elements are widened and quantized in slices of about
#: _SLICE_FLOATS values (8 MiB of float32: the slice is still in the cache when it is quantized)
_SLICED_HALVES = 1 << 20
_SLICE_FLOATS = 2 << 20


_INTEGER_TYPES = frozenset({GGMLQuantizationType.I8, GGMLQuantizationType.I16, GGMLQuantizationType.I32,
                            GGMLQuantizationType.I64})


def _check_copied(source, p) -> None:
    """Refuse NaN/Inf in a tensor copied unchanged, as the quantize path does for the others.

    llama-quantize opens its input with check_tensors on, so its loader runs ggml_validate_row_data over
    every tensor it reads, the norms and the tensors it only copies included, and refuses the model.
    A type nothing here can dequantize is copied unchecked.
    """
    if p.source_type in _INTEGER_TYPES:
        return
    from qtool.analysis.weights import load_floats
    from qtool.quantizers.base import first_nonfinite_row

    try:
        data = load_floats(source, p.name)
    except FormatError:
        return
    rows = np.ascontiguousarray(data, dtype=np.float32).reshape(-1, data.shape[-1] if data.ndim else 1)
    bad = first_nonfinite_row(rows)
    if bad >= 0:
        col = int(np.flatnonzero(~np.isfinite(rows[bad]))[0])
        raise QuantError(f"{p.name}: row {bad} holds a non-finite value ({rows[bad, col]}) at column {col}")


def _write_metadata(out, source, result: ConvertResult, imat) -> None:
    types = getattr(source, "metadata_types", {}) or {}
    sub_types = getattr(source, "metadata_sub_types", {}) or {}
    for key, value in source.metadata.items():
        out.add_metadata(key, value, types.get(key), sub_types.get(key))
    from gguf import GGUFValueType

    out.add_metadata("general.quantization_version", QUANTIZATION_VERSION, GGUFValueType.UINT32)
    out.add_metadata("general.file_type", result.file_type, GGUFValueType.UINT32)
    from qtool.formats.imatrix import quantize_metadata

    for key, (vtype, value) in quantize_metadata(imat).items():
        out.add_metadata(key, value, vtype)
