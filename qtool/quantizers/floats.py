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


class _Halves(Quantizer):
    """F16 and BF16: one element-wise kernel that also finds the first row holding NaN or Inf (no separate
    pass) and reads rows of bfloat16 words as well as float32 ones (a BF16 checkpoint's tensors are converted,
    or for BF16 kept, as they are stored)."""

    reads_bfloat16 = True
    serial_bytes = 2 << 20  # several GB/s on one thread: a tensor under 2 MiB on one
    #: the kernel's name in qtool.kernels.floats (looked up when called: a stored kernel needs no Numba)
    kernel = "quantize_f16"

    def quantize_blocks(self, rows, weights, out):
        getattr(floats, self.kernel)(rows, out.view(np.uint16))

    def quantize_finite(self, rows, weights, out):
        return int(getattr(floats, self.kernel)(rows, out.view(np.uint16))), None


class F16(_Halves, qtype=T.F16):
    def dequantize_blocks(self, data, out):
        floats.dequantize_f16(data.view("<u2"), out)


class BF16(_Halves, qtype=T.BF16):
    kernel = "quantize_bf16"

    def dequantize_blocks(self, data, out):
        out.view(np.uint32)[...] = data.view("<u2").astype(np.uint32) << np.uint32(16)
