"""Element-wise float conversions: ggml_fp32_to_fp16_row and ggml_fp32_to_bf16_row_ref."""

from __future__ import annotations

import numpy as np

from qtool.kernels.common import (each_element, each_element_finite, f32_bits, fp16_bits_to_fp32,
                                 fp32_to_fp16_bits_flat, jit, row_driver)


@jit
def fp32_to_bf16_bits(f):
    """ggml_compute_fp32_to_bf16: keep the upper 16 bits, round to nearest even (NaN kept quiet)."""
    u = f32_bits(f)
    if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return np.uint16((u >> np.uint32(16)) | np.uint32(64))
    return np.uint16((u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16))


quantize_f16 = row_driver(each_element_finite, __name__, "quantize_f16", "ggml_fp32_to_fp16_row: rows float32 (or "
                          "bfloat16 words) [nrows, n] -> out uint16 [nrows, n], round to nearest even; returns the "
                          "first row holding NaN or Inf, or -1.", ELEMENT=fp32_to_fp16_bits_flat)
quantize_bf16 = row_driver(each_element_finite, __name__, "quantize_bf16", "ggml_fp32_to_bf16_row_ref: rows float32 "
                           "(or bfloat16 words, which it keeps) [nrows, n] -> out uint16 [nrows, n]; returns the first "
                           "row holding NaN or Inf, or -1.", ELEMENT=fp32_to_bf16_bits)
dequantize_f16 = row_driver(each_element, __name__, "dequantize_f16", "ggml_fp16_to_fp32_row: data uint16 "
                            "[nrows, n] -> out float32 [nrows, n] (NaNs quieted as ggml does).",
                            ELEMENT=fp16_bits_to_fp32)
