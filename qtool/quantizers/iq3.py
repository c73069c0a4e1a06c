"""IQ3_XXS and IQ3_S: 4-weight groups as indices into ggml's 3-bit lattices (256 and 512 points)."""

from __future__ import annotations

from gguf import GGMLQuantizationType as T

from qtool.kernels import iq3 as k
from qtool.quantizers.lattice import BAD_SCALE, NO_NEIGHBOUR, LatticeQuantizer

_FAILURES = {k.NO_NEIGHBOUR: NO_NEIGHBOUR, k.BAD_SCALE: BAD_SCALE}


class IQ3_XXS(LatticeQuantizer, qtype=T.IQ3_XXS):
    uses_imatrix = True
    grid, failures = "IQ3_XXS", _FAILURES

    @staticmethod
    def quantize_kernel(rows, weights, out, lat, status):
        k.quantize_iq3_xxs(rows, weights, out, lat.neighbour_odd, lat.kmap, lat.neighbours, status)

    @staticmethod
    def dequantize_kernel(data, out, lat):
        k.dequantize_iq3_xxs(data, out, lat.values, k.KSIGNS)


class IQ3_S(LatticeQuantizer, qtype=T.IQ3_S):
    uses_imatrix = True
    grid, failures = "IQ3_S", _FAILURES

    @staticmethod
    def quantize_kernel(rows, weights, out, lat, status):
        k.quantize_iq3_s(rows, weights, out, lat.neighbour_odd, lat.kmap, lat.neighbours, status)

    @staticmethod
    def dequantize_kernel(data, out, lat):
        k.dequantize_iq3_s(data, out, lat.values)
