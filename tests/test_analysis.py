"""The inspect figures against an independent numpy float64 computation, on seeded data with the hard
cases in it: all-zero tensors, zero rows, spikes, heavy tails, exact copies, total collapse, sign flips."""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest

from qtool.analysis import report as R
from qtool.analysis import stats as S
from qtool.testing.data import hard_rows

# -- the reference: the definitions, written the plain numpy way ----------------------------


def ref_error(q, x):
    q, x = q.astype(np.float64).ravel(), x.astype(np.float64).ravel()
    d = q - x
    d2, x2 = float(np.sum(d * d)), float(np.sum(x * x))
    nx, nq = np.linalg.norm(x), np.linalg.norm(q)
    ad = np.abs(d)
    return {
        "rmse": math.sqrt(np.mean(d * d)),
        "rel_rmse": (0.0 if d2 == 0 else math.inf) if x2 == 0 else float(np.linalg.norm(d) / nx),
        "max_abs": float(ad.max()),
        "sqnr_db": math.nan if d2 == 0 else (10 * math.log10(x2 / d2) if x2 > 0 else -math.inf),
        "cosine": math.nan if nx == 0 or nq == 0 else float(np.dot(x, q) / (nx * nq)),
        # the kernel keeps |q - x| as float32 for its O(n) selection: 6e-8 relative at worst
        "p50": float(np.percentile(ad, 50)), "p95": float(np.percentile(ad, 95)), "p99": float(np.percentile(ad, 99)),
    }


def ref_sign(q, x):
    q, x = q.astype(np.float64).ravel(), x.astype(np.float64).ravel()
    nonzero = int(np.count_nonzero(x))
    collapsed = int(np.count_nonzero((x != 0) & (q == 0)))
    flipped = int(np.count_nonzero(x * q < 0))  # no underflow: products of float32 in float64
    return {"nonzero": nonzero, "collapsed": collapsed, "flipped": flipped,
            "collapsed_frac": collapsed / nonzero if nonzero else 0.0,
            "flipped_frac": flipped / nonzero if nonzero else 0.0}


def ref_outliers(x, block):
    x64 = x.astype(np.float64)
    flat = x64.ravel()
    mu, sd = flat.mean(), flat.std()
    rms = math.sqrt(np.mean(flat * flat))
    x2d = x64.reshape(-1, x.shape[-1])
    norms = np.sqrt(np.sum(x2d * x2d, axis=0))
    hot = np.flatnonzero(norms > 5 * np.median(norms))
    worst = hot[np.argsort(-norms[hot], kind="stable")][:5]
    dominated = blocks = 0
    for row in x2d:
        for b0 in range(0, row.size, block):
            b = row[b0:b0 + block]
            blocks += 1
            dominated += np.abs(b).max() > 8 * math.sqrt(np.mean(b * b))
    return {
        "crest": float(np.abs(flat).max() / rms) if rms > 0 else math.nan,
        "kurtosis": float(np.mean((flat - mu) ** 4) / sd ** 4 - 3) if sd > 0 else math.nan,
        "beyond_3sigma": float(np.mean(np.abs(flat - mu) > 3 * sd)),
        "beyond_6sigma": float(np.mean(np.abs(flat - mu) > 6 * sd)),
        "outlier_channels": {"count": int(hot.size), "worst": [int(i) for i in worst]},
        "scale_dominated_blocks": dominated / blocks,
    }


def assert_figures(got: dict, want: dict, rtol: float, what: str) -> None:
    assert set(got) == set(want), (what, sorted(got), sorted(want))
    for k, w in want.items():
        g = got[k]
        if isinstance(w, dict):
            assert g == w, (what, k, g, w)
        elif isinstance(w, float) and math.isnan(w):
            assert isinstance(g, float) and math.isnan(g), (what, k, g)
        elif isinstance(w, float) and math.isinf(w):
            assert g == w, (what, k, g, w)
        elif isinstance(w, int) and not isinstance(w, bool):
            assert g == w, (what, k, g, w)
        else:
            tol = 1e-6 if k in ("p50", "p95", "p99") else rtol
            assert g == pytest.approx(w, rel=tol, abs=1e-300), (what, k, g, w)


# -- seeded cases -------------------------------------------------------------------------------------


def _grid(x, step):
    return (np.round(x / step) * step).astype(np.float32)


def _cases():
    rng = np.random.default_rng(7)
    hard = np.clip(hard_rows(52, 256, seed=11), -3e4, 3e4)  # 4 rounds of the 13 hard-case rows
    gauss = (rng.standard_normal((64, 96)) * 0.02).astype(np.float32)  # 96: blocks of 32 and a short 256-block
    spiky = gauss.copy()
    spiky[:, 5] *= 40  # an outlier input channel
    spiky[3, 7] = 9.0  # one spike
    spiky[10] = 0  # a zero row
    flips_q = gauss.copy()
    flips_q[::3] *= -1  # a third of the rows with every sign flipped
    flips_q[1::7] = 0
    zeros = np.zeros((8, 64), np.float32)
    return {
        "hard rows, 1/8 grid": (hard, _grid(hard, 0.125)),
        "gaussian, 4-bit-ish grid": (gauss, _grid(gauss, 0.01)),
        "spiky with a zero row": (spiky, _grid(spiky, 0.02)),
        "exact copy": (gauss, gauss.copy()),
        "everything collapsed": (gauss, np.zeros_like(gauss)),
        "flipped and zeroed rows": (gauss, flips_q),
        "all-zero original, noise in q": (zeros, (rng.standard_normal(zeros.shape) * 1e-3).astype(np.float32)),
        "all zero both": (zeros, zeros.copy()),
        "1-D vector": (gauss[0].copy(), _grid(gauss[0], 0.01)),
        "3-D experts": (gauss.reshape(4, 16, 96), _grid(gauss, 0.03).reshape(4, 16, 96)),
    }


CASES = _cases()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("block", [32, 256])
def test_compare_matches_numpy(case, block):
    x, q = CASES[case]
    got = S.compare(q, x, block_size=block)
    assert_figures(got.error, ref_error(q, x), 1e-9, f"{case}: error")
    assert_figures(got.sign, ref_sign(q, x), 1e-12, f"{case}: sign")
    assert_figures(got.outliers, ref_outliers(x, block), 1e-9, f"{case}: outliers")


@pytest.mark.parametrize("case", list(CASES))
def test_describe_matches_numpy(case):
    x, q = CASES[case]
    got = S.describe(q, block_size=32)
    assert got.error is None
    zero_frac = float(np.mean(q == 0))
    assert got.sign == {"zero_frac": pytest.approx(zero_frac, rel=1e-15)}
    assert_figures(got.outliers, ref_outliers(q, 32), 1e-9, f"{case}: outliers of q")


def test_hard_cases_have_the_figures_they_should():
    """Spot values that need no reference implementation to know."""
    x, q = CASES["spiky with a zero row"]
    o = S.outlier_figures(x)
    # the 9.0 spike outweighs the 40x channel (9 vs ~0.8 * sqrt(64)); both stand out, nothing else does
    assert o["outlier_channels"] == {"count": 2, "worst": [7, 5]}
    assert o["beyond_6sigma"] > 0
    x, q = CASES["everything collapsed"]
    f = S.compare(q, x)
    assert f.sign["collapsed_frac"] == 1.0 and f.error["rel_rmse"] == pytest.approx(1.0)
    assert math.isnan(f.error["cosine"])
    x, q = CASES["exact copy"]
    f = S.compare(q, x)
    assert f.error["rel_rmse"] == 0.0 and math.isnan(f.error["sqnr_db"]) and f.error["cosine"] == pytest.approx(1.0)
    x, q = CASES["all zero both"]
    f = S.compare(q, x)
    assert f.error["rel_rmse"] == 0.0 and f.sign["nonzero"] == 0 and f.sign["collapsed_frac"] == 0.0
    assert math.isnan(f.outliers["crest"]) and math.isnan(f.outliers["kurtosis"])
    x, q = CASES["all-zero original, noise in q"]
    assert S.compare(q, x).error["rel_rmse"] == math.inf


def test_scale_dominated_blocks():
    """absmax > 8x RMS needs a block longer than 64 (absmax/RMS <= sqrt(block)): one spike per 256-block
    trips it, the same spike in a 32-block cannot."""
    x = np.full((4, 512), 0.01, np.float32)
    x[0, 3] = 5.0  # block 0 of row 0
    x[2, 300] = -5.0  # block 1 of row 2
    assert S.outlier_figures(x, block_size=256)["scale_dominated_blocks"] == pytest.approx(2 / 8)
    assert S.outlier_figures(x, block_size=32)["scale_dominated_blocks"] == 0.0


@pytest.mark.parametrize("n", [1, 2, 3, 10, 1000, 70_001])
def test_quantiles_are_numpys_exactly(n):
    rng = np.random.default_rng(n)
    v = np.abs(rng.standard_t(3, n)).astype(np.float32)
    v[rng.random(n) < 0.2] = 0  # ties at zero
    v[rng.random(n) < 0.1] = np.float32(0.5)  # ties elsewhere
    probs = [0.0, 0.5, 0.95, 0.99, 1.0]
    got = S.quantiles(v, probs)
    want = np.percentile(v.astype(np.float64), [100 * p for p in probs])
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)


def test_histogram_counts_every_value_once():
    rng = np.random.default_rng(3)
    v = np.abs(rng.standard_normal(50_000)).astype(np.float32) * np.float32(1e-3)
    v[:1000] = 0
    v[1000:1010] = np.float32(1e-20)  # far below the 6-decade window
    h = S.histogram(v, bins=10)
    edges = np.array(h["edges"])
    assert h["zeros"] == 1000 and h["below"] == 10 and h["above"] == 0
    assert edges[-1] == pytest.approx(float(v.max())) and edges[0] == pytest.approx(float(v.max()) * 1e-6)
    want, _ = np.histogram(v[(v >= edges[0]) & (v <= edges[-1])].astype(np.float64), bins=edges)
    assert h["counts"] == want.tolist()
    assert h["zeros"] + h["below"] + sum(h["counts"]) + h["above"] == v.size


def test_thread_count_does_not_change_the_figures():
    x, q = CASES["hard rows, 1/8 grid"]
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = S.compare(q, x)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = S.compare(q, x)
    finally:
        numba.set_num_threads(before)
    for group in ("error", "sign", "outliers"):
        a, b = getattr(one, group), getattr(many, group)
        for k in a:
            if isinstance(a[k], float) and not math.isnan(a[k]):
                assert a[k] == pytest.approx(b[k], rel=1e-12), (group, k)
            elif not isinstance(a[k], float):
                assert a[k] == b[k], (group, k)


def test_error_brief_agrees_with_compare():
    x, q = CASES["flipped and zeroed rows"]
    brief = S.error_brief(q, x)
    full = S.compare(q, x)
    assert brief["rel_rmse"] == pytest.approx(full.error["rel_rmse"], rel=1e-12)
    assert brief["collapsed_frac"] == full.sign["collapsed_frac"]
    assert brief["flipped_frac"] == full.sign["flipped_frac"] > 0.25


# -- summaries ---------------------------------------------------------------------------------------


def _entry(name, n, rel, collapsed, qtype="Q4_0", nbytes=None):
    e = R.TensorEntry(name=name, type=qtype, shape=[n // 32, 32], n_elements=n, n_bytes=nbytes or n // 2)
    e.error = {"rmse": rel, "rel_rmse": rel, "max_abs": rel * 10, "sqnr_db": -20 * math.log10(rel) if rel else math.nan,
               "cosine": 1 - rel, "p50": rel, "p95": rel, "p99": rel}
    e.sign = {"nonzero": n, "collapsed": int(collapsed * n), "flipped": 0, "collapsed_frac": collapsed,
              "flipped_frac": 0.0}
    e.outliers = {"crest": 3.0, "kurtosis": math.nan, "beyond_3sigma": 0.0, "beyond_6sigma": 0.0,
                  "outlier_channels": {"count": 1, "worst": [0]}, "scale_dominated_blocks": 0.0}
    return e


def test_summary_is_element_weighted_per_layer_and_model():
    entries = [_entry("blk.0.a.weight", 1000, 0.1, 0.2), _entry("blk.0.b.weight", 3000, 0.2, 0.0),
               _entry("blk.1.a.weight", 1000, 0.0, 0.5), _entry("output.weight", 5000, 0.05, 0.1, "Q8_0", 5312)]
    rep = R.Report(file="f", format="gguf", architecture="llama", metadata={}, tensors=entries, reference="r")
    s = rep.summary()
    w = np.array([1000, 3000, 1000, 5000], float)
    assert s["rel_rmse"] == pytest.approx(np.dot(w, [0.1, 0.2, 0.0, 0.05]) / w.sum())
    assert s["collapsed_frac"] == pytest.approx(np.dot(w, [0.2, 0.0, 0.5, 0.1]) / w.sum())
    # sqnr of an exact tensor is undefined: left out of the mean, with its weight
    assert s["sqnr_db"] == pytest.approx(np.dot([1000, 3000, 5000], [20, -20 * math.log10(0.2), -20 * math.log10(0.05)]) / 9000)
    assert s["kurtosis"] is None  # nothing to average
    assert s["max_abs"] == pytest.approx(2.0) and s["outlier_channels"] == 4
    assert s["n_bytes"] == 500 + 1500 + 500 + 5312 and s["bpw"] == pytest.approx(8 * s["n_bytes"] / 10000)
    assert s["types"] == {"Q4_0": {"n_tensors": 3, "n_elements": 5000, "n_bytes": 2500, "bpw": 4.0},
                          "Q8_0": {"n_tensors": 1, "n_elements": 5000, "n_bytes": 5312, "bpw": 8 * 5312 / 5000}}
    layers = {l["layer"]: l for l in s["layers"]}
    assert set(layers) == {0, 1}
    assert layers[0]["n_tensors"] == 2 and layers[0]["rel_rmse"] == pytest.approx((100 + 600) / 4000)
    assert layers[1]["collapsed_frac"] == 0.5


def test_sort_worst_first_and_unknown_fields():
    entries = [_entry("a", 1000, 0.1, 0.2), _entry("b", 1000, 0.3, 0.0), _entry("c", 1000, 0.0, 0.5)]
    rep = R.Report(file="f", format="gguf", architecture=None, metadata={}, tensors=entries, reference="r")
    assert [t.name for t in rep.ordered("rel_rmse")] == ["b", "a", "c"]
    assert [t.name for t in rep.ordered("sqnr_db")] == ["b", "a", "c"]  # low is worse; c (exact) has none: last
    assert [t.name for t in rep.ordered("error.rel_rmse", top=1)] == ["b"]
    with pytest.raises(Exception, match="valid fields"):
        rep.ordered("nonsense")
    with pytest.raises(Exception, match="needs --reference"):
        R.resolve_field("rel_rmse", R.mode_fields(reference=False))


def test_metadata_values_are_summarised():
    assert R.summarise_value(["a"] * 320) == "[320 strings]"
    assert R.summarise_value(list(range(100))) == "[100 ints]"
    assert R.summarise_value(np.arange(50, dtype=np.float32)) == "[50 floats]"
    assert R.summarise_value([1, 2, 3]) == [1, 2, 3]
    assert R.summarise_value(np.uint32(7)) == 7
