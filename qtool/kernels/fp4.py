"""MXFP4 and NVFP4: ggml's 4-bit floating-point (E2M1) blocks, quantized and dequantized.

Block layouts (ggml-common.h)::

    MXFP4  17 B, 32 weights  | e (E8M0) | qs[16]  |
    NVFP4  36 B, 64 weights  | d[4] (UE4M3, one per 16 weights) | qs[32] |

Nibbles: within each group of ``g`` weights (g = 32 for MXFP4, 16 for NVFP4; NVFP4 group ``s`` owns
qs[8*s : 8*s + 8]), weight j sits in the low nibble and weight j + g/2 in the high one::

    qs[j] = | code[j + g/2]  (bits 7..4) | code[j]  (bits 3..0) |

A code indexes ggml's doubled E2M1 table KVALUES (0, 1, 2, 3, 4, 6, 8, 12 and their negatives at
codes 9..15; code 8 is a second zero that ggml never writes). ``w = KVALUES[code] * d`` with d the
group scale already halved: ``E8M0_HALF[e]`` (2^(e-128), ggml_e8m0_to_fp32_half) or ``UE4M3[d]``
(ggml_ue4m3_to_fp32, 0.5 x the UE4M3 value). Both tables are decoded once below.

The code of a weight is ggml's best_index_mxfp4: the first of the 16 codes with the smallest
float32 ``|KVALUES[i]*d - x|``. Rounding is monotone and the table symmetric, so that first minimum
always lies among the magnitudes 0, 1, 2, 3, 4, 6, 8, 12 scanned in that order on ``|x|``, with the
sign added back (code + 8) for a negative x off zero: half the work, the same choice, ties included.
"""

from __future__ import annotations

import math

import numpy as np

from qtool.kernels.common import F32, each_block, each_row_tested, f32_bits, jit, row_driver

#: ggml's kvalues_mxfp4 (kvalues_fp4): E2M1 values doubled, as float32, indexed by code
KVALUES = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.float32)
#: the eight non-negative magnitudes in code order (codes 0..7)
MAGNITUDES = np.ascontiguousarray(KVALUES[:8])


def _e8m0_half_table() -> np.ndarray:
    """ggml_e8m0_to_fp32_half for every byte: 2^(x-128), as the bit patterns the C builds."""
    x = np.arange(256, dtype=np.uint32)
    bits = np.where(x < 2, np.uint32(0x00200000) << x, (x - np.uint32(1)) << np.uint32(23))
    return bits.astype(np.uint32).view(np.float32)


def _ue4m3_table() -> np.ndarray:
    """ggml_ue4m3_to_fp32 for every byte (bit 7 ignored; 0x00 and 0x7F read as zero), halved."""
    out = np.empty(256, dtype=np.float32)
    for x in range(256):
        exp, man = (x >> 3) & 0xF, x & 0x7
        if x in (0x00, 0x7F):
            raw = 0.0
        elif exp == 0:
            raw = man * 2.0 ** -9
        else:
            raw = (1.0 + man / 8.0) * 2.0 ** (exp - 7)
        out[x] = np.float32(raw) * np.float32(0.5)  # every value is exact in float32
    return out


E8M0_HALF = _e8m0_half_table()
UE4M3 = _ue4m3_table()


# -- scales --------------------------------------------------------------------------------------

@jit
def mxfp4_exponent(amax):
    """quantize_row_mxfp4_ref's E8M0 byte: ``(uint8_t)(floorf(log2f(amax)) - 2 + 127)``, 0 for amax 0.

    log2f is the C library's (numba calls the same libm symbol). The sum is an exact small integer
    in float32; the cast is the reference build's cvttss2si and low byte, so the sub-2^-125 blocks
    whose exponent goes negative wrap around (to 232..255) exactly as in ggml.
    """
    if not amax > F32(0.0):
        return np.uint8(0)
    f = F32(math.floor(math.log2(amax))) - F32(2.0) + F32(127.0)
    return np.uint8(np.int32(f) & np.int32(0xFF))


@jit
def fp32_to_ue4m3(x):
    """ggml_fp32_to_ue4m3: float32 -> unsigned E4M3 byte (bias 7), saturating at 0x7E (448).

    Normal values round on the first dropped mantissa bit (half up, not to even); values below 2^-6
    become ``(int)(x*512 + 0.5)`` subnormal codes (float32 sum, truncated), clamped to 1..7 or 0.
    """
    if not x > F32(0.0):
        return np.uint8(0)
    if x > F32(448.0):
        x = F32(448.0)
    bits = f32_bits(x)
    exp = np.int32((bits >> np.uint32(23)) & np.uint32(0xFF)) - np.int32(127) + np.int32(7)
    if exp <= 0:
        man = np.int32(x * F32(512.0) + F32(0.5))
        if man > 7:
            man = np.int32(7)
        if man < 1:
            return np.uint8(0)
        return np.uint8(man)
    if exp >= 15:
        return np.uint8(0x7E)
    man = np.int32((bits >> np.uint32(20)) & np.uint32(0x7)) + np.int32((bits >> np.uint32(19)) & np.uint32(1))
    if man > 7:
        man = np.int32(0)
        exp += 1
        if exp >= 15:
            return np.uint8(0x7E)
    return np.uint8((exp << 3) | man)


# -- codes ---------------------------------------------------------------------------------------
#
# A row is quantized in three passes: the group scales (per type), then every weight's code in one flat
# loop over the row with its group's scale spread per weight, then the nibbles packed. The flat loop
# vectorizes; the same search run per 32-weight block compiled to code ~1.7x slower (MXFP4 as a whole).

@jit
def _codes(x, d, mags, codes):
    """codes[j] = best_index_mxfp4(x[j], d[j]) for every j: the E2M1 code (0..15) ggml picks for x at
    group scale d, the magnitudes scanned in order on |x|, each |mags[i]*d - |x|| as C computes it."""
    m1, m2, m3, m4, m5, m6, m7 = mags[1], mags[2], mags[3], mags[4], mags[5], mags[6], mags[7]
    for j in range(x.shape[0]):
        v = x[j]
        dj = d[j]
        a = abs(v)
        best = np.int32(0)
        least = a  # |0*d - a|
        for i, m in ((1, m1), (2, m2), (3, m3), (4, m4), (5, m5), (6, m6), (7, m7)):
            err = abs(m * dj - a)
            better = err < least
            best = np.int32(i) if better else best
            least = err if better else least
        codes[j] = np.uint8(best + np.int32(8) if (v < F32(0.0)) & (best != 0) else best)


@jit
def _pack_group(codes, at, g, qs, to):
    """The codes of one group of g weights (codes[at:at + g]) into qs[to:to + g/2]:
    qs[to + j] = code j | code j + g/2 << 4."""
    h = g // 2
    for j in range(h):
        qs[to + j] = codes[at + j] | (codes[at + j + h] << np.uint8(4))


@jit
def _absmax(xg):
    """max |x| over a group (0 for an all-zero group); inputs are finite, so order does not matter."""
    m = F32(0.0)
    for j in range(xg.shape[0]):
        m = max(m, abs(xg[j]))
    return m


# -- MXFP4 ---------------------------------------------------------------------------------------

@jit
def _quantize_row_mxfp4(x, y, e8m0_half, mags):
    """quantize_row_mxfp4_ref: x float32[32*nb] -> y uint8[17*nb]."""
    nb = x.shape[0] // 32
    d = np.empty(x.shape[0], np.float32)
    codes = np.empty(x.shape[0], np.uint8)
    for b in range(nb):
        amax = _absmax(x[32 * b:32 * b + 32])
        e = mxfp4_exponent(amax)
        y[17 * b] = e
        # an all-zero block codes to 0 at any scale: searched at 1, not at its subnormal 2^-128, whose
        # products take the CPU's slow path
        d[32 * b:32 * b + 32] = e8m0_half[e] if amax > F32(0.0) else F32(1.0)
    _codes(x, d, mags, codes)
    for b in range(nb):
        _pack_group(codes, 32 * b, 32, y, 17 * b + 1)


@jit
def _dequantize_block_mxfp4(qb, yb, e8m0_half, kvalues):
    """dequantize_row_mxfp4 for one block: qb uint8[17] -> yb float32[32]."""
    d = e8m0_half[qb[0]]
    for j in range(16):
        c = qb[1 + j]
        yb[j] = kvalues[c & np.uint8(0x0F)] * d
        yb[j + 16] = kvalues[c >> np.uint8(4)] * d


# ggml's quantize_mxfp4 (the _ref path; ggml ignores the importance vector): rows float32 [nrows, 32*nb]
# -> out uint8 [nrows, 17*nb]; dequantize_row_mxfp4 back
quantize_mxfp4 = row_driver(each_row_tested, __name__, "quantize_mxfp4", "ggml's quantize_mxfp4 over all rows.",
                            (E8M0_HALF, MAGNITUDES), ROW=_quantize_row_mxfp4)
dequantize_mxfp4 = row_driver(each_block, __name__, "dequantize_mxfp4", "ggml's dequantize_row_mxfp4 over all rows.",
                              (E8M0_HALF, KVALUES), BLOCK=_dequantize_block_mxfp4, IN=17, OUT=32)


# -- NVFP4 ---------------------------------------------------------------------------------------

@jit
def _quantize_row_nvfp4(x, y, ue4m3, mags):
    """quantize_row_nvfp4_ref: x float32[64*nb] -> y uint8[36*nb], four 16-weight groups per block."""
    d = np.empty(x.shape[0], np.float32)
    codes = np.empty(x.shape[0], np.uint8)
    for g in range(x.shape[0] // 16):
        u = fp32_to_ue4m3(_absmax(x[16 * g:16 * g + 16]) / F32(6.0))
        y[36 * (g // 4) + g % 4] = u
        d[16 * g:16 * g + 16] = ue4m3[u]
    _codes(x, d, mags, codes)
    for g in range(x.shape[0] // 16):
        _pack_group(codes, 16 * g, 16, y, 36 * (g // 4) + 4 + 8 * (g % 4))


@jit
def _dequantize_block_nvfp4(qb, yb, ue4m3, kvalues):
    """dequantize_row_nvfp4 for one block: qb uint8[36] -> yb float32[64]."""
    for s in range(4):
        d = ue4m3[qb[s]]
        for j in range(8):
            c = qb[4 + 8 * s + j]
            yb[16 * s + j] = kvalues[c & np.uint8(0x0F)] * d
            yb[16 * s + j + 8] = kvalues[c >> np.uint8(4)] * d


# ggml's quantize_nvfp4 (the _ref path; ggml ignores the importance vector): rows float32 [nrows, 64*nb]
# -> out uint8 [nrows, 36*nb]; dequantize_row_nvfp4 back
quantize_nvfp4 = row_driver(each_row_tested, __name__, "quantize_nvfp4", "ggml's quantize_nvfp4 over all rows.",
                            (UE4M3, MAGNITUDES), ROW=_quantize_row_nvfp4)
dequantize_nvfp4 = row_driver(each_block, __name__, "dequantize_nvfp4", "ggml's dequantize_row_nvfp4 over all rows.",
                              (UE4M3, KVALUES), BLOCK=_dequantize_block_nvfp4, IN=36, OUT=64)
