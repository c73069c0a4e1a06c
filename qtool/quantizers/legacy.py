"""Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: 32-weight blocks with one (or scale + min) half-precision factor."""

from __future__ import annotations

from gguf import GGMLQuantizationType as T

from qtool.kernels import legacy as k
from qtool.quantizers.base import Quantizer


def _w(weights):
    return k.NO_WEIGHTS if weights is None else weights


class Q4_0(Quantizer, qtype=T.Q4_0):
    uses_imatrix = True

    def quantize_blocks(self, rows, weights, out):
        k.quantize_q4_0(rows, _w(weights), out)

    def dequantize_blocks(self, data, out):
        k.dequantize_q4_0(data, out)


class Q4_1(Quantizer, qtype=T.Q4_1):
    uses_imatrix = True

    def quantize_blocks(self, rows, weights, out):
        k.quantize_q4_1(rows, _w(weights), out)

    def dequantize_blocks(self, data, out):
        k.dequantize_q4_1(data, out)


class Q5_0(Quantizer, qtype=T.Q5_0):
    uses_imatrix = True

    def quantize_blocks(self, rows, weights, out):
        k.quantize_q5_0(rows, _w(weights), out)

    def dequantize_blocks(self, data, out):
        k.dequantize_q5_0(data, out)


class Q5_1(Quantizer, qtype=T.Q5_1):
    uses_imatrix = True

    def quantize_blocks(self, rows, weights, out):
        k.quantize_q5_1(rows, _w(weights), out)

    def dequantize_blocks(self, data, out):
        k.dequantize_q5_1(data, out)


class Q8_0(Quantizer, qtype=T.Q8_0):
    uses_imatrix = False  # ggml's quantize_q8_0 ignores quant_weights

    def quantize_blocks(self, rows, weights, out):
        k.quantize_q8_0(rows, out)

    def dequantize_blocks(self, data, out):
        k.dequantize_q8_0(data, out)
