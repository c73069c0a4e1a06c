"""Element-wise float conversions: ggml_fp32_to_fp16_row and ggml_fp32_to_bf16_row_ref."""

from __future__ import annotations

import numba
import numpy as np

from qtool.kernels.common import f32_bits, fp16_bits_to_fp32, fp32_to_fp16_bits, jit_rows


@jit_rows
def quantize_f16(rows, out):
    """ggml_fp32_to_fp16_row: rows float32 [nrows, n] -> out uint16 [nrows, n], round to nearest even."""
    nrows, n = rows.shape
    for r in numba.prange(nrows):
        for j in range(n):
            out[r, j] = fp32_to_fp16_bits(rows[r, j])


@jit_rows
def quantize_bf16(rows, out):
    """ggml_fp32_to_bf16_row_ref: keep the upper 16 bits, round to nearest even (NaN kept quiet)."""
    nrows, n = rows.shape
    for r in numba.prange(nrows):
        for j in range(n):
            u = f32_bits(rows[r, j])
            if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
                out[r, j] = np.uint16((u >> np.uint32(16)) | np.uint32(64))
            else:
                out[r, j] = np.uint16((u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))))
                                      >> np.uint32(16))


@jit_rows
def dequantize_f16(data, out):
    """ggml_fp16_to_fp32_row: data uint16 [nrows, n] -> out float32 [nrows, n] (NaNs quieted as ggml does)."""
    nrows, n = data.shape
    for r in numba.prange(nrows):
        for j in range(n):
            out[r, j] = fp16_bits_to_fp32(data[r, j])
