"""Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: 32-weight blocks with one (or scale + min) half-precision factor."""

from __future__ import annotations

from gguf import GGMLQuantizationType as T

from qtool.kernels import legacy as k
from qtool.quantizers.base import KernelQuantizer


class Q4_0(KernelQuantizer, qtype=T.Q4_0):
    uses_imatrix = True
    quantize_kernel, dequantize_kernel = k.quantize_q4_0, k.dequantize_q4_0


class Q4_1(KernelQuantizer, qtype=T.Q4_1):
    uses_imatrix = True
    quantize_kernel, dequantize_kernel = k.quantize_q4_1, k.dequantize_q4_1


class Q5_0(KernelQuantizer, qtype=T.Q5_0):
    uses_imatrix = True
    quantize_kernel, dequantize_kernel = k.quantize_q5_0, k.dequantize_q5_0


class Q5_1(KernelQuantizer, qtype=T.Q5_1):
    uses_imatrix = True
    quantize_kernel, dequantize_kernel = k.quantize_q5_1, k.dequantize_q5_1


class Q8_0(KernelQuantizer, qtype=T.Q8_0):
    uses_imatrix = False  # ggml's quantize_q8_0 ignores quant_weights
    dequantize_kernel = k.dequantize_q8_0

    def quantize_blocks(self, rows, weights, out):
        k.quantize_q8_0(rows, out)
