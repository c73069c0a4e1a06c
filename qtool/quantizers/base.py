"""The type registry: one small Quantizer subclass per ggml type, keyed on GGMLQuantizationType.

A family module (legacy.py, kquants.py, ...) is imported on the first use of one of its types (FAMILY_OF
names it; ``registered()`` imports them all) and declares::

    class Q4_0(Quantizer, qtype=GGMLQuantizationType.Q4_0):
        def quantize_blocks(self, rows, weights, out): kernels.legacy.quantize_q4_0(rows, weights, out)
        def dequantize_blocks(self, data, out): kernels.legacy.dequantize_q4_0(data, out)

and this base does everything else: block/byte sizes from ``gguf.GGML_QUANT_SIZES`` (through
``qtool.formats.ggml_types.QUANT_SIZES``, which adds the types gguf-py lacks), reshaping to rows,
validation (dtype, row length, NaN/Inf, importance-vector length), per-expert importance vectors for
3-D tensors, the thread count, and the output allocation.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Callable, ClassVar, Iterator, NamedTuple

import numpy as np

from qtool.errors import QuantError
from qtool.formats.ggml_types import QUANT_SIZES, QType, ggml_type_named

_REGISTRY: dict[QType, "Quantizer"] = {}

#: the family module (of qtool.quantizers) that registers each type, by ggml type name; a command imports
#: only the kernels of the types it uses
FAMILY_OF: dict[str, str] = {
    "F32": "floats", "F16": "floats", "BF16": "floats",
    "Q4_0": "legacy", "Q4_1": "legacy", "Q5_0": "legacy", "Q5_1": "legacy", "Q8_0": "legacy",
    "Q2_K": "kquants", "Q3_K": "kquants", "Q4_K": "kquants", "Q5_K": "kquants", "Q6_K": "kquants",
    "Q8_K": "kquants",
    "TQ1_0": "ternary", "TQ2_0": "ternary", "MXFP4": "fp4", "NVFP4": "fp4", "IQ4_NL": "iq4", "IQ4_XS": "iq4",
    "IQ3_XXS": "iq3", "IQ3_S": "iq3", "IQ2_XXS": "iq2", "IQ2_XS": "iq2", "IQ2_S": "iq2", "IQ1_S": "iq1",
    "IQ1_M": "iq1", "Q1_0": "lowbit", "Q2_0": "lowbit",
}
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(FAMILY_OF.values()))


class RowFailure(NamedTuple):
    """A row a kernel could not quantize (where ggml aborts the process): its index among the rows
    handed to ``quantize_blocks``, the block, and why."""

    row: int
    block: int
    why: str


def first_failure(status: np.ndarray, why: dict[int, str]) -> RowFailure | None:
    """The first row whose kernel status int32[nrows, 2] (code, block) holds a non-zero code."""
    bad = np.flatnonzero(status[:, 0])
    if not bad.size:
        return None
    r = int(bad[0])
    return RowFailure(r, int(status[r, 1]), why[int(status[r, 0])])


class Quantizer:
    qtype: ClassVar[QType]
    block_size: ClassVar[int]
    type_size: ClassVar[int]
    #: ggml's quantize function for this type reads the importance vector (else it is ignored).
    uses_imatrix: ClassVar[bool] = False
    #: ggml refuses to quantize this type without an importance vector.
    requires_imatrix: ClassVar[bool] = False
    #: ``quantize_finite`` takes rows of bfloat16 words (uint16) as well as float32 ones, quantizing their
    #: values and finding NaN/Inf rows itself (a BF16 checkpoint's tensors then need no float32 copy). Only
    #: for a type whose whole kernel reads its rows through common.float_at/abs_max_bits: elsewhere a uint16
    #: row would be read as integers
    reads_bfloat16: ClassVar[bool] = False
    #: below this many bytes of input (as float32), quantized without an importance vector, a tensor is
    #: quantized on one thread: a type whose kernel runs near memory speed there (GB/s) would wait longer for
    #: the kernels' other threads to wake (~0.1-0.2 ms a call on a 2-vCPU VM) than it gains from them
    serial_bytes: ClassVar[int] = 0

    def __init_subclass__(cls, qtype: QType | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if qtype is None:
            return
        if qtype in _REGISTRY:
            raise TypeError(f"{qtype.name} is registered twice ({_REGISTRY[qtype].__class__.__name__}, {cls.__name__})")
        cls.qtype = qtype
        cls.block_size, cls.type_size = QUANT_SIZES[qtype]
        _REGISTRY[qtype] = cls()

    # -- what a family module implements -------------------------------------------------------

    def quantize_blocks(self, rows: np.ndarray, weights: np.ndarray | None, out: np.ndarray) -> RowFailure | None:
        """rows: float32 [nrows, n_per_row] C-contiguous; weights: float32 [n_per_row] or None;
        out: uint8 [nrows, row_bytes], to be filled. Returns the first row the kernel refused, if any
        (the caller raises, naming the tensor)."""
        raise NotImplementedError

    def dequantize_blocks(self, data: np.ndarray, out: np.ndarray) -> None:
        """data: uint8 [nrows, row_bytes]; out: float32 [nrows, n_per_row], to be filled."""
        raise NotImplementedError

    def quantize_finite(self, rows: np.ndarray, weights: np.ndarray | None,
                        out: np.ndarray) -> tuple[int, RowFailure | None]:
        """(the first of ``rows`` holding NaN or Inf, -1 where none does; what ``quantize_blocks`` returned):
        the rows are quantized into ``out`` where all are finite. A type whose kernel finds such rows as it
        goes (one pass over the floats instead of two) overrides this."""
        bad = first_nonfinite_row(rows)
        return (bad, None) if bad >= 0 else (-1, self.quantize_blocks(rows, weights, out))

    # -- what everybody calls --------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.qtype.name

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.type_size / self.block_size

    def fits(self, n_per_row: int) -> bool:
        return n_per_row % self.block_size == 0

    def row_bytes(self, n_per_row: int) -> int:
        return n_per_row // self.block_size * self.type_size

    def nbytes(self, shape: tuple[int, ...]) -> int:
        n_rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
        return n_rows * self.row_bytes(shape[-1])

    def quantize(self, data: np.ndarray, imatrix: np.ndarray | None = None, *, name: str = "tensor",
                 threads: int | None = None, slice_rows: int | None = None,
                 after_slice: Callable[[np.ndarray], None] | None = None,
                 convert_slice: Callable[[np.ndarray], np.ndarray] | None = None,
                 stored: str | None = None, into: np.ndarray | None = None) -> np.ndarray:
        """Quantize float32 ``data`` (numpy order, rows along the last axis) to uint8 [..., row_bytes].

        ``imatrix`` is one importance vector of length n_per_row, or for a 3-D tensor one per
        expert ([n_expert, n_per_row]), as llama.cpp passes them. ``slice_rows``: check and quantize at
        most this many rows at a time (never across experts), calling ``after_slice(rows)`` after each,
        so that a caller reading ``data`` from a map can drop each slice's pages once it is done.
        ``convert_slice``: ``data`` holds stored elements of another type (F16/BF16 words), and each slice
        of rows is quantized as ``convert_slice(rows)``, its float32 values; the tensor is then never
        float32 whole. ``stored`` names those elements' type ("F16", "BF16"): a type that ``reads_bfloat16``
        quantizes BF16 words as they are, and converts a slice only to report a NaN or Inf in it.
        ``into``: a contiguous uint8 buffer of at least the result's size; the result is a view of its start
        (a caller writing tensor after tensor reuses one buffer instead of faulting in fresh pages for each).
        """
        if convert_slice is None and not (isinstance(data, np.ndarray) and data.dtype == np.float32
                                          and data.flags.c_contiguous):
            data = np.ascontiguousarray(data, dtype=np.float32)  # (a map's view stays one, for after_slice)
        as_stored = convert_slice is None or (stored == "BF16" and self.reads_bfloat16)
        if convert_slice is not None and as_stored:  # the kernel reads the words: contiguous uint16 rows
            data = np.ascontiguousarray(data).view(np.uint16)
        if data.ndim == 0 or data.size == 0:
            raise QuantError(f"{name}: cannot quantize an empty tensor of shape {data.shape}")
        n_per_row = data.shape[-1]
        if not self.fits(n_per_row):
            raise QuantError(f"{name}: row length {n_per_row} (shape {list(data.shape)}) is not a multiple of "
                             f"{self.name}'s block size {self.block_size}")
        if self.requires_imatrix and imatrix is None:
            raise QuantError(f"{name}: {self.name} needs an importance matrix (--imatrix)")
        rows = data.reshape(-1, n_per_row)
        shape = (rows.shape[0], self.row_bytes(n_per_row))
        if into is None:
            out = np.empty(shape, dtype=np.uint8)
        else:
            if into.dtype != np.uint8 or not into.flags.c_contiguous or into.size < shape[0] * shape[1]:
                raise ValueError(f"{name}: the buffer to quantize into is not {shape[0] * shape[1]} contiguous bytes")
            out = into.reshape(-1)[:shape[0] * shape[1]].reshape(shape)
        weights = self._check_imatrix(imatrix, data.shape, name) if self.uses_imatrix else None
        if weights is None and rows.size * 4 < self.serial_bytes:
            with _one_thread(then=threads):
                self._quantize_rows(rows, weights, out, name, slice_rows, after_slice, convert_slice, as_stored)
        else:
            _set_threads(threads)
            self._quantize_rows(rows, weights, out, name, slice_rows, after_slice, convert_slice, as_stored)
        return out.reshape(data.shape[:-1] + (out.shape[1],))

    def _quantize_rows(self, rows, weights, out, name, slice_rows, after_slice, convert_slice, as_stored) -> None:
        """quantize()'s loop over experts and slices of rows, quantizing into ``out``."""
        per_expert = rows.shape[0] // weights.shape[0] if weights is not None and weights.ndim == 2 else rows.shape[0]
        step = slice_rows or per_expert
        for first in range(0, rows.shape[0], per_expert):
            w = weights[first // per_expert] if weights is not None and weights.ndim == 2 else weights
            for start in range(first, first + per_expert, step):
                kept = rows[start:min(start + step, first + per_expert)]
                part = kept if as_stored else convert_slice(kept)
                bad, failed = self.quantize_finite(part, w, out[start:start + len(part)])
                if bad >= 0:
                    values = part if convert_slice is None or not as_stored else convert_slice(kept)
                    col = int(np.flatnonzero(~np.isfinite(values[bad]))[0])
                    raise QuantError(f"{name}: row {start + bad} holds a non-finite value ({values[bad, col]}) at "
                                     f"column {col}")
                self._raise_on(failed, start, name)
                if after_slice is not None:
                    after_slice(kept)

    def _raise_on(self, failed: RowFailure | None, first_row: int, name: str) -> None:
        if failed is not None:
            raise QuantError(f"{name}: {self.name} cannot quantize row {first_row + failed.row} "
                             f"(block {failed.block}): {failed.why}")

    def dequantize(self, data: np.ndarray, *, name: str = "tensor", threads: int | None = None) -> np.ndarray:
        """uint8 [..., row_bytes] -> float32 [..., n_per_row]."""
        data = np.ascontiguousarray(data).view(np.uint8)
        row_bytes = data.shape[-1]
        if row_bytes % self.type_size:
            raise QuantError(f"{name}: {row_bytes} bytes per row is not a whole number of {self.name} blocks "
                             f"({self.type_size} bytes each)")
        n_per_row = row_bytes // self.type_size * self.block_size
        rows = data.reshape(-1, row_bytes)
        out = np.empty((rows.shape[0], n_per_row), dtype=np.float32)
        _set_threads(threads)
        self.dequantize_blocks(rows, out)
        return out.reshape(data.shape[:-1] + (n_per_row,))

    def _check_imatrix(self, imatrix, shape, name):
        if imatrix is None:
            return None
        w = np.ascontiguousarray(imatrix, dtype=np.float32)
        n_per_row = shape[-1]
        if w.ndim == 1 and w.shape[0] == n_per_row:
            return w
        if w.ndim == 2 and len(shape) == 3 and w.shape == (shape[0], n_per_row):
            return w
        if w.ndim == 1 and len(shape) == 3 and w.shape[0] == shape[0] * n_per_row:
            return w.reshape(shape[0], n_per_row)
        raise QuantError(f"{name}: importance vector of {w.size} values does not fit shape {list(shape)} "
                         f"(want {n_per_row} per row{f' or {shape[0]}x{n_per_row} per expert' if len(shape) == 3 else ''})")


#: below this many bytes an array is tested for NaN/Inf on one thread (~1 ms there at most)
SERIAL_CHECK_BYTES = 8 << 20


def first_nonfinite_row(rows: np.ndarray) -> int:
    """The first row of the 2-D float32 ``rows`` holding NaN or Inf, or -1: a small array on one thread (waking
    the kernels' other threads cost 1-4 ms a call on a 2-vCPU VM, the test of 432 KB ~60 us)."""
    from qtool.kernels import common

    if rows.nbytes < SERIAL_CHECK_BYTES:
        return common.first_nonfinite_row_1(rows)
    return common.first_nonfinite_row(rows)


#: the kernels' spelling of C's NULL importance vector (numba has no optional arrays)
NO_WEIGHTS = np.zeros(0, dtype=np.float32)


class KernelQuantizer(Quantizer):
    """A type whose Numba drivers follow the house convention, so that declaring it is naming them:
    ``quantize_kernel(rows, weights or NO_WEIGHTS, out)`` where ggml reads an importance vector
    (``uses_imatrix``), else ``quantize_kernel(rows, out)``; ``dequantize_kernel(data, out)``."""

    quantize_kernel: ClassVar[Callable]
    dequantize_kernel: ClassVar[Callable]
    #: the quantize kernel returns the first row holding NaN or Inf (-1: none), which it finds as it quantizes
    finds_nonfinite: ClassVar[bool] = False

    def quantize_blocks(self, rows, weights, out):
        self._run_kernel(rows, weights, out)
        return None

    def quantize_finite(self, rows, weights, out):
        if not self.finds_nonfinite:
            return super().quantize_finite(rows, weights, out)
        return int(self._run_kernel(rows, weights, out)), None

    def _run_kernel(self, rows, weights, out):
        if self.uses_imatrix:
            return type(self).quantize_kernel(rows, NO_WEIGHTS if weights is None else weights, out)
        return type(self).quantize_kernel(rows, out)

    def dequantize_blocks(self, data, out):
        type(self).dequantize_kernel(data, out)


def kernel_type(qtype: QType, quantize: Callable, dequantize: Callable, *, uses_imatrix: bool,
                base: type[Quantizer] = KernelQuantizer, **attrs) -> type[Quantizer]:
    """Register ``qtype`` as a ``base`` subclass with these drivers (and class attributes); returns the
    class. ``uses_imatrix``: ggml's quantize function for the type reads quant_weights."""
    if attrs.get("reads_bfloat16") and not attrs.get("finds_nonfinite"):
        raise TypeError(f"{qtype.name}: a kernel reading bfloat16 words must find NaN/Inf itself (finds_nonfinite)")
    ns = {"uses_imatrix": uses_imatrix, "quantize_kernel": staticmethod(quantize),
          "dequantize_kernel": staticmethod(dequantize), **attrs}
    return type(qtype.name, (base,), ns, qtype=qtype)


@contextlib.contextmanager
def _one_thread(then: int | None) -> Iterator[None]:
    """The kernels run on one thread inside; after, on ``then`` threads (None: as many as before), as if
    _set_threads(then) had been called instead."""
    from qtool.kernels import native

    after = native.get_num_threads() if then is None else then
    native.set_num_threads(1)
    try:
        yield
    finally:
        native.set_num_threads(after)


def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    from qtool.kernels import native

    native.set_num_threads(threads)


def get(qtype: QType | str) -> Quantizer:
    """The registered quantizer for a type (enum or name, case-insensitive)."""
    if isinstance(qtype, str):
        try:
            qtype = ggml_type_named(qtype.upper())
        except KeyError:
            raise QuantError(f"unknown ggml type {qtype!r}") from None
    if qtype not in _REGISTRY and qtype.name in FAMILY_OF:
        importlib.import_module(f"qtool.quantizers.{FAMILY_OF[qtype.name]}")
    try:
        return _REGISTRY[qtype]
    except KeyError:
        raise QuantError(f"qtool has no quantizer for {qtype.name} yet") from None


def registered() -> dict[QType, Quantizer]:
    """All registered quantizers, in ggml type order."""
    _load_families()
    return dict(sorted(_REGISTRY.items()))


def can_quantize(qtype: QType) -> bool:
    """Whether qtool has a quantizer for the type (without importing its kernels)."""
    return qtype.name in FAMILY_OF


def _load_families() -> None:
    for module in FAMILIES:
        importlib.import_module(f"qtool.quantizers.{module}")
