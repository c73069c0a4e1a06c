"""Half-width floats to float32, in parallel chunks: the readers' BF16/F16 widening of whole tensors.

Both conversions are exact (every half and bfloat16 value is a float32), so the result does not depend
on how the work is split.
"""

from __future__ import annotations

import numba
import numpy as np

from qtool.kernels.common import bits_f32, jit_rows

#: elements per parallel chunk
CHUNK = 1 << 16


@jit_rows
def bf16_to_f32(src, out):
    """bfloat16 bits uint16 [n] -> float32 [n]: the upper half of the float32."""
    n = src.shape[0]
    for c in numba.prange((n + CHUNK - 1) // CHUNK):
        s = src[c * CHUNK:min(n, (c + 1) * CHUNK)]  # zero-based slices: the loop vectorizes (~2x)
        o = out[c * CHUNK:min(n, (c + 1) * CHUNK)]
        for j in range(s.shape[0]):
            o[j] = bits_f32(np.uint32(s[j]) << np.uint32(16))


@jit_rows
def lookup_f32(src, table, out):
    """uint16 codes [n] -> table[code] float32 [n] (half to float32 through a 65536-entry table)."""
    n = src.shape[0]
    for c in numba.prange((n + CHUNK - 1) // CHUNK):
        s = src[c * CHUNK:min(n, (c + 1) * CHUNK)]
        o = out[c * CHUNK:min(n, (c + 1) * CHUNK)]
        for j in range(s.shape[0]):
            o[j] = table[s[j]]
