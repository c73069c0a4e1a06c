"""Q1_0, Q2_0: one half-precision scale per block and a sign bit (Q1_0) or a 2-bit code (Q2_0) per weight.

Q2_0 is ggml type 42, which gguf-py 0.19 does not name: it registers as ``ExtraType.Q2_0``.
"""

from __future__ import annotations

from gguf import GGMLQuantizationType as T

from qtool.formats.ggml_types import ggml_type_named
from qtool.kernels import lowbit as k
from qtool.quantizers.base import KernelQuantizer


class Q1_0(KernelQuantizer, qtype=T.Q1_0):
    uses_imatrix = False  # ggml's quantize_q1_0 ignores quant_weights
    dequantize_kernel = k.dequantize_q1_0

    def quantize_blocks(self, rows, weights, out):
        k.quantize_q1_0(rows, out)


class Q2_0(KernelQuantizer, qtype=ggml_type_named("Q2_0")):
    uses_imatrix = False  # ggml's quantize_q2_0 ignores quant_weights
    dequantize_kernel = k.dequantize_q2_0

    def quantize_blocks(self, rows, weights, out):
        k.quantize_q2_0(rows, out)
