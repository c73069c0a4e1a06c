"""MXFP4 and NVFP4 beyond tests/test_identity.py (hard rows, degenerate (denormal, FLT_MAX) blocks,
ggml's and random bytes, thread counts): against ggml bit for bit on scale-exponent boundaries, rounding
midpoints, UE4M3 rounding boundaries and every scale byte; against gguf-py (MXFP4 both ways, NVFP4
dequantize: gguf-py has no NVFP4 quantizer); round-trip error and the code scan."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants as gq

from conftest import round_trip
from qtool.kernels import fp4 as k
from qtool.quantizers import get
from qtool.testing.data import hard_rows
from qtool.testing.golden import mismatch_report, quantize_vs_ggml_report

TYPES = [T.MXFP4, T.NVFP4]
# (nrows, n_per_row, seed): 312 rows, every hard_rows case many times, widths 64 .. 4096
SHAPES = [(130, 64, 0), (65, 128, 1), (52, 512, 2), (39, 1024, 3), (26, 4096, 4)]

ids = {"ids": lambda t: t.name}


def boundary_rows(seed: int = 3) -> np.ndarray:
    """One 32-weight group per block maximum around every power of two from 2^-149 to 2^127 (exactly
    2^F and a few ulps either side), so log2f's rounding near integers and the E8M0 byte's
    wrap-around below 2^-125 are both hit; the other weights random within the maximum."""
    rng = np.random.default_rng(seed)
    tops = []
    for f in range(-149, 128):
        p = np.float32(2.0) ** np.float32(f) if f > -127 else np.float32(np.ldexp(1.0, f))
        v = p
        for _ in range(3):
            v = np.nextafter(v, np.float32(0))
            tops.append(v)
        tops.append(p)
        if f < 127:
            tops.append(np.nextafter(p, np.float32(np.inf)))
    tops = np.array(tops, np.float32)
    tops = tops[tops > 0]
    n_blocks = -(-tops.size // 64) * 64  # whole NVFP4 blocks of 4 groups, rows of 512
    tops = np.resize(tops, n_blocks)
    x = (rng.uniform(-1, 1, (n_blocks, 32)) * tops[:, None]).astype(np.float32)
    x[np.arange(n_blocks), rng.integers(0, 32, n_blocks)] = tops * rng.choice(np.array([-1, 1], np.float32), n_blocks)
    return x.reshape(-1, 512)


def midpoint_rows(qtype, seed: int = 4) -> np.ndarray:
    """Weights exactly halfway between two neighbouring E2M1 levels of their group's scale and one
    ulp either side, both signs, at many scales (ties must go to the smaller magnitude, as ggml's
    first-minimum scan does)."""
    rng = np.random.default_rng(seed)
    g = 32 if qtype == T.MXFP4 else 16
    mids = np.array([0.5, 1.5, 2.5, 3.5, 5.0, 7.0, 10.0], np.float32)
    groups = []
    for f in range(-120, 120, 3):
        top = np.float32(np.ldexp(1.0, f)) * np.float32(rng.uniform(1, 2))
        if qtype == T.MXFP4:
            d = k.E8M0_HALF[k.mxfp4_exponent(top)]
        else:
            d = k.UE4M3[k.fp32_to_ue4m3(top / np.float32(6.0))]
        vals = (mids * d).astype(np.float32)
        vals = np.concatenate([vals, np.nextafter(vals, np.float32(0)), np.nextafter(vals, np.float32(np.inf))])
        vals = np.concatenate([vals, -vals])
        for start in range(0, vals.size, g - 1):
            grp = rng.choice(vals, g).astype(np.float32)
            grp[: min(g - 1, vals.size - start)] = vals[start:start + g - 1]
            grp[g - 1] = top
            groups.append(rng.permutation(grp))
    x = np.stack(groups).astype(np.float32)
    n = -(-x.shape[0] // (512 // g)) * (512 // g)
    return np.resize(x, (n, g)).reshape(-1, 512)


def ue4m3_rows(seed: int = 6) -> np.ndarray:
    """NVFP4 groups whose maximum/6 sits on, and an ulp either side of, every UE4M3 rounding boundary
    (normal: half a mantissa step; subnormal: (m + 0.5)/512) and every UE4M3 value."""
    rng = np.random.default_rng(seed)
    scales = []
    for e in range(1, 16):
        for m in range(8):
            v = (1 + m / 8) * 2.0 ** (e - 7)
            scales += [v, v * (1 + 1 / 16)]
    scales += [(m + 0.5) / 512 for m in range(8)] + [m / 512 for m in range(1, 8)] + [448.0, 480.0, 1e4]
    s = np.array(scales, np.float32)
    s = np.concatenate([s, np.nextafter(s, np.float32(0)), np.nextafter(s, np.float32(np.inf))])
    tops = np.concatenate([s * np.float32(6.0), np.nextafter(s * np.float32(6.0), np.float32(0)),
                           np.nextafter(s * np.float32(6.0), np.float32(np.inf))])
    n = -(-tops.size // 32) * 32
    tops = np.resize(tops, n)
    x = (rng.uniform(-1, 1, (n, 16)) * tops[:, None]).astype(np.float32)
    x[np.arange(n), rng.integers(0, 16, n)] = tops
    return x.reshape(-1, 512)


@pytest.mark.parametrize("kind", ["boundary", "midpoint", "ue4m3"])
@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_hard_scales_match_ggml(oracle, qtype, kind):
    x = {"boundary": boundary_rows, "ue4m3": ue4m3_rows}.get(kind)
    x = midpoint_rows(qtype) if x is None else x()
    report = quantize_vs_ggml_report(qtype, x)
    assert not report, f"{qtype.name} {kind} rows: {report}"


def _scale_blocks(qtype) -> np.ndarray:
    """Random codes under every scale byte (0..255: E8M0's denormal halves and 2^127, UE4M3's two zeros,
    its ignored top bit), plus random bytes."""
    q = get(qtype)
    rng = np.random.default_rng(13)
    blocks = rng.integers(0, 256, (512, q.type_size), dtype=np.uint8)
    n_scales = 1 if qtype == T.MXFP4 else 4
    blocks[:256, :n_scales] = np.arange(256, dtype=np.uint8)[:, None]
    return blocks.reshape(-1, 16 * q.type_size)


@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_every_scale_byte_dequantizes_as_ggml(oracle, qtype):
    """(ggml's own bytes and random bytes: tests/test_identity.py.)"""
    q = get(qtype)
    data = _scale_blocks(qtype)
    n = data.shape[1] // q.type_size * q.block_size
    with np.errstate(all="ignore"):
        want = oracle.dequantize(qtype, data, n)
    assert mismatch_report(q.dequantize(data), want, 4 * q.block_size, "ggml's to_float") == ""


@pytest.mark.parametrize("nrows,n_per_row,seed", SHAPES)
def test_mxfp4_matches_gguf_py(nrows, n_per_row, seed):
    """gguf-py's numpy MXFP4 is bit-exact with ggml's _ref: a second oracle needing no llama-cpp-python."""
    x = hard_rows(nrows, n_per_row, seed)
    q = get(T.MXFP4)
    with np.errstate(all="ignore"):
        want = gq.quantize(x, T.MXFP4)
    assert mismatch_report(q.quantize(x), want, q.type_size, "gguf-py") == ""
    assert mismatch_report(q.dequantize(want), gq.dequantize(want, T.MXFP4), 4 * 32, "gguf-py") == ""


@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_dequantize_matches_gguf_py(qtype):
    q = get(qtype)
    data = _scale_blocks(qtype)
    with np.errstate(all="ignore"):
        want = gq.dequantize(data, qtype).astype(np.float32)
    assert mismatch_report(q.dequantize(data), want, 4 * q.block_size, "gguf-py") == ""


@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_round_trip_error_is_bounded(qtype):
    """Dequantized ~ input: within one E2M1 level spacing (2*d at the top, 4 in doubled units) of each weight."""
    x, y = round_trip(qtype)
    g = 32 if qtype == T.MXFP4 else 16
    amax = np.abs(x.reshape(-1, g)).max(axis=1, keepdims=True)
    err = np.abs(y.reshape(-1, g) - x.reshape(-1, g))
    assert (err <= amax / 3 * 1.01).all()
    assert err.mean() < 0.1 * amax.mean()


def test_code_scan_equals_full_best_index():
    """The 8-magnitude scan on |x| picks what a plain 16-code first-minimum scan picks, ties included."""
    rng = np.random.default_rng(41)
    d = np.float32(0.25)
    x = np.concatenate([(np.arange(-60, 61, dtype=np.float32) * np.float32(0.5) * d),
                        rng.standard_normal(2000).astype(np.float32), np.array([0.0, -0.0], np.float32)])
    x = np.concatenate([x, np.nextafter(x, np.float32(np.inf)), np.nextafter(x, np.float32(-np.inf))])
    errs = np.abs(k.KVALUES[None, :] * d - x[:, None])
    want = np.argmin(errs, axis=1)  # numpy's argmin keeps the first minimum, as the C loop does
    got = np.empty(x.shape[0], np.uint8)
    k._codes(x, np.full(x.shape[0], d, np.float32), k.MAGNITUDES, got)
    np.testing.assert_array_equal(got, want)


def test_all_zero_blocks_code_to_zero():
    """MXFP4 searches an all-zero block at scale 1 instead of its subnormal E8M0 scale: the codes are 0 either
    way, and the block matches gguf-py's reference (e = 0, qs all 0) whatever the zeros' signs."""
    x = np.zeros((2, 96), np.float32)
    x[0, 32:64] = -0.0
    x[1, 64:96] = np.float32(0.75)  # a live block beside the zero ones
    y = np.empty((2, 3 * 17), np.uint8)
    k.quantize_mxfp4(x, y)
    ref = gq.quantize(x, T.MXFP4)
    np.testing.assert_array_equal(y, ref)
    assert not y[0].any() and not y[1, :34].any()
