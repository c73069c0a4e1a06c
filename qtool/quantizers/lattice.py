"""The IQ lattices: grids decoded from the ``gguf`` package's copies of ggml's tables (gguf.quants), and
ggml's search tables (kmap and neighbour lists, kernels/lattice.py) built from them on first use.

gguf-py stores each grid as hex text: per grid point, ``dim`` level indices of ``bits`` bits each
(bits = enough for the type's ``grid_map``), little end first; ``grid_map[level]`` is ggml's stored
coordinate (IQ2: 0x08 0x19 0x2b, IQ3_XXS: 4 .. 52 and 62, IQ3_S: 1, 3 .. 15, IQ1: -1, 0, 1).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np

from qtool.quantizers.base import NO_WEIGHTS, Quantizer, first_failure, kernel_type


@dataclass
class Lattice:
    levels: np.ndarray  #: uint8 [n, dim]: level index of each coordinate
    values: np.ndarray  #: float32 [n, dim]: ggml's grid coordinates (grid_map[level]), for dequantizing
    odd: np.ndarray  #: float32 [n, dim]: 2*level + 1, the coordinates the IQ2/IQ3 searches measure in
    kmap: np.ndarray  #: int32 [kmap_size]: see qtool.kernels.lattice
    neighbours: np.ndarray  #: uint16 [...]: see qtool.kernels.lattice
    starts: np.ndarray  #: int64 [lists]: offset of each list's count slot in ``neighbours``

    @functools.cached_property
    def neighbour_odd(self) -> np.ndarray:
        """float32 [dim, len(neighbours) + 16]: odd coordinates of each listed grid point, coordinate-
        major, at the list entry's offset (count slots and the 16 spare columns hold 0), so that a
        search reads a list's points contiguously, in whole vectors (IQ3's nearest_listed_8)."""
        nb = self.neighbours.astype(np.intp)
        out = np.zeros((self.levels.shape[1], nb.size + 16), dtype=np.float32)
        out[:, :nb.size] = self.odd[nb % self.levels.shape[0]].T  # count slots pick a point too: zeroed next
        out[:, self.starts] = 0
        return out

    @functools.cached_property
    def neighbour_codes(self) -> np.ndarray:
        """uint16 [len(neighbours) + 16]: ``neighbours`` with each listed grid point replaced by its level
        indices packed 2 bits each (coordinate k in bits 2k, 2k+1; the kmap key of a 3-level lattice), the
        count slots as they are, 16 spare zeros: a list is read whole from one short run of memory (the IQ1
        and IQ2 neighbour scans, kernels' nearest_packed_point_8d)."""
        dim = self.levels.shape[1]
        assert 2 * dim <= 16 and int(self.levels.max()) < 3
        keys = (self.levels.astype(np.uint32) << (2 * np.arange(dim, dtype=np.uint32))).sum(axis=1, dtype=np.uint32)
        nb = self.neighbours.astype(np.intp)
        out = np.zeros(nb.size + 16, dtype=np.uint16)
        out[:nb.size] = keys[nb % self.levels.shape[0]]
        out[self.starts] = self.neighbours[self.starts]
        return out


# grid -> (gguf-py class name, kmap size, levels the quantizer forms, distinct distances kept) as
# ggml's iq2xs_init_impl (IQ1, IQ2) and iq3xs_init_impl (IQ3) build them
_SPECS = {
    "IQ1": ("IQ1_S", 43692, 3, 3),
    "IQ2_XXS": ("IQ2_XXS", 43692, 3, 2),
    "IQ2_XS": ("IQ2_XS", 43692, 3, 2),
    "IQ2_S": ("IQ2_S", 43692, 3, 1),
    "IQ3_XXS": ("IQ3_XXS", 4096, 8, 2),
    "IQ3_S": ("IQ3_S", 4096, 8, 3),
}


def _decode(src) -> tuple[np.ndarray, int]:
    """(levels uint8[n, dim], bits per level) of a gguf.quants class's grid_hex."""
    bits = max(1, (len(src.grid_map) - 1).bit_length())
    per_byte = 8 // bits  # gguf-py packs 8 // bits levels per byte, 8 // per_byte bits apart
    raw = np.frombuffer(bytes.fromhex(src.grid_hex.decode()), dtype=np.uint8)
    lv = (raw[:, None] >> ((8 // per_byte) * np.arange(per_byte, dtype=np.uint8))) & ((1 << bits) - 1)
    return lv.reshape(src.grid_shape).astype(np.uint8), bits


@functools.lru_cache(maxsize=None)
def lattice(name: str) -> Lattice:
    """The grid and search tables of "IQ1" (IQ1_S and IQ1_M), "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS" or "IQ3_S"."""
    import gguf.quants as gq

    from qtool.kernels.lattice import build_neighbours

    cls_name, kmap_size, nreach, nwant = _SPECS[name]
    src = getattr(gq, cls_name)
    levels, bits = _decode(src)
    values = np.asarray(src.grid_map, dtype=np.float32)[levels]
    odd = (2 * levels.astype(np.float32) + 1).astype(np.float32)
    kmap, neighbours, starts = build_neighbours(levels, bits, nreach, nwant, kmap_size)
    return Lattice(levels, values, odd, kmap, neighbours, starts)


class LatticeQuantizer(Quantizer):
    """An IQ type: its kernels take the lattice's tables and report rows ggml would abort on.

    A type declares ``grid`` (a name of ``lattice``), ``failures`` (kernel status code -> why) and
    ``quantize_kernel(rows, weights or NO_WEIGHTS, out, lattice, status)``, ``dequantize_kernel(data,
    out, lattice)``; ``lattice_type`` builds one from the kernels themselves."""

    uses_imatrix = True
    grid: ClassVar[str]
    failures: ClassVar[dict[int, str]]
    quantize_kernel: ClassVar[Callable]
    dequantize_kernel: ClassVar[Callable]

    def quantize_blocks(self, rows, weights, out):
        assert weights is not None or not self.requires_imatrix, f"{self.name} needs an importance vector"
        status = np.zeros((rows.shape[0], 2), np.int32)
        type(self).quantize_kernel(rows, NO_WEIGHTS if weights is None else weights, out, lattice(self.grid), status)
        return first_failure(status, self.failures)

    def dequantize_blocks(self, data, out):
        type(self).dequantize_kernel(data, out, lattice(self.grid))


SEARCH_TABLES = ("neighbour_odd", "kmap", "neighbours")


def lattice_type(qtype, grid: str, failures: dict[int, str], quantize: Callable, dequantize: Callable, *,
                 quantize_extra=(), dequantize_extra=(), tables=SEARCH_TABLES, requires_imatrix=False):
    """Register an IQ type whose kernels are ``quantize(rows, weights, out, *<the lattice's tables>,
    *quantize_extra, status)`` and ``dequantize(data, out, lattice.values, *dequantize_extra)``."""

    def quantize_kernel(rows, weights, out, lat, status):
        quantize(rows, weights, out, *(getattr(lat, t) for t in tables), *quantize_extra, status)

    def dequantize_kernel(data, out, lat):
        dequantize(data, out, lat.values, *dequantize_extra)

    return kernel_type(qtype, quantize_kernel, dequantize_kernel, uses_imatrix=True, base=LatticeQuantizer,
                       grid=grid, failures=failures, requires_imatrix=requires_imatrix)


#: why a row stops, in the words of ggml's abort
OVERFLOW = "values this large overflow the search (ggml aborts the process)"
NO_NEIGHBOUR = f"no grid neighbour at a finite distance (ggml: GGML_ASSERT(grid_index >= 0)); {OVERFLOW}"
BAD_SCALE = f"a NaN block scale (ggml: GGML_ASSERT(scale >= 0)); {OVERFLOW}"
