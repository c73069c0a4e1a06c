"""Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 beyond tests/test_identity.py (hard and degenerate rows on every path,
dequantize, thread counts): per-expert importance vectors and scan ties against ggml; against gguf-py's
numpy quantizers (no llama-cpp-python needed); round-trip error."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants as gq

from conftest import round_trip
from qtool.errors import QuantError
from qtool.quantizers import get
from qtool.testing.data import hard_rows, importance
from qtool.testing.golden import mismatch_report, quantize_vs_ggml_report

TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
# (nrows, n_per_row, seed): 312 rows, every hard_rows case many times, widths 32 .. 4096
SHAPES = [(130, 32, 0), (65, 96, 1), (52, 512, 2), (39, 1024, 3), (26, 4096, 4)]
PATHS = ["ref", "imatrix", "zero_imatrix"]

ids = {"ids": lambda t: t.name}


def _imatrix(path, n, seed):
    if path == "ref":
        return None
    if path == "zero_imatrix":  # columns never activated: the _impl path with all-zero weights
        return np.zeros(n, np.float32)
    return importance(n, seed + 100)


@pytest.mark.parametrize("nrows,n_per_row,seed", SHAPES[:3])
@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0], **ids)
def test_ref_path_matches_gguf_py(qtype, nrows, n_per_row, seed):
    """gguf-py's numpy quantizers are bit-exact with ggml's _ref functions: a second oracle that
    needs no llama-cpp-python. Also its dequantizers."""
    x = hard_rows(nrows, n_per_row, seed)
    q = get(qtype)
    with np.errstate(all="ignore"):  # gguf-py's float32 arithmetic on the 1e30 rows overflows, as ggml's does
        want = gq.quantize(x, qtype)
        got = q.quantize(x)
        assert mismatch_report(got, want, q.type_size, "gguf-py") == ""
        deq = gq.dequantize(want, qtype)
    ours = q.dequantize(want)
    finite = np.isfinite(deq) & np.isfinite(ours)
    assert np.array_equal(np.isfinite(deq), np.isfinite(ours))
    np.testing.assert_array_equal(ours[finite], deq[finite])


@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_round_trip_error_is_bounded(qtype):
    """Dequantized ~ input: each weight within one quantization step of its block's range."""
    x, y = round_trip(qtype, (8, 256))
    levels = {T.Q4_0: 8, T.Q4_1: 15, T.Q5_0: 16, T.Q5_1: 31, T.Q8_0: 127}[qtype]
    blocks = x.reshape(-1, 32)
    spread = np.abs(blocks).max(axis=1, keepdims=True) if qtype in (T.Q4_0, T.Q5_0, T.Q8_0) else \
        (blocks.max(axis=1, keepdims=True) - blocks.min(axis=1, keepdims=True))
    err = np.abs(y.reshape(-1, 32) - blocks)
    assert (err <= spread / levels * 1.01 + 1e-6).all()
    assert err.mean() < 0.6 * (spread / levels).mean()


def test_per_expert_imatrix_matches_ggml(oracle):
    """A 3-D tensor with one importance vector per expert: each expert quantized with its own."""
    n_expert, rows, n = 3, 13, 256
    x = hard_rows(n_expert * rows, n, 41).reshape(n_expert, rows, n)
    w = np.stack([importance(n, 50 + e) for e in range(n_expert)])
    for qtype in (T.Q4_0, T.Q5_1):
        q = get(qtype)
        got = q.quantize(x, w)
        assert got.shape == (n_expert, rows, q.row_bytes(n))
        for e in range(n_expert):
            want = oracle.quantize(qtype, x[e], w[e])
            assert mismatch_report(got[e], want, q.type_size) == "", f"expert {e}"


def tie_rows(nrows: int = 64, n: int = 256, seed: int = 61) -> np.ndarray:
    """Blocks whose extremes tie: -a/+a at the largest magnitude, -0/+0 as the minimum or maximum,
    in every order and in different quarters of a block (where a scan that merges partial results
    could pick the wrong one)."""
    rng = np.random.default_rng(seed)
    a = np.float32(0.75)
    x = np.empty((nrows, n), np.float32)
    for r in range(nrows):
        kind = r % 4
        if kind == 0:    # only -a, +a and signed zeros
            x[r] = rng.choice(np.array([-a, a, 0.0, -0.0], np.float32), n)
        elif kind == 1:  # non-negative with signed zeros: the minimum is a zero of either sign
            x[r] = np.abs(rng.standard_normal(n).astype(np.float32)) * a
            z = rng.random(n) < 0.3
            x[r, z] = rng.choice(np.array([0.0, -0.0], np.float32), int(z.sum()))
        elif kind == 2:  # non-positive with signed zeros: the maximum is a zero of either sign
            x[r] = -np.abs(rng.standard_normal(n).astype(np.float32)) * a
            z = rng.random(n) < 0.3
            x[r, z] = rng.choice(np.array([0.0, -0.0], np.float32), int(z.sum()))
        else:            # all zeros of random sign
            x[r] = rng.choice(np.array([0.0, -0.0], np.float32), n)
    return x


@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_ties_match_gguf_py(qtype):
    """-a/+a ties; gguf-py's numpy reductions do not keep the C's first -0/+0, so zeros are all +0 here."""
    x = tie_rows()
    x[x == 0] = 0
    q = get(qtype)
    assert mismatch_report(q.quantize(x), gq.quantize(x, qtype), q.type_size, "gguf-py") == ""


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_ties_match_ggml(oracle, qtype, path):
    x = tie_rows()
    w = _imatrix(path, x.shape[1], 3)
    assert quantize_vs_ggml_report(qtype, x, w) == ""


def _special_rows(seed: int) -> np.ndarray:
    """NaN (both signs, with payloads), +-inf, +-FLT_MAX-scale, subnormal and signed-zero values, alone and
    mixed into gaussian blocks."""
    rng = np.random.default_rng(seed)
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 3e38, -3e38, 1e-40, -1e-40], np.float32)
    picks = [special, special[[0, 2]], special[[0, 3, 4]], special[[3, 4, 7, 8]], special[[0, 1]]]
    x = rng.standard_normal((250, 128)).astype(np.float32)
    for r in range(x.shape[0]):
        if r % 2:
            x[r] = rng.choice(picks[r // 2 % len(picks)], x.shape[1])
        else:
            m = rng.random(x.shape[1]) < 0.2
            x[r, m] = rng.choice(special, int(m.sum()))
    bits = x.view(np.uint32)
    nan = np.isnan(x)
    bits[nan] = np.where(rng.random(int(nan.sum())) < 0.5, 0x7FC00001, 0xFFC12345).astype(np.uint32)
    return x


@pytest.mark.parametrize("qtype", TYPES, **ids)
def test_ref_kernel_nonfinite_blocks_match_ggml(oracle, qtype):
    """The ref kernels' block scans on special values (_special_rows) give ggml's bytes. quantize() refuses
    such rows; this pins the kernels' own claim that NaN never wins a scan and the C's start values (0, FLT_MAX,
    -FLT_MAX) are kept, the vector reductions of the largest |x| (Q8_0, Q4_0, Q5_0: a block with a NaN goes
    through C's serial scan, where a NaN counts only when it comes last) and of the min and max keys (Q4_1,
    Q5_1: signed zeros and NaN rescanned in order), and that the kernels return the first row holding NaN or
    Inf, -1 for rows without (signed zeros and FLT_MAX-scale values)."""
    from qtool.kernels import legacy as k

    x = _special_rows(12)
    kernel = getattr(k, f"quantize_{qtype.name.lower()}")
    ours = np.empty((x.shape[0], get(qtype).row_bytes(x.shape[1])), np.uint8)
    with np.errstate(all="ignore"):
        first_bad = kernel(x, ours) if qtype == T.Q8_0 else kernel(x, k.NO_WEIGHTS, ours)
        ref = oracle.quantize(qtype, x, None)
    assert mismatch_report(ours, ref, get(qtype).type_size) == ""
    bad_rows = np.flatnonzero(~np.isfinite(x).all(axis=1))
    assert first_bad == bad_rows[0]
    finite = x[np.isfinite(x).all(axis=1)]  # the rows of signed zeros and FLT_MAX-scale values
    assert len(finite) >= 20
    args = (finite, ours[:len(finite)]) if qtype == T.Q8_0 else (finite, k.NO_WEIGHTS, ours[:len(finite)])
    assert kernel(*args) == -1


def test_largest_abs_is_the_serial_max():
    """common.largest_abs_of (one vector reduction, the serial C loop where a block holds a NaN) gives what
    ``amax = MAX(amax, fabsf(x))`` from 0 gives, bit for bit, on special values: NaN last in a block is the
    result, NaN earlier is forgotten, inf wins, -0 is +0."""
    import numba

    from qtool.kernels.common import abs_max_bits, largest_abs_of

    @numba.njit
    def blocks_of_32(x, out):
        for b in range(out.shape[0]):
            out[b] = largest_abs_of(abs_max_bits(x, b * 32, 32), x, b * 32, 32)

    x = _special_rows(5).reshape(-1)
    x[31] = np.nan  # a block whose last value is NaN (the serial MAX keeps it)
    x[32:64] = -0.0
    out = np.empty(x.size // 32, np.float32)
    blocks_of_32(x, out)
    want = np.empty_like(out)
    for b in range(out.size):
        amax = np.float32(0)
        for v in np.abs(x[b * 32:(b + 1) * 32]):
            amax = amax if amax > v else v
        want[b] = amax
    assert np.isnan(want[0]) and (want.view(np.uint32)[1] == 0) and np.isinf(want).any()
    np.testing.assert_array_equal(out.view(np.uint32), want.view(np.uint32))


def test_block_scans_are_the_serial_c_loops():
    """legacy._absmax_at (the largest magnitude's bits by one reduction, then the first value holding them) and
    _min_max_at (the smallest and largest order keys by one reduction each) give, bit for bit, what the C's
    serial loops give, and both flag exactly the blocks holding NaN or Inf: on special values, blocks
    of +-0 in both orders (the C keeps the first zero), ties of +-v, all-inf blocks (the C's FLT_MAX start
    values stay) and subnormals, where one wrong bit would not show in the fp16 bytes."""
    import numba

    from qtool.kernels.legacy import _absmax_at, _min_max_at

    @numba.njit
    def scans(x, out, flags):
        for b in range(out.shape[0]):
            out[b, 0], flags[b, 0] = _absmax_at(x, b * 32)
            out[b, 1], out[b, 2], flags[b, 1] = _min_max_at(x, b * 32)

    rng = np.random.default_rng(8)
    x = _special_rows(6).reshape(-1)
    extra = np.tile(rng.standard_normal(32).astype(np.float32), (8, 1))
    extra[0] = -0.0
    extra[1, ::2] = 0.0  # +0 first, then -0
    extra[2, 1::2] = 0.0  # -0 first, then +0
    extra[3, 5], extra[3, 9] = -7.0, 7.0  # a tie of magnitudes: the first, negative, wins
    extra[4] = np.inf
    extra[5] = -np.inf
    extra[6] = rng.choice(np.array([1e-40, -1e-40, 3e-39, -2e-45], np.float32), 32)
    extra[7, ::3] = np.abs(extra[7, ::3])  # min 0 never, max a plain value
    x = np.concatenate([x, extra.reshape(-1)])
    nb = x.size // 32
    out = np.empty((nb, 3), np.float32)
    flags = np.empty((nb, 2), np.bool_)
    scans(x, out, flags)
    fmax = np.float32(np.finfo(np.float32).max)
    with np.errstate(invalid="ignore"):
        for b in range(nb):
            block = x[b * 32:(b + 1) * 32]
            amax, largest, mn, mx = np.float32(0), np.float32(0), fmax, -fmax
            for v in block:
                if amax < abs(v):
                    amax, largest = abs(v), v
                if v < mn:
                    mn = v
                if v > mx:
                    mx = v
            want = np.array([largest, mn, mx], np.float32)
            assert np.array_equal(out[b].view(np.uint32), want.view(np.uint32)), (b, block, out[b], want)
            assert (flags[b] == (not np.isfinite(block).all())).all(), b
    assert flags.any() and not flags.all()


#: types whose kernels find NaN/Inf rows themselves: the legacy types as their block scans run, the k-quants and
#: IQ4 in their drivers, a row tested before it is quantized
_FINDING = TYPES + [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.Q8_K, T.IQ4_NL, T.IQ4_XS, T.TQ1_0, T.TQ2_0, T.MXFP4,
                    T.NVFP4, T.Q1_0, get("Q2_0").qtype]
_CHECKED = [T.IQ3_S]  # a type quantize() checks first, in a separate pass


@pytest.mark.parametrize("qtype, weighted", [(t, False) for t in _FINDING + _CHECKED]
                         + [(t, True) for t in _FINDING + _CHECKED if get(t).uses_imatrix],
                         ids=lambda v: ("imatrix" if v else "ref") if isinstance(v, bool) else v.name)
def test_quantize_names_the_first_nonfinite_row(qtype, weighted):
    """quantize() refuses a tensor holding NaN or Inf, naming the first such row and its first such column:
    the kernels of _FINDING find the row (finds_nonfinite: the legacy block scans' keys show it, the other
    drivers and the legacy types with an importance vector test each row before quantizing it), IQ3_S through
    the separate check first. Slices of rows (slice_rows) count rows from the tensor's start; a later bad row
    is not the one named."""
    q = get(qtype)
    assert getattr(q, "finds_nonfinite", False) == (qtype in _FINDING)
    x = np.random.default_rng(4).standard_normal((97, 256)).astype(np.float32)
    w = np.random.default_rng(5).random(256).astype(np.float32) + 0.5 if weighted else None
    for row, col, value, slice_rows in ((0, 0, np.nan, None), (96, 255, np.inf, None), (40, 3, -np.inf, 16),
                                        (63, 64, np.nan, 32), (5, 31, -np.float32("nan"), None)):
        y = x.copy()
        y[row, col] = value
        y[row, col + 1:] = np.inf  # later columns of the same row
        y[row + 1:, 7] = np.nan  # and every later row
        with pytest.raises(QuantError, match=rf"^t: row {row} holds a non-finite value \({value}\) at column {col}$"):
            q.quantize(y, w, name="t", slice_rows=slice_rows)
    if qtype in TYPES and not weighted:
        assert np.array_equal(q.quantize(x), gq.quantize(x, qtype))
    # a tensor over SERIAL_CHECK_BYTES: the separate check on all threads (IQ3_S), the kernel's own
    from qtool.quantizers.base import SERIAL_CHECK_BYTES

    big = np.zeros((SERIAL_CHECK_BYTES // (4 * 512) + 64, 512), np.float32)
    big[-3, 100] = np.inf
    big[-1, 0] = np.nan
    with pytest.raises(QuantError, match=rf"^t: row {big.shape[0] - 3} holds a non-finite value \(inf\) at column 100$"):
        q.quantize(big, None if w is None else np.ones(512, np.float32), name="t")


def _bfloat16(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bfloat16 words of x, their float32 values): the upper halves, as a BF16 checkpoint stores weights."""
    words = (np.ascontiguousarray(x, np.float32).view(np.uint32) >> np.uint32(16)).astype(np.uint16)
    return words, (words.astype(np.uint32) << np.uint32(16)).view(np.float32)


@pytest.mark.parametrize("rows", ["hard", "special"])
def test_q8_0_kernel_reads_bfloat16_words(rows):
    """Q8_0's kernel given bfloat16 words (uint16) writes the bytes it writes for their float32 values, and finds
    the same first row holding NaN or Inf: the hard rows (scales near the half's range, ties, zero blocks) and the
    special values (NaN with payloads, inf, FLT_MAX-scale, subnormals, signed zeros, NaN last in a block)."""
    from qtool.kernels import legacy as k

    x = hard_rows(64, 512, seed=9) if rows == "hard" else _special_rows(13)
    if rows == "special":
        x[1, 31] = np.nan  # NaN last in a block: the serial C scan keeps it
    words, values = _bfloat16(x)
    q = get(T.Q8_0)
    from_words = np.full((x.shape[0], q.row_bytes(x.shape[1])), 0xAA, np.uint8)
    from_floats = np.full_like(from_words, 0x55)
    with np.errstate(all="ignore"):
        bad_words, bad_floats = k.quantize_q8_0(words, from_words), k.quantize_q8_0(values, from_floats)
    finite = int(np.flatnonzero(~np.isfinite(values).all(axis=1))[0]) if rows == "special" else -1
    assert bad_words == bad_floats == finite
    assert mismatch_report(from_words, from_floats, q.type_size) == ""
    if rows == "hard":  # gguf-py's numpy Q8_0 is bit-exact with ggml: a second oracle, no llama.cpp needed
        with np.errstate(all="ignore"):  # its scales overflow the half on the hard rows, as in ggml
            theirs = gq.quantize(values, T.Q8_0)
        assert mismatch_report(from_words, theirs, q.type_size, "gguf-py") == ""


def test_q8_0_from_bfloat16_words_matches_ggml(oracle):
    from qtool.kernels import legacy as k

    x = np.concatenate([hard_rows(64, 1024, seed=10).reshape(-1, 256), _special_rows(14).reshape(-1, 256)])
    words, values = _bfloat16(x)
    ours = np.empty((x.shape[0], get(T.Q8_0).row_bytes(x.shape[1])), np.uint8)
    with np.errstate(all="ignore"):
        k.quantize_q8_0(words, ours)
        ref = oracle.quantize(T.Q8_0, values, None)
    assert mismatch_report(ours, ref, get(T.Q8_0).type_size) == ""


def test_quantize_takes_bfloat16_words_as_stored():
    """quantize(words, stored="BF16") on a type that reads bfloat16 (Q8_0, F16, BF16) quantizes the words without
    converting them (convert_slice runs only to name a NaN/Inf's value), slice by slice, to the bytes of the
    float32 values; a type that does not (Q4_0) converts every slice, as for F16 words."""
    from qtool.formats.source import widen

    x = np.random.default_rng(5).standard_normal((97, 256)).astype(np.float32)
    words, values = _bfloat16(x)
    for qtype, converts in ((T.Q8_0, False), (T.F16, False), (T.BF16, False), (T.Q4_0, True)):
        calls = []

        def convert(part):
            calls.append(part.shape[0])
            return widen(part, "BF16", part.shape)

        got = get(qtype).quantize(words, name="t", slice_rows=20, convert_slice=convert, stored="BF16")
        assert np.array_equal(got, get(qtype).quantize(values)), qtype.name
        strided = np.zeros((97, 512), np.uint16)
        strided[:, ::2] = words  # every other column: not contiguous, taken as a copy
        assert np.array_equal(get(qtype).quantize(strided[:, ::2], convert_slice=convert, stored="BF16"), got)
        assert calls == ([20, 20, 20, 20, 17, 97] if converts else []), (qtype.name, calls)
    bad = words.copy()
    bad[63, 64] = 0xFF80  # -inf
    bad[63, 65] = 0x7FC0  # and a NaN after it
    bad[70, 0] = 0x7FC0
    with pytest.raises(QuantError, match=r"^t: row 63 holds a non-finite value \(-inf\) at column 64$"):
        get(T.Q8_0).quantize(bad, name="t", slice_rows=20, stored="BF16",
                             convert_slice=lambda part: widen(part, "BF16", part.shape))


def test_small_tensors_run_on_one_thread(monkeypatch):
    """A tensor under serial_bytes (2 MiB as float32), quantized without an importance vector, runs on one
    thread, and the thread count is restored after, or set to the threads asked for (also after an error); a
    larger one, or one with an importance vector, runs on the threads asked for."""
    from qtool.kernels import native

    if native.max_threads() < 2:
        pytest.skip("one CPU: every tensor runs on one thread")
    seen = []
    for qtype in (T.Q8_0, T.Q4_0):
        q = get(qtype)
        run = type(q).quantize_finite
        monkeypatch.setattr(type(q), "quantize_finite",
                            lambda self, *a, _run=run: seen.append(native.get_num_threads()) or _run(self, *a))
    small = np.ones((64, 1024), np.float32)  # 256 KiB
    big = np.ones((600, 1024), np.float32)  # 2.3 MiB
    native.set_num_threads(2)
    get(T.Q8_0).quantize(small)
    assert seen == [1] and native.get_num_threads() == 2
    native.set_num_threads(1)
    get(T.Q8_0).quantize(small, threads=2)  # the threads asked for are set after, as for a larger tensor
    assert seen == [1, 1] and native.get_num_threads() == 2
    get(T.Q8_0).quantize(big, threads=2)
    get(T.Q4_0).quantize(small, np.ones(1024, np.float32), threads=2)
    assert seen == [1, 1, 2, 2]
    bad = small.copy()
    bad[3, 5] = np.nan
    with pytest.raises(QuantError, match="row 3 holds a non-finite value"):
        get(T.Q4_0).quantize(bad)
    assert seen[-1] == 1 and native.get_num_threads() == 2
