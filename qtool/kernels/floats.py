"""Element-wise float conversions: ggml_fp32_to_fp16_row and ggml_fp32_to_bf16_row_ref."""

from __future__ import annotations

import numpy as np

from qtool.kernels.common import (ELEMENT, each_element, each_row_finite, f32_bits, float_at, fp16_bits_to_fp32,
                                 fp32_to_fp16_bits_flat, jit, row_driver, specialize)


@jit
def fp32_to_bf16_bits(f):
    """ggml_compute_fp32_to_bf16: keep the upper 16 bits, round to nearest even (NaN kept quiet)."""
    u = f32_bits(f)
    if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return np.uint16((u >> np.uint32(16)) | np.uint32(64))
    return np.uint16((u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16))


def _converted_row(x, y):
    """y[j] = ELEMENT(x[j]) over one row (x float32, or bfloat16 words read through float_at); returns whether the
    row holds NaN or Inf (an exponent field of all ones): the check is the conversion's own pass."""
    bad = False
    for j in range(x.shape[0]):
        v = float_at(x, j)
        bad |= (f32_bits(v) & np.uint32(0x7F800000)) == np.uint32(0x7F800000)
        y[j] = ELEMENT(v)
    return bad


f16_row = specialize(_converted_row, __name__, "f16_row", "One row to halves (see _converted_row).", jit,
                     ELEMENT=fp32_to_fp16_bits_flat)
bf16_row = specialize(_converted_row, __name__, "bf16_row", "One row to bfloat16 (see _converted_row).", jit,
                      ELEMENT=fp32_to_bf16_bits)
quantize_f16 = row_driver(each_row_finite, __name__, "quantize_f16", "ggml_fp32_to_fp16_row: rows float32 (or "
                          "bfloat16 words) [nrows, n] -> out uint16 [nrows, n], round to nearest even; returns the "
                          "first row holding NaN or Inf, or -1.", ROW=f16_row)
quantize_bf16 = row_driver(each_row_finite, __name__, "quantize_bf16", "ggml_fp32_to_bf16_row_ref: rows float32 "
                           "(or bfloat16 words, which it keeps) [nrows, n] -> out uint16 [nrows, n]; returns the first "
                           "row holding NaN or Inf, or -1.", ROW=bf16_row)
dequantize_f16 = row_driver(each_element, __name__, "dequantize_f16", "ggml_fp16_to_fp32_row: data uint16 "
                            "[nrows, n] -> out float32 [nrows, n] (NaNs quieted as ggml does).",
                            ELEMENT=fp16_bits_to_fp32)
