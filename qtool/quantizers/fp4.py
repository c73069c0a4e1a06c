"""MXFP4 and NVFP4: E2M1 codes with a power-of-two (E8M0) or UE4M3 group scale."""

from __future__ import annotations

from gguf import GGMLQuantizationType as T

from qtool.kernels import fp4 as k
from qtool.quantizers.base import KernelQuantizer


class MXFP4(KernelQuantizer, qtype=T.MXFP4):
    uses_imatrix = False  # ggml's quantize_mxfp4 ignores quant_weights
    quantize_kernel, dequantize_kernel = k.quantize_mxfp4, k.dequantize_mxfp4


class NVFP4(KernelQuantizer, qtype=T.NVFP4):
    uses_imatrix = False  # ggml's quantize_nvfp4 ignores quant_weights
    quantize_kernel, dequantize_kernel = k.quantize_nvfp4, k.dequantize_nvfp4
