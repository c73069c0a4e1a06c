"""IQ2_XXS, IQ2_XS and IQ2_S: 2-bit lattice codebooks, 8 weights per grid point (kernels/iq2.py)."""

from __future__ import annotations

from gguf import GGMLQuantizationType as T

from qtool.kernels import iq2 as k
from qtool.quantizers.lattice import BAD_SCALE, NO_NEIGHBOUR, OVERFLOW, lattice_type

#: the IQ2 searches read the lists as packed level codes (Lattice.neighbour_codes, kernels' nearest_packed_point_8d)
_TABLES = ("neighbour_codes", "kmap", "neighbours")

_FAILURES = {k.NO_NEIGHBOUR: NO_NEIGHBOUR, k.BAD_SCALE: BAD_SCALE,
             k.OFF_GRID: f"a NaN block scale leaves its levels off the grid (ggml: 'Oops: found point ... not on "
                         f"grid'); {OVERFLOW}"}

IQ2_XXS = lattice_type(T.IQ2_XXS, "IQ2_XXS", _FAILURES, k.quantize_iq2_xxs, k.dequantize_iq2_xxs,
                       dequantize_extra=(k.KSIGNS_IQ2XS,), requires_imatrix=True, tables=_TABLES)
# IQ2_XS and IQ2_S share the 16-bit-index dequantizer; the flag selects IQ2_S's layout
IQ2_XS = lattice_type(T.IQ2_XS, "IQ2_XS", _FAILURES, k.quantize_iq2_xs, k.dequantize_iq2_16,
                      dequantize_extra=(k.KSIGNS_IQ2XS, False), requires_imatrix=True, tables=_TABLES)
IQ2_S = lattice_type(T.IQ2_S, "IQ2_S", _FAILURES, k.quantize_iq2_s, k.dequantize_iq2_16,
                     dequantize_extra=(k.KSIGNS_IQ2XS, True), tables=_TABLES)
