"""Q1_0 and Q2_0: the reference build's plain 1- and 2-bit types, quantized and dequantized.

One half-precision scale d per block and one code per weight, nothing else: no minimum, no sub-blocks,
no search. ggml's quantize_q1_0 / quantize_q2_0 take an importance vector and ignore it (both call the
``_ref`` row function either way), so these kernels take none.

Block layouts (little-endian, ggml-common.h)::

    Q1_0  128 weights  18 B  | d f16 | qs[16] |    1.125 bits per weight
    Q2_0   64 weights  18 B  | d f16 | qs[16] |    2.25 bits per weight

Q1_0: one sign bit per weight, weight j in bit j % 8 of qs[j / 8]; 1 stands for +d, 0 for -d::

    qs[k] = | s[8k+7] | s[8k+6] | ... | s[8k+1] | s[8k] |      s = (x >= 0)
              bit 7                               bit 0

and d is the block's mean |x| (a float32 sum in weight order, divided by 128).

Q2_0: a 2-bit code c per weight, four to a byte, weight j in bits 2(j % 4)+1..2(j % 4) of qs[j / 4]::

    qs[k] = | c[4k+3] | c[4k+2] | c[4k+1] | c[4k] |           w = (c - 1) * d,  c = 0..3
              bits 7..6                     bits 1..0

d is the block's largest |x| and ``c = (int)roundf(x / d) + 1`` clamped to 0..3, with x / d computed as
``x * (d > 0 ? 1/d : 0)``. That product is at most 1 + 2^-23 in magnitude, so c is 0, 1 or 2 (the code 3,
+2d, is never written) and roundf's half-away-from-zero is two comparisons against +-0.5. Where 1/d
overflows to inf (d below about 2.9e-39: all-subnormal blocks) every product is inf or NaN, which the
float-to-int conversion turns into INT_MIN, so every code clamps to 0.
"""

from __future__ import annotations

import numpy as np

from qtool.kernels.common import F32, block_drivers, jit, load_fp16, store_fp16

QK1_0 = 128
QK2_0 = 64
Q1_0_BYTES = 18
Q2_0_BYTES = 18


@jit
def q1_0_block(xb, yb):
    """quantize_row_q1_0_ref for one block: xb float32[128] -> yb uint8[18]."""
    sum_abs = F32(0.0)
    for j in range(QK1_0):
        sum_abs += abs(xb[j])
    store_fp16(yb, 0, sum_abs / F32(QK1_0))
    for k in range(QK1_0 // 8):
        b = np.uint8(0)
        for i in range(8):
            b |= np.uint8(xb[8 * k + i] >= F32(0.0)) << np.uint8(i)
        yb[2 + k] = b


@jit
def q2_0_block(xb, yb):
    """quantize_row_q2_0_ref for one block: xb float32[64] -> yb uint8[18]."""
    amax = F32(0.0)
    for j in range(QK2_0):
        a = abs(xb[j])
        if a > amax:
            amax = a
    store_fp16(yb, 0, amax)
    inv = F32(1.0) / amax if amax > F32(0.0) else F32(0.0)
    if np.isinf(inv):
        for k in range(QK2_0 // 4):
            yb[2 + k] = np.uint8(0)
        return
    for k in range(QK2_0 // 4):
        b = np.int32(0)
        for i in range(4):
            v = xb[4 * k + i] * inv
            c = np.int32(1) + np.int32(v >= F32(0.5)) - np.int32(v <= F32(-0.5))
            b |= c << np.int32(2 * i)
        yb[2 + k] = np.uint8(b)


@jit
def q1_0_block_dequant(yb, y):
    """dequantize_row_q1_0 for one block: yb uint8[18] -> y float32[128]."""
    d = load_fp16(yb, 0)
    neg = -d
    for k in range(QK1_0 // 8):
        b = yb[2 + k]
        for i in range(8):
            y[8 * k + i] = d if (b >> np.uint8(i)) & np.uint8(1) else neg


@jit
def q2_0_block_dequant(yb, y):
    """dequantize_row_q2_0 for one block: yb uint8[18] -> y float32[64]."""
    d = load_fp16(yb, 0)
    for k in range(QK2_0 // 4):
        b = np.int32(yb[2 + k])
        for i in range(4):
            c = (b >> np.int32(2 * i)) & np.int32(3)
            y[4 * k + i] = F32(c - np.int32(1)) * d


# -- row drivers: rows float32[nrows, n] -> out uint8[nrows, n/QK*18], and back -------------------

quantize_q1_0, dequantize_q1_0 = block_drivers(__name__, "q1_0", QK1_0, Q1_0_BYTES, q1_0_block, q1_0_block_dequant)
quantize_q2_0, dequantize_q2_0 = block_drivers(__name__, "q2_0", QK2_0, Q2_0_BYTES, q2_0_block, q2_0_block_dequant)
