"""IQ4_NL and IQ4_XS: 4-bit indices into ggml's non-linear 16-value codebook (kvalues_iq4nl)."""

from __future__ import annotations

from gguf import GGMLQuantizationType as T

from qtool.kernels import iq4 as k
from qtool.quantizers.base import KernelQuantizer


class IQ4_NL(KernelQuantizer, qtype=T.IQ4_NL):
    uses_imatrix = True
    quantize_kernel, dequantize_kernel = k.quantize_iq4_nl, k.dequantize_iq4_nl


class IQ4_XS(KernelQuantizer, qtype=T.IQ4_XS):
    uses_imatrix = True
    quantize_kernel, dequantize_kernel = k.quantize_iq4_xs, k.dequantize_iq4_xs
