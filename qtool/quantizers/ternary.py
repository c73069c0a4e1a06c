"""TQ1_0, TQ2_0: ternary 256-weight blocks, one half-precision scale and a trit {-1, 0, +1} per weight."""

from __future__ import annotations

from gguf import GGMLQuantizationType as T

from qtool.kernels import ternary as k
from qtool.quantizers.base import KernelQuantizer


class TQ1_0(KernelQuantizer, qtype=T.TQ1_0):
    uses_imatrix = False  # ggml's quantize_tq1_0 ignores quant_weights
    dequantize_kernel = k.dequantize_tq1_0

    def quantize_blocks(self, rows, weights, out):
        k.quantize_tq1_0(rows, out)


class TQ2_0(KernelQuantizer, qtype=T.TQ2_0):
    uses_imatrix = False  # ggml's quantize_tq2_0 ignores quant_weights
    dequantize_kernel = k.dequantize_tq2_0

    def quantize_blocks(self, rows, weights, out):
        k.quantize_tq2_0(rows, out)
