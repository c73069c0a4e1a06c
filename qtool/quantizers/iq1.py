"""IQ1_S and IQ1_M: 8-weight groups on ggml's 2048-point ternary lattice (1.5625 and 1.75 bits per weight)."""

from __future__ import annotations

from gguf import GGMLQuantizationType as T

from qtool.kernels import iq1 as k
from qtool.quantizers.lattice import OVERFLOW, lattice_type

_FAILURES = {k.FAILED: f"no grid point at a finite distance or a non-finite block scale (ggml: GGML_ASSERT); {OVERFLOW}"}
_TABLES = ("levels", "kmap", "neighbours", "neighbour_codes")

# ggml_quantize_requires_imatrix(IQ1_S); IQ1_M takes ggml's x^2 path without one
IQ1_S = lattice_type(T.IQ1_S, "IQ1", _FAILURES, k.quantize_iq1_s, k.dequantize_iq1_s, tables=_TABLES,
                     quantize_extra=(k.X_P, k.X_M), requires_imatrix=True)
IQ1_M = lattice_type(T.IQ1_M, "IQ1", _FAILURES, k.quantize_iq1_m, k.dequantize_iq1_m, tables=_TABLES,
                     quantize_extra=(k.X_P, k.X_M))
