"""IQ2_XXS, IQ2_XS and IQ2_S: 2-bit lattice codebooks, 8 weights per grid point (kernels/iq2.py)."""

from __future__ import annotations

from gguf import GGMLQuantizationType as T

from qtool.kernels import iq2 as k
from qtool.quantizers.base import KernelQuantizer


class IQ2_XXS(KernelQuantizer, qtype=T.IQ2_XXS):
    uses_imatrix = True
    requires_imatrix = True
    quantize_kernel, dequantize_kernel = k.quantize_iq2_xxs, k.dequantize_iq2_xxs


class IQ2_XS(KernelQuantizer, qtype=T.IQ2_XS):
    uses_imatrix = True
    requires_imatrix = True
    quantize_kernel, dequantize_kernel = k.quantize_iq2_xs, k.dequantize_iq2_xs


class IQ2_S(KernelQuantizer, qtype=T.IQ2_S):
    uses_imatrix = True
    quantize_kernel, dequantize_kernel = k.quantize_iq2_s, k.dequantize_iq2_s
