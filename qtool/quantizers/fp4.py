"""MXFP4 and NVFP4: E2M1 codes with a power-of-two (E8M0) or UE4M3 group scale."""

from __future__ import annotations

from gguf import GGMLQuantizationType as T

from qtool.kernels import fp4 as k
from qtool.quantizers.base import kernel_type

# ggml's quantize_mxfp4 and quantize_nvfp4 ignore quant_weights
MXFP4 = kernel_type(T.MXFP4, k.quantize_mxfp4, k.dequantize_mxfp4, uses_imatrix=False, finds_nonfinite=True)
NVFP4 = kernel_type(T.NVFP4, k.quantize_nvfp4, k.dequantize_nvfp4, uses_imatrix=False, finds_nonfinite=True)
