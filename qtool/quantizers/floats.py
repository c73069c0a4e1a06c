"""F32, F16 and BF16: element-wise conversions, rounded exactly as ggml rounds them."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from qtool.kernels import floats
from qtool.quantizers.base import Quantizer


class F32(Quantizer, qtype=T.F32):
    def quantize_blocks(self, rows, weights, out):
        out.view(np.float32)[...] = rows

    def dequantize_blocks(self, data, out):
        out[...] = data.view("<f4")


class F16(Quantizer, qtype=T.F16):
    def quantize_blocks(self, rows, weights, out):
        floats.quantize_f16(rows, out.view(np.uint16))

    def dequantize_blocks(self, data, out):
        floats.dequantize_f16(data.view("<u2"), out)


class BF16(Quantizer, qtype=T.BF16):
    def quantize_blocks(self, rows, weights, out):
        floats.quantize_bf16(rows, out.view(np.uint16))

    def dequantize_blocks(self, data, out):
        out.view(np.uint32)[...] = data.view("<u2").astype(np.uint32) << np.uint32(16)
