"""IQ3_XXS and IQ3_S: 4-weight groups as indices into ggml's 3-bit lattices (256 and 512 points)."""

from __future__ import annotations

from gguf import GGMLQuantizationType as T

from qtool.kernels import iq3 as k
from qtool.quantizers.base import KernelQuantizer


class IQ3_XXS(KernelQuantizer, qtype=T.IQ3_XXS):
    uses_imatrix = True
    quantize_kernel, dequantize_kernel = k.quantize_iq3_xxs, k.dequantize_iq3_xxs


class IQ3_S(KernelQuantizer, qtype=T.IQ3_S):
    uses_imatrix = True
    quantize_kernel, dequantize_kernel = k.quantize_iq3_s, k.dequantize_iq3_s
