"""TQ1_0, TQ2_0: ternary 256-weight blocks, one half-precision scale and a trit {-1, 0, +1} per weight."""

from __future__ import annotations

from gguf import GGMLQuantizationType as T

from qtool.kernels import ternary as k
from qtool.quantizers.base import kernel_type

# ggml's quantize_tq1_0 and quantize_tq2_0 ignore quant_weights
TQ1_0 = kernel_type(T.TQ1_0, k.quantize_tq1_0, k.dequantize_tq1_0, uses_imatrix=False, finds_nonfinite=True)
TQ2_0 = kernel_type(T.TQ2_0, k.quantize_tq2_0, k.dequantize_tq2_0, uses_imatrix=False, finds_nonfinite=True)
