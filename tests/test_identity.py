"""Every registered type against ggml, bit for bit, parametrized over the registry: a new type is tested
the moment it registers.

For each type: seeded hard rows (qtool.testing.data.hard_rows) quantized on each path ggml has (no
importance vector, an importance vector, an all-zero one) at several widths; ggml's to_float on ggml's
own bytes, on random bytes and on blocks whose half-precision scales are every special value; the same
bytes for any thread count; the importance-vector flags (read / required) as ggml's. What a family needs
differently is data in FEEDS below, not code. Family-specific checks (rounding ties, codebook edges,
abort rows, subnormal blocks, second oracles) stay in the family test files; the stored golden vectors
are tests/test_golden.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from qtool.errors import QuantError
from qtool.formats.ggml_types import ggml_type_named
from qtool.quantizers import get, registered
from qtool.testing.data import (HUGE_CASE, N_CASES, boundary_rows, edge_importance, extreme_rows, hard_rows, importance,
                                special_scale_blocks)
from qtool.testing.golden import dequantize_vs_ggml_report, quantize_vs_ggml_report, thread_count_report


@dataclass(frozen=True)
class Feed:
    """What one type is fed. Shapes are (nrows, n_per_row, seed) of hard_rows; importance vectors are
    importance(n_per_row, seed + 100) on the quantize paths and importance(n_per_row, seed + 1) elsewhere."""

    shapes: tuple[tuple[int, int, int], ...]
    #: paths compared with ggml: "null" (C's NULL quant_weights), "imatrix", "zero_imatrix" (all-zero
    #: weights: columns never activated); "ones" (all-one weights) in round_trip. "null" is left out by
    #: itself where ggml requires a vector.
    paths: tuple[str, ...] = ("null", "imatrix")
    #: factor on hard_rows' 1e30 rows: ggml's lattice searches abort the process on them (their
    #: distances overflow), so those rows are brought down to where ggml still quantizes
    huge_scale: float = 1.0
    #: ggml's bytes of hard_rows(*dequant) are dequantized; random bytes: 64 rows of the same width
    dequant: tuple[int, int, int] = (26, 1024, 7)
    #: hard_rows(*threads) for the thread-count check
    threads: tuple[int, int, int] = (26, 1024, 11)
    #: byte offsets of the half-precision scales in a block (negative: from its end), for the blocks
    #: that carry every special half (NaNs, infinities, subnormals, signed zeros) there
    scales: tuple[int, ...] = ()
    #: data.extreme_rows(kinds, n, seed) on each path (importance(n, seed + 100)); none where ggml aborts
    extreme: tuple = ()
    extreme_at: tuple[int, int] = (512, 5)
    #: data.edge_importance kinds, each on hard_rows(nrows, n, seed) for every seed listed
    edge_weights: tuple[str, ...] = ()
    edge_rows: tuple[int, int, tuple[int, ...]] = (26, 512, (4,))
    #: data.boundary_rows' spacing of the block maxima (the block size) for ternary-rounding types; 0: none
    boundary: int = 0
    #: (path, bound): gaussian rows come back within this relative RMS error (no oracle needed)
    round_trip: tuple[tuple[str, float], ...] = ()


#: extreme_rows kinds: denormal, smallest-subnormal and overflowing blocks, FLT_MAX, ...
_EXTREME = (1e-39, 1e-44, 1e38, "+-max")
_LEGACY = dict(shapes=((130, 32, 0), (65, 96, 1), (52, 512, 2), (39, 1024, 3), (26, 4096, 4), (26, 576, 5)),
               paths=("null", "imatrix", "zero_imatrix"), dequant=(39, 512, 11), threads=(53, 256, 21),
               extreme=_EXTREME + (1e-20, 3e-39, "max,0", "min,-max/32"), extreme_at=(256, 5))
_K32 = dict(shapes=((26, 256, 0), (26, 1024, 1), (13, 4096, 2), (39, 512, 3)), threads=(26, 512, 11))
_K16 = dict(shapes=((104, 256, 0), (78, 1024, 1), (26, 4096, 2), (52, 512, 3), (65, 768, 4)),
            threads=(26, 512, 11),
            extreme=("1e38 clipped", "+-3e38", 1e-39, 1e-14, "3.3e38", 1e19), extreme_at=(512, 31),
            edge_weights=("zero", "ones", "tiny uniform", "zeroed sub-blocks"), edge_rows=(26, 512, (23,)))
_FLOATS = dict(shapes=((39, 256, 5),))
_FP4 = dict(shapes=((130, 64, 0), (65, 128, 1), (52, 512, 2), (39, 1024, 3), (26, 4096, 4)),
            dequant=(39, 512, 11), threads=(53, 512, 21),
            extreme=_EXTREME + (1e-20, 3e-39, 1e-3, 4e-3, 448.0 * 6, 3000.0, "max,0", "min,-max/32"))
_TERNARY = dict(shapes=((130, 256, 0), (78, 512, 1), (65, 1024, 2), (39, 2048, 3), (26, 4096, 4)),
                dequant=(39, 1024, 11), threads=(53, 1024, 21), scales=(-2,),
                extreme=_EXTREME + (1e-37, 3e-39, "max,0", "lone/256"), boundary=256)
_LOWBIT = dict(shapes=((130, 128, 0), (78, 512, 1), (39, 1536, 2), (26, 4096, 3)),
               dequant=(39, 1024, 11), threads=(53, 1024, 21), scales=(0,),
               extreme=_EXTREME + (1e-37, 3e-39, "+-0", "lone/64"), boundary=64)
_EDGE = ("zero", "tiny", "huge", "one_hot")
_IQ4 = dict(scales=(0,), edge_weights=_EDGE, edge_rows=(52, 1024, (4, 5)), round_trip=(("null", 0.12),))
_IQ1 = dict(shapes=((52, 256, 0), (39, 768, 1), (26, 2048, 2)), edge_weights=_EDGE, edge_rows=(26, 512, (4, 5)),
            round_trip=(("ones", 0.8),))
#: IQ2/IQ3: ggml aborts where weight * diff^2 overflows, so their 1e30 rows are scaled down and IQ2's
#: heaviest importance vector is 'big' (1e6), not 'huge'
_IQ2 = dict(shapes=((52, 256, 0), (39, 1024, 1), (26, 2048, 2)), huge_scale=1e-17, scales=(0,),
            edge_weights=("zero", "tiny", "big", "one_hot"), round_trip=(("ones", 0.6),))
_IQ3 = dict(shapes=((26, 256, 0), (26, 512, 1), (13, 1024, 2), (13, 2048, 3)), huge_scale=1e-20,
            dequant=(13, 1024, 7), threads=(26, 512, 11), scales=(0,), edge_weights=_EDGE,
            round_trip=(("null", 0.25),))

FEEDS: dict[object, Feed] = {
    T.F32: Feed(**_FLOATS), T.F16: Feed(**_FLOATS), T.BF16: Feed(**_FLOATS),
    T.Q4_0: Feed(**_LEGACY, scales=(0,)), T.Q4_1: Feed(**_LEGACY, scales=(0, 2)),
    T.Q5_0: Feed(**_LEGACY, scales=(0,)), T.Q5_1: Feed(**_LEGACY, scales=(0, 2)),
    T.Q8_0: Feed(**_LEGACY, scales=(0,)),
    T.Q4_K: Feed(**_K32, paths=("null", "imatrix", "zero_imatrix"), scales=(0, 2), round_trip=(("null", 0.12),)),
    T.Q5_K: Feed(**_K32, paths=("null", "imatrix", "zero_imatrix"), scales=(0, 2), round_trip=(("null", 0.06),)),
    # its quantize_row_q8_K_ref has no importance path
    T.Q8_K: Feed(**_K32, paths=("null",), round_trip=(("null", 0.01),)),
    T.Q2_K: Feed(**_K16, scales=(-4, -2), round_trip=(("null", 0.36), ("imatrix", 0.36))),
    T.Q3_K: Feed(**_K16, scales=(-2,), round_trip=(("null", 0.2), ("imatrix", 0.2))),
    T.Q6_K: Feed(**_K16, scales=(-2,), round_trip=(("null", 0.03), ("imatrix", 0.03))),
    T.MXFP4: Feed(**_FP4), T.NVFP4: Feed(**_FP4),
    T.TQ1_0: Feed(**_TERNARY), T.TQ2_0: Feed(**_TERNARY),
    T.Q1_0: Feed(**_LOWBIT), ggml_type_named("Q2_0"): Feed(**_LOWBIT),
    T.IQ4_NL: Feed(shapes=((130, 32, 0), (104, 96, 1), (65, 512, 2), (39, 4096, 3)), **_IQ4),
    T.IQ4_XS: Feed(shapes=((130, 256, 0), (104, 768, 1), (65, 1024, 2), (39, 4096, 3)), **_IQ4),
    T.IQ1_S: Feed(**_IQ1, scales=(0,)), T.IQ1_M: Feed(**_IQ1),
    T.IQ2_XXS: Feed(**_IQ2), T.IQ2_XS: Feed(**_IQ2), T.IQ2_S: Feed(**_IQ2),
    T.IQ3_XXS: Feed(**_IQ3), T.IQ3_S: Feed(**_IQ3),
}


def feed(qtype) -> Feed:
    """The type's entry, or for a type registered since this table was written, hard rows at two
    widths of whole blocks."""
    if qtype in FEEDS:
        return FEEDS[qtype]
    w = get(qtype).block_size * max(1, 512 // get(qtype).block_size)
    return Feed(shapes=((52, w, 0), (26, 4 * w, 1)), dequant=(26, 2 * w, 7), threads=(26, 2 * w, 11))


TYPES = list(registered())
ids = {"ids": lambda v: getattr(v, "name", str(v))}


def paths(qtype) -> list[str]:
    return [p for p in feed(qtype).paths if not (p == "null" and get(qtype).requires_imatrix)]


def rows(qtype, nrows: int, n_per_row: int, seed: int) -> np.ndarray:
    return hard_rows(nrows, n_per_row, seed, huge_scale=feed(qtype).huge_scale)


def weights(path: str, n_per_row: int, seed: int) -> np.ndarray | None:
    return {"null": None, "imatrix": importance(n_per_row, seed), "zero_imatrix": np.zeros(n_per_row, np.float32),
            "ones": np.ones(n_per_row, np.float32)}[path]


CASES = [(t, path, *shape) for t in TYPES for path in paths(t) for shape in feed(t).shapes]


@pytest.mark.parametrize("qtype,path,nrows,n_per_row,seed", CASES, **ids)
def test_quantize_matches_ggml(oracle, qtype, path, nrows, n_per_row, seed):
    x = rows(qtype, nrows, n_per_row, seed)
    report = quantize_vs_ggml_report(qtype, x, weights(path, n_per_row, seed + 100))
    assert not report, f"{qtype.name} {path} {nrows}x{n_per_row} seed {seed}: {report}"


EXTREME_CASES = [(t, path) for t in TYPES if feed(t).extreme for path in paths(t)]


@pytest.mark.parametrize("qtype,path", EXTREME_CASES, **ids)
def test_extreme_rows_match_ggml(oracle, qtype, path):
    f = feed(qtype)
    n, seed = f.extreme_at
    report = quantize_vs_ggml_report(qtype, extreme_rows(f.extreme, n, seed), weights(path, n, seed + 100))
    assert not report, f"{qtype.name} {path} extreme rows: {report}"


@pytest.mark.parametrize("qtype", [t for t in TYPES if feed(t).boundary], **ids)
def test_rounding_boundaries_match_ggml(oracle, qtype):
    """Weights on and an ulp either side of +-amax/2, where round-half-away-from-zero decides."""
    report = quantize_vs_ggml_report(qtype, boundary_rows(spacing=feed(qtype).boundary))
    assert not report, f"{qtype.name} boundary rows: {report}"


EDGE_CASES = [(t, kind) for t in TYPES for kind in feed(t).edge_weights]


@pytest.mark.parametrize("qtype,kind", EDGE_CASES, **ids)
def test_edge_importance_vectors_match_ggml(oracle, qtype, kind):
    """Degenerate weights (data.edge_importance) drive the searches into their zero-sum and
    no-improvement branches."""
    f = feed(qtype)
    nrows, n, seeds = f.edge_rows
    w = edge_importance(kind, n)
    for seed in seeds:
        x = rows(qtype, nrows, n, seed)
        if kind == "huge" and f.huge_scale != 1.0:  # huge weights on the scaled-down rows overflow again
            x = np.delete(x, np.s_[HUGE_CASE::N_CASES], axis=0)
        report = quantize_vs_ggml_report(qtype, x, w)
        assert not report, f"{qtype.name} importance {kind} seed {seed}: {report}"


def dequantize_sources(qtype) -> list[str]:
    """ggml's bytes of hard rows on each path, random bytes, blocks with every special half as a scale."""
    out = [f"ggml-{path}" for path in paths(qtype) if path != "zero_imatrix"] + ["random"]
    return out + ["special-scales"] if feed(qtype).scales else out


def _bytes_to_dequantize(oracle, qtype, source: str) -> np.ndarray:
    q = get(qtype)
    f = feed(qtype)
    nrows, n, seed = f.dequant
    if source.startswith("ggml-"):
        with np.errstate(all="ignore"):
            return oracle.quantize(qtype, rows(qtype, nrows, n, seed), weights(source[5:], n, seed + 1))
    if source == "random":
        return np.random.default_rng(9).integers(0, 256, (64, q.row_bytes(n)), dtype=np.uint8)
    return special_scale_blocks(q.type_size, f.scales).reshape(-1, 16 * q.type_size)


DEQUANTIZE_CASES = [(t, source) for t in TYPES for source in dequantize_sources(t)]


@pytest.mark.parametrize("qtype,source", DEQUANTIZE_CASES, **ids)
def test_dequantize_matches_ggml(oracle, qtype, source):
    """ggml's to_float bit for bit: NaN payloads, infinities and signed zeros count."""
    q = get(qtype)
    data = _bytes_to_dequantize(oracle, qtype, source)
    with np.errstate(all="ignore"):
        report = dequantize_vs_ggml_report(qtype, data, data.shape[1] // q.type_size * q.block_size)
    assert not report, f"{qtype.name} dequantize ({source} bytes): {report}"


THREAD_CASES = [(t, path) for t in TYPES for path in paths(t) if path != "zero_imatrix"]


@pytest.mark.parametrize("qtype,path", THREAD_CASES, **ids)
def test_same_bytes_for_any_thread_count(qtype, path):
    nrows, n, seed = feed(qtype).threads
    report = thread_count_report(qtype, rows(qtype, nrows, n, seed), weights(path, n, seed + 1))
    assert not report, f"{qtype.name} {path}: 1 thread vs 2 threads: {report}"


def _flag_rows(qtype):
    n = feed(qtype).dequant[1]
    return rows(qtype, 13, n, 13), importance(n, 14)


@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_importance_vector_is_read_where_the_type_says(qtype):
    """uses_imatrix: the weighted path is really taken (a regression to the unweighted one would pass the
    thread test); otherwise the vector changes nothing."""
    q = get(qtype)
    if q.requires_imatrix:
        with pytest.raises(QuantError, match="importance"):
            q.quantize(hard_rows(2, q.block_size * max(1, 256 // q.block_size), 0))
        return
    x, w = _flag_rows(qtype)
    with np.errstate(all="ignore"):
        changed = not np.array_equal(q.quantize(x), q.quantize(x, w))
    assert changed == q.uses_imatrix, f"{qtype.name}: uses_imatrix is {q.uses_imatrix}"


@pytest.mark.parametrize("qtype", [t for t in TYPES if "imatrix" in feed(t).paths], **ids)
def test_importance_flags_are_ggml_s(oracle, qtype):
    """requires_imatrix as ggml_quantize_requires_imatrix; uses_imatrix exactly where ggml's bytes depend
    on the vector."""
    q = get(qtype)
    assert q.requires_imatrix == oracle.requires_imatrix(qtype)
    if q.requires_imatrix:
        return
    x, w = _flag_rows(qtype)
    with np.errstate(all="ignore"):
        changed = not np.array_equal(oracle.quantize(qtype, x), oracle.quantize(qtype, x, w))
    assert changed == q.uses_imatrix, f"{qtype.name}: uses_imatrix is {q.uses_imatrix}, ggml's bytes {'' if changed else 'do not '}change"


ROUND_TRIP_CASES = [(t, path, bound) for t in TYPES for path, bound in feed(t).round_trip]


@pytest.mark.parametrize("qtype,path,bound", ROUND_TRIP_CASES, **ids)
def test_round_trip_error_is_small(qtype, path, bound):
    """Independent of ggml: plain gaussian rows come back within the type's usual relative RMS error."""
    x = (np.random.default_rng(15).standard_normal((8, 512)) * 0.02).astype(np.float32)
    q = get(qtype)
    back = q.dequantize(q.quantize(x, weights(path, 512, 16)))
    rel = np.sqrt(np.mean((back - x) ** 2)) / np.sqrt(np.mean(x ** 2))
    assert rel < bound, rel


def test_table_names_registered_types():
    """A misspelt or removed type in FEEDS would silently test nothing."""
    assert set(FEEDS) <= set(registered()), set(FEEDS) - set(registered())
    for qtype, f in FEEDS.items():
        q = get(qtype)
        for _, n, _ in f.shapes + (f.dequant, f.threads):
            assert q.fits(n), (qtype.name, n)
