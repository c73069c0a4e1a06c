"""IQ4_NL and IQ4_XS: 4-bit indices into ggml's non-linear 16-value codebook (kvalues_iq4nl)."""

from __future__ import annotations

from gguf import GGMLQuantizationType as T

from qtool.kernels import iq4 as k
from qtool.quantizers.base import kernel_type

IQ4_NL = kernel_type(T.IQ4_NL, k.quantize_iq4_nl, k.dequantize_iq4_nl, uses_imatrix=True,
                     finds_nonfinite=True)
IQ4_XS = kernel_type(T.IQ4_XS, k.quantize_iq4_xs, k.dequantize_iq4_xs, uses_imatrix=True,
                     finds_nonfinite=True)
