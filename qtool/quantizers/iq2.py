"""IQ2_XXS, IQ2_XS and IQ2_S: 2-bit lattice codebooks, 8 weights per grid point (kernels/iq2.py)."""

from __future__ import annotations

from gguf import GGMLQuantizationType as T

from qtool.kernels import iq2 as k
from qtool.quantizers.lattice import BAD_SCALE, NO_NEIGHBOUR, OVERFLOW, LatticeQuantizer

_FAILURES = {k.NO_NEIGHBOUR: NO_NEIGHBOUR, k.BAD_SCALE: BAD_SCALE,
             k.OFF_GRID: f"a NaN block scale leaves its levels off the grid (ggml: 'Oops: found point ... not on "
                         f"grid'); {OVERFLOW}"}


class IQ2_XXS(LatticeQuantizer, qtype=T.IQ2_XXS):
    uses_imatrix = True
    requires_imatrix = True
    grid, failures = "IQ2_XXS", _FAILURES

    @staticmethod
    def quantize_kernel(rows, weights, out, lat, status):
        k.quantize_iq2_xxs(rows, weights, out, lat.neighbour_odd, lat.kmap, lat.neighbours, status)

    @staticmethod
    def dequantize_kernel(data, out, lat):
        k.dequantize_iq2_xxs(data, out, lat.values, k.KSIGNS_IQ2XS)


class IQ2_XS(LatticeQuantizer, qtype=T.IQ2_XS):
    uses_imatrix = True
    requires_imatrix = True
    grid, failures = "IQ2_XS", _FAILURES

    @staticmethod
    def quantize_kernel(rows, weights, out, lat, status):
        k.quantize_iq2_16(rows, weights, out, lat.neighbour_odd, lat.kmap, lat.neighbours, False, status)

    @staticmethod
    def dequantize_kernel(data, out, lat):
        k.dequantize_iq2_16(data, out, lat.values, k.KSIGNS_IQ2XS, False)


class IQ2_S(LatticeQuantizer, qtype=T.IQ2_S):
    uses_imatrix = True
    grid, failures = "IQ2_S", _FAILURES

    @staticmethod
    def quantize_kernel(rows, weights, out, lat, status):
        k.quantize_iq2_16(rows, weights, out, lat.neighbour_odd, lat.kmap, lat.neighbours, True, status)

    @staticmethod
    def dequantize_kernel(data, out, lat):
        k.dequantize_iq2_16(data, out, lat.values, k.KSIGNS_IQ2XS, True)
