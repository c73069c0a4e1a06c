"""IQ1_S and IQ1_M: 8-weight groups on ggml's 2048-point ternary lattice (1.5625 and 1.75 bits per weight)."""

from __future__ import annotations

from gguf import GGMLQuantizationType as T

from qtool.kernels import iq1 as k
from qtool.quantizers.base import KernelQuantizer


class IQ1_S(KernelQuantizer, qtype=T.IQ1_S):
    uses_imatrix = True
    requires_imatrix = True  # ggml_quantize_requires_imatrix(IQ1_S)
    quantize_kernel, dequantize_kernel = k.quantize_iq1_s, k.dequantize_iq1_s


class IQ1_M(KernelQuantizer, qtype=T.IQ1_M):
    uses_imatrix = True  # ggml does not require one for IQ1_M (its x^2 path is taken without)
    quantize_kernel, dequantize_kernel = k.quantize_iq1_m, k.dequantize_iq1_m
