"""Golden vectors: ggml's own bytes and floats for seeded inputs, stored so identity is checked
where llama-cpp-python (the live oracle) is absent.

One compressed ``fixtures/golden/<TYPE>.npz`` per quantized type, written by
``fixtures/golden/make_golden.py`` from the ggml oracle, holding:

    rows     float32 [16, 512]   hard_rows(16, 512, seed)
    imatrix  float32 [512]       importance(512, seed)
    q        uint8 [16, rb]      ggml_quantize_chunk(rows, imatrix=NULL)   (absent if ggml requires one)
    qi       uint8 [16, rb]      ggml_quantize_chunk(rows, imatrix)
    dq, dqi  float32 [16, 512]   ggml's to_float of q and qi              (dq absent with q)
    meta     str                 JSON: type, seed, ggml source (llama-cpp-python version)

Also the block-wise mismatch report every bit-for-bit test prints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

GOLDEN_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "golden"
ROWS, COLS = 16, 512


@dataclass(frozen=True)
class Golden:
    qtype: GGMLQuantizationType
    rows: np.ndarray
    imatrix: np.ndarray
    q: np.ndarray | None
    qi: np.ndarray
    dq: np.ndarray | None
    dqi: np.ndarray
    meta: dict


def path_for(qtype: GGMLQuantizationType, directory: Path = GOLDEN_DIR) -> Path:
    return directory / f"{qtype.name}.npz"


def load(qtype: GGMLQuantizationType, directory: Path = GOLDEN_DIR) -> Golden | None:
    """The golden vectors of a type, or None when no file has been generated for it."""
    p = path_for(qtype, directory)
    if not p.exists():
        return None
    with np.load(p, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("meta")))
    if meta.get("type") != qtype.name:
        raise ValueError(f"{p}: holds vectors for {meta.get('type')}, not {qtype.name}")
    return Golden(qtype=qtype, rows=arrays["rows"], imatrix=arrays["imatrix"], q=arrays.get("q"),
                  qi=arrays["qi"], dq=arrays.get("dq"), dqi=arrays["dqi"], meta=meta)


def save(path: Path, *, qtype: GGMLQuantizationType, rows, imatrix, q, qi, dq, dqi, meta: dict) -> None:
    arrays = {"rows": rows, "imatrix": imatrix, "qi": qi, "dqi": dqi,
              "meta": np.array(json.dumps(dict(meta, type=qtype.name), sort_keys=True))}
    if q is not None:
        arrays["q"] = q
        arrays["dq"] = dq
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def mismatch_report(ours: np.ndarray, ref: np.ndarray, block_bytes: int, what: str = "ggml") -> str:
    """'' when the two byte buffers are equal, else: how many blocks differ, the first bad block and
    its differing bytes (ours vs the reference). Floats compare by bit pattern (pass block_bytes=4*n)."""
    a = np.ascontiguousarray(ours).view(np.uint8).reshape(-1)
    b = np.ascontiguousarray(ref).view(np.uint8).reshape(-1)
    if a.size != b.size:
        return f"sizes differ: {a.size} bytes vs {b.size} from {what}"
    a = a.reshape(-1, block_bytes)
    b = b.reshape(-1, block_bytes)
    bad = np.flatnonzero((a != b).any(axis=1))
    if bad.size == 0:
        return ""
    first = int(bad[0])
    cols = np.flatnonzero(a[first] != b[first])
    diffs = ", ".join(f"[{c}] {a[first, c]:#04x} vs {b[first, c]:#04x}" for c in cols[:16])
    more = f" (+{cols.size - 16} more)" if cols.size > 16 else ""
    return (f"{bad.size} of {a.shape[0]} blocks differ; first bad block {first}: {cols.size} bytes differ "
            f"(ours vs {what}): {diffs}{more}")


def quantize_vs_ggml_report(qtype: GGMLQuantizationType, rows: np.ndarray, imatrix: np.ndarray | None = None) -> str:
    """'' when qtool's quantizer gives ggml's bytes for ``rows`` (float32 [nrows, n_per_row]) with
    ``imatrix``, else what differs (mismatch_report). Float warnings of the hard rows are silenced on
    both sides (they overflow float32 in ggml as in qtool)."""
    from qtool.quantizers import get
    from qtool.testing import ggml

    q = get(qtype)
    with np.errstate(all="ignore"):
        ref = ggml.quantize(qtype, rows, imatrix)
        ours = q.quantize(rows, imatrix)
    if ours.shape != ref.shape:
        return f"got {ours.shape}, ggml gives {ref.shape}"
    return mismatch_report(ours, ref, q.type_size)


def dequantize_vs_ggml_report(qtype: GGMLQuantizationType, data: np.ndarray, n_per_row: int) -> str:
    """'' when qtool's dequantizer gives ggml's to_float floats bit for bit on ``data``, else what differs."""
    from qtool.quantizers import get
    from qtool.testing import ggml

    ours = get(qtype).dequantize(data)
    ref = ggml.dequantize(qtype, data, n_per_row)
    if ours.dtype != np.float32 or ours.shape != ref.shape:
        return f"got {ours.dtype} {ours.shape}, ggml gives float32 {ref.shape}"
    return mismatch_report(ours, ref, 4 * get(qtype).block_size, "ggml's to_float")


def thread_count_report(qtype: GGMLQuantizationType, rows: np.ndarray, imatrix: np.ndarray | None) -> str:
    """'' when 1 and 2 threads give the same quantized bytes and dequantized floats, else what differs.
    Numba's thread count is put back as it was."""
    import numba

    from qtool.quantizers import get

    q = get(qtype)
    before = numba.get_num_threads()
    try:
        one = q.quantize(rows, imatrix, threads=1)
        report = mismatch_report(one, q.quantize(rows, imatrix, threads=2), q.type_size, "2 threads")
        if report:
            return f"quantize: {report}"
        report = mismatch_report(q.dequantize(one, threads=1), q.dequantize(one, threads=2), 4 * q.block_size,
                                 "2 threads")
        return f"dequantize: {report}" if report else ""
    finally:
        numba.set_num_threads(before)
