"""F32, F16 and BF16 beyond tests/test_identity.py: every rounding boundary and every half / bfloat16 bit
pattern against ggml bit for bit, against numpy and an exact rounding, and round trips."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from qtool.quantizers import get
from qtool.testing import ggml
from qtool.testing.golden import mismatch_report

TYPES = [T.F32, T.F16, T.BF16]
ids = {"ids": lambda t: t.name}

_F32_MAX = np.finfo(np.float32).max


def rounding_cases() -> np.ndarray:
    """Finite float32 values on and around every rounding boundary of half and bfloat16: ties to
    even both ways, the overflow thresholds, subnormal halves, float32 subnormals, signed zeros."""
    u = np.uint32
    f = lambda bits: np.array(bits, dtype=u).view(np.float32)  # noqa: E731
    vals = [
        0.0, -0.0, 1.0, -1.0,
        1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, 1 + 2.0 ** -11 + 2.0 ** -20,     # half ties and just above
        65504.0, 65519.996, 65520.0, -65520.0, 65535.0, 70000.0, 1e30, -_F32_MAX, _F32_MAX,
        2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26, 2.0 ** -25 + 2.0 ** -40, 2.0 ** -14, 2.0 ** -14 - 2.0 ** -25,
        1.5 * 2.0 ** -24, 2.5 * 2.0 ** -24, 6.1e-5, -6.1e-5,
    ]
    cases = np.array(vals, dtype=np.float32)
    # bfloat16 ties: the low 16 bits exactly 0x8000 above an even and an odd upper half, and neighbours
    bf = f([0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001, 0xBF818000, 0x7F7F8000, 0x7F7FFFFF, 0xFF7F8000,
            0x00008000, 0x00018000, 0x00000001, 0x807FFFFF, 0x00800000])
    rng = np.random.default_rng(3)
    rand_bits = rng.integers(0, 2 ** 32, 4096, dtype=np.uint64).astype(u)
    rand = rand_bits.view(np.float32)
    rand = rand[np.isfinite(rand)]
    out = np.concatenate([cases, bf, rand])
    return out[: out.size // 32 * 32].reshape(-1, 32)


@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_rounding_cases_match_ggml(oracle, qtype):
    """(Hard rows: tests/test_identity.py.)"""
    q = get(qtype)
    x = rounding_cases()
    with np.errstate(over="ignore"):
        want = oracle.quantize(qtype, x)
    assert mismatch_report(q.quantize(x), want, q.type_size * 32) == ""


def _is_signalling_nan(h: np.ndarray, qtype) -> np.ndarray:
    exp_all_ones, quiet = (0x7C00, 0x0200) if qtype == T.F16 else (0x7F80, 0x0040)
    mant = 0x03FF if qtype == T.F16 else 0x007F
    return ((h & exp_all_ones) == exp_all_ones) & ((h & mant) != 0) & ((h & quiet) == 0)


def _every_pattern_vs_ggml(qtype, signalling: bool) -> str:
    q = get(qtype)
    h = np.arange(2 ** 16, dtype=np.uint32).astype(np.uint16)
    h = h[_is_signalling_nan(h, qtype) == signalling]
    data = h[: h.size // 2 * 2].view(np.uint8).reshape(2, -1)
    got = q.dequantize(data)
    want = ggml.dequantize(qtype, data, data.shape[1] // 2)
    return mismatch_report(got, want, 4, "ggml's to_float")


@pytest.mark.parametrize("qtype", [T.F16, T.BF16], **ids)
def test_dequantize_every_bit_pattern_matches_ggml(oracle, qtype):
    """All half / bfloat16 patterns but signalling NaNs (zeros, subnormals, infinities, quiet NaNs)."""
    assert _every_pattern_vs_ggml(qtype, signalling=False) == ""


@pytest.mark.parametrize("qtype", [T.F16, T.BF16], **ids)
def test_dequantize_signalling_nans_match_ggml(oracle, qtype):
    assert _every_pattern_vs_ggml(qtype, signalling=True) == ""


def test_f32_is_a_copy():
    q = get(T.F32)
    x = rounding_cases()
    b = q.quantize(x)
    assert b.dtype == np.uint8 and b.shape == (x.shape[0], x.shape[1] * 4)
    assert np.array_equal(b.view(np.uint32), x.view(np.uint32))
    assert np.array_equal(q.dequantize(b).view(np.uint32), x.view(np.uint32))


def test_f16_matches_numpy_rounding():
    """No oracle needed: numpy's float32 -> float16 cast also rounds to nearest even."""
    q = get(T.F16)
    x = rounding_cases()
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).view(np.uint8)
    assert mismatch_report(q.quantize(x), want, 2 * 32, "numpy") == ""


def test_bf16_rounds_to_nearest_even():
    """No oracle needed: against an exact rounding of |x| in float64 arithmetic (ties to even; past
    the largest bfloat16 the next step up is infinity, as in ggml)."""
    q = get(T.BF16)
    x = rounding_cases()
    got = q.quantize(x).view(np.uint16).astype(np.uint32) << 16
    bits = x.view(np.uint32)
    trunc = bits & np.uint32(0xFFFF0000)
    mag = np.abs(x.astype(np.float64))
    lo = np.abs(trunc.view(np.float32).astype(np.float64))
    exp = ((bits >> 23) & np.uint32(0xFF)).astype(np.int64)
    ulp = np.ldexp(1.0, np.maximum(exp, 1) - 127 - 7)  # one bfloat16 step at this exponent
    d_lo, d_hi = mag - lo, lo + ulp - mag
    lo_even = ((bits >> 16) & np.uint32(1)) == 0
    pick_lo = (d_lo < d_hi) | ((d_lo == d_hi) & lo_even)
    want = np.where(pick_lo, trunc, trunc + np.uint32(0x10000))
    bad = np.flatnonzero(got.reshape(-1) != want.reshape(-1))
    assert bad.size == 0, (f"{bad.size} values differ, first {x.reshape(-1)[bad[0]]!r} "
                           f"({bits.reshape(-1)[bad[0]]:#010x}): {got.reshape(-1)[bad[0]]:#010x} vs "
                           f"{want.reshape(-1)[bad[0]]:#010x}")


@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_round_trip(qtype):
    """Values the type represents exactly come back unchanged; others within half a unit."""
    q = get(qtype)
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((16, 64)) * 100).astype(np.float32)
    exact = q.dequantize(q.quantize(x))
    assert np.array_equal(q.dequantize(q.quantize(exact)).view(np.uint32), exact.view(np.uint32))
    rel = {T.F32: 0.0, T.F16: 2.0 ** -11, T.BF16: 2.0 ** -8}[qtype]
    assert np.all(np.abs(exact - x) <= np.abs(x) * rel + 2.0 ** -24)


@pytest.mark.parametrize("qtype", [T.F16, T.BF16], **ids)
def test_halves_read_bfloat16_words_and_find_nonfinite_rows(qtype):
    """F16 and BF16 kernels given bfloat16 words (uint16) write what they write for the words' float32 values
    (BF16 keeps the words); and, float32 or words, they return the first row holding NaN or Inf (every bfloat16
    pattern with an all-ones exponent, each in a row of its own among finite rows), which quantize() names."""
    from qtool.errors import QuantError
    from qtool.kernels import floats

    kernel = getattr(floats, f"quantize_{qtype.name.lower()}")
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    finite = every[(every & 0x7F80) != 0x7F80]
    words = finite[: finite.size // 64 * 64].reshape(-1, 64)
    values = (words.astype(np.uint32) << np.uint32(16)).view(np.float32)
    from_words, from_floats = np.zeros_like(words), np.ones_like(words)
    with np.errstate(over="ignore"):
        assert kernel(words, from_words) == kernel(values, from_floats) == -1
    assert np.array_equal(from_words, from_floats)
    if qtype == T.BF16:
        assert np.array_equal(from_words, words)
    for bad in every[(every & 0x7F80) == 0x7F80][::37]:
        w = words[:9].copy()
        w[6, 11] = bad
        w[8, 0] = 0x7F80  # a later row too
        v = (w.astype(np.uint32) << np.uint32(16)).view(np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            assert kernel(w, np.empty_like(w)) == kernel(v, np.empty_like(w)) == 6, hex(bad)
        with pytest.raises(QuantError, match=r"^t: row 6 holds a non-finite value \((nan|-?inf)\) at column 11$"):
            get(qtype).quantize(v, name="t")


def test_branch_free_half_rounding_is_the_same_for_every_float32():
    """common.fp32_to_fp16_bits_flat (F16's element kernel: ggml's float arithmetic, no branches) gives
    fp32_to_fp16_bits' half (exact round-to-nearest-even, checked against ggml and numpy above) for all 2^32
    float32 bit patterns: NaNs of any payload and sign, infinities, overflow, every subnormal and tie."""
    import numba

    from qtool.kernels.common import bits_f32, fp32_to_fp16_bits, fp32_to_fp16_bits_flat

    @numba.njit(parallel=True)
    def first_difference(first: int, count: int) -> int:
        chunks = (count + (1 << 20) - 1) >> 20
        found = np.full(chunks, -1, np.int64)
        for c in numba.prange(chunks):
            for k in range(c << 20, min(count, (c + 1) << 20)):
                f = bits_f32(np.uint32(first + k))
                if fp32_to_fp16_bits_flat(f) != fp32_to_fp16_bits(f):
                    found[c] = first + k
                    break
        for c in range(chunks):
            if found[c] >= 0:
                return found[c]
        return -1

    for first in range(0, 1 << 32, 1 << 30):
        assert first_difference(first, 1 << 30) == -1, hex(first_difference(first, 1 << 30))
