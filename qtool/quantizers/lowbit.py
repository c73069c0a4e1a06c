"""Q1_0, Q2_0: one half-precision scale per block and a sign bit (Q1_0) or a 2-bit code (Q2_0) per weight.

Q2_0 is ggml type 42, which gguf-py 0.19 does not name: it registers as ``ExtraType.Q2_0``.
"""

from __future__ import annotations

from gguf import GGMLQuantizationType as T

from qtool.formats.ggml_types import ggml_type_named
from qtool.kernels import lowbit as k
from qtool.quantizers.base import kernel_type

# ggml's quantize_q1_0 and quantize_q2_0 ignore quant_weights
Q1_0 = kernel_type(T.Q1_0, k.quantize_q1_0, k.dequantize_q1_0, uses_imatrix=False, finds_nonfinite=True)
Q2_0 = kernel_type(ggml_type_named("Q2_0"), k.quantize_q2_0, k.dequantize_q2_0, uses_imatrix=False,
                   finds_nonfinite=True)
