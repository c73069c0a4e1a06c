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
