"""IQ1_S and IQ1_M: 8-weight groups on ggml's 2048-point ternary lattice (1.5625 and 1.75 bits per weight)."""

from __future__ import annotations

from gguf import GGMLQuantizationType as T

from qtool.kernels import iq1 as k
from qtool.quantizers.lattice import OVERFLOW, LatticeQuantizer

_FAILURES = {k.FAILED: f"no grid point at a finite distance or a non-finite block scale (ggml: GGML_ASSERT); {OVERFLOW}"}


class IQ1_S(LatticeQuantizer, qtype=T.IQ1_S):
    uses_imatrix = True
    requires_imatrix = True  # ggml_quantize_requires_imatrix(IQ1_S)
    grid, failures = "IQ1", _FAILURES

    @staticmethod
    def quantize_kernel(rows, weights, out, lat, status):
        assert weights.shape[0] > 0, "IQ1_S needs an importance vector"  # Quantizer.quantize refuses first
        k.quantize_iq1_s(rows, weights, out, lat.levels, lat.kmap, lat.neighbours, k.X_P, k.X_M, status)

    @staticmethod
    def dequantize_kernel(data, out, lat):
        k.dequantize_iq1_s(data, out, lat.values)


class IQ1_M(LatticeQuantizer, qtype=T.IQ1_M):
    uses_imatrix = True  # ggml does not require one for IQ1_M (its x^2 path is taken without)
    grid, failures = "IQ1", _FAILURES

    @staticmethod
    def quantize_kernel(rows, weights, out, lat, status):
        k.quantize_iq1_m(rows, weights, out, lat.levels, lat.kmap, lat.neighbours, k.X_P, k.X_M, status)

    @staticmethod
    def dequantize_kernel(data, out, lat):
        k.dequantize_iq1_m(data, out, lat.values)
