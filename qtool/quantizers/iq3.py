"""IQ3_XXS and IQ3_S: 4-weight groups as indices into ggml's 3-bit lattices (256 and 512 points)."""

from __future__ import annotations

from gguf import GGMLQuantizationType as T

from qtool.kernels import iq3 as k
from qtool.quantizers.lattice import BAD_SCALE, NO_NEIGHBOUR, lattice_type

_FAILURES = {k.NO_NEIGHBOUR: NO_NEIGHBOUR, k.BAD_SCALE: BAD_SCALE}

IQ3_XXS = lattice_type(T.IQ3_XXS, "IQ3_XXS", _FAILURES, k.quantize_iq3_xxs, k.dequantize_iq3_xxs,
                       dequantize_extra=(k.KSIGNS,))
IQ3_S = lattice_type(T.IQ3_S, "IQ3_S", _FAILURES, k.quantize_iq3_s, k.dequantize_iq3_s)
