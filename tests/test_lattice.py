"""The IQ lattices (qtool.quantizers.lattice): grids decoded from the gguf package's tables and ggml's
neighbour lists (iq2xs_init_impl / iq3xs_init_impl) checked by brute force."""

from __future__ import annotations

import gguf.quants as gq
import numpy as np
import pytest

from qtool.quantizers.lattice import lattice

# grid name, gguf-py class, points, coordinates, bits per level in the map key, levels formed, distinct distances kept
GRIDS = [("IQ1", gq.IQ1_S, 2048, 8, 2, 3, 3), ("IQ2_XXS", gq.IQ2_XXS, 256, 8, 2, 3, 2),
         ("IQ2_XS", gq.IQ2_XS, 512, 8, 2, 3, 2), ("IQ2_S", gq.IQ2_S, 1024, 8, 2, 3, 1),
         ("IQ3_XXS", gq.IQ3_XXS, 256, 4, 3, 8, 2), ("IQ3_S", gq.IQ3_S, 512, 4, 3, 8, 3)]


@pytest.mark.parametrize("name,src,n,dim,bits,nreach,nwant", GRIDS, ids=[g[0] for g in GRIDS])
def test_grid_is_gguf_py_s(name, src, n, dim, bits, nreach, nwant):
    """Our decoding of the hex tables gives the same coordinates as gguf-py's own (init_grid)."""
    src.init_grid()
    lat = lattice(name)
    assert lat.levels.shape == (n, dim) and lat.levels.max() < nreach
    assert np.array_equal(lat.values, src.grid.reshape(n, dim))
    assert np.array_equal(lat.odd, 2 * lat.levels.astype(np.float32) + 1)


@pytest.mark.parametrize("name,src,n,dim,bits,nreach,nwant", GRIDS, ids=[g[0] for g in GRIDS])
def test_neighbour_lists(name, src, n, dim, bits, nreach, nwant):
    """Grid points map to themselves; every level vector the search can form that is off the grid
    lists exactly the grid points at its nwant smallest distinct squared distances, by (distance,
    index); level vectors no search forms map to -1."""
    lat = lattice(name)
    shifts = bits * np.arange(dim)
    g = lat.levels.astype(np.int64)
    codes = (g << shifts).sum(axis=1)
    assert np.unique(codes).size == n and np.array_equal(lat.kmap[codes], np.arange(n))
    every = np.array(np.meshgrid(*[np.arange(nreach)] * dim, indexing="ij")).reshape(dim, -1).T
    u_all = (every << shifts).sum(axis=1)
    off = np.setdiff1d(u_all, codes)
    assert (lat.kmap[off] < 0).all()
    assert (np.delete(lat.kmap, u_all) == -1).all()
    rng = np.random.default_rng(31)
    for u in rng.choice(off, 200, replace=False):
        p = (u >> shifts) & ((1 << bits) - 1)
        d2 = ((g - p) ** 2).sum(axis=1)
        want = [j for dist in np.unique(d2)[:nwant] for j in np.flatnonzero(d2 == dist)]
        start = -int(lat.kmap[u]) - 1
        got = lat.neighbours[start + 1:start + 1 + int(lat.neighbours[start])]
        assert got.tolist() == want, (name, int(u))


@pytest.mark.parametrize("name", [g[0] for g in GRIDS])
def test_neighbour_coordinates(name):
    """neighbour_odd holds, at each list entry, the listed point's odd coordinates (0 at count slots
    and in the 16 spare columns the vectorized searches read past a short list); starts are the
    count slots."""
    lat = lattice(name)
    nb = lat.neighbours.astype(np.int64)
    assert lat.neighbour_odd.shape == (lat.levels.shape[1], nb.size + 16)
    at = 0
    walked = []
    while at < nb.size:
        walked.append(at)
        n = int(nb[at])
        assert (lat.neighbour_odd[:, at] == 0).all()
        assert np.array_equal(lat.neighbour_odd[:, at + 1:at + 1 + n], lat.odd[nb[at + 1:at + 1 + n]].T)
        at += 1 + n
    assert (lat.neighbour_odd[:, nb.size:] == 0).all()
    assert lat.starts.tolist() == walked


@pytest.mark.parametrize("name", [g[0] for g in GRIDS if g[0].startswith(("IQ1", "IQ2"))])
def test_neighbour_codes(name):
    """neighbour_codes holds each list's count at its count slot and, at each list entry, the listed point's
    levels packed 2 bits a coordinate (unpacked here and compared with the grid), then 16 zeros."""
    lat = lattice(name)
    nb = lat.neighbours.astype(np.int64)
    codes = lat.neighbour_codes
    assert codes.dtype == np.uint16 and codes.shape == (nb.size + 16,)
    assert np.array_equal(codes[lat.starts], lat.neighbours[lat.starts])
    entries = np.ones(nb.size, bool)
    entries[lat.starts] = False
    unpacked = (codes[:nb.size][entries, None].astype(np.int64) >> (2 * np.arange(8))) & 3
    assert np.array_equal(unpacked, lat.levels[nb[entries]])
    assert (codes[nb.size:] == 0).all()


def _scalar_nearest(pos, first, n, x, w, y, s):
    """The scalar scan the vector scans replace, over the pos.shape[0] coordinates (4 for IQ3, 8 for IQ2):
    float32 in C's order, first strictly smallest below FLT_MAX."""
    f = np.float32
    best, jb = f(np.finfo(np.float32).max), -1
    with np.errstate(all="ignore"):
        for j in range(n):
            d = f(0.0)
            for k in range(pos.shape[0]):
                diff = f(s * pos[k, first + j]) - x[y + k]
                d = f(d + f(f(w[y + k] * diff) * diff))
            if d < best:
                best, jb = d, j
    return jb


def test_nearest_listed_8_is_eight_scalar_scans():
    """The eight-lane neighbour scan of the IQ3 searches gives, per lane, what the scalar scan gives: on
    random points, on lists full of exact ties (the first of equal distances wins), on weights and values
    that overflow to inf or NaN (no distance below FLT_MAX: -1), on an empty list, and at offsets."""
    import numba

    from qtool.kernels.common import nearest_listed_8

    @numba.njit
    def scan(pos, first, n, x, w, y, scales, c, idx, at):
        nearest_listed_8(pos, first, n, x, w, y, scales, c, idx, at)

    rng = np.random.default_rng(12)
    f32 = np.float32
    cases = 0
    for trial in range(300):
        m = int(rng.integers(1, 40))
        pos = (2 * rng.integers(0, 8, (4, m + 8)) + 1).astype(f32)
        if trial % 3 == 0:
            pos[:, 1:] = pos[:, :1]  # every point the same: all ties
        elif trial % 3 == 1:
            pos[:, 1::2] = pos[:, 0:pos.shape[1] - 1:2]  # pairs of equal points
        x = np.abs(rng.standard_normal(12)).astype(f32)
        w = np.abs(rng.standard_normal(12)).astype(f32)
        if trial % 7 == 0:
            w[rng.integers(0, 12)] = f32(np.inf) if trial % 2 else f32(np.nan)
        if trial % 11 == 0:
            x *= f32(1e25)
        scales = (rng.random(20) * 0.5 + 0.05).astype(f32)
        first, n, y, c, at = int(rng.integers(0, 8)), int(rng.integers(0, m + 1)), int(rng.integers(0, 8)), \
            int(rng.integers(0, 12)), int(rng.integers(0, 4))
        idx = np.full(16, 99, np.int32)
        scan(pos, first, n, x, w, y, scales, c, idx, at)
        want = [_scalar_nearest(pos, first, n, x, w, y, scales[c + t]) for t in range(8)]
        assert idx[at:at + 8].tolist() == want, trial
        assert (idx[:at] == 99).all() and (idx[at + 8:] == 99).all()
        cases += want.count(-1)
    assert cases > 0  # the no-neighbour answer was exercised


def test_nearest_packed_point_8d_is_the_scalar_scan():
    """The IQ1 and IQ2 searches' vector scan over a neighbour list of packed points gives what the scalar
    scan of their coordinates gives: lists shorter and longer than a vector, ties within a vector lane and
    across lanes (the first wins), inf/NaN distances (-1 where none is below FLT_MAX), an empty list, points
    past the list that must not count, and each level's own coordinate (IQ1's uneven x_p/x_m, IQ2's odd)."""
    import numba

    from qtool.kernels.common import POINT_LANES, nearest_packed_point_8d

    @numba.njit
    def scan(codes, first, n, x, w, y, scale, values):
        return nearest_packed_point_8d(codes, first, n, x, w, y, scale, values)

    rng = np.random.default_rng(13)
    f32 = np.float32
    tables = [np.array([1, 3, 5], f32), np.array([-1 + 0.125, 0.125, 1 + 0.125], f32),
              np.array([-1 - 0.125, -0.125, 1 - 0.125], f32)]
    misses = 0
    for trial in range(600):
        m = int(rng.integers(1, 90))
        levels = rng.integers(0, 3, (8, m + POINT_LANES))
        if trial % 4 == 0:
            levels[:, :] = levels[:, :1]  # every point the same: all ties
        elif trial % 4 == 1:
            levels[:, POINT_LANES:] = levels[:, :levels.shape[1] - POINT_LANES]  # a tie one lane-cycle later
        values = tables[trial % 3]
        x = rng.standard_normal(24).astype(f32)
        w = np.abs(rng.standard_normal(24)).astype(f32)
        if trial % 7 == 0:
            w[rng.integers(0, 24)] = f32(np.inf) if trial % 2 else f32(np.nan)
        if trial % 11 == 0:
            x *= f32(1e25)
        first, y = int(rng.integers(0, POINT_LANES)), int(rng.integers(0, 16))
        n = int(rng.integers(0, m - first + 1)) if m > first else 0
        if trial % 5 == 2 and n:
            levels[:, first + n:] = 1  # past the list: points that must never be chosen
        codes = (levels.astype(np.uint16) << (2 * np.arange(8, dtype=np.uint16))[:, None]).sum(axis=0).astype(np.uint16)
        scale = f32(rng.random() * 0.5 + 0.05)
        want = _scalar_nearest(values[levels], first, n, x, w, y, scale)
        assert scan(codes, first, n, x, w, y, scale, values) == want, trial
        misses += want == -1
    assert misses > 0  # the no-neighbour answer was exercised


def test_lane_trial_sums_is_the_scalar_loop():
    """lattice.sum_trials (common.lane_trial_sums: 32 trials' sums side by side, in registers) gives, bit for
    bit, the scalar loop in C's order: sqx += (w*x)*q, sq2 += (w*q)*q from the values already held, q = 2l + 1,
    for 16 and 32 weights, with weights spanning many magnitudes (a sum's order shows in its last bits)."""
    import numba

    from qtool.kernels.lattice import SUMQ2, SUMQX, TRIAL_LANES, sum_trials

    @numba.njit
    def run(w, x, n, sv, ls):
        sum_trials(w, x, n, sv, ls)

    rng = np.random.default_rng(3)
    for n in (16, 32):
        w = (rng.random(32) * 10.0 ** rng.integers(-4, 4, 32)).astype(np.float32)
        x = (rng.standard_normal(32) * 10.0 ** rng.integers(-3, 3, 32)).astype(np.float32)
        ls = rng.integers(0, 8, (32, TRIAL_LANES)).astype(np.int32)
        sv = rng.standard_normal((4, TRIAL_LANES)).astype(np.float32)
        want = sv.copy()
        other = sv.copy()  # the same sums with the products grouped the other way: must differ somewhere
        for i in range(n):
            for s in range(TRIAL_LANES):
                q = np.float32(2 * ls[i, s] + 1)
                other[SUMQX, s] = other[SUMQX, s] + w[i] * (x[i] * q)
                other[SUMQ2, s] = other[SUMQ2, s] + w[i] * (q * q)
        for i in range(n):
            wx = w[i] * x[i]
            for s in range(TRIAL_LANES):
                q = np.float32(2 * ls[i, s] + 1)
                want[SUMQX, s] = want[SUMQX, s] + wx * q
                want[SUMQ2, s] = want[SUMQ2, s] + (w[i] * q) * q
        run(w, x, n, sv, ls)
        assert want.dtype == np.float32 and not np.array_equal(want, other)
        np.testing.assert_array_equal(sv.view(np.uint32), want.view(np.uint32))
