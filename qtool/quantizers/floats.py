"""F32, F16 and BF16: element-wise conversions, rounded exactly as ggml rounds them."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from qtool.quantizers.base import Quantizer


class F32(Quantizer, qtype=T.F32):
    def quantize_blocks(self, rows, weights, out):
        out.view(np.float32)[...] = rows

    def dequantize_blocks(self, data, out):
        out[...] = data.view("<f4")


class F16(Quantizer, qtype=T.F16):
    def quantize_blocks(self, rows, weights, out):
        # numpy rounds to nearest even like ggml's fp32->fp16 (F16C or the scalar fallback)
        with np.errstate(over="ignore"):  # beyond 65504 becomes inf, exactly as in ggml
            out.view(np.float16)[...] = rows.astype(np.float16)

    def dequantize_blocks(self, data, out):
        out[...] = data.view("<f2")


class BF16(Quantizer, qtype=T.BF16):
    def quantize_blocks(self, rows, weights, out):
        # ggml_fp32_to_bf16: round to nearest even on the upper 16 bits (inputs are finite here)
        u = rows.view(np.uint32)
        bits = (u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
        out.view(np.uint16)[...] = bits.astype(np.uint16)

    def dequantize_blocks(self, data, out):
        out.view(np.uint32)[...] = data.view("<u2").astype(np.uint32) << np.uint32(16)
