"""Q2_K ... Q6_K and Q8_K: 256-weight super-blocks with quantized sub-block scales."""

from __future__ import annotations

from gguf import GGMLQuantizationType as T

from qtool.kernels import kquants16 as kb
from qtool.kernels import kquants32 as ka
from qtool.quantizers.base import kernel_type

# the k-quants' drivers test each row for NaN/Inf before quantizing it (common.each_block_paths & co.)
Q2_K = kernel_type(T.Q2_K, kb.quantize_q2_K, kb.dequantize_q2_K, uses_imatrix=True, finds_nonfinite=True)
Q3_K = kernel_type(T.Q3_K, kb.quantize_q3_K, kb.dequantize_q3_K, uses_imatrix=True, finds_nonfinite=True)
Q4_K = kernel_type(T.Q4_K, ka.quantize_q4_K, ka.dequantize_q4_K, uses_imatrix=True, finds_nonfinite=True)
Q5_K = kernel_type(T.Q5_K, ka.quantize_q5_K, ka.dequantize_q5_K, uses_imatrix=True, finds_nonfinite=True)
Q6_K = kernel_type(T.Q6_K, kb.quantize_q6_K, kb.dequantize_q6_K, uses_imatrix=True, finds_nonfinite=True)
# The k-quants' dot-product partner (quantize_row_q8_K_ref); not a file type llama-quantize writes, and
# ggml_quantize_chunk does not accept it. It has no importance-weighted path.
Q8_K = kernel_type(T.Q8_K, ka.quantize_q8_K, ka.dequantize_q8_K, uses_imatrix=False, finds_nonfinite=True)
